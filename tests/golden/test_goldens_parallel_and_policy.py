"""nnpatch agrees with PCCoT's and CoLaR's own code, run on tiny checkpoints (within 1e-5).

tests/golden/pccot and tests/golden/colar hold a tiny base, a release written in each
family's own layout by its authors' code (make_pccot.py, make_colar.py say how) and the
values their inference ran in float64: PCCoT's slot inputs at every Jacobi iteration and the
logits of its answer steps; CoLaR's latent count per question, every latent fed (the
policy's mean, its end-of-latent decision an argmax) and its answer logits. nnpatch loads
the same files as a user would, in float64.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nnpatch.models import build_model
from nnpatch.recipe import ModelSection

HERE = Path(__file__).parent
TOLERANCE = 1e-5
PCCOT, COLAR = HERE / "pccot", HERE / "colar"


def _golden(folder: Path) -> dict:
    return json.loads((folder / "golden.json").read_text(encoding="utf-8"))


def _diff(ours: torch.Tensor, theirs) -> float:
    theirs = torch.tensor(theirs, dtype=torch.float64).reshape(ours.shape)
    return float((ours.double() - theirs).abs().max())


# ---- PCCoT -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pccot():
    section = ModelSection(
        kind="pccot",
        base=str(PCCOT / "gpt2"),
        checkpoint=str(PCCOT / "whyNLP" / "pccot-gpt2"),
        dtype="float64",
    )
    return build_model(section), _golden(PCCOT)


def _pccot_run(model, questions: list[str], answers: list[list[int]]):
    """Slot inputs per iteration [T][B, N, d] and teacher-forced answer logits."""
    from nnpatch.models.base import pad_rows

    ids, mask = pad_rows([model.question_ids(q) for q in questions], model.module.pad_id, True)
    answer, _ = pad_rows(answers, model.module.pad_id, False)
    seen: list[torch.Tensor] = []
    hook = model.module.slots.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    try:
        with torch.no_grad():
            logits, _ = model.module(ids, mask, torch.tensor(model.prefix_ids()), answer, answer)
    finally:
        hook.remove()
    return seen, logits


def test_pccot_question_ids_are_the_ones_their_processor_built(pccot):
    """Question, bot: then their input continues with the latents, eot and answer prompt."""
    model, golden = pccot
    for single in golden["singles"]:
        theirs = single["collated"]["input_ids"][0]
        ours = model.question_ids(single["questions"][0])
        slots = model.num_thoughts
        assert theirs == [
            *ours,
            *[model.module.latent_id] * slots,
            model.module.eot_id,
            *model.prefix_ids(),
        ]


def test_pccot_slots_and_answer_logits_agree_within_1e5(pccot):
    """Each question alone: the slot inputs of every iteration and the logits of the answer
    steps (after eot and "The answer is:", teacher-forcing their greedy tokens)."""
    model, golden = pccot
    for single in golden["singles"]:
        tokens = single["generated_ids"][0]
        seen, logits = _pccot_run(model, single["questions"], [tokens])
        assert len(seen) == golden["num_iterations"]
        for ours, theirs in zip(seen, single["iterations"], strict=True):
            assert _diff(ours, theirs["slot_inputs"]) < TOLERANCE
        for step, theirs in enumerate(single["step_logits"]):
            assert _diff(logits[0, step], theirs) < TOLERANCE


def test_pccot_greedy_answers_are_theirs(pccot):
    model, golden = pccot
    for single in golden["singles"]:
        assert model.greedy_answers(single["questions"], max_new=10) == single["answers"]


def test_pccot_left_padded_batch_gives_each_question_alone(pccot):
    """Their iterations drop the mask, so their padded rows differ from the single runs;
    nnpatch keeps it, so a padded batch gives every question its single-run values."""
    model, golden = pccot
    singles = golden["singles"]
    questions = [s["questions"][0] for s in singles]
    steps = min(len(s["step_logits"]) for s in singles)
    seen, logits = _pccot_run(model, questions, [s["generated_ids"][0][:steps] for s in singles])
    for row, single in enumerate(singles):
        for ours, theirs in zip(seen, single["iterations"], strict=True):
            assert _diff(ours[row], theirs["slot_inputs"]) < TOLERANCE
        for step in range(steps):
            assert _diff(logits[row, step], single["step_logits"][step]) < TOLERANCE
    assert (
        max(max(d["slot_inputs_max_abs_diff_per_iteration"]) for d in golden["batch_vs_single"])
        > 1e-3
    )


def test_pccot_a_wrong_iteration_count_is_caught(pccot):
    """The comparison can fail: one Jacobi iteration too few moves the answer logits."""
    model, golden = pccot
    single = golden["singles"][0]
    model.module.num_iterations -= 1
    try:
        _, logits = _pccot_run(model, single["questions"], [single["generated_ids"][0]])
    finally:
        model.module.num_iterations += 1
    assert _diff(logits[0, 0], single["step_logits"][0]) > 1e-3


# ---- CoLaR -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colar():
    golden = _golden(COLAR)
    section = ModelSection(
        kind="colar",
        base=str(COLAR / "models" / "llms" / "Llama-3.2-1B-Instruct"),
        checkpoint=str(COLAR / golden["ckpt"]),
        dtype="float64",
    )
    model = build_model(section)
    # their [PAD] row is drawn at random on every load and never saved: use the one they drew
    with torch.no_grad():
        row = torch.tensor(golden["pad_row_used"], dtype=torch.float64)
        model.module.lm.get_input_embeddings().weight[golden["ids"]["pad"]] = row
    model.max_thoughts = 12  # their run's max_n_latent_forward
    return model, golden


def _colar_run(model, question: str, tokens: list[int]):
    ids = torch.tensor([model.question_ids(question)])
    fed: list[torch.Tensor] = []
    hook = model.module.prj.register_forward_hook(lambda m, a, out: fed.append(out.clone()))
    saved, model.module.num_thoughts = model.module.num_thoughts, model.count([question])[0]
    try:
        with torch.no_grad():
            answer = torch.tensor([tokens])
            empty = torch.zeros(0, dtype=torch.long)
            logits, _ = model.module(ids, torch.ones_like(ids), empty, answer, answer)
    finally:
        model.module.num_thoughts = saved
        hook.remove()
    return fed, logits


def test_colar_prompt_ids_are_theirs(colar):
    model, golden = colar
    questions = golden["batch"]["questions"]
    for question, ids, mask in zip(
        questions, golden["prompt_ids_batch"], golden["prompt_mask_batch"], strict=True
    ):
        assert model.question_ids(question) == [i for i, m in zip(ids, mask, strict=True) if m]


def test_colar_latent_counts_latents_and_answer_logits_agree_within_1e5(colar):
    """Each question alone: as many latents as their loop thought, each the latent they fed,
    and the logits of their answer steps after the final ###."""
    model, golden = colar
    for single in golden["singles"]:
        question = single["questions"][0]
        assert model.count([question]) == single["n_latent_forward"]
        fed, logits = _colar_run(model, question, single["pred_ids"][0])
        assert len(fed) == single["n_latent_forward"][0]
        for ours, step in zip(fed, single["latent_steps"], strict=False):
            assert _diff(ours[0, 0], step["latent_fed"]) < TOLERANCE
        for step, theirs in enumerate(single["answer_step_logits"]):
            assert _diff(logits[0, step], theirs) < TOLERANCE


