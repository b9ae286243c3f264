"""Attribution patching: exact where the metric is linear in the patched activation,
first-order correct through the recurrent thought loop, and verified in the same run."""

from __future__ import annotations

import json

import polars as pl
import torch
from helpers import write_recipe

from nnpatch.engine.gradients import estimate
from nnpatch.engine.plan import PatchSpec
from nnpatch.engine.trace import Engine
from nnpatch.models.presets import PRESETS
from nnpatch.models.tiny import tiny_random_lm
from nnpatch.pairs import Pair
from nnpatch.pairs.builtin import BUILTIN, tiny_arithmetic
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare

LINEAR = ["logit_diff", "recovery"]


def _sweep(engine, pairs, specs, base):
    answers = engine.answers(pairs)
    est = estimate(engine, pairs, answers, base, specs, chunk=3)
    rows = [(spec, i, i) for spec in specs for i in range(len(pairs))]
    exact = engine.patch(pairs, answers, base, rows, batch_size=16)
    return est, exact


def test_estimate_equals_exact_where_the_metric_is_linear():
    """Last layer of a GPT-2 without its final norm, span ending where the answer is read:
    the logit difference is linear in every patched activation, so estimate == exact."""
    model = tiny_random_lm("gpt2")
    model.answer_prefix = ""
    model.module.transformer.ln_f = torch.nn.Identity()
    pairs = [
        Pair(
            f"p{a}",
            f"Ann has {a} eggs . [[she buys {b} more]]",
            str((a + b) % 10),
            f"Ann has {a} eggs . [[she buys {c} more]]",
            str((a + c) % 10),
        )
        for a, b, c in [(3, 4, 6), (2, 5, 1), (7, 1, 2), (4, 4, 8)]
    ]
    model.bind_pairs(pairs)
    engine = Engine(model, "resid", "denoise", LINEAR)
    last = model.num_layers - 1
    specs = [PatchSpec(layer, (str(t),)) for layer in (0, last) for t in range(4)]
    cells = [(s.layer, s.positions[0]) for s in specs]
    base = engine.baselines(pairs, engine.answers(pairs), cells, chunk=4)
    est, exact = _sweep(engine, pairs, specs, base)
    linear = slice(4 * len(pairs), None)  # the last layer's rows
    torch.testing.assert_close(est[linear], exact[linear], rtol=1e-4, atol=1e-4)
    assert exact[linear, 0].std() > 0.1  # the cells do move the answer
    assert not torch.allclose(est[: 4 * len(pairs)], exact[: 4 * len(pairs)], atol=1e-3)


def test_estimate_is_first_order_through_the_thought_loop():
    """CODI, every layer and thought: with donors moved a fraction eps of the way from the
    receiver's activations, estimate - exact shrinks like eps² while the effect shrinks like
    eps (the gradient through all later thought steps is right)."""
    model = PRESETS["tiny-random-codi"]()
    pairs = tiny_arithmetic()[:4]
    specs = [PatchSpec(layer, (str(t),)) for layer in range(model.num_layers) for t in (0, 2, 5)]
    cells = [(s.layer, s.positions[0]) for s in specs]
    engine = Engine(model, "resid", "denoise", LINEAR)
    answers = engine.answers(pairs)
    clean = engine.baselines(pairs, answers, cells, chunk=4)
    own = Engine(model, "resid", "noise", LINEAR).baselines(pairs, answers, cells, chunk=4)
    unpatched = clean.corrupt_metrics[:, 0].repeat(len(specs))
    errors, effects = [], []
    for eps in (0.1, 0.01):
        clean.donor = {k: own.donor[k] + eps * (clean.donor[k] - own.donor[k]) for k in cells}
        est, exact = _sweep(engine, pairs, specs, clean)
        errors.append((est[:, 0] - exact[:, 0]).norm().item())
        effects.append((exact[:, 0] - unpatched).norm().item())
    assert effects[1] > 0 and errors[1] < 0.02 * effects[1]
    assert errors[1] < errors[0] / 30  # quadratic (1/100), with room for float32 noise


def test_attribution_run_estimates_every_cell_and_verifies_the_top(tmp_path):
    recipe = write_recipe(
        tmp_path,
        patch={"mode": "attribution", "verify_top": 3},
        metrics={"names": ["recovery", "logit_diff", "kl_to_clean"]},
        data={"limit": 4},
        run={"report": "full"},
    )
    finished = execute(prepare(recipe))
    results = pl.read_parquet(finished.path / "results.parquet")
    estimates = results.filter(pl.col("estimate"))
    exact = results.filter(~pl.col("estimate"))
    assert estimates.height == 4 * 6 * 4 and set(estimates["mode"]) == {"attribution"}
    assert exact.height == 3 * 4 and set(exact["mode"]) == {"single"}
    assert estimates["kl_to_clean"].is_nan().all()  # no first-order estimate for a KL
    assert not exact["kl_to_clean"].is_nan().any()
    # the verified cells are the largest estimated effects
    means = estimates.group_by("layer", "position").agg(pl.col("recovery").mean().abs())
    top = means.sort("recovery", descending=True).head(3)
    assert set(top.select("layer", "position").iter_rows()) == set(
        exact.select("layer", "position").unique().iter_rows()
    )
    summary = pl.read_parquet(finished.path / "summary.parquet")
    assert set(summary["mode"]) == {"attribution", "single"}
    assert (finished.path / "charts" / "estimate_vs_exact_recovery.png").exists()
    assert "estimate" in (finished.path / "summary.md").read_text()
    manifest = json.loads((finished.path / "manifest.json").read_text())
    assert manifest["status"] == "finished"


