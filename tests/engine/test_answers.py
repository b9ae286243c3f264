"""Decoded answers under interventions (metrics `answer`, `correct`, `gives_corrupted`)
against a reference that patches with plain forward hooks and decodes greedily one token at
a time, each step a whole hooked forward with the tokens so far teacher-forced: no KV cache,
no `generate`. Texts must be equal, character for character."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest
import torch
from helpers import SPAN_PAIRS, write_pairs, write_recipe
from reference import (
    attention_module,
    decoded_reference,
    lm_decoded_reference,
    locate,
    mask_cutter,
    multi_patcher,
    recorder,
    run_one,
    site_module,
    source_vector,
)
from release_builders import write_coconut_release

from nnpatch.models.text import answer_is
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare

DECODED = ["logit_diff", "answer", "correct", "gives_corrupted"]
TOKENS = 6  # answer tokens decoded per row (eos included)


def run(recipe):
    prep = prepare(recipe, [])
    finished = execute(prep)
    return prep, finished


def own_rows(finished) -> list[dict]:
    return finished.results.filter(~pl.col("control")).to_dicts()


def assert_judged(model, pair, row) -> None:
    read = model.read_answer(row["answer"])
    assert row["correct"] == float(answer_is(read, pair.clean_answer))
    assert row["gives_corrupted"] == float(answer_is(read, pair.corrupted_answer))


def thought_patch_hooks(model, pairs, i, spec, site, direction, source, scale, seed, receiver):
    """Hooks writing what `source` defines at the spec's cells of the receiver's forward."""
    targets: dict = {}
    donor = pairs[i].clean_question if direction == "denoise" else pairs[i].corrupted_question
    for position in spec["positions"]:
        call, token = locate(model, site, position, receiver)
        if source == "donor":  # located in the donor's own loop (CoLaR: its own count)
            vector = _activation(model, donor, site, spec["layer"], position)
        else:
            layer = _Spec(spec["layer"])
            vector = source_vector(
                model, pairs, i, layer, position, site, direction, source, scale, seed
            )
        targets.setdefault(call, []).append((token, vector.float()))
    module = site_module(model, site, spec["layer"])
    return lambda: ([(module, multi_patcher(targets))], [])


def _activation(model, question: str, site: str, layer: int, position: str):
    """One cell's activation in one unpadded hooked forward of `question`."""
    store: list = []
    call, token = locate(model, site, position, question)
    answer = model.answer_ids("1")
    run_one(model, question, answer, answer, [(site_module(model, site, layer), recorder(store))])
    return store[call][0, token]


class _Spec:
    def __init__(self, layer):
        self.layer, self.head = layer, None


CASES = [
    ("llama", "single", "donor", "denoise", {"positions": [1, "eot"]}),
    ("gpt2", "single", "donor", "noise", {"positions": [0, "eot"]}),
    ("llama", "single", "mean", "denoise", {"positions": [2]}),
    ("gpt2", "single", "zero", "noise", {"positions": [3]}),
    ("llama", "single", "steer", "denoise", {"positions": [1], "scale": 2.0}),
    # Cywiński et al.'s test: the last two thoughts replaced by random vectors
    ("llama", "sets", "random", "noise", {"sets": [[4, 5]]}),
    ("gpt2", "sets", "random", "noise", {"sets": [[4, 5]]}),
    # the embedded trained model: patches flip its answers, so `correct` varies
    ("toy", "single", "donor", "denoise", {"positions": [0, 1, 2]}),
]
PRESETS = {"llama": "tiny-random-codi", "gpt2": "tiny-random-codi-gpt2", "toy": "toy-codi"}


@pytest.mark.parametrize(("family", "mode", "source", "direction", "extra"), CASES)
def test_codi_answers_equal_the_hook_reference(tmp_path, family, mode, source, direction, extra):
    """CODI (Llama with grouped-query attention, GPT-2): every row's decoded answer under
    each source equals the hooked, cache-free reference's, and `correct` and
    `gives_corrupted` judge that text."""
    patch = {"mode": mode, "source": source, "direction": direction, "layers": [1], **extra}
    data = {"pairs": "toy-arithmetic", "limit": 6} if family == "toy" else {}
    recipe = write_recipe(
        tmp_path,
        model={"preset": PRESETS[family]},
        data=data,
        patch=patch,
        metrics={"names": DECODED, "answer_tokens": TOKENS},
    )
    prep, finished = run(recipe)
    model, pairs = prep.model, prep.pairs
    by_id = {p.id: (i, p) for i, p in enumerate(pairs)}
    scale = extra.get("scale", 1.0)
    for row in own_rows(finished):
        i, pair = by_id[row["pair_id"]]
        receiver = pair.corrupted_question if direction == "denoise" else pair.clean_question
        hooks = thought_patch_hooks(
            model, pairs, i, row, "resid", direction, source, scale, 0, receiver
        )
        assert row["answer"] == decoded_reference(model, receiver, hooks, TOKENS), row
        assert_judged(model, pair, row)
    if family == "toy":  # some patches restore the clean answer, some leave the corrupted
        assert {0.0, 1.0} <= set(finished.results["correct"])
    base = finished.baselines
    for i, pair in enumerate(pairs):
        no_hooks = lambda: ([], [])  # noqa: E731
        clean = decoded_reference(model, pair.clean_question, no_hooks, TOKENS)
        assert base["clean_decoded"][i] == clean


