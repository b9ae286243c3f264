"""Plain causal LMs: span patching against a per-patch hook reference; span alignment."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner
from helpers import SPAN_PAIRS as PAIRS
from helpers import run_recipe, write_pairs, write_recipe
from reference import SUBMODULES, answer_view, metrics, patcher, recorder

from nnpatch.cli import main
from nnpatch.engine.metrics import METRICS
from nnpatch.models.tiny import tiny_random_lm


def site_module(model, site: str, layer: int):
    decoder, layers, subs = SUBMODULES[model.module.config.model_type]
    block = getattr(getattr(model.module, decoder), layers)[layer]
    return block if site == "resid" else getattr(block, subs[site])


def forward_one(model, question: str, answer: list[int], hooks=()):
    """One unpadded forward of prompt + prefix + answer; logits predicting each answer token."""
    head, span, tail = model.pieces(question)
    prompt = head + span + tail + model.prefix_ids()
    handles = [m.register_forward_hook(h) for m, h in hooks]
    try:
        with torch.no_grad():
            logits = model.module(input_ids=torch.tensor([prompt + answer])).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(answer)].double().numpy(), len(head)


def reference(model, specs, site: str, direction: str, pairs=PAIRS) -> dict:
    rows = {}
    for pair in pairs:
        clean = model.answer_ids(pair["clean_answer"])
        corrupt = model.answer_ids(pair["corrupted_answer"])
        donor_q, receiver_q = pair["clean_question"], pair["corrupted_question"]
        if direction == "noise":
            donor_q, receiver_q = receiver_q, donor_q
        views = {}
        for side in ("clean_question", "corrupted_question"):
            lc, _ = forward_one(model, pair[side], clean)
            lk, _ = forward_one(model, pair[side], corrupt)
            views[side] = answer_view(lc, lk, clean, corrupt)
        receiver_view = views["corrupted_question" if direction == "denoise" else "clean_question"]
        for spec in specs:
            store: list = []
            module = site_module(model, site, spec.layer)
            _, donor_head = forward_one(model, donor_q, clean, [(module, recorder(store))])
            _, receiver_head = forward_one(model, receiver_q, clean)
            patched = []
            for answer in (clean, corrupt):
                # patcher writes one token per call; a plain LM has one call, so chain hooks
                hooks = [
                    (
                        module,
                        patcher({0: (receiver_head + int(p), store[0][:, donor_head + int(p)])}),
                    )
                    for p in spec.positions
                ]
                patched.append(forward_one(model, receiver_q, answer, hooks)[0])
            view = answer_view(*patched, clean, corrupt)
            rows[(pair["id"], spec.layer, spec.positions)] = metrics(
                view, views["clean_question"], views["corrupted_question"], receiver_view
            )
    return rows


@pytest.mark.parametrize(
    ("family", "mode", "site", "direction"),
    [
        ("gpt2", "single", "resid", "denoise"),
        ("gpt2", "layer", "attn", "noise"),
        ("llama", "chained", "mlp", "denoise"),
        ("llama", "single", "attn", "noise"),
    ],
)
def test_span_patching_equals_hook_reference(tmp_path, family, mode, site, direction):
    """Every metric of every row equals one hooked, unpadded forward per patch."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    recipe = write_recipe(
        tmp_path,
        model={"preset": f"tiny-random-{family}"},
        data={"pairs": str(pairs)},
        patch={"mode": mode, "site": site, "direction": direction, "positions": [0, 2, 4]},
        run={"batch_size": 4},
    )
    results = run_recipe(recipe).filter(~pl.col("control"))
    from nnpatch.engine.plan import PatchSpec

    specs = [
        PatchSpec(layer, tuple(p))
        for layer, p in results.select("layer", "positions").unique(maintain_order=True).iter_rows()
    ]
    expected = reference(tiny_random_lm(family), specs, site, direction)
    assert results.height == len(expected)
    for row in results.iter_rows(named=True):
        want = expected[(row["pair_id"], row["layer"], tuple(row["positions"]))]
        for name in METRICS:
            np.testing.assert_allclose(
                row[name],
                want[name],
                rtol=1e-4,
                atol=1e-4,
                err_msg=f"{name} {row['pair_id']} {row['positions']}",
            )


