"""nnpatch agrees with the model authors' own code, run on tiny checkpoints (within 1e-5).

Each folder under tests/golden/<family>/<base>/ holds a tiny base (config + tokenizer), a
checkpoint in the release's own layout built with the authors' model class, and the values
the authors' inference loop computed on it in float64 (golden.json, golden.safetensors);
the make_*.py scripts beside this file say how they were made. Here nnpatch loads the same
files as a user would, runs in float64, and must reproduce the fed-back latent vectors and
the logits of the first decode steps after the end-of-thought token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nnpatch.models import build_model
from nnpatch.recipe import ModelSection

HERE = Path(__file__).parent
# the goldens this file checks (other families' goldens beside them have their own tests)
NAMES = [
    "zhenyi4/gpt2",
    "zhenyi4/llama",
    "simcot/gpt2",
    "simcot/llama",
    "cywinski/llama",
    "coconut/gpt2",
    "multimode_codi/gpt2",
    "multimode_codi/llama",
    "multimode_coconut/gpt2",
    "multimode_coconut/llama",
]
FOLDERS = [HERE / name for name in NAMES if (HERE / name / "golden.json").is_file()]
TOLERANCE = 1e-5
CODI_FAMILIES = ("zhenyi4", "simcot", "cywinski", "multimode_codi")


@dataclass(frozen=True)
class Golden:
    folder: Path
    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        return f"{self.meta['family']}/{self.meta['base']}"

    def singles(self) -> dict[int, tuple[str, dict]]:
        """Question index → (tensor key prefix, row) for rows run without padding in a batch
        without padding: what the question gives alone."""
        found: dict[int, tuple[str, dict]] = {}
        for b, batch in enumerate(self.meta["batches"]):
            if any(row["pad_count"] for row in batch["rows"]):
                continue
            for r, row in enumerate(batch["rows"]):
                found.setdefault(row["question"], (f"batch{b}.row{r}", row))
        return found

    def padded_batches(self) -> list[tuple[int, dict]]:
        return [
            (b, batch)
            for b, batch in enumerate(self.meta["batches"])
            if any(row["pad_count"] for row in batch["rows"])
        ]


def _read(folder: Path) -> Golden:
    from safetensors.torch import load_file

    meta = json.loads((folder / "golden.json").read_text(encoding="utf-8"))
    return Golden(folder, meta, load_file(str(folder / "golden.safetensors")))


GOLDENS = [_read(folder) for folder in FOLDERS]


def _section(golden: Golden, **override) -> ModelSection:
    settings = golden.meta["settings"]
    base, checkpoint = golden.folder / "base", golden.folder / "checkpoint"
    if golden.meta["family"] in CODI_FAMILIES:
        fields = {
            "kind": "codi",
            "num_thoughts": settings["num_thoughts"],
            "prj_dim": settings["prj_dim"],
            "lora_r": settings["lora_r"],
            "lora_alpha": settings["lora_alpha"],
            "eos_before_thought": not settings["remove_eos"],
            "prompt": "answer-only" if settings.get("answer_only") else "codi",
        }
        if golden.meta["family"] == "multimode_codi":  # <eot_id> before <bocot> on Llama
            fields |= {"thought_tokens": "multimode", "eos_before_thought": settings["use_eot_id"]}
    else:
        fields = {"kind": "coconut", "num_thoughts": settings["num_thoughts"]}
        if golden.meta["family"] == "multimode_coconut":
            fields |= {"thought_tokens": "multimode", "eos_before_thought": settings["use_eot"]}
        checkpoint = next(checkpoint.glob("checkpoint_*"))  # Coconut's one raw file
    fields |= override
    return ModelSection(base=str(base), checkpoint=str(checkpoint), **fields)


def _load(golden: Golden, **override):
    """The checkpoint loaded as a user loads it, in float64 like the goldens (LoRA merged
    in float64 too: a float32 merge alone leaves differences near 1e-6)."""
    return build_model(_section(golden, dtype="float64", **override))


_MODELS: dict[str, object] = {}


def _model(golden: Golden):
    if golden.name not in _MODELS:
        _MODELS[golden.name] = _load(golden)
    return _MODELS[golden.name]


def _pad(rows: list[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return ids, mask


def run_nnpatch(model, ids: list[list[int]], tokens: list[list[int]]):
    """nnpatch's recurrent forward on these question ids (left-padded together), teacher-
    forcing `tokens` right after eot: (fed latents [B, K, d], logits [B, steps, vocab]),
    where logits[:, j] is the decode step that predicts tokens[j]. The fed latents are what
    the `prj` module returns at each thought (Coconut: its identity)."""
    module = model.module
    question, mask = _pad(ids, module.pad_id, left=True)
    answer, _ = _pad(tokens, module.pad_id, left=False)
    fed: list[torch.Tensor] = []
    handle = module.prj.register_forward_hook(lambda mod, args, out: fed.append(out.detach()))
    try:
        with torch.no_grad():
            logits, _ = module(question, mask, torch.zeros(0, dtype=torch.long), answer, answer)
    finally:
        handle.remove()
    return (torch.cat(fed, dim=1) if fed else None), logits  # direct mode: no latents


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b|; over the common leading entries when the counts differ (a model
    run with a wrong number of thoughts), the trailing shapes must agree."""
    assert a.shape[1:] == b.shape[1:], (a.shape, b.shape)
    n = min(a.shape[0], b.shape[0])
    return float((a[:n].double() - b[:n].double()).abs().max())