def test_coconut_answers_equal_the_hook_reference(tmp_path):
    """Coconut (its latent tokens never decoded, its answer read after the last '#'): donor
    patches' answers equal the reference's."""
    _, _, base, checkpoint = write_coconut_release(tmp_path)
    recipe = write_recipe(
        tmp_path,
        model={"kind": "coconut", "base": str(base), "checkpoint": str(checkpoint)},
        patch={"mode": "single", "layers": [0], "positions": [0, "eot"]},
        metrics={"names": DECODED, "answer_tokens": TOKENS},
    )
    prep, finished = run(recipe)
    model, pairs = prep.model, prep.pairs
    by_id = {p.id: (i, p) for i, p in enumerate(pairs)}
    for row in own_rows(finished):
        i, pair = by_id[row["pair_id"]]
        hooks = thought_patch_hooks(
            model, pairs, i, row, "resid", "denoise", "donor", 1.0, 0, pair.corrupted_question
        )
        assert row["answer"] == decoded_reference(model, pair.corrupted_question, hooks, TOKENS)
        assert_judged(model, pair, row)


def test_plain_lm_answers_equal_the_hook_reference(tmp_path):
    """A plain LM: span tokens patched from the donor prompt, the answer decoded after the
    prompt and its answer prefix, equal to a cache-free hooked reference."""
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", SPAN_PAIRS)
    recipe = write_recipe(
        tmp_path,
        model={"preset": "tiny-random-gpt2"},
        data={"pairs": str(pairs_file)},
        patch={"mode": "sets", "layers": [1], "sets": [[0, 1]]},
        metrics={"names": DECODED, "answer_tokens": TOKENS},
    )
    prep, finished = run(recipe)
    model = prep.model
    by_id = {p.id: p for p in prep.pairs}
    layer = model.module.transformer.h[1]
    for row in own_rows(finished):
        pair = by_id[row["pair_id"]]
        head, _, _ = model.pieces(pair.clean_question)
        store: list = []
        handle = layer.register_forward_hook(recorder(store))
        with torch.no_grad():
            model.module(input_ids=torch.tensor([model.question_ids(pair.clean_question)]))
        handle.remove()
        cells = [(len(head) + int(p), store[0][0, len(head) + int(p)]) for p in row["positions"]]
        hooks = lambda cells=cells: [(layer, multi_patcher({0: cells}))]  # noqa: E731
        assert row["answer"] == lm_decoded_reference(model, pair.corrupted_question, hooks, TOKENS)
        assert_judged(model, pair, row)


def test_knockout_cuts_the_decoded_answer_too(tmp_path):
    """A knockout from the answer cuts every decoded token's attention to the key as well:
    the answers equal the reference's, whose teacher-forced tokens sit in the cut calls."""
    recipe = write_recipe(
        tmp_path,
        patch={"mode": "knockout", "layers": [0, 1], "to": ["bot", 2]},
        metrics={"names": DECODED, "answer_tokens": TOKENS},
    )
    prep, finished = run(recipe)
    model, K = prep.model, prep.model.num_thoughts
    by_id = {p.id: p for p in prep.pairs}
    for row in own_rows(finished):
        pair = by_id[row["pair_id"]]
        T = len(model.question_ids(pair.clean_question))
        key = T - 1 if row["positions"][0] == "bot" else T + int(row["positions"][0])

        def hooks(T=T, key=key, layer=row["layer"]):
            # each step's forward teacher-forces the tokens so far: its key lengths grow
            return [], [(attention_module(model, layer), _cut(model, T, K, key))]

        assert row["answer"] == decoded_reference(model, pair.clean_question, hooks, TOKENS)


def _cut(model, T, K, key):
    """mask_cutter for the answer calls of one reference forward, whatever its length."""
    inner = {}

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if not inner:
            inner["calls"] = 0
        call = inner["calls"]
        inner["calls"] += 1
        if call <= K:
            return None
        queries = hidden.shape[1]
        keys = T + K + 1 + (queries - 1) if call == K + 1 else T + K + 1 + queries
        return mask_cutter({0: keys}, key)(module, args, kwargs)

    return hook