def test_misaligned_spans_are_rejected(tmp_path):
    """A corrupted span with a different token count fails before anything runs."""
    bad = {
        **PAIRS[0],
        "corrupted_question": "Tom has 15 pens. [[15 + 4 = 19]] How many pens?",
        "corrupted_answer": "19",
    }
    pairs = write_pairs(tmp_path / "pairs.jsonl", [bad])
    recipe = write_recipe(
        tmp_path, model={"preset": "tiny-random-gpt2"}, data={"pairs": str(pairs)}
    )
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 2
    assert "data.pairs: pair 'a': the clean span has 5 tokens and the corrupted span 7" in (
        result.output
    )
    assert not (tmp_path / "outputs").exists()


def test_named_positions_and_thought_site_are_rejected(tmp_path):
    """Plain LMs have span token indices, no bot/eot and no thought site."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    for patch, match in [
        ({"mode": "single", "positions": ["bot"]}, "has no position 'bot'"),
        ({"mode": "single", "site": "thought"}, "has no site 'thought'"),
        ({"mode": "single", "positions": [15]}, "span token position 15"),  # longest: 15
    ]:
        recipe = write_recipe(
            tmp_path, model={"preset": "tiny-random-gpt2"}, data={"pairs": str(pairs)}, patch=patch
        )
        result = CliRunner().invoke(main, ["run", str(recipe)])
        assert result.exit_code == 2 and match in result.output, result.output


def test_checkpoint_folder_loads_like_the_preset(tmp_path):
    """kind = causal_lm loads a saved folder; the same sweep gives the same rows."""
    model = tiny_random_lm("gpt2")
    model.module.save_pretrained(tmp_path / "lm")
    model.tokenizer.save_pretrained(tmp_path / "lm")
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    common = {"data": {"pairs": str(pairs)}, "patch": {"mode": "layer"}}
    from_folder = run_recipe(
        write_recipe(
            tmp_path,
            name="folder",
            **common,
            model={"kind": "causal_lm", "checkpoint": str(tmp_path / "lm")},
        )
    )
    from_preset = run_recipe(
        write_recipe(tmp_path, name="preset", **common, model={"preset": "tiny-random-gpt2"})
    )
    np.testing.assert_allclose(from_folder["logit_diff"], from_preset["logit_diff"], atol=1e-6)


def test_checkpoint_with_missing_weights_fails(tmp_path):
    """A folder whose weights lack a tensor the config needs is an error naming it."""
    from safetensors.torch import load_file, save_file

    from nnpatch.errors import ModelError
    from nnpatch.models.causal_lm import load_causal_lm
    from nnpatch.recipe import ModelSection

    model = tiny_random_lm("gpt2")
    model.module.save_pretrained(tmp_path / "lm")
    model.tokenizer.save_pretrained(tmp_path / "lm")
    path = tmp_path / "lm" / "model.safetensors"
    state = load_file(str(path))
    del state["transformer.h.1.mlp.c_fc.weight"]
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"missing keys \['transformer.h.1.mlp.c_fc.weight'\]"):
        load_causal_lm(ModelSection(kind="causal_lm", checkpoint=str(tmp_path / "lm")))


def test_prompt_without_markers_is_one_span(tmp_path):
    """No markers: positions are plain token indices of the whole prompt."""
    model = tiny_random_lm("gpt2")
    head, span, tail = model.pieces("Tom has 3 pens.")
    assert head == model.tokenizer("").input_ids  # only the BOS, where the tokenizer adds one
    assert (
        tail == []
        and span == model.tokenizer("Tom has 3 pens.", add_special_tokens=False).input_ids
    )
    rows = [
        {
            **p,
            "clean_question": p["clean_question"].replace("[[", "").replace("]]", ""),
            "corrupted_question": p["corrupted_question"].replace("[[", "").replace("]]", ""),
        }
        for p in PAIRS[:1]
    ]
    pairs = write_pairs(tmp_path / "pairs.jsonl", rows)
    results = run_recipe(
        write_recipe(
            tmp_path,
            model={"preset": "tiny-random-gpt2"},
            data={"pairs": str(pairs)},
            patch={"mode": "single", "positions": [2], "layers": [0]},
        )
    )
    assert results.height == 1 and results["logit_diff"].is_finite().all()


def test_positions_run_to_the_longest_span_and_rows_past_a_span_are_left_out(tmp_path):
    """Spans of 5, 15 and 6 tokens: `positions = "all"` is 0..14; each pair has rows only
    inside its own span (and its control donor's), counted on screen; the rows inside equal
    the hook reference, so nothing is patched at a token outside a span."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    recipe = write_recipe(
        tmp_path,
        model={"preset": "tiny-random-gpt2"},
        data={"pairs": str(pairs)},
        patch={"mode": "single", "layers": [0]},
    )
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert (
        "note: spans differ in length (5 to 15 tokens): 19 of 45 patched rows lie past their "
        "pair's span and are left out"
    ) in result.output
    (folder,) = (tmp_path / "outputs" / "test").iterdir()
    results = pl.read_parquet(folder / "results.parquet")
    spans = dict(
        pl.read_parquet(folder / "baselines.parquet").select("pair_id", "span_tokens").iter_rows()
    )
    assert spans == {"a": 5, "b": 15, "c": 6}
    ids = {p["id"] for p in PAIRS}
    for row in results.iter_rows(named=True):
        assert int(row["position"]) < min(spans[row["pair_id"]], spans[row["donor_id"]])
        assert row["pair_id"] in ids
    real = results.filter(~pl.col("control"))
    assert real.height == 5 + 15 + 6
    n = dict(
        pl.read_parquet(folder / "summary.parquet")
        .filter(pl.col("metric") == "logit_diff")
        .select("position", "n")
        .iter_rows()
    )
    assert (n["4"], n["5"], n["14"]) == (3, 2, 1)
    from nnpatch.engine.plan import PatchSpec

    long_pair = [p for p in PAIRS if p["id"] == "b"]
    specs = [PatchSpec(0, (str(t),)) for t in (5, 10, 14)]
    expected = reference(tiny_random_lm("gpt2"), specs, "resid", "denoise", long_pair)
    for spec in specs:
        row = real.filter((pl.col("pair_id") == "b") & (pl.col("position") == spec.positions[0]))
        want = expected[("b", 0, spec.positions)]
        for name in METRICS:
            np.testing.assert_allclose(row[name][0], want[name], rtol=1e-4, atol=1e-4)