def compare_single(golden: Golden, model) -> dict[str, float]:
    """Per question run alone: the largest |nnpatch - theirs| of the latents and logits."""
    worst = {"latents": 0.0, "logits": 0.0}
    for question, (key, row) in golden.singles().items():
        steps = row["steps"]
        ids = model.question_ids(golden.meta["questions"][question])
        latents, logits = run_nnpatch(model, [ids], [row["tokens"][:steps]])
        worst["latents"] = max(
            worst["latents"], _max_diff(latents[0], golden.tensors[f"{key}.latents"])
        )
        theirs = golden.tensors[f"{key}.logits"]
        worst["logits"] = max(worst["logits"], _max_diff(logits[0, :steps], theirs))
    return worst


@pytest.fixture(params=GOLDENS, ids=lambda g: g.name)
def golden(request) -> Golden:
    return request.param


def test_the_goldens_are_here():
    """Every family's goldens are committed (a missing folder would skip its checks)."""
    assert [g.name for g in GOLDENS] == NAMES


def test_question_ids_are_the_ones_their_loop_fed(golden):
    """nnpatch prepares each question (strip, double spaces, BOS, eos, thought token) into
    exactly the ids the authors' loop fed."""
    model = _model(golden)
    for batch in golden.meta["batches"]:
        if golden.meta["family"] == "multimode_codi" and batch["path"] == "test.py":
            continue  # their test.py also collapses double spaces; nnpatch follows the
            # evaluation pipeline of their paper (the wrapper), which only strips
        for row in batch["rows"]:
            assert model.question_ids(golden.meta["questions"][row["question"]]) == row["input_ids"]


def test_latents_and_answer_logits_agree_within_1e5(golden):
    """Each question alone: every fed-back latent vector and the logits of the first decode
    steps after eot (teacher-forcing their greedy tokens) are theirs within 1e-5."""
    worst = compare_single(golden, _model(golden))
    assert worst["latents"] < TOLERANCE and worst["logits"] < TOLERANCE, worst


def test_a_left_padded_batch_gives_each_question_its_own_values(golden):
    """The questions of their padded batch, left-padded together in nnpatch, give each
    question's single-run values within 1e-5."""
    model, singles = _model(golden), golden.singles()
    for _, batch in golden.padded_batches():
        questions = batch["questions"]
        rows = [singles[q][1] for q in questions]
        steps = min(row["steps"] for row in rows)
        ids = [model.question_ids(golden.meta["questions"][q]) for q in questions]
        latents, logits = run_nnpatch(model, ids, [row["tokens"][:steps] for row in rows])
        for i, q in enumerate(questions):
            key = singles[q][0]
            theirs = golden.tensors[f"{key}.logits"][:steps]
            assert _max_diff(latents[i], golden.tensors[f"{key}.latents"]) < TOLERANCE
            assert _max_diff(logits[i, :steps], theirs) < TOLERANCE


def test_their_padded_rows_are_what_their_loop_makes_of_padding(golden):
    """Their own batch: rows without padding equal the single runs; a left-padded row
    equals its single run only where their loop keeps the attention mask after the question
    pass (Coconut's forward). CODI's loops drop it, so padded rows attend to pad keys and
    differ; nnpatch keeps the mask, so it gives the single-run values instead."""
    singles = golden.singles()
    for b, batch in golden.padded_batches():
        for r, row in enumerate(batch["rows"]):
            key, single = singles[row["question"]][0], golden.tensors
            diff = _max_diff(single[f"batch{b}.row{r}.latents"], single[f"{key}.latents"])
            first = _max_diff(single[f"batch{b}.row{r}.logits"][:1], single[f"{key}.logits"][:1])
            if row["pad_count"] == 0 or batch["mask_kept"]:
                assert diff < TOLERANCE and first < TOLERANCE
            else:
                assert diff > 1e-3 and first > 1e-3


