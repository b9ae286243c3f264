"""The bad-input corpus: every case is one 'Error:' line naming the file and field (or the
folder, or the option), exit code 2, no traceback, and no run folder claiming to be finished."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import write_pairs, write_recipe

from nnpatch.cli import main

GOOD_PAIR = {
    "id": "a",
    "clean_question": "Tom has 3 coins",
    "clean_answer": "3",
    "corrupted_question": "Tom has 5 coins",
    "corrupted_answer": "5",
}


def _file(folder: Path, name: str, content: str | bytes) -> str:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def _pairs(folder: Path, name: str, rows: list[dict]) -> str:
    return json.dumps(str(write_pairs(folder / name, rows)))


def corpus(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(case, command line, regex the one error line must match)."""
    base = str(write_recipe(tmp, name="base"))
    run = ["run", base, "--set"]
    finished = tmp / "finished"
    finished.mkdir()
    (finished / "manifest.json").write_text('{"status": "finished"}')
    latin_pairs = json.dumps(_file(tmp, "l.jsonl", '{"id": "caf\xe9"}\n'.encode("latin-1")))
    return [
        # the recipe file itself
        ("missing recipe", ["run", str(tmp / "nope.toml")], r"nope\.toml: \(file\): no such"),
        ("malformed TOML", ["run", _file(tmp, "bad.toml", "name = \n[model")], r"bad\.toml"),
        ("empty recipe", ["run", _file(tmp, "empty.toml", "")], r"empty\.toml: name"),
        (
            "non-UTF-8 recipe",
            ["run", _file(tmp, "latin.toml", 'name = "caf\xe9"\n'.encode("latin-1"))],
            r"latin\.toml: .*UTF-8",
        ),
        (
            "unknown top-level key",
            ["run", _file(tmp, "top.toml", f"colour = 1\n{Path(base).read_text()}")],
            r"top\.toml: colour: unknown key",
        ),
        (
            "unknown patch key",
            ["run", str(write_recipe(tmp, name="k", patch={"mode": "single", "color": 1}))],
            r"k\.toml: patch\.color: unknown key",
        ),
        ("name escaping the output", [*run, "name='../../etc'"], r"base\.toml: name"),
        # wrong types and values
        ("batch size not a number", [*run, "run.batch_size=many"], r"run\.batch_size"),
        ("batch size zero", [*run, "run.batch_size=0"], r"run\.batch_size: .*greater than"),
        ("negative limit", [*run, "data.limit=-1"], r"data\.limit"),
        ("unknown mode", [*run, "patch.mode='diagonal'"], r"patch: .*single"),
        ("unknown site", [*run, "patch.site='residual'"], r"patch\.site: .*'resid'"),
        ("unknown direction", [*run, "patch.direction='up'"], r"patch\.direction"),
        ("unknown control", [*run, "patch.control='shuffle'"], r"patch\.control"),
        ("unknown filter", [*run, "data.filter='all-right'"], r"data\.filter"),
        ("unknown dtype", [*run, "model.dtype='float8'"], r"model\.dtype"),
        ("seed not an integer", [*run, "run.seed=1.5"], r"run\.seed"),
        # cells outside the model
        ("layer out of range", [*run, "patch.layers=[7]"], r"patch\.layers: layer 7 is out"),
        ("negative layer", [*run, "patch.layers=[-1]"], r"patch\.layers"),
        ("position out of range", [*run, "patch.positions=[0, 9]"], r"patch\.positions"),
        ("empty layer list", [*run, "patch.layers=[]"], r"patch\.layers"),
        (
            "empty position set",
            [*run, "patch.mode='sets'", "--set", "patch.sets=[[]]"],
            r"patch\.sets: .*at least one position",
        ),
        # models
        (
            "unknown preset",
            [*run, "model.preset='tiny-random-cod'"],
            r"model\.preset: unknown preset .*did you mean 'tiny-random-codi'",
        ),
        ("unknown model kind", [*run, "model.kind='mamba'"], r"model"),
        ("CUDA on a CPU machine", [*run, "model.device='cuda:7'"], r"model\.device"),
        # pairs
        ("missing pairs file", [*run, "data.pairs='missing.jsonl'"], r"data\.pairs: .*neither"),
        (
            "malformed pairs JSON",
            [*run, f"data.pairs={json.dumps(_file(tmp, 'm.jsonl', '{not json'))}"],
            r"data\.pairs: .*m\.jsonl:1: malformed JSON",
        ),
        (
            "non-UTF-8 pairs file",
            [*run, f"data.pairs={latin_pairs}"],
            r"data\.pairs: .*l\.jsonl.*UTF-8",
        ),
        (
            "empty pairs file",
            [*run, f"data.pairs={json.dumps(_file(tmp, 'e.jsonl', ''))}"],
            r"data\.pairs: .*e\.jsonl.*no pairs",
        ),
        (
            "equal answers",
            [
                *run,
                f"data.pairs={_pairs(tmp, 'eq.jsonl', [{**GOOD_PAIR, 'corrupted_answer': '3'}])}",
            ],
            r"data\.pairs: .*equal clean and corrupted answers",
        ),
        (
            "duplicate pair ids",
            [*run, f"data.pairs={_pairs(tmp, 'dup.jsonl', [GOOD_PAIR, GOOD_PAIR])}"],
            r"data\.pairs: .*dup\.jsonl: pair id 'a' appears twice",
        ),
        (
            "empty pair id",
            [*run, f"data.pairs={_pairs(tmp, 'noid.jsonl', [{**GOOD_PAIR, 'id': ''}])}"],
            r"data\.pairs: .*noid\.jsonl:1: .*id",
        ),
        (
            "pair missing a field",
            [*run, f"data.pairs={_pairs(tmp, 'half.jsonl', [{'id': 'a', 'clean_question': 'q'}])}"],
            r"data\.pairs: .*half\.jsonl:1: .*clean_answer",
        ),
        ("gsm8k without a source", [*run, "data.pairs='gsm8k'"], r"data\.source"),
        # metrics and overrides
        ("unknown metric", [*run, "metrics.names=['recovry']"], r"metrics\.names: .*'recovery'"),
        (
            "validate: unknown metric",
            ["validate", base, "--set", "metrics.names=['l3']"],
            r"base\.toml: metrics\.names",
        ),
        ("no metrics", [*run, "metrics.names=[]"], r"metrics\.names"),
        ("--set without =", [*run, "patch.site"], r"--set: 'patch.site' has no '='"),
        ("--set unknown field", [*run, "run.colour=1"], r"run\.colour: unknown key"),
        (
            "output is a file",
            [*run, f"run.output={json.dumps(_file(tmp, 'f.txt', 'x'))}"],
            r"run\.output: .* is a file, not a folder",
        ),
        # run folders
        ("resume a non-run folder", ["run", "--resume", str(tmp)], r"not a run folder"),
        ("resume a finished run", ["run", "--resume", str(finished)], r"already finished"),
        ("report a non-run folder", ["report", str(tmp)], r"report|manifest|results"),
        # the pairs command
        (
            "gsm8k input missing",
            ["pairs", "gsm8k", "--input", str(tmp / "no.jsonl"), "--out", str(tmp / "o.jsonl")],
            r"no\.jsonl",
        ),
    ]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    return tmp, corpus(tmp)


def test_every_bad_input_is_one_line_exit_2_and_no_finished_folder(cases):
    tmp, entries = cases
    assert len(entries) >= 30
    failures = []
    for case, args, pattern in entries:
        result = CliRunner().invoke(main, args)
        lines = result.output.strip().splitlines()
        ok = (
            result.exit_code == 2
            and len(lines) == 1
            and lines[0].startswith("Error: ")
            and "Traceback" not in result.output
            and re.search(pattern, lines[0])
        )
        if not ok:
            failures.append(f"{case}: exit {result.exit_code}: {result.output.strip()!r}")
    assert not failures, "\n".join(failures)
    manifests = list((tmp / "outputs").glob("*/*/manifest.json"))
    assert not [m for m in manifests if json.loads(m.read_text())["status"] == "finished"]
