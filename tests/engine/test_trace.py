"""The engine against the per-patch forward-hook reference, and the patching invariants."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from helpers import run_recipe, write_recipe
from reference import assert_matches_reference

from nnpatch.engine.metrics import METRICS
from nnpatch.engine.plan import PatchSpec
from nnpatch.models.tiny import tiny_random_codi
from nnpatch.pairs.builtin import tiny_arithmetic

MODES = {
    "single": {"positions": ["bot", 0, 3, "eot"]},
    "layer": {"positions": [0, 2, 5]},
    "chained": {"positions": [1, 2, 4]},
    "sets": {"sets": [[0, 1], [2, "eot"]]},
}
THOUGHT_MODES = {
    "single": {"positions": [0, 5]},
    "layer": {},
    "chained": {"positions": [0, 1, 2]},
    "sets": {"sets": [[0, 3], [5]]},
}


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("site", ["resid", "attn", "mlp", "thought"])
@pytest.mark.parametrize("mode", list(MODES))
def test_llama_rows_equal_hook_reference(tmp_path, llama, mode, site, direction):
    """Every metric of every row equals one hooked recurrent forward per patch (Llama)."""
    patch = dict(THOUGHT_MODES[mode] if site == "thought" else MODES[mode])
    patch.update(mode=mode, site=site, direction=direction)
    if site != "thought":
        patch["layers"] = [0, 3]
    recipe = write_recipe(tmp_path, patch=patch, data={"limit": 3}, run={"batch_size": 5})
    results = run_recipe(recipe)
    assert_matches_reference(results, llama, site, direction, tiny_arithmetic()[:3])


@pytest.mark.parametrize(("site", "direction"), [("resid", "denoise"), ("thought", "noise")])
def test_control_rows_equal_hook_reference_with_mismatched_donor(tmp_path, llama, site, direction):
    """Control rows are exact patches from another pair's run, checked the same way."""
    patch = {"mode": "single", "site": site, "direction": direction, "positions": [0, 5]}
    recipe = write_recipe(tmp_path, patch=patch, data={"limit": 3})
    results = run_recipe(recipe)
    assert_matches_reference(results, llama, site, direction, tiny_arithmetic()[:3], control=True)


@pytest.mark.parametrize(
    ("mode", "site", "direction"),
    [
        ("single", "resid", "denoise"),
        ("chained", "attn", "noise"),
        ("layer", "mlp", "denoise"),
        ("sets", "thought", "noise"),
    ],
)
def test_gpt2_rows_equal_hook_reference(tmp_path, gpt2, mode, site, direction):
    """The GPT-2 family goes through the same cells as Llama."""
    patch = dict(THOUGHT_MODES[mode] if site == "thought" else MODES[mode])
    patch.update(mode=mode, site=site, direction=direction)
    recipe = write_recipe(
        tmp_path, model={"preset": "tiny-random-codi-gpt2"}, patch=patch, run={"batch_size": 7}
    )
    results = run_recipe(recipe)
    assert_matches_reference(results, gpt2, site, direction, tiny_arithmetic()[:3])


def test_batches_mix_pairs_of_different_lengths(llama):
    """The reference comparison covers left padding: the pairs' questions differ in length."""
    lengths = {len(llama.question_ids(p.corrupted_question)) for p in tiny_arithmetic()[:3]}
    assert len(lengths) > 1


def test_batched_equals_one_by_one(tmp_path):
    """Batch size changes nothing: 64 rows per trace equals one row per trace."""
    recipe = write_recipe(tmp_path, patch={"mode": "single", "positions": [0, "eot"]})
    one = run_recipe(recipe, ["run.batch_size=1"])
    many = run_recipe(recipe, ["run.batch_size=64"])
    for name in METRICS:
        np.testing.assert_allclose(one[name], many[name], rtol=1e-4, atol=1e-4)