def test_colar_greedy_answers_are_theirs(colar):
    model, golden = colar
    for single in golden["singles"]:
        assert model.greedy_answers(single["questions"], max_new=16) == single["decoded"]


def test_colar_batch_of_unequal_latent_counts_gives_each_question_alone(colar):
    """A batch whose questions think 4, 11 and 12 latents masks each row after its own
    count: every row's answer logits are its single run's (their batch does the same)."""
    model, golden = colar
    singles = golden["singles"]
    questions = [s["questions"][0] for s in singles]
    assert len({model.count([q])[0] for q in questions}) > 1
    steps = min(len(s["pred_ids"][0]) for s in singles)
    from nnpatch.models.base import pad_rows

    ids, mask = pad_rows([model.question_ids(q) for q in questions], model.module.pad_id, True)
    answer = torch.tensor([s["pred_ids"][0][:steps] for s in singles])
    counts = torch.tensor(model.count(questions))
    model.module.num_thoughts = int(counts.max())
    with torch.no_grad():
        empty = torch.zeros(0, dtype=torch.long)
        logits, _ = model.module(ids, mask, empty, answer, answer, thought_counts=counts)
    for row, single in enumerate(singles):
        for step in range(min(steps, len(single["answer_step_logits"]))):
            assert _diff(logits[row, step], single["answer_step_logits"][step]) < TOLERANCE
    assert all(d["same_pred_ids"] for d in golden["batch_vs_single"])


def test_colar_a_wrong_embedding_scale_is_caught(colar):
    """The comparison can fail: the policy's embedding scale of another base (gpt2's 0.12)
    changes the latents fed."""
    model, golden = colar
    single = golden["singles"][0]
    saved, model.module.prj.embeds_std = model.module.prj.embeds_std, 0.12
    try:
        fed, _ = _colar_run(model, single["questions"][0], single["pred_ids"][0])
    finally:
        model.module.prj.embeds_std = saved
    assert _diff(fed[0][0, 0], single["latent_steps"][0]["latent_fed"]) > 1e-3