def test_greedy_tokens_are_theirs(golden):
    """nnpatch's greedy decoding writes their tokens (up to eos, and up to any marker id,
    which their loops may pick and nnpatch never does)."""
    model = _model(golden)
    markers = set(model.module.marker_ids)
    for question, (_, row) in golden.singles().items():
        expected = []
        for token in row["tokens"]:
            if token in markers or token == model.eos_id:
                break
            expected.append(token)
        ids, mask = _pad([model.question_ids(golden.meta["questions"][question])], 0, True)
        tokens = model.module.generate(ids, mask, model.eos_id, max_new=len(expected))
        assert tokens[0][: len(expected)] == expected


def _wrong_settings(golden: Golden) -> list[dict]:
    settings = golden.meta["settings"]
    if golden.meta["family"] == "multimode_codi":
        return [
            {"lora_alpha": settings["lora_alpha"] / 2},
            {"eos_before_thought": not settings["use_eot_id"]},
            {"num_thoughts": settings["num_thoughts"] - 1},
        ]
    if golden.meta["family"] in CODI_FAMILIES:
        return [
            {"lora_alpha": settings["lora_alpha"] / 2},
            {"eos_before_thought": settings["remove_eos"]},
            {"num_thoughts": settings["num_thoughts"] - 1},
        ]
    return [{"num_thoughts": settings["num_thoughts"] - 1}]


def test_a_wrong_setting_is_caught(golden):
    """The comparison can fail: halving lora_alpha, flipping the eos before the thought
    token, or one thought too few each move latents or logits far beyond 1e-5."""
    for wrong in _wrong_settings(golden):
        model = _load(golden, **wrong)
        worst = compare_single(golden, model)
        assert max(worst.values()) > 1e-3, (wrong, worst)


def test_the_keys_their_loader_ignores_are_the_ones_nnpatch_drops(golden):
    """Every key of the file that their test.py's strict=False load left unused (SIM-CoT's
    training-only `decoder.*`) is one nnpatch drops on purpose, and nnpatch loads the rest."""
    report = _model(golden).key_report
    unused = golden.meta["their_load_state_dict"]["unexpected"]
    assert sum(report.dropped.values()) == unused
    assert not report.missing and not report.unexpected


MODES = [g for g in GOLDENS if "direct" in g.meta.get("modes", {})]


@pytest.mark.parametrize("golden", MODES, ids=lambda g: g.name)
def test_direct_mode_is_their_direct_mode(golden):
    """thinking = "direct" (the multimode checkpoints' answer without thinking): the ids their
    evaluation fed (the question, its end-of-prompt token, then eocot) and the logits of the
    answer steps after it, within 1e-5."""
    model = _load(golden, thinking="direct")
    assert model.num_thoughts == 0
    done = set()
    for row in golden.meta["modes"]["direct"]:
        question = row["question"]
        if question in done or row.get("pad_count"):
            continue
        done.add(question)
        ids = model.question_ids(golden.meta["questions"][question])
        assert [*ids, model.module.eot_id] == row["input_ids"]
        steps = row["steps"]
        _, logits = run_nnpatch(model, [ids], [row["tokens"][:steps]])
        theirs = golden.tensors[f"direct.q{question}.logits"]
        assert _max_diff(logits[0, :steps], theirs[:steps]) < TOLERANCE
    assert done


def test_every_multimode_golden_has_a_direct_mode():
    assert sorted(g.name for g in MODES) == sorted(n for n in NAMES if n.startswith("multimode"))


@pytest.mark.parametrize("golden", MODES, ids=lambda g: g.name)
def test_verbalized_mode_writes_their_chain_of_thought(golden):
    """thinking = "verbalized": after bot the model writes the tokens their evaluation's
    greedy generation wrote, with their logits at each written step (within 1e-5)."""
    model = _load(golden, thinking="verbalized")
    done = set()
    for row in golden.meta["modes"]["verbalized"]:
        question = row["question"]
        if question in done or row.get("pad_count"):
            continue
        done.add(question)
        text = golden.meta["questions"][question]
        ids = model.question_ids(text)
        assert ids == row["input_ids"]
        written = model.thoughts_of([text])[0]
        theirs = row["tokens"]
        stop = theirs.index(model.module.eot_id) if model.module.eot_id in theirs else len(theirs)
        assert written[:stop] == theirs[:stop]
        module, steps = model.module, row["steps"]
        with torch.no_grad():
            state = module.ask(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
            logits = [module._logits(state.hidden[:, -1])]
            tokens = torch.tensor([theirs])
            for _ in range(steps - 1):
                state = module._thought(state, written=tokens)
                logits.append(module._logits(state.hidden[:, -1]))
        ours = torch.cat(logits)
        assert _max_diff(ours, golden.tensors[f"verbalized.q{question}.logits"][:steps]) < TOLERANCE
    assert done