def test_patching_own_activations_changes_nothing(llama):
    """Donor and receiver share a question: every patched row equals the receiver's baseline.

    Recipes refuse such pairs (nothing to measure), so the engine is driven directly, with
    answers built by hand, at every layer over every position."""
    from nnpatch.engine.trace import Engine, PairAnswers
    from nnpatch.pairs import Pair

    pairs = [
        Pair(f"same-{i}", p.clean_question, p.clean_answer, p.clean_question, p.corrupted_answer)
        for i, p in enumerate(tiny_arithmetic()[:3])
    ]
    names = list(METRICS)
    engine = Engine(llama, "resid", "denoise", names)
    clean = [llama.answer_ids(p.clean_answer) for p in pairs]
    corrupt = [llama.answer_ids(p.corrupted_answer) for p in pairs]
    diff = [
        next(i for i, (a, b) in enumerate(zip(x, y, strict=False)) if a != b)
        for x, y in zip(clean, corrupt, strict=True)
    ]
    answers = PairAnswers(clean, corrupt, diff)
    labels = tuple(llama.position_labels())
    specs = [PatchSpec(layer, labels) for layer in range(llama.num_layers)]
    cells = [(layer, label) for layer in range(llama.num_layers) for label in labels]
    base = engine.baselines(pairs, answers, cells, chunk=3)
    rows = [(spec, i, i) for spec in specs for i in range(len(pairs))]
    values = engine.patch(pairs, answers, base, rows, batch_size=16).numpy()
    column = {name: values[:, j] for j, name in enumerate(names)}
    np.testing.assert_allclose(column["kl_from_corrupt"], 0, atol=1e-6)
    np.testing.assert_allclose(column["l2"], 0, atol=1e-4)
    assert column["top1_changed"].sum() == 0


def test_a_run_whose_recovery_is_never_finite_finishes_with_notes(tmp_path, monkeypatch):
    """When no pair has a finite recovery (here every gap counts as vanishing), the tables are
    written and the run finishes: the charts that would be empty are one-line notes, in the
    manifest, the report and the summary, and the other charts are drawn."""
    import json

    from nnpatch.engine import metrics

    monkeypatch.setattr(metrics, "GAP_EPS", float("inf"))
    recipe = write_recipe(
        tmp_path, patch={"mode": "layer", "positions": [0, 1]}, run={"report": "full"}
    )
    results = run_recipe(recipe)
    assert results["recovery"].is_nan().all()
    (folder,) = (tmp_path / "outputs" / "test").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    notes = manifest["report"]["charts_not_drawn"]
    assert notes == [
        "layer_recovery: not drawn (no finite mean recovery at any layer)",
        "heatmap_recovery: not drawn (no finite mean recovery in any cell)",
        "top_recovery: not drawn (no cell has a finite mean recovery)",
    ]
    assert (folder / "charts" / "heatmap_logit_diff.png").is_file()
    assert not (folder / "charts" / "top_recovery.png").exists()
    assert all(note in (folder / "summary.md").read_text() for note in notes)
    assert notes[0] in (folder / "report.html").read_text()


def test_chained_last_equals_layer(tmp_path):
    """`chained` at k = K-1 patches the same cells as `layer`, so the rows are equal."""
    chained = run_recipe(
        write_recipe(tmp_path, name="c", patch={"mode": "chained", "control": "none"})
    )
    layer = run_recipe(write_recipe(tmp_path, name="l", patch={"mode": "layer", "control": "none"}))
    last = chained.filter(pl.col("positions").list.len() == 6)
    for name in METRICS:
        np.testing.assert_allclose(last[name], layer[name], rtol=1e-4, atol=1e-4)


def test_chained_first_equals_single_position_zero(tmp_path):
    """`chained` at k = 0 is `single` at thought 0."""
    chained = run_recipe(
        write_recipe(tmp_path, name="c", patch={"mode": "chained", "control": "none"})
    )
    single = run_recipe(
        write_recipe(
            tmp_path, name="s", patch={"mode": "single", "positions": [0], "control": "none"}
        )
    )
    first = chained.filter(pl.col("positions").list.len() == 1)
    for name in METRICS:
        np.testing.assert_allclose(first[name], single[name], rtol=1e-4, atol=1e-4)


