"""The attention mode against eager attention's own weights in plain hooked forwards, its
padding, its scoped switch of the attention implementation, and the shipped recipe."""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import pytest
import torch
from helpers import ROOT, SPAN_PAIRS, write_pairs, write_recipe
from reference import answer_ids, run_one

from nnpatch.engine.attention import eager_attention
from nnpatch.errors import RecipeError
from nnpatch.pairs.builtin import tiny_arithmetic
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare

KEYS = ["pair_id", "run", "layer", "query"]


def run_attention(recipe, implementation: str | None = None, overrides=()):
    """Run a recipe, the model's attention first set to `implementation`; the run's model
    and its results."""
    prep = prepare(recipe, list(overrides))
    if implementation is not None:
        prep.model.lm.config._attn_implementation = implementation
    finished = execute(prep)
    return prep.model, pl.read_parquet(finished.path / "results.parquet")


def implementations(lm) -> set[str]:
    """The attention implementation of every config inside the model."""
    return {m.config._attn_implementation for m in lm.modules() if hasattr(m, "config")}


def eager_copy(module: torch.nn.Module) -> torch.nn.Module:
    """An independent copy of a module, its language model on eager attention."""
    copied = copy.deepcopy(module)
    lm = getattr(copied, "lm", copied)
    lm.config._attn_implementation = "eager"
    return copied


def attention_modules(lm) -> list[torch.nn.Module]:
    if lm.config.model_type == "llama":
        return [layer.self_attn for layer in lm.model.layers]
    return [block.attn for block in lm.transformer.h]


def codi_reference(model, question: str, clean, corrupt) -> tuple[list[list[torch.Tensor]], int]:
    """Eager attention's own weights (the attention modules' second output) of one unpadded
    recurrent forward: per layer, per call, [heads, queries, keys]; and the question length
    (question tokens + bot)."""
    reference = eager_copy(model)  # the ThoughtModel, tokenizer and all
    stores: list[list[torch.Tensor]] = [[] for _ in range(model.num_layers)]

    def recorder(store):
        def hook(module, args, output):
            store.append(output[1][0].detach().clone())

        return hook

    hooks = [
        (module, recorder(stores[layer]))
        for layer, module in enumerate(attention_modules(reference.module.lm))
    ]
    run_one(reference, question, clean, corrupt, hooks)
    return stores, len(model.question_ids(question))


def codi_query(label: str, width: int, thoughts: int, prefix: int) -> tuple[int, int, int]:
    """(call, query column in that call, index in the sequence), from DESIGN.md's layout:
    question + bot in call 0, thought t in call t + 1, eot + prefix + answer in call K + 1;
    the answer position is the last prefix token."""
    if label == "bot":
        return 0, width - 1, width - 1
    if label.isdigit():
        return int(label) + 1, 0, width + int(label)
    column = 0 if label == "eot" else prefix
    return thoughts + 1, column, width + thoughts + column


def check_against_hooks(
    model, results: pl.DataFrame, pairs, queries: set[str], atol: float = 1e-5
) -> None:
    """Every (pair, run, layer, head, query) of `results` against eager attention's weights in
    one unpadded hooked forward of the run's question, within `atol`; keys are exactly
    0..query in sequence order, and a run has each of `queries` it thinks far enough for."""
    P = len(model.prefix_ids())
    for pair in pairs:
        clean, corrupt = (
            answer_ids(model, pair.clean_answer),
            answer_ids(model, pair.corrupted_answer),
        )
        for run in ("clean", "corrupted"):
            question = pair.clean_question if run == "clean" else pair.corrupted_question
            K = len(model.thoughts_of([question])[0]) if hasattr(model, "thoughts_of") else None
            K = model.num_thoughts if K is None else K
            stores, width = codi_reference(model, question, clean, corrupt)
            own = results.filter((pl.col("pair_id") == pair.id) & (pl.col("run") == run))
            assert set(own["query"]) == {q for q in queries if not q.isdigit() or int(q) < K}
            assert own["layer"].n_unique() == model.num_layers
            for (layer, query), rows in own.group_by(["layer", "query"]):
                call, column, index = codi_query(query, width, K, P)
                rows = rows.sort("head", "key_index")
                heads = rows["head"].unique().sort().to_list()
                got = rows["weight"].to_numpy().reshape(len(heads), -1)
                assert rows.filter(pl.col("head") == 0)["key_index"].to_list() == list(
                    range(index + 1)
                )
                expected = stores[layer][call][heads, column, : index + 1].numpy()
                np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("preset", ["tiny-random-codi", "tiny-random-codi-gpt2"])