def linear_codi():
    """A tiny CODI-Llama in which the answer's logit difference is linear in every cell:
    no queries (uniform attention, a mean of the values), no MLPs, no norms, the identity
    for prj. Patching and both estimators must then agree."""
    from nnpatch.models.tiny import tiny_random_codi

    model = tiny_random_codi("llama")
    lm = model.module.lm
    with torch.no_grad():
        for layer in lm.model.layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
            layer.input_layernorm = torch.nn.Identity()
            layer.post_attention_layernorm = torch.nn.Identity()
    lm.model.norm = torch.nn.Identity()
    model.module.prj = torch.nn.Identity()
    return model


def test_ig_equals_exact_and_atp_where_the_metric_is_linear():
    model = linear_codi()
    pairs = tiny_arithmetic()[:4]
    engine = Engine(model, "resid", "denoise", LINEAR)
    answers = engine.answers(pairs)
    specs = [PatchSpec(layer, (p,)) for layer in (0, 2) for p in ("bot", "1", "4")]
    base = engine.baselines(pairs, answers, [(s.layer, s.positions[0]) for s in specs], chunk=4)
    rows = [(spec, i, i) for spec in specs for i in range(len(pairs))]
    exact = engine.patch(pairs, answers, base, rows, batch_size=16)
    assert (exact[:, 0] - base.corrupt_metrics[:, 0].repeat(len(specs))).abs().max() > 1e-3
    for steps in (1, 4):
        est = estimate(engine, pairs, answers, base, specs, chunk=4, steps=steps)
        torch.testing.assert_close(est, exact, rtol=1e-4, atol=1e-4)


def median_error(est: torch.Tensor, exact: torch.Tensor, cells: int) -> float:
    """The median over cells with |exact mean| >= 0.1 of |estimate - exact| / |exact|."""
    e, x = (v[:, 0].reshape(cells, -1).mean(1) for v in (est, exact))
    big = x.abs() >= 0.1
    return float(((e[big] - x[big]).abs() / x[big].abs()).median())


def test_the_error_of_ig_falls_as_its_steps_grow_on_the_embedded_model():
    """recovery on toy-codi's resid cells: one step (atp), then 4 and 32 points on the path
    from the corrupted question to the clean one."""
    model = PRESETS["toy-codi"]()
    pairs = BUILTIN["toy-arithmetic"]()[:16]
    engine = Engine(model, "resid", "denoise", ["recovery"])
    answers = engine.answers(pairs)
    specs = [PatchSpec(layer, (p,)) for layer in range(3) for p in ("0", "1", "2")]
    base = engine.baselines(pairs, answers, [(s.layer, s.positions[0]) for s in specs], chunk=16)
    rows = [(spec, i, i) for spec in specs for i in range(len(pairs))]
    exact = engine.patch(pairs, answers, base, rows, batch_size=64)
    errors = [
        median_error(estimate(engine, pairs, answers, base, specs, 16, steps), exact, len(specs))
        for steps in (1, 4, 32)
    ]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[0] > 0.8 and errors[2] < 0.6, errors  # atp is far off; 32 steps halve it


def test_one_ig_step_is_atp_and_rows_say_which_estimator_made_them(tmp_path):
    """estimator = "ig" with ig_steps = 1 gives atp's rows; rows carry `estimator`; a pair
    whose questions differ in token count keeps atp, and the manifest says how many."""
    from helpers import write_pairs

    from nnpatch.engine.gradients import unaligned_pairs
    from nnpatch.models.tiny import tiny_random_codi

    patch = {"mode": "attribution", "layers": [1], "positions": [0, 3], "verify_top": 0}
    atp = execute(prepare(write_recipe(tmp_path, name="atp", patch=patch))).results
    one = {**patch, "estimator": "ig", "ig_steps": 1}
    ig = execute(prepare(write_recipe(tmp_path, name="ig1", patch=one))).results
    assert atp.drop("estimator").equals(ig.drop("estimator"))
    assert set(atp["estimator"]) == {"atp"}
    model = tiny_random_codi("llama")
    pairs = tiny_arithmetic()
    even = [p for p in pairs if p.id not in unaligned_pairs(model, pairs)][:2]
    rows = [
        {k: v for k, v in p.__dict__.items() if k in Pair.__dataclass_fields__ and v} for p in even
    ]
    rows[1]["corrupted_question"] = rows[1]["clean_question"] + " and 12345 more"
    path = write_pairs(tmp_path / "uneven.jsonl", rows)
    recipe = write_recipe(
        tmp_path,
        name="uneven",
        data={"pairs": str(path)},
        patch={**patch, "estimator": "ig", "ig_steps": 3},
    )
    finished = execute(prepare(recipe))
    by_pair = dict(finished.results.select("pair_id", "estimator").unique().iter_rows())
    assert by_pair == {rows[0]["id"]: "ig", rows[1]["id"]: "atp"}
    notes = json.loads((finished.path / "manifest.json").read_text())["notes"]
    assert any("1 of 2 pairs" in note and "are atp" in note for note in notes), notes