def test_rows_record_the_patched_span_token(tmp_path):
    """token_index is the token's index in the receiver's prompt, token its text."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    recipe = write_recipe(
        tmp_path,
        model={"preset": "tiny-random-gpt2"},
        data={"pairs": str(pairs)},
        patch={"mode": "single", "layers": [1], "positions": [0, 2, 4], "control": "none"},
    )
    results = run_recipe(recipe)
    model = tiny_random_lm("gpt2")
    by_id = {p["id"]: p for p in PAIRS}
    for row in results.iter_rows(named=True):
        head, span, _ = model.pieces(by_id[row["pair_id"]]["corrupted_question"])
        t = int(row["position"])
        assert row["token_index"] == len(head) + t
        assert row["token"] == model.tokenizer.decode([span[t]])
    assert set(results.filter(pl.col("pair_id") == "a")["token"]) == {"5", "4", "9"}


def test_an_empty_answer_prefix_means_none(tmp_path):
    """answer_prefix = "" is no prefix (the answer follows the prompt), not the default; the
    rows equal the hook reference run with no prefix."""
    model = tiny_random_lm("gpt2", answer_prefix="")
    assert model.prefix_ids() == [] and tiny_random_lm("gpt2").prefix_ids() != []
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    recipe = write_recipe(
        tmp_path,
        model={"preset": "tiny-random-gpt2", "answer_prefix": ""},
        data={"pairs": str(pairs)},
        patch={"mode": "single", "layers": [0], "positions": [1, 3], "control": "none"},
    )
    results = run_recipe(recipe)
    from nnpatch.engine.plan import PatchSpec

    specs = [PatchSpec(0, ("1",)), PatchSpec(0, ("3",))]
    expected = reference(model, specs, "resid", "denoise")
    for row in results.iter_rows(named=True):
        want = expected[(row["pair_id"], 0, tuple(row["positions"]))]
        for name in METRICS:
            np.testing.assert_allclose(row[name], want[name], rtol=1e-4, atol=1e-4)


def plain_activation(model, question: str, site: str, layer: int, t: int, head=None):
    """A span token's activation (a head's slice) from one unpadded hooked forward."""
    from reference import head_module, head_slice, input_recorder

    store: list = []
    head_ids, span, tail = model.pieces(question)
    if site == "head":
        handle = head_module(model, layer).register_forward_pre_hook(input_recorder(store))
    else:
        handle = site_module(model, site, layer).register_forward_hook(recorder(store))
    try:
        with torch.no_grad():
            model.module(input_ids=torch.tensor([head_ids + span + tail]))
    finally:
        handle.remove()
    value = store[0][0, len(head_ids) + t]
    return value if head is None else value[head_slice(model, head)]


def plain_source_reference(model, specs, site, source, scale=1.0, seed=0) -> dict:
    """Each row from the source's definition and one hooked forward per patch (pre-hook on
    the output projection for a head)."""
    from reference import head_module, head_slice, input_patcher

    from nnpatch.engine.sources import random_direction
    from nnpatch.pairs.loaders import _pair_from_row

    pairs = [_pair_from_row(p, "test") for p in PAIRS]
    rows = {}
    for i, pair in enumerate(pairs):
        clean, corrupt = (
            model.answer_ids(pair.clean_answer),
            model.answer_ids(pair.corrupted_answer),
        )
        views = {}
        for side in ("clean_question", "corrupted_question"):
            lc, _ = forward_one(model, getattr(pair, side), clean)
            lk, _ = forward_one(model, getattr(pair, side), corrupt)
            views[side] = answer_view(lc, lk, clean, corrupt)
        for spec in specs:
            t = int(spec.positions[0])

            def act(p, side, spec=spec, t=t):
                return plain_activation(
                    model, getattr(p, side), site, spec.layer, t, spec.head
                ).double()

            own = act(pair, "corrupted_question")
            if source == "mean":
                vector = torch.stack(
                    [act(p, "clean_question") for j, p in enumerate(pairs) if j != i]
                ).mean(0)
            elif source == "steer":
                shift = torch.stack(
                    [act(p, "clean_question") - act(p, "corrupted_question") for p in pairs]
                ).mean(0)
                vector = own + scale * shift
            else:
                key = (spec.layer, str(t)) if spec.head is None else (spec.layer, str(t), spec.head)
                vector = random_direction(seed, i, key, own.shape[-1]).double() * own.norm()
            head_ids, _, _ = model.pieces(pair.corrupted_question)
            token = len(head_ids) + t
            patched = []
            for answer in (clean, corrupt):
                if site == "head":
                    hook = input_patcher(
                        {0: [(token, head_slice(model, spec.head), vector.float())]}
                    )
                    hooks = [(head_module(model, spec.layer), None, hook)]
                else:
                    hooks = [
                        (
                            site_module(model, site, spec.layer),
                            patcher({0: (token, vector.float())}),
                            None,
                        )
                    ]
                handles = [
                    m.register_forward_hook(h) if h else m.register_forward_pre_hook(pre)
                    for m, h, pre in hooks
                ]
                try:
                    patched.append(forward_one(model, pair.corrupted_question, answer)[0])
                finally:
                    for handle in handles:
                        handle.remove()
            view = answer_view(*patched, clean, corrupt)
            rows[(pair.id, spec.layer, spec.head, spec.positions)] = metrics(
                view,
                views["clean_question"],
                views["corrupted_question"],
                views["corrupted_question"],
            )
    return rows


@pytest.mark.parametrize(
    ("family", "site", "source"),
    [
        ("gpt2", "resid", "mean"),
        ("llama", "mlp", "random"),
        ("gpt2", "attn", "steer"),
        ("llama", "head", "mean"),
        ("gpt2", "head", "random"),
    ],
)
def test_sources_and_heads_equal_the_hook_reference(tmp_path, family, site, source):
    """A plain causal LM (GPT-2, Llama with grouped-query attention) under every kind of
    source and on one head: every metric equals one hooked forward per patch."""
    from nnpatch.engine.plan import PatchSpec

    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    patch = {"mode": "single", "site": site, "source": source, "layers": [1], "positions": [0, 3]}
    if site == "head":
        patch["heads"] = [1]
    if source == "steer":
        patch["scale"] = 2.0
    recipe = write_recipe(
        tmp_path, model={"preset": f"tiny-random-{family}"}, data={"pairs": str(pairs)}, patch=patch
    )
    results = run_recipe(recipe).filter(~pl.col("control"))
    head = 1 if site == "head" else None
    specs = [PatchSpec(1, ("0",), head), PatchSpec(1, ("3",), head)]
    expected = plain_source_reference(tiny_random_lm(family), specs, site, source, 2.0)
    assert results.height == len(expected)
    for row in results.iter_rows(named=True):
        want = expected[(row["pair_id"], row["layer"], row["head"], tuple(row["positions"]))]
        for name in METRICS:
            np.testing.assert_allclose(row[name], want[name], rtol=1e-4, atol=1e-4, err_msg=name)