def test_codi_weights_equal_eager_attention_in_hooked_forwards(
    tmp_path, request, preset, implementation
):
    """Every (pair, run, layer, head, query, key) of a left-padded batch (3 pairs, both runs,
    one trace) equals the weights eager attention returns in one unpadded hooked forward per
    question, within 1e-5, whichever implementation the model runs (Llama with 4 query heads
    on 2 key/value heads, GPT-2)."""
    model = request.getfixturevalue("llama" if preset == "tiny-random-codi" else "gpt2")
    queries = ["bot", 0, 3, 5, "eot", "answer"]
    recipe = write_recipe(
        tmp_path, model={"preset": preset}, patch={"mode": "attention", "queries": queries}
    )
    _, results = run_attention(recipe, implementation)
    check_against_hooks(model, results, tiny_arithmetic()[:3], set(map(str, queries)))


def test_per_question_thought_counts_equal_hooked_forwards(tmp_path):
    """CoLaR thinks as many latents as each question needs (18 and 11 in one pair, 64 in the
    others): in one batch, each run's keys are its own latents (the batch's later, masked
    ones never appear), eot follows them, and the weights equal a hooked forward of that
    question alone, within 1e-5."""
    colar = ROOT / "tests" / "golden" / "colar"
    model = {
        "kind": "colar",
        "base": str(colar / "models" / "llms" / "Llama-3.2-1B-Instruct"),
        "checkpoint": str(colar),
    }
    queries = [0, 12, 15, "eot", "answer"]
    recipe = write_recipe(
        tmp_path,
        model=model,
        data={"limit": 4},
        patch={"mode": "attention", "queries": queries},
    )
    built, results = run_attention(recipe)
    pairs = tiny_arithmetic()[:4]
    counts = built.count([pairs[3].clean_question, pairs[3].corrupted_question])
    assert counts[0] != counts[1] and max(counts) < built.module.num_thoughts
    check_against_hooks(built, results, pairs, set(map(str, queries)), atol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_plain_lm_weights_equal_output_attentions(tmp_path, family):
    """A plain LM's span tokens and answer position, left-padded and batched, equal
    `output_attentions=True` of an eager copy on each unpadded prompt, within 1e-5."""
    from nnpatch.models.tiny import tiny_random_lm

    pairs_file = write_pairs(tmp_path / "pairs.jsonl", SPAN_PAIRS)
    recipe = write_recipe(
        tmp_path,
        model={"preset": f"tiny-random-{family}"},
        data={"pairs": str(pairs_file)},
        patch={"mode": "attention", "queries": [0, 2, "answer"]},
    )
    _, results = run_attention(recipe)
    model = tiny_random_lm(family)
    reference = eager_copy(model.module)
    for pair in SPAN_PAIRS:
        for run in ("clean", "corrupted"):
            head, span, tail = model.pieces(pair[f"{run}_question"])
            prompt = head + span + tail + model.prefix_ids()
            with torch.no_grad():
                out = reference(input_ids=torch.tensor([prompt]), output_attentions=True)
            own = results.filter((pl.col("pair_id") == pair["id"]) & (pl.col("run") == run))
            assert set(own["query"]) == {"0", "2", "answer"}
            for (layer, query), rows in own.group_by(["layer", "query"]):
                index = len(prompt) - 1 if query == "answer" else len(head) + int(query)
                rows = rows.sort("head", "key_index")
                got = rows["weight"].to_numpy().reshape(model.num_heads, -1)
                expected = out.attentions[layer][0, :, index, : index + 1].numpy()
                np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
                span_keys = rows.filter((pl.col("head") == 0) & (pl.col("key_kind") == "span"))
                assert span_keys["key"].to_list() == [str(t) for t in range(len(span_keys))]


def test_probabilities_over_real_keys_sum_to_one(tmp_path):
    """Over the keys each query lists (padding, masked and later tokens never among them),
    the weights of every (pair, run, layer, head, query) sum to 1."""
    recipe = write_recipe(tmp_path, data={"limit": 6}, patch={"mode": "attention"})
    _, results = run_attention(recipe)
    sums = results.group_by([*KEYS, "head"]).agg(
        pl.col("weight").cast(pl.Float64).sum(),
        pl.len().alias("keys"),
        (pl.col("query_index").first() + 1).alias("expected"),
    )
    np.testing.assert_allclose(sums["weight"].to_numpy(), 1.0, atol=1e-5)
    assert (sums["keys"] == sums["expected"]).all()
    assert results.filter(pl.col("key_kind") == "question")["key"].str.starts_with("q").all()


def test_left_padded_batch_equals_one_by_one(tmp_path):
    """6 pairs of different question lengths, both runs in one left-padded trace, give the
    clean runs' weights of one question per trace (batch of one row), within 1e-6."""
    patch = {"mode": "attention", "layers": [0, 3]}
    batched = write_recipe(tmp_path, "batched", data={"limit": 6}, patch=patch)
    single = write_recipe(
        tmp_path,
        "single",
        data={"limit": 6},
        patch={**patch, "runs": ["clean"]},
        run={"batch_size": 1, "output": str(tmp_path / "outputs"), "report": "none"},
    )
    _, together = run_attention(batched)
    _, alone = run_attention(single)
    lengths = together.filter(pl.col("query") == "eot")["query_index"].unique()
    assert lengths.len() > 1  # the batch was padded
    order = [*KEYS, "head", "key_index"]
    clean = together.filter(pl.col("run") == "clean").sort(order)
    alone = alone.sort(order)
    assert clean.drop("weight").equals(alone.drop("weight"))
    np.testing.assert_allclose(clean["weight"].to_numpy(), alone["weight"].to_numpy(), atol=1e-6)


def test_one_traced_forward_per_chunk_of_pairs(tmp_path, monkeypatch):
    """6 pairs at batch 4: 3 attention forwards (2 pairs, both runs, each), every pair in
    the table."""
    from nnpatch.engine import attention

    forwards = []
    real = attention.read

    def counting(model, traced, encoded, rows, layers, heads):
        forwards.append(len(rows))
        return real(model, traced, encoded, rows, layers, heads)

    monkeypatch.setattr(attention, "read", counting)
    recipe = write_recipe(
        tmp_path,
        data={"limit": 6},
        patch={"mode": "attention", "layers": [0]},
        run={"batch_size": 4, "output": str(tmp_path / "outputs"), "report": "none"},
    )
    _, results = run_attention(recipe)
    assert forwards == [4, 4, 4]
    assert results.select("pair_id", "run").unique().height == 12


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_attention_implementation_is_the_users_after_a_run(tmp_path, implementation):
    """The model runs the user's implementation after an attention run, every config of it."""
    recipe = write_recipe(tmp_path, patch={"mode": "attention", "layers": [0]})
    model, _ = run_attention(recipe, implementation)
    assert implementations(model.lm) == {implementation}


def test_the_eager_switch_is_undone_when_the_forward_fails(llama):
    """Inside `eager_attention` every config is eager; leaving it by an error restores each."""
    lm = copy.deepcopy(llama.lm)
    with pytest.raises(RuntimeError, match="stop"), eager_attention(lm):
        assert implementations(lm) == {"eager"}
        raise RuntimeError("stop")
    assert implementations(lm) == {"sdpa"}


def test_heads_subset_reads_those_heads(tmp_path):
    """heads = [1, 3] gives exactly those heads' rows, equal to the same heads of "all"."""
    patch = {"mode": "attention", "layers": [1], "queries": ["answer"]}
    _, every = run_attention(write_recipe(tmp_path, "every", patch=patch))
    _, some = run_attention(write_recipe(tmp_path, "some", patch={**patch, "heads": [1, 3]}))
    assert set(some["head"]) == {1, 3}
    order = [*KEYS, "head", "key_index"]
    assert some.sort(order).equals(every.filter(pl.col("head").is_in([1, 3])).sort(order))


@pytest.mark.parametrize(
    ("model", "patch", "match"),
    [
        ({}, {"heads": [4]}, r"patch\.heads: head 4 is out of range .*heads 0\.\.3"),
        ({}, {"queries": [6]}, r"patch\.queries: thought position 6 is out of range"),
        ({"preset": "tiny-random-gpt2"}, {"queries": ["eot"]}, r"patch\.queries: .*no position"),
    ],
)
def test_bad_fields_are_one_line(tmp_path, model, patch, match):
    """A head or query the model lacks is refused in one line naming the field."""
    data = {"pairs": str(write_pairs(tmp_path / "spans.jsonl", SPAN_PAIRS))} if model else {}
    recipe = write_recipe(
        tmp_path,
        model=model or {"preset": "tiny-random-codi"},
        data=data,
        patch={"mode": "attention", **patch},
    )
    with pytest.raises(RecipeError, match=match) as err:
        prepare(recipe)
    assert "\n" not in str(err.value)


def test_a_table_over_max_rows_is_refused_before_it_runs(tmp_path):
    """The long table's row count is checked against run.max_rows before anything runs."""
    recipe = write_recipe(
        tmp_path,
        patch={"mode": "attention"},
        run={"max_rows": 1000, "output": str(tmp_path / "outputs")},
    )
    with pytest.raises(RecipeError, match=r"run\.max_rows: the attention table would have"):
        prepare(recipe)
    assert not (tmp_path / "outputs").exists()


def test_remote_runs_are_refused(tmp_path):
    """NDIF cannot switch a hosted model's attention: one line, before any model is built."""
    pairs = write_pairs(tmp_path / "spans.jsonl", SPAN_PAIRS)
    recipe = write_recipe(
        tmp_path,
        model={"preset": "tiny-random-gpt2"},
        data={"pairs": str(pairs)},
        patch={"mode": "attention"},
        run={"remote": "local", "output": str(tmp_path / "outputs")},
    )
    with pytest.raises(RecipeError, match=r"patch\.mode: it reads attention probabilities"):
        prepare(recipe)


def test_pccot_is_refused_with_its_reason(tmp_path):
    """PCCoT's parallel slots have no sequential layout to read: refused in one line."""
    golden = ROOT / "tests" / "golden" / "pccot"
    model = {
        "kind": "pccot",
        "base": str(golden / "gpt2"),
        "checkpoint": str(golden / "whyNLP" / "pccot-gpt2"),
    }
    recipe = write_recipe(tmp_path, model=model, patch={"mode": "attention"})
    with pytest.raises(RecipeError, match=r"attention does not apply to .*slots attend"):
        prepare(recipe)


def test_shipped_recipe_runs_on_the_embedded_model(tmp_path):
    """recipes/attention.toml runs end to end on toy-codi (4 pairs): every query's table, a
    summary whose kind totals sum to 1 per (layer, query), both charts per query and the
    report section."""
    prep = prepare(
        ROOT / "recipes" / "attention.toml",
        ["data.limit=4", 'run.report="html"'],
        output=tmp_path / "outputs",
    )
    finished = execute(prep)
    assert finished.report == {"charts_not_drawn": []}
    results = pl.read_parquet(finished.path / "results.parquet")
    assert set(results["query"]) == {"0", "1", "2", "eot", "answer"}
    assert results["pair_id"].n_unique() == 4 and not results["nonfinite"].any()
    summary = pl.read_parquet(finished.path / "summary.parquet")
    totals = (
        summary.filter((pl.col("scope") == "kind") & (pl.col("run") == "both"))
        .group_by("layer", "query")
        .agg(pl.col("mean").sum())
    )
    np.testing.assert_allclose(totals["mean"].to_numpy(), 1.0, atol=1e-5)
    stems = {p.stem for p in (finished.path / "charts").glob("*.html")}
    for query in ("t0", "t1", "t2", "eot", "answer"):
        assert {f"attention_{query}", f"attended_{query}"} <= stems
    text = (finished.path / "summary.md").read_text(encoding="utf-8")
    assert "## Top attended keys per query" in text and "- **answer**:" in text
    assert "| t0 |" in text  # the key table names thoughts as the report does
