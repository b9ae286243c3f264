"""A property-based fuzzer over recipes, drawn section by section and mode by mode from the
recipe's own schema (`Recipe.model_json_schema`): valid values and boundaries, wrong types,
non-finite numbers, out-of-range numbers, empty, duplicate, unordered and over-long lists,
other modes' fields and unknown keys, in the file or through `--set`.

Each drawn recipe is validated, and run when validation accepts it, on one or two pairs of a
built-in model. The contract, for every draw:
- refused: exit 2, exactly one `Error:` line naming the recipe file and a field, no
  traceback, no other library's line, and no run folder written;
- accepted: a finished run folder with finite baselines and no traceback.

The seed is fixed and the example count bounded (NNPATCH_FUZZ_EXAMPLES, default 500: about a
minute on 2 cores); `pytest --hypothesis-show-statistics` prints the classes it drew.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from helpers import write_pairs
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from schema_strategies import OMIT, Schema, toml_value

from nnpatch.cli import main
from nnpatch.models.presets import PLAIN_PRESETS
from nnpatch.recipe import Recipe

SPAN_PAIRS = [
    {
        "id": f"p{n}",
        "clean_question": f"Tom [[has {a} red]] coins",
        "clean_answer": str(a),
        "corrupted_question": f"Tom [[has {b} red]] coins",
        "corrupted_answer": str(b),
    }
    for n, (a, b) in enumerate([(3, 5), (4, 7)])
]
SCHEMA = Schema(Recipe.model_json_schema())
ROOT = SCHEMA.node(SCHEMA.schema)
MODES = SCHEMA.variants(SCHEMA.properties(ROOT)["patch"])
EXAMPLES = int(os.environ.get("NNPATCH_FUZZ_EXAMPLES", "500"))
# what a refused command may print besides its Error line: a sweep that began says so first
HEADER = re.compile(r"^\S+: \d+ pairs, \d+ patches per pair, \d+ rows, batch \d+( \(auto\))?$")


def field_paths(node: dict, prefix: str = "") -> set[str]:
    """Every dotted field the schema declares, tables included (all modes' [patch] keys)."""
    paths = set()
    node = SCHEMA.node(node)
    for key, child in SCHEMA.properties(node).items():
        path = f"{prefix}{key}"
        paths.add(path)
        for branch in [*SCHEMA.branches(child), *SCHEMA.variants(child).values()]:
            if branch.get("type") == "object":
                paths |= field_paths(branch, f"{path}.")
    return paths


FIELDS = field_paths(ROOT)
GOLDEN = Path(__file__).parent / "golden"
# the tiny releases the authors' code wrote: positions such as PCCoT's "s@t" and CoLaR's
# per-question latent counts meet every drawn field too
RELEASES = [
    {
        "kind": "pccot",
        "base": str(GOLDEN / "pccot" / "gpt2"),
        "checkpoint": str(GOLDEN / "pccot" / "whyNLP" / "pccot-gpt2"),
    },
    {
        "kind": "colar",
        "base": str(GOLDEN / "colar" / "models" / "llms" / "Llama-3.2-1B-Instruct"),
        "checkpoint": str(GOLDEN / "colar"),
    },
]


@st.composite
def recipes(draw):
    """(the recipe's tables, the --set overrides, the dotted keys the draw wrote)."""
    mode = draw(st.sampled_from(sorted(MODES)))
    section = MODES[mode]
    patch = draw(SCHEMA.table(section, SCHEMA.valid).map(lambda t: _required(t, section)))
    patch["mode"] = mode
    for key, small in (("layers", [0]), ("positions", [0])):  # few cells: runs stay short
        if key in section["properties"]:
            patch.setdefault(key, small)
    model = draw(st.sampled_from([{"preset": p} for p in _examples("model", "preset")] + RELEASES))
    pairs = "spans.jsonl" if model.get("preset") in PLAIN_PRESETS else "tiny-arithmetic"
    tables = {
        "name": "fuzz",
        "model": dict(model),
        "data": {"pairs": pairs, "limit": draw(st.integers(1, 2))},
        "patch": patch,
        "run": {"output": "out", "report": "none"},
    }
    written: set[str] = set()
    overrides: list[str] = []
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))):
        path, value = draw(mutation(mode))
        written.add(".".join(path))
        if draw(st.booleans()) and value is not OMIT:
            overrides.append(f"{'.'.join(path)}={toml_value(value)}")
        else:
            _put(tables, path, value)
    return tables, overrides, written