def test_activations_before_the_patched_step_are_untouched():
    """Patching layer 2 at thought 3 leaves every earlier call and lower layer as it was."""
    from nnpatch.engine.trace import Engine

    model = tiny_random_codi("llama")
    pairs = tiny_arithmetic()[:2]
    engine = Engine(model, "resid", "denoise", list(METRICS))
    answers = engine.answers(pairs)
    base = engine.baselines(pairs, answers, [(2, "3")], chunk=2)
    layers = model.module.lm.model.layers

    def record(rows):
        seen: dict[int, list] = {i: [] for i in range(len(layers))}
        hooks = [
            layer.register_forward_hook(lambda m, a, o, i=i: seen[i].append(o.detach().clone()))
            for i, layer in enumerate(layers)
        ]
        try:
            engine.patch(pairs, answers, base, rows, batch_size=8)
        finally:
            for hook in hooks:
                hook.remove()
        return seen

    patched = record([(PatchSpec(2, ("3",)), 1, 1)])
    plain = record([(PatchSpec(2, ()), 1, 1)])
    patched_call = 4  # thought 3 is the 5th call of each layer
    for layer in range(len(layers)):
        for call in range(patched_call):
            torch.testing.assert_close(patched[layer][call], plain[layer][call], rtol=0, atol=0)
    for layer in (0, 1):
        torch.testing.assert_close(
            patched[layer][patched_call], plain[layer][patched_call], rtol=0, atol=0
        )
    assert not torch.equal(patched[3][patched_call], plain[3][patched_call])
    assert not torch.equal(patched[0][patched_call + 1], plain[0][patched_call + 1])


@pytest.mark.parametrize("site", ["resid", "thought"])
def test_shared_prefix_equals_running_it_per_row(tmp_path, monkeypatch, site):
    """Rows of one pair continue from one question pass and the thoughts before the batch's
    earliest patched step, run before the trace: the rows equal those of a run where every
    row's trace runs its whole forward."""
    from nnpatch.models.base import ThoughtModel
    from nnpatch.models.codi import CodiModel

    asks = []
    real_ask = CodiModel.ask

    def counting_ask(self, ids, mask, thoughts=0):
        asks.append((ids.shape[0], thoughts))
        return real_ask(self, ids, mask, thoughts)

    monkeypatch.setattr(CodiModel, "ask", counting_ask)
    recipe = write_recipe(
        tmp_path, patch={"mode": "single", "site": site, "positions": [0, 3, 5]}, data={"limit": 4}
    )
    shared = run_recipe(recipe)
    # batches of 16 rows over 4 pairs: prefixes run once per pair, some up to thought 5
    assert (4, 0) in asks and (4, 5) in asks
    monkeypatch.setattr(ThoughtModel, "shares_question", False)
    asks.clear()
    separate = run_recipe(recipe)
    assert all(thoughts == 0 and rows != 4 for rows, thoughts in asks)
    for name in METRICS:
        np.testing.assert_allclose(shared[name], separate[name], rtol=1e-5, atol=1e-5)


def test_out_of_memory_halves_the_batch_and_keeps_every_row(tmp_path, monkeypatch):
    """A batch too big for the GPU is retried as halves: same rows, same values."""
    from nnpatch.engine.trace import Engine

    recipe = write_recipe(tmp_path, patch={"mode": "single", "positions": [0, 3]})
    whole = run_recipe(recipe)
    real = Engine._patch_batch
    sizes = []

    def small_only(self, pairs, answers, baselines, batch, written):
        if len(batch) > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        sizes.append(len(batch))
        return real(self, pairs, answers, baselines, batch, written)

    monkeypatch.setattr(Engine, "_patch_batch", small_only)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    halved = run_recipe(recipe)
    assert max(sizes) <= 5 and halved.height == whole.height
    for name in METRICS:
        np.testing.assert_allclose(halved[name], whole[name], rtol=1e-5, atol=1e-5)