def test_answer_alone_is_refused(tmp_path):
    """`answer` is text: a recipe measuring it alone has no number per row."""
    from nnpatch.errors import RecipeError

    recipe = write_recipe(tmp_path, metrics={"names": ["answer"]})
    with pytest.raises(RecipeError, match="metrics.names.*add `correct`"):
        prepare(recipe, [])


def test_modes_without_answers_refuse_decoded_metrics(tmp_path):
    """Attribution (gradient estimates), the lens and record read no decoded answer: one
    line naming the metrics."""
    from nnpatch.errors import RecipeError

    for mode in ("attribution", "lens", "record"):
        recipe = write_recipe(
            tmp_path, patch={"mode": mode, "layers": [0]}, metrics={"names": ["correct"]}
        )
        with pytest.raises(RecipeError, match=f"{mode} cannot measure correct"):
            prepare(recipe, [])


def test_accuracy_reaches_the_summary_report_and_compare(tmp_path):
    """`correct` per cell: Wilson intervals in the summary beside the unpatched runs'
    accuracies, an accuracy section in summary.md, and `nnpatch compare` differences it
    (never the text)."""
    from nnpatch.report.compare import compare_runs
    from nnpatch.report.stats import wilson_ci

    runs = []
    for source in ("donor", "mean"):
        folder = tmp_path / source
        folder.mkdir()
        recipe = write_recipe(
            folder,
            model={"preset": "toy-codi"},
            data={"pairs": "toy-arithmetic", "limit": 8},
            patch={"mode": "single", "source": source, "layers": [1], "positions": [1, 2]},
            metrics={"names": ["correct", "answer"], "answer_tokens": TOKENS},
            run={"batch_size": 16, "output": str(folder / "outputs"), "report": "html"},
        )
        runs.append(run(recipe)[1])
    finished = runs[0]
    cells = finished.summary.filter(pl.col("metric") == "correct")
    assert set(finished.summary["metric"]) == {"correct"}
    for row in cells.iter_rows(named=True):
        right = finished.results.filter(
            ~pl.col("control") & (pl.col("position") == row["position"])
        )["correct"]
        assert (row["ci95_low"], row["ci95_high"]) == pytest.approx(
            wilson_ci(right.sum(), right.len())
        )
        assert row["clean_run_mean"] == finished.baselines["clean_correct"].mean()
    assert "Answer accuracy under intervention" in (finished.path / "summary.md").read_text()
    table = compare_runs(runs[0].path, runs[1].path, tmp_path / "cmp")
    assert set(table["metric"]) == {"correct"}


GOLDEN = Path(__file__).parent.parent / "golden"


@pytest.mark.parametrize("family", ["pccot", "colar"])
def test_parallel_and_per_question_loops_answer_as_the_reference(tmp_path, family):
    """PCCoT (the answer decoded after the prompt it reads) and CoLaR (each question's own
    number of latents): donor patches' answers equal the cache-free reference's."""
    models = {
        "pccot": {
            "kind": "pccot",
            "base": str(GOLDEN / "pccot" / "gpt2"),
            "checkpoint": str(GOLDEN / "pccot" / "whyNLP" / "pccot-gpt2"),
        },
        "colar": {
            "kind": "colar",
            "base": str(GOLDEN / "colar" / "models" / "llms" / "Llama-3.2-1B-Instruct"),
            "checkpoint": str(GOLDEN / "colar"),
            # its tiny policy is chaotic over 64 latents: float32 batching alone moves them
            "dtype": "float64",
        },
    }
    recipe = write_recipe(
        tmp_path,
        model=models[family],
        patch={"mode": "single", "layers": [0], "positions": [0, "eot"]},
        metrics={"names": DECODED, "answer_tokens": TOKENS},
    )
    prep, finished = run(recipe)
    model, pairs = prep.model, prep.pairs
    by_id = {p.id: (i, p) for i, p in enumerate(pairs)}
    rows = own_rows(finished)
    assert rows
    for row in rows:
        i, pair = by_id[row["pair_id"]]
        hooks = thought_patch_hooks(
            model, pairs, i, row, "resid", "denoise", "donor", 1.0, 0, pair.corrupted_question
        )
        with _thoughts_of(model, pair.corrupted_question):
            want = decoded_reference(model, pair.corrupted_question, hooks, TOKENS)
        assert row["answer"] == want
        assert_judged(model, pair, row)


@contextmanager
def _thoughts_of(model, question: str):
    """The module thinking `question`'s own number of thoughts (CoLaR decides per question;
    the reference's run_one sets it per forward, the decoding reads it too)."""
    if not hasattr(model, "thoughts_of"):
        yield
        return
    saved = model.module.num_thoughts
    model.module.num_thoughts = len(model.thoughts_of([question])[0])
    try:
        yield
    finally:
        model.module.num_thoughts = saved