def mutation(mode: str) -> st.SearchStrategy:
    """One field changed: a valid or wrong value for a field of any table (this mode's
    [patch] or the others'), a key no table has, or a table that is not a table."""
    sections = {key: SCHEMA.node(node) for key, node in SCHEMA.tables(ROOT).items()}
    sections["patch"] = MODES[mode]
    leaves = [
        ((key,), node) for key, node in SCHEMA.properties(ROOT).items() if key not in sections
    ]
    for name, node in sections.items():
        objects = [b for b in SCHEMA.branches(node) if b.get("type") == "object"]
        for branch in objects or [node]:
            leaves += [((name, k), child) for k, child in SCHEMA.properties(branch).items()]
    others = [
        (("patch", key), child)
        for other, node in MODES.items()
        if other != mode
        for key, child in SCHEMA.properties(node).items()
        if key not in MODES[mode]["properties"]
    ]

    def valued(choice, how):
        path, node = choice
        strategy = SCHEMA.valid(node) if how == "valid" else SCHEMA.invalid(node)
        return strategy.map(lambda value: (path, value))

    kinds = {
        "valid": st.sampled_from(leaves).flatmap(lambda c: valued(c, "valid")),
        "invalid": st.sampled_from(leaves).flatmap(lambda c: valued(c, "invalid")),
        "other mode's": st.sampled_from(others).flatmap(lambda c: valued(c, "valid")),
        "unknown": st.sampled_from(sorted(sections)).map(lambda n: ((n, "not_a_field"), 1)),
        "not a table": st.sampled_from(sorted(sections)).map(lambda n: ((n,), 3)),
    }
    # most draws change a field's value; the rest add what no table of the mode has
    weights = ["valid"] * 6 + ["invalid"] * 4 + ["other mode's", "unknown", "not a table"]
    return st.sampled_from(weights).flatmap(kinds.__getitem__)


def _examples(*path: str) -> list:
    node = ROOT
    for key in path:
        node = SCHEMA.properties(node)[key]
    return next(b["examples"] for b in SCHEMA.branches(node) if "examples" in b)


def _required(table: dict, section: dict) -> dict:
    return {k: v for k, v in table.items() if v is not OMIT}


def _put(tables: dict, path: tuple[str, ...], value) -> None:
    node = tables
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if value is OMIT:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


def _write(folder: Path, tables: dict) -> Path:
    lines = [f"{k} = {toml_value(v)}" for k, v in tables.items() if not isinstance(v, dict)]
    for name, table in tables.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            lines += [
                f"{k} = {toml_value(v)}"
                if k.isidentifier()
                else f"{toml_value(k)} = {toml_value(v)}"
                for k, v in table.items()
            ]
    path = folder / "fuzz.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run_folders(folder: Path) -> list[Path]:
    return [m.parent for m in folder.rglob("manifest.json")]


def assert_refused(result, recipe: Path, written: set[str], folder: Path, out: str) -> str:
    """One Error line naming the file and a field; nothing else said; nothing written."""
    assert "Traceback" not in result.output + out, result.output + out
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in (result.stderr + out).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, lines
    assert all(line in errors or HEADER.match(line) for line in lines), lines
    named = re.match(rf"Error: {re.escape(str(recipe))}: ([^:;]+?): ", errors[0])
    assert named, f"the error does not name the recipe file and a field: {errors[0]}"
    field = named.group(1)
    known = FIELDS | written | {"(file)", "(toml)", "--set"}
    assert field in known or any(field.startswith(f"{w}.") for w in known), errors[0]
    assert not _run_folders(folder), f"a refused recipe wrote {_run_folders(folder)}"
    return field


def assert_finished(result, folder: Path, out: str) -> str:
    """A finished run folder whose baselines are finite."""
    assert "Traceback" not in result.output + out, result.output + out
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    (run,) = _run_folders(folder)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    base = pl.read_parquet(run / "baselines.parquet")
    for column in base.columns:
        if base[column].dtype.is_float():
            values = base[column].to_list()
            assert all(v is not None and math.isfinite(v) for v in values), (column, values)
    return manifest["model"]["name"]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """The same draws behave the same on any machine: no W&B login or mode, no hub."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.fuzz
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)
@given(drawn=recipes())
def test_every_drawn_recipe_is_refused_in_one_line_or_runs(
    drawn, tmp_path_factory, capfd, isolated
):
    """Every drawn recipe: one Error line naming file and field (exit 2, nothing written),
    or a finished folder with finite baselines; never a traceback or another library's line."""
    tables, overrides, written = drawn
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "a-file").write_text("not a folder\n")
    (folder / "a-folder").mkdir()
    write_pairs(folder / "spans.jsonl", SPAN_PAIRS)  # plain LMs patch a marked span
    recipe = _write(folder, tables)
    sets = [a for o in overrides for a in ("--set", o)]
    runner = CliRunner()
    here = os.getcwd()
    os.chdir(folder)
    try:
        capfd.readouterr()
        checked = runner.invoke(main, ["validate", str(recipe), *sets])
        out = capfd.readouterr()
        if checked.exit_code != 0:
            field = assert_refused(checked, recipe, written, folder, out.out + out.err)
            event(f"refused by validate: {field}")
            return
        assert checked.stdout.startswith(f"{recipe}: ok"), checked.output
        ran = runner.invoke(main, ["run", str(recipe), *sets])
        out = capfd.readouterr()
        if ran.exit_code != 0:
            field = assert_refused(ran, recipe, written, folder, out.out + out.err)
            event(f"refused by run: {field}")
            return
        model = assert_finished(ran, folder, out.out + out.err)
        event(f"finished: {tables['patch'].get('mode')} on {model}")
    finally:
        os.chdir(here)
