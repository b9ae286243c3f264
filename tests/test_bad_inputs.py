"""The bad-input and fault corpus: every case prints exactly its one `Error:` line, exits with
its code (2; 128 + the signal for stop signals), shows no traceback, and leaves the run folder
in a true state: none made, or the status its manifest must say.

Cases are classes, not examples: each scalar recipe field with each wrong type, each fixed
choice with a value outside it, each kind-specific field where it does not apply, each way a
pairs file, a run folder, a shard or a manifest can be damaged, each stop signal, and a full
disk at each place a run writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner
from corpus import (
    GOOD_PAIR,
    RUN,
    Case,
    copy_run,
    disk_full_in,
    file,
    keyboard_interrupt_in,
    live_process,
    move_first_shard,
    pairs_file,
    quoted,
    run_folder,
    set_manifest,
    signal_fault,
    truncate_first_shard,
    write_manifest_text,
)
from helpers import GSM8K, write_recipe

from nnpatch.cli import main

LIVE: list = []  # the process a "still running" folder names
INT_FIELDS = [
    "model.num_thoughts",
    "data.seed",
    "data.limit",
    "run.seed",
    "run.max_rows",
]
CHOICES = {
    "patch.mode": "'diagonal'",
    "patch.site": "'residual'",
    "patch.direction": "'up'",
    "patch.control": "'shuffle'",
    "data.filter": "'all-right'",
    "model.dtype": "'float8'",
    "model.kind": "'mamba'",
}


def recipe_cases(tmp: Path, base: str) -> list[Case]:
    run = ["run", base, "--set"]
    b = f"{base}: "
    span_pair = {**GOOD_PAIR, "clean_question": "Tom [[has 3]] coins"}
    span_pair["corrupted_question"] = "Tom [[has 5]] coins"
    spans = f"data.pairs={quoted(pairs_file(tmp, 'spans.jsonl', [span_pair]))}"
    cases = [
        # the recipe file itself
        Case(
            "missing recipe",
            ["run", f"{tmp}/nope.toml"],
            f"{tmp}/nope.toml: (file): no such recipe file; check the path",
        ),
        Case(
            "a folder as the recipe",
            ["run", str(tmp)],
            f"{tmp}: (file): is a folder, not a recipe file; give a .toml file",
        ),
        Case(
            "validate a folder",
            ["validate", str(tmp)],
            f"{tmp}: (file): is a folder, not a recipe file; give a .toml file",
        ),
        Case(
            "malformed TOML",
            ["run", file(tmp, "bad.toml", "name = \n[model")],
            f"{tmp}/bad.toml: (toml): malformed TOML: Invalid value (at line 1, column 8); "
            "fix the syntax",
        ),
        Case(
            "empty recipe",
            ["run", file(tmp, "empty.toml", "")],
            f"{tmp}/empty.toml: name: Field required; add it",
        ),
        Case(
            "non-UTF-8 recipe",
            ["run", file(tmp, "latin.toml", 'name = "caf\xe9"\n'.encode("latin-1"))],
            f"{tmp}/latin.toml: (file): not UTF-8 text; save the recipe as UTF-8",
        ),
        Case(
            "binary recipe",
            ["run", file(tmp, "binary.toml", bytes(range(256)))],
            f"{tmp}/binary.toml: (file): not UTF-8 text; save the recipe as UTF-8",
        ),
        Case(
            "unknown top-level key",
            ["run", file(tmp, "top.toml", f"colour = 1\n{Path(base).read_text()}")],
            f"{tmp}/top.toml: colour: unknown key; remove it or check its spelling against "
            "the recipe reference (docs/reference/recipe.md)",
        ),
        Case(
            "name escaping the output",
            [*run, "name='../../etc'"],
            b + "name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.-]*$'; got '../../etc'",
        ),
        Case("name not text", [*run, "name=5"], b + "name: Input should be a valid string; got 5"),
        Case(
            "a section that is not a table",
            [*run, "run=3"],
            b + "run: Input should be a valid dictionary or instance of RunSection; got 3",
        ),
    ]
    for section in ("model", "data", "patch", "metrics", "run", "stats"):
        cases.append(
            Case(
                f"unknown key in [{section}]",
                [*run, f"{section}.colour=1"],
                b + f"{section}.colour: unknown key; remove it or check its spelling against "
                "the recipe reference (docs/reference/recipe.md)",
            )
        )
    # every integer field refuses booleans, fractions and text
    for field in INT_FIELDS:
        for value, shown in (("true", "True"), ("2.5", "2.5"), ("'3'", "'3'")):
            cases.append(
                Case(
                    f"{field} = {value}",
                    [*run, f"{field}={value}"],
                    b + f"{field}: Input should be a valid integer; got {shown}",
                )
            )
    cases.append(
        Case(
            "max_memory with a fixed batch",
            [*run, "run.batch_size=8", "--set", "run.max_memory='4GiB'"],
            b + 'run.max_memory: applies only to batch_size = "auto" (batch_size is 8); remove '
            'it, or set run.batch_size = "auto"',
        )
    )
    cases.append(
        Case(
            "max_memory not a size",
            [*run, "run.max_memory='lots'"],
            b + "run.max_memory: write a size such as 2GiB, 512MiB, 1.5GB or a number of bytes; "
            "got 'lots'",
        )
    )
    cases.append(
        Case(
            "wandb without a project",
            [*run, "run.wandb={mode='offline'}"],
            b + "run.wandb.project: Field required; add it",
        )
    )
    for value, shown in (("true", "True"), ("2.5", "2.5"), ("'3'", "'3'"), ("'big'", "'big'")):
        cases.append(
            Case(
                f"run.batch_size = {value}",
                [*run, f"run.batch_size={value}"],
                b + f'run.batch_size: write a number of rows (1 to 65536) or "auto"; got {shown}',
            )
        )
    cases += [
        Case(
            "verify_top = true",
            [*run, "patch.mode='attribution'", "--set", "patch.verify_top=true"],
            b + "patch.verify_top: Input should be a valid integer; got True",
        ),
        Case(
            "layers [true]",
            [*run, "patch.layers=[true]"],
            b + "patch.layers: Input should be a valid integer; got True",
        ),
        Case(
            "positions [true]",
            [*run, "patch.positions=[true]"],
            b + "patch.positions: Input should be a valid integer; got True",
        ),
        Case(
            "lora_alpha = true",
            [
                *run,
                "model.kind='codi'",
                "--set",
                "model.preset=''",
                "--set",
                "model.lora_alpha=true",
            ],
            b + "model.lora_alpha: Input should be a valid number; got True",
        ),
        Case(
            "remote = 'yes'",
            [*run, "run.remote='yes'"],
            b + "run.remote: use true, false or 'local'; got 'yes'",
        ),
        Case(
            "remote = 1",
            [*run, "run.remote=1"],
            b + "run.remote: use true, false or 'local'; got 1",
        ),
        # ranges
        Case(
            "batch size zero",
            [*run, "run.batch_size=0"],
            b + "run.batch_size: Input should be greater than or equal to 1; got 0",
        ),
        Case(
            "limit zero",
            [*run, "data.limit=0"],
            b + "data.limit: Input should be greater than or equal to 1; got 0",
        ),
        Case(
            "negative limit",
            [*run, "data.limit=-1"],
            b + "data.limit: Input should be greater than or equal to 1; got -1",
        ),
        Case(
            "zero thoughts",
            [*run, "model.num_thoughts=0"],
            b + "model.num_thoughts: Input should be greater than or equal to 1; got 0",
        ),
        Case(
            "empty output",
            [*run, "run.output=''"],
            b + "run.output: String should have at least 1 character; got ''",
        ),
    ]
    for field, value in CHOICES.items():
        cases.append(Case(f"{field} = {value}", [*run, f"{field}={value}"], "?"))
    cases += [
        # cells, sets and metrics
        Case(
            "layer out of range",
            [*run, "patch.layers=[7]"],
            b + "patch.layers: layer 7 is out of range for tiny-random-codi (layers 0..3); "
            "use layers in range or 'all'",
        ),
        Case(
            "negative layer",
            [*run, "patch.layers=[-1]"],
            b + "patch.layers: Input should be greater than or equal to 0; got -1",
        ),
        Case(
            "empty layer list",
            [*run, "patch.layers=[]"],
            b + "patch.layers: List should have at least 1 item after validation, not 0; got []",
        ),
        Case("layer listed twice", [*run, "patch.layers=[1, 1]"], "?"),
        Case(
            "position out of range",
            [*run, "patch.positions=[0, 9]"],
            b + "patch.positions: thought position 9 is out of range for tiny-random-codi "
            "(thoughts 0..5); use 0..5, 'bot' or 'eot'",
        ),
        Case("unknown position", [*run, "patch.positions=['first']"], "?"),
        Case("position listed twice", [*run, "patch.positions=[0, 0]"], "?"),
        Case(
            "empty position set",
            [*run, "patch.mode='sets'", "--set", "patch.sets=[[]]"],
            b + "patch.sets: every set needs at least one position; got [[]]",
        ),
        Case(
            "the same set twice",
            [*run, "patch.mode='sets'", "--set", "patch.sets=[[0, 1], [1, 0]]"],
            b + "patch.sets: sets 0 and 1 are the same set of positions; list each set once "
            "(a repeated set would count its pairs twice); got [[0, 1], [1, 0]]",
        ),
        Case(
            "a position twice in one set",
            [*run, "patch.mode='sets'", "--set", "patch.sets=[[0, 0]]"],
            "?",
        ),
        Case("sets without mode sets", [*run, "patch.sets=[[0]]"], "?"),
        Case(
            "bot on the thought site",
            [*run, "patch.site='thought'", "--set", "patch.positions=['bot']"],
            "?",
        ),
        Case(
            "layers on the thought site",
            [*run, "patch.site='thought'", "--set", "patch.layers=[0]"],
            "?",
        ),
        Case(
            "unknown metric",
            [*run, "metrics.names=['recovry']"],
            b + "metrics.names: unknown metric 'recovry' (did you mean 'recovery'?); known: "
            "logit_diff, recovery, logprob_diff, kl_to_clean, kl_from_corrupt, l2, "
            "top1_changed, answer, correct, gives_corrupted; got ['recovry']",
        ),
        Case(
            "a metric twice",
            [*run, "metrics.names=['recovery', 'l2', 'recovery']"],
            b + "metrics.names: metric 'recovery' is listed twice; list each once; "
            "got ['recovery', 'l2', 'recovery']",
        ),
        Case(
            "no metrics",
            [*run, "metrics.names=[]"],
            b + "metrics.names: List should have at least 1 item after validation, not 0; got []",
        ),
        Case(
            "validate: unknown metric",
            ["validate", base, "--set", "metrics.names=['l3']"],
            "?",
        ),
        Case(
            "control on attribution",
            [*run, "patch.mode='attribution'", "--set", "patch.control='random-donor'"],
            "?",
        ),
        # models
        Case(
            "unknown preset",
            [*run, "model.preset='tiny-random-cod'"],
            b + "model.preset: unknown preset 'tiny-random-cod'; did you mean 'tiny-random-codi'?",
        ),
        Case("preset and kind", [*run, "model.kind='codi'"], "?"),
        Case("no model at all", [*run, "model.preset=''"], "?"),
        Case("CUDA on a CPU machine", [*run, "model.device='cuda:7'"], "?"),
        Case("mps", [*run, "model.device='mps'"], "?"),
        Case("meta", [*run, "model.device='meta'"], "?"),
        Case("a device that is no device", [*run, "model.device='gpu0'"], "?"),
        Case("prj_dim on a preset", [*run, "model.prj_dim=64"], "?"),
        Case("checkpoint on a preset", [*run, "model.checkpoint='x'"], "?"),
        Case("revision on a preset", [*run, "model.revision='main'"], "?"),
        Case("answer_prefix on a CODI preset", [*run, "model.answer_prefix='A:'"], "?"),
        Case(
            "num_thoughts on a plain preset",
            [*run, "model.preset='tiny-random-gpt2'", "--set", "model.num_thoughts=3"],
            "?",
        ),
        Case(
            "lora_r on coconut",
            [*run, "model={kind='coconut', checkpoint='c', base='b', lora_r=8}"],
            "?",
        ),
        Case(
            "answer_prefix on codi",
            [*run, "model={kind='codi', checkpoint='c', base='b', answer_prefix='A:'}"],
            "?",
        ),
        Case(
            "num_thoughts on a causal LM",
            [*run, "model={kind='causal_lm', checkpoint='c', num_thoughts=3}"],
            "?",
        ),
        Case(
            "codi without a base", [*run, f"model={{kind='codi', checkpoint={quoted(tmp)}}}"], "?"
        ),
        Case(
            "codi checkpoint folder without weights",
            [
                *run,
                f"model={{kind='codi', checkpoint={quoted(tmp)}, base={quoted(tmp / 'nobase')}}}",
            ],
            "?",
        ),
        # the lens and record modes
        Case("the lens on the attn site", [*run, "patch={mode='lens', site='attn'}"]),
        Case("a direction on the lens", [*run, "patch={mode='lens', direction='noise'}"]),
        Case("top_k zero", [*run, "patch={mode='lens', top_k=0}"]),
        Case("top_k on patching", [*run, "patch.top_k=3"]),
        Case("max_export not a size", [*run, "run.max_export='lots'"]),
        Case("max_export zero", [*run, "run.max_export=0"]),
        Case(
            "an export over the limit",
            [*run, "patch={mode='record'}", "--set", "run.max_export='1KiB'"],
        ),
        Case("record: a folder", ["record", str(tmp)]),
        # sources, heads, grids, subsets and the FDR
        Case("scale without steer", [*run, "patch.scale=2.0"]),
        Case("heads without the head site", [*run, "patch.heads=[0]"]),
        Case("a head out of range", [*run, "patch.site='head'", "--set", "patch.heads=[0, 99]"]),
        Case("a head listed twice", [*run, "patch.site='head'", "--set", "patch.heads=[1, 1]"]),
        Case("heads empty", [*run, "patch.site='head'", "--set", "patch.heads=[]"]),
        Case("an unknown source", [*run, "patch.source='noise'"]),
        Case("an empty source list", [*run, "patch.source=[]"]),
        Case("an unknown site in a list", [*run, "patch.site=['resid', 'residual']"]),
        Case("the mean of one pair", [*run, "patch.source='mean'", "--set", "data.limit=1"]),
        Case("steer scale as text", [*run, "patch.source='steer'", "--set", "patch.scale='2'"]),
        Case("head site on the lens", [*run, "patch={mode='lens', site='head'}"]),
        Case("sets on subsets", [*run, "patch={mode='subsets', sets=[[0]]}"]),
        Case("subsets over max_rows", [*run, "patch={mode='subsets'}", "--set", "run.max_rows=10"]),
        Case(
            "a grid over max_rows",
            [*run, "patch.site=['resid', 'attn']", "--set", "run.max_rows=5"],
        ),
        Case("max_rows zero", [*run, "run.max_rows=0"]),
        Case("fdr zero", [*run, "stats.fdr=0.0"]),
        Case("fdr one", [*run, "stats.fdr=1.0"]),
        Case("fdr as a boolean", [*run, "stats.fdr=true"]),
        Case("fdr as text", [*run, "stats.fdr='5%'"]),
        # mediation and knockout (a plain LM: pairs with aligned spans)
        Case(
            "mediation on a plain LM",
            [
                *run,
                "patch={mode='mediation'}",
                "--set",
                "model={preset='tiny-random-gpt2'}",
                "--set",
                spans,
            ],
        ),
        Case("mediation at the attn site", [*run, "patch={mode='mediation', site='attn'}"]),
        Case("a source on mediation", [*run, "patch={mode='mediation', source='mean'}"]),
        Case("knockout to eot", [*run, "patch={mode='knockout', to=['eot']}"]),
        Case("knockout to a later key", [*run, "patch={mode='knockout', from=[1], to=[0, 2]}"]),
        Case(
            "knockout windows and layers",
            [*run, "patch={mode='knockout', layers=[0], layer_groups=[[0]]}"],
        ),
        Case(
            "knockout window out of range", [*run, "patch={mode='knockout', layer_groups=[[0, 9]]}"]
        ),
        Case(
            "knockout window listed twice",
            [*run, "patch={mode='knockout', layer_groups=[[0, 1], [0, 1]]}"],
        ),
        Case("an empty model table", [*run, "model={}"]),
        Case("knockout window reversed", [*run, "patch={mode='knockout', layer_groups=[[2, 0]]}"]),
        Case("steer scale nan", [*run, "patch.source='steer'", "--set", "patch.scale=nan"]),
        Case("steer scale -inf", [*run, "patch.source='steer'", "--set", "patch.scale=-inf"]),
        Case("fdr inf", [*run, "stats.fdr=inf"]),
        Case("run seed negative", [*run, "run.seed=-1"]),
        Case("data seed negative", [*run, "data.seed=-1"]),
        Case("empty span markers", [*run, "data.span_markers=['', '']"]),
        Case("overlapping span markers", [*run, "data.span_markers=['[[', '[']"]),
        Case("max_memory under a byte", [*run, "run.max_memory='0.5B'"]),
        Case("an empty output", [*run, "run.output=''"]),
        Case("an empty W&B project", [*run, "run.wandb={project=''}"]),
        Case("knockout empty window", [*run, "patch={mode='knockout', layer_groups=[[]]}"]),
        Case(
            "knockout layer twice in a window",
            [*run, "patch={mode='knockout', layer_groups=[[1, 1]]}"],
        ),
        Case("knockout from nothing", [*run, "patch={mode='knockout', from=[]}"]),
        Case("knockout from the question", [*run, "patch={mode='knockout', from='question'}"]),
        Case("knockout to nothing", [*run, "patch={mode='knockout', to=[]}"]),
        Case("knockout of both runs", [*run, "patch={mode='knockout', run='both'}"]),
        Case("a direction on knockout", [*run, "patch={mode='knockout', direction='noise'}"]),
        Case(
            "knockout on a plain LM",
            [
                *run,
                "patch={mode='knockout'}",
                "--set",
                "model={preset='tiny-random-gpt2'}",
                "--set",
                spans,
            ],
        ),
        Case("knockout from a thought out of range", [*run, "patch={mode='knockout', from=[99]}"]),
        # overrides
        Case("--set without =", [*run, "patch.site"], "?"),
        Case("--set with an empty key part", [*run, "patch..site=1"], "?"),
        Case("--set below a value", [*run, "name.first=1"], "?"),
        Case(
            "output is a file",
            [*run, f"run.output={quoted(file(tmp, 'f.txt', 'x'))}"],
            b + f"run.output: {tmp}/f.txt is a file, not a folder; point run.output (or --out) "
            "at a folder",
        ),
        Case("output below a file", [*run, f"run.output={quoted(tmp / 'f.txt' / 'sub')}"], "?"),
        Case("output that cannot be made", [*run, "run.output='/proc/nnpatch/out'"], "?"),
    ]
    return cases


def pairs_cases(tmp: Path, base: str) -> list[Case]:
    run = ["run", base, "--set"]

    def bad_pairs(name: str, rows) -> str:
        if isinstance(rows, str):
            return f"data.pairs={quoted(file(tmp, name, rows))}"
        return f"data.pairs={quoted(pairs_file(tmp, name, rows))}"

    long_question = "Tom has 3 coins " + "and 4 more " * 200
    latin = file(tmp, "l.jsonl", '{"id": "caf\xe9"}'.encode("latin-1"))
    wrong_shape = file(tmp, "g.jsonl", '{"q": 1}')
    return [
        Case("missing pairs file", [*run, "data.pairs='missing.jsonl'"], "?"),
        Case("malformed pairs JSON", [*run, bad_pairs("m.jsonl", "{not json")], "?"),
        Case(
            "non-UTF-8 pairs file",
            [
                *run,
                f"data.pairs={quoted(latin)}",
            ],
            "?",
        ),
        Case("empty pairs file", [*run, bad_pairs("e.jsonl", "")], "?"),
        Case("blank-lines pairs file", [*run, bad_pairs("b.jsonl", "\n\n  \n")], "?"),
        Case("a JSON array line", [*run, bad_pairs("arr.jsonl", "[1, 2]\n")], "?"),
        Case(
            "equal answers",
            [*run, bad_pairs("eq.jsonl", [{**GOOD_PAIR, "corrupted_answer": "3"}])],
            "?",
        ),
        Case(
            "the same question twice",
            [
                *run,
                bad_pairs("sameq.jsonl", [{**GOOD_PAIR, "corrupted_question": "Tom has 3 coins "}]),
            ],
            "?",
        ),
        Case(
            "questions that differ only in CODI's whitespace",
            [
                *run,
                bad_pairs("ws.jsonl", [{**GOOD_PAIR, "corrupted_question": "Tom  has 3 coins"}]),
            ],
            "?",
        ),
        Case("duplicate pair ids", [*run, bad_pairs("dup.jsonl", [GOOD_PAIR, GOOD_PAIR])], "?"),
        Case("empty pair id", [*run, bad_pairs("noid.jsonl", [{**GOOD_PAIR, "id": " "}])], "?"),
        Case(
            "pair missing a field",
            [*run, bad_pairs("half.jsonl", [{"id": "a", "clean_question": "q"}])],
            "?",
        ),
        Case(
            "a boolean answer",
            [*run, bad_pairs("bool.jsonl", [{**GOOD_PAIR, "clean_answer": True}])],
            "?",
        ),
        Case(
            "a list question",
            [*run, bad_pairs("list.jsonl", [{**GOOD_PAIR, "clean_question": ["a"]}])],
            "?",
        ),
        Case(
            "steps not a list", [*run, bad_pairs("st.jsonl", [{**GOOD_PAIR, "clean_steps": "7"}])]
        ),
        Case(
            "a boolean step",
            [*run, bad_pairs("sb.jsonl", [{**GOOD_PAIR, "corrupted_steps": [True]}])],
        ),
        Case(
            "answers with the same tokens",
            [
                *run,
                bad_pairs(
                    "tok.jsonl",
                    [{**GOOD_PAIR, "clean_answer": "pears", "corrupted_answer": "grapes"}],
                ),
            ],
            "?",
        ),
        Case(
            "a question longer than the context",
            [*run, bad_pairs("long.jsonl", [{**GOOD_PAIR, "clean_question": long_question}])],
            "?",
        ),
        Case("gsm8k without a source", [*run, "data.pairs='gsm8k'"], "?"),
        Case(
            "gsm8k source missing",
            [*run, "data.pairs='gsm8k'", "--set", "data.source='no.jsonl'"],
            "?",
        ),
        Case(
            "gsm8k source of the wrong shape",
            [
                *run,
                "data.pairs='gsm8k'",
                "--set",
                f"data.source={quoted(wrong_shape)}",
            ],
            "?",
        ),
        Case(
            "span markers never closed",
            [
                *run,
                "model.preset='tiny-random-gpt2'",
                "--set",
                bad_pairs("span.jsonl", [{**GOOD_PAIR, "clean_question": "Tom [[has 3 coins"}]),
            ],
            "?",
        ),
        Case(
            "both-correct on a plain LM",
            [*run, "model.preset='tiny-random-gpt2'", "--set", "data.filter='both-correct'"],
            "?",
        ),
    ]


def cli_cases(tmp: Path, base: str, gsm8k: str) -> list[Case]:
    none = quoted(tmp / "none")
    out = f"{tmp}/pairs-out.jsonl"
    link = tmp / "link.jsonl"
    hard = tmp / "hard.jsonl"
    if not link.exists():
        link.symlink_to(gsm8k)
        os.link(gsm8k, hard)
    return [
        Case("--limit -1", ["run", base, "--limit", "-1"], "?"),
        Case("--limit 0", ["run", base, "--limit", "0"], "?"),
        Case("--limit not a number", ["run", base, "--limit", "x"], "?"),
        Case("--resume with --limit", ["run", "--resume", str(tmp), "--limit", "2"], "?"),
        Case("--resume with --set", ["run", "--resume", str(tmp), "--set", "a=1"], "?"),
        Case("--resume with a recipe", ["run", base, "--resume", str(tmp)], "?"),
        Case("run with nothing", ["run"], "?"),
        Case("unknown command", ["frobnicate"], "?"),
        Case("unknown option", ["run", base, "--colour"], "?"),
        Case("pairs: --out is --input", ["pairs", "gsm8k", "--input", gsm8k, "--out", gsm8k], "?"),
        Case(
            "pairs: --out names --input another way",
            [
                "pairs",
                "gsm8k",
                "--input",
                gsm8k,
                "--out",
                str(Path(gsm8k).parent / "." / "x" / ".." / Path(gsm8k).name),
            ],
            "?",
        ),
        Case(
            "pairs: --out is a link to --input",
            ["pairs", "gsm8k", "--input", gsm8k, "--out", str(link)],
            "?",
        ),
        Case(
            "pairs: --out is a hard link to --input",
            ["pairs", "gsm8k", "--input", gsm8k, "--out", str(hard)],
            "?",
        ),
        Case(
            "pairs: --out is a folder", ["pairs", "gsm8k", "--input", gsm8k, "--out", str(tmp)], "?"
        ),
        Case(
            "pairs: --format dataset over a file",
            ["pairs", "gsm8k", "--input", gsm8k, "--out", f"{tmp}/f.txt", "--format", "dataset"],
            "?",
        ),
        Case("pairs: --n 0", ["pairs", "gsm8k", "--input", gsm8k, "--out", out, "--n", "0"], "?"),
        Case(
            "pairs: input missing",
            ["pairs", "gsm8k", "--input", f"{tmp}/no.jsonl", "--out", out],
            "?",
        ),
        Case(
            "pairs: input malformed",
            ["pairs", "gsm8k", "--input", file(tmp, "gbad.jsonl", "{\n"), "--out", out],
            "?",
        ),
        Case(
            "pairs: --out below a file",
            ["pairs", "gsm8k", "--input", gsm8k, "--out", f"{tmp}/f.txt/p.jsonl"],
            "?",
        ),
        Case(
            "inspect: missing checkpoint",
            [
                "inspect",
                base,
                "--set",
                f"model={{kind='codi', checkpoint={none}, base={none}}}",
            ],
            "?",
        ),
    ]


def folder_cases(tmp: Path, finished: Path, interrupted: Path) -> list[Case]:
    copies = {
        "failed": set_manifest(status="failed", error="RuntimeError: boom"),
        "running-dead": set_manifest(status="running", pid=2**22 + 17),
        "not-json": write_manifest_text("{status: finished"),
        "not-object": write_manifest_text("[1, 2]"),
        "no-status": set_manifest(status=None),
        "no-fingerprint": set_manifest(fingerprint=None),
        "no-recipe-file": set_manifest(recipe_file=None),
        "fingerprint-not-object": set_manifest(fingerprint="abc"),
        "fingerprint-no-model": set_manifest(fingerprint={"recipe": "a", "pairs": "b"}),
        "overrides-not-list": set_manifest(overrides="x"),
        "recipe-gone": set_manifest(recipe_file=str(tmp / "gone.toml")),
        "truncated-shard": truncate_first_shard,
        "moved-shard": move_first_shard,
        "stray-shard": lambda run: (run / "shards" / "rows-abc.npy").write_bytes(b"x"),
        "narrow-shard": lambda run: __import__("numpy").save(
            run / "shards" / "rows-000000000.npy", __import__("numpy").zeros((2, 3), "float32")
        ),
    }
    damaged = {name: copy_run(interrupted, tmp, name, edit) for name, edit in copies.items()}
    done = {
        "no-results": lambda run: (run / "results.parquet").unlink(),
        "garbage-results": lambda run: (run / "results.parquet").write_bytes(b"not parquet"),
        "resolved-not-object": lambda run: (run / "resolved.json").write_text("[]"),
        "no-model": set_manifest(model=None),
        "finished-not-object": write_manifest_text('"finished"'),
    }
    broken = {name: copy_run(finished, tmp, name, edit) for name, edit in done.items()}
    alive = live_process()
    LIVE[:] = [alive]
    live = copy_run(
        interrupted, tmp, "running-alive", set_manifest(status="running", pid=alive.pid)
    )
    cases = []
    for name in ("failed", "running-dead"):
        cases.append(
            Case(
                f"report on a {name} run",
                ["report", str(damaged[name])],
                "?",
                folder=damaged[name],
                status=json.loads((damaged[name] / "manifest.json").read_text())["status"],
            )
        )
    cases += [
        Case(
            "report on an interrupted run",
            ["report", str(interrupted)],
            "?",
            folder=interrupted,
            status="interrupted",
        ),
        Case("report on a running run", ["report", str(live)], "?", folder=live, status="running"),
        Case("report on a non-run folder", ["report", str(tmp)], "?"),
        Case("report on a file", ["report", file(tmp, "r.txt", "x")], "?"),
        Case(
            "compare with an interrupted run",
            ["compare", str(finished), str(interrupted), "--out", str(tmp / "cmp")],
            "?",
            folder=interrupted,
            status="interrupted",
        ),
        Case(
            "compare into a run folder",
            ["compare", str(finished), str(finished), "--out", str(finished / "cmp")],
            "?",
            folder=finished,
            status="finished",
        ),
        Case("resume a non-run folder", ["run", "--resume", str(tmp)], "?"),
        Case(
            "resume a finished run",
            ["run", "--resume", str(finished)],
            "?",
            folder=finished,
            status="finished",
        ),
        Case(
            "resume a live run", ["run", "--resume", str(live)], "?", folder=live, status="running"
        ),
    ]
    for name in (
        "not-json",
        "not-object",
        "no-status",
        "no-fingerprint",
        "no-recipe-file",
        "fingerprint-not-object",
        "fingerprint-no-model",
        "overrides-not-list",
        "recipe-gone",
        "truncated-shard",
        "stray-shard",
        "narrow-shard",
    ):
        status = None
        with contextlib.suppress(ValueError, AttributeError):
            status = json.loads((damaged[name] / "manifest.json").read_text()).get("status")
        cases.append(
            Case(
                f"resume: {name}",
                ["run", "--resume", str(damaged[name])],
                "?",
                folder=damaged[name] if status else None,
                status=status,
            )
        )
    cases.append(
        Case(
            "resume: shard at no batch",
            ["run", "--resume", str(damaged["moved-shard"])],
            "?",
            folder=damaged["moved-shard"],
            mid_run=True,
            status="failed",
        )
    )
    for name in (
        "no-results",
        "garbage-results",
        "resolved-not-object",
        "no-model",
        "finished-not-object",
    ):
        status = "finished" if name != "finished-not-object" else None
        cases.append(
            Case(
                f"report: {name}",
                ["report", str(broken[name])],
                "?",
                folder=broken[name] if status else None,
                status=status,
            )
        )
        cases.append(
            Case(
                f"compare: {name}",
                ["compare", str(finished), str(broken[name]), "--out", str(tmp / f"cmp-{name}")],
                "?",
                folder=broken[name] if status else None,
                status=status,
            )
        )
    return cases


def fault_cases(tmp: Path, sweep: str) -> list[Case]:
    run = ["run", sweep]
    out = lambda name: ["--out", str(tmp / "faults" / name)]  # noqa: E731
    return [
        Case(
            "SIGTERM mid-run",
            [*run, *out("term")],
            "?",
            code=143,
            folder=tmp / "faults" / "term",
            status="interrupted",
            mid_run=True,
            fault=signal_fault(signal.SIGTERM),
        ),
        Case(
            "SIGHUP mid-run",
            [*run, *out("hup")],
            "?",
            code=129,
            folder=tmp / "faults" / "hup",
            status="interrupted",
            mid_run=True,
            fault=signal_fault(signal.SIGHUP),
        ),
        Case(
            "SIGINT mid-run",
            [*run, *out("int")],
            "?",
            code=130,
            folder=tmp / "faults" / "int",
            status="interrupted",
            mid_run=True,
            fault=signal_fault(signal.SIGINT),
        ),
        Case(
            "Ctrl-C while the report renders",
            [*run, *out("report-int")],
            "?",
            code=130,
            folder=tmp / "faults" / "report-int",
            status="interrupted",
            mid_run=True,
            fault=keyboard_interrupt_in("nnpatch.run.execute", "render_report"),
        ),
        Case(
            "disk full writing a shard",
            [*run, *out("full-shard")],
            "?",
            folder=tmp / "faults" / "full-shard",
            status="failed",
            mid_run=True,
            fault=disk_full_in("nnpatch.run.shards", "open"),
        ),
        Case(
            "disk full writing the tables",
            [*run, *out("full-tables")],
            "?",
            folder=tmp / "faults" / "full-tables",
            status="failed",
            mid_run=True,
            fault=disk_full_in("nnpatch.run.folder", "write_atomic", at="results.parquet"),
        ),
        Case(
            "disk full before the run starts",
            [*run, *out("full-start")],
            "?",
            fault=disk_full_in("nnpatch.run.folder", "write_atomic"),
        ),
        Case(
            "folder uncreatable",
            [*run, *out("mk")],
            "?",
            fault=disk_full_in("nnpatch.run.folder", "new_run_dir"),
        ),
        Case(
            "a model folder that asks for its own code",
            [
                "inspect",
                sweep,
                "--set",
                f"model={{kind='causal_lm', checkpoint={quoted(tmp / 'remote-code')}}}",
            ],
            "?",
            stdin="y\ny\n",
        ),
        Case(
            "a corrupt tokenizer",
            [
                "run",
                sweep,
                "--set",
                f"model={{kind='causal_lm', checkpoint={quoted(tmp / 'bad-tokenizer')}}}",
            ],
            "?",
        ),
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from corpus import bad_tokenizer_folder, finished_and_interrupted, remote_code_folder

    tmp = tmp_path_factory.mktemp("corpus")
    base = str(write_recipe(tmp, name="base"))
    sweep = str(write_recipe(tmp, name="sweep", **RUN))
    finished, interrupted = finished_and_interrupted(tmp)
    marker = remote_code_folder(tmp / "remote-code")
    bad_tokenizer_folder(tmp / "bad-tokenizer")
    gsm8k = (
        str(GSM8K)
        if GSM8K.exists()
        else file(tmp, "gsm8k.jsonl", '{"question": "q", "answer": "#### 1"}\n')
    )
    cases = [
        *recipe_cases(tmp, base),
        *pairs_cases(tmp, base),
        *cli_cases(tmp, base, gsm8k),
        *folder_cases(tmp, finished, interrupted),
        *fault_cases(tmp, sweep),
    ]
    values = {
        "gsm8k": gsm8k,
        "gsm8k_dir": Path(gsm8k).parent,
        "gsm8k_name": Path(gsm8k).name,
        "pid": LIVE[0].pid,
    }
    return tmp, cases, marker, values


def _manifests(tmp: Path) -> set[Path]:
    return set(tmp.rglob("manifest.json"))


def _status(folder: Path) -> str | None:
    found = sorted(folder.rglob("manifest.json")) if folder.is_dir() else []
    return json.loads(found[-1].read_text()).get("status") if found else None


HEADER = re.compile(r"\S+: \d+ pairs, \d+ patches per pair, \d+ rows, batch \d+")


def run_case(case: Case, tmp: Path, monkeypatch, values: dict) -> list[str]:
    """The problems with one case (empty when it behaves)."""
    before = _manifests(tmp)
    with monkeypatch.context() as patch:
        if case.fault:
            case.fault(patch)
        result = CliRunner().invoke(main, case.args, input=case.stdin)
    lines = result.output.strip().splitlines()
    problems = []
    message = EXPECTED[case.name] if case.message == "?" else case.message
    run = run_folder(case.folder)
    want = "Error: " + message.format(tmp=tmp, run=run, **values)
    if case.mid_run and len(lines) == 2 and HEADER.fullmatch(lines[0]):
        lines = lines[1:]
    if result.exit_code != case.code:
        problems.append(f"exit {result.exit_code}, not {case.code}")
    if lines != [want]:
        problems.append(f"printed {result.output.strip()!r}")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        problems.append(f"raised {result.exception!r}")
    if case.folder is None:
        new = _manifests(tmp) - before
        if new:
            problems.append(f"left run folders {sorted(str(p.parent) for p in new)}")
    elif _status(case.folder) != case.status:
        problems.append(f"folder status {_status(case.folder)!r}, not {case.status!r}")
    return problems


def test_the_corpus_is_large(corpus):
    _, cases, _, _ = corpus
    assert len(cases) >= 100 and len({c.name for c in cases}) == len(cases)


def test_every_case_is_one_line_its_exit_code_and_a_true_folder_state(corpus, monkeypatch):
    tmp, cases, marker, values = corpus
    failures = []
    for case in cases:
        problems = run_case(case, tmp, monkeypatch, values)
        if problems:
            failures.append(f"{case.name}: " + "; ".join(problems))
    assert not marker.exists(), "code from a model folder ran"
    assert not failures, "\n".join(failures)


# the messages of the cases above that do not spell theirs out
EXPECTED: dict[str, str] = {
    "patch.mode = 'diagonal'": "{tmp}/base.toml: patch.mode: unknown mode 'diagonal'; use one of 'single', 'layer', 'chained', 'sets', 'subsets', 'mediation', 'knockout', 'attribution', 'lens', 'attention', 'record'",
    "patch.site = 'residual'": "{tmp}/base.toml: patch.site: Input should be 'resid', 'attn', 'mlp', 'head' or 'thought'; got 'residual'",
    "patch.direction = 'up'": "{tmp}/base.toml: patch.direction: Input should be 'denoise' or 'noise'; got 'up'",
    "patch.control = 'shuffle'": "{tmp}/base.toml: patch.control: Input should be 'random-donor' or 'none'; got 'shuffle'",
    "data.filter = 'all-right'": "{tmp}/base.toml: data.filter: Input should be 'none' or 'both-correct'; got 'all-right'",
    "model.dtype = 'float8'": "{tmp}/base.toml: model.dtype: Input should be 'float32', 'bfloat16', 'float16' or 'float64'; got 'float8'",
    "model.kind = 'mamba'": "{tmp}/base.toml: model.kind: Input should be 'codi', 'coconut', 'pccot', 'colar' or 'causal_lm'; got 'mamba'",
    "layer listed twice": "{tmp}/base.toml: patch.layers: a layer is listed twice; list each once; got [1, 1]",
    "unknown position": "{tmp}/base.toml: patch.positions: Input should be 'bot' or 'eot'; got 'first'",
    "position listed twice": "{tmp}/base.toml: patch.positions: a position is listed twice; list each once; got [0, 0]",
    "a position twice in one set": "{tmp}/base.toml: patch.sets.0: a position is listed twice; list each once",
    "sets without mode sets": "{tmp}/base.toml: patch.sets: unknown key; remove it or check its spelling against the recipe reference (docs/reference/recipe.md)",
    "bot on the thought site": "{tmp}/base.toml: patch.positions: site 'thought' has only thought positions, not 'bot'; drop bot/eot or use site 'resid'",
    "layers on the thought site": "{tmp}/base.toml: patch.layers: site 'thought' is the thought input embedding and has no layers; remove patch.layers",
    "validate: unknown metric": "{tmp}/base.toml: metrics.names: unknown metric 'l3'; known: logit_diff, recovery, logprob_diff, kl_to_clean, kl_from_corrupt, l2, top1_changed, answer, correct, gives_corrupted; got ['l3']",
    "control on attribution": "{tmp}/base.toml: patch.control: Input should be 'none'; got 'random-donor'",
    "preset and kind": "{tmp}/base.toml: model: set either preset or kind (with checkpoint and base), not both; got {{'preset': 'tiny-random-codi', 'kind': 'codi'}}",
    "no model at all": "{tmp}/base.toml: model.preset: unknown preset ''; known: tiny-random-codi, tiny-random-codi-gpt2, toy-codi, tiny-random-gpt2, tiny-random-llama",
    "CUDA on a CPU machine": "{tmp}/base.toml: model.device: CUDA is not available on this machine; use --set model.device=cpu",
    "mps": "{tmp}/base.toml: model.device: 'mps' is not a device nnpatch runs on; use 'cpu', 'cuda' or 'cuda:N'; got 'mps'",
    "meta": "{tmp}/base.toml: model.device: 'meta' is not a device nnpatch runs on; use 'cpu', 'cuda' or 'cuda:N'; got 'meta'",
    "a device that is no device": "{tmp}/base.toml: model.device: 'gpu0' is not a device nnpatch runs on; use 'cpu', 'cuda' or 'cuda:N'; got 'gpu0'",
    "prj_dim on a preset": "{tmp}/base.toml: model.prj_dim: does not apply to preset 'tiny-random-codi' (only to kind 'codi'); remove it",
    "checkpoint on a preset": "{tmp}/base.toml: model.checkpoint: does not apply to preset 'tiny-random-codi' (only to kind 'codi', 'coconut', 'pccot', 'colar', 'causal_lm'); remove it",
    "revision on a preset": "{tmp}/base.toml: model.revision: does not apply to preset 'tiny-random-codi' (only to kind 'codi', 'coconut', 'pccot', 'colar', 'causal_lm'); remove it",
    "answer_prefix on a CODI preset": "{tmp}/base.toml: model.answer_prefix: tiny-random-codi is a CODI model; it has no answer_prefix; remove it",
    "num_thoughts on a plain preset": "{tmp}/base.toml: model.num_thoughts: tiny-random-gpt2 is a plain causal LM (no thoughts); it has no num_thoughts; remove it",
    "lora_r on coconut": "{tmp}/base.toml: model.lora_r: does not apply to kind 'coconut' (only to kind 'codi'); remove it",
    "answer_prefix on codi": "{tmp}/base.toml: model.answer_prefix: does not apply to kind 'codi' (only to kind 'causal_lm' and presets); remove it",
    "num_thoughts on a causal LM": "{tmp}/base.toml: model.num_thoughts: does not apply to kind 'causal_lm' (only to kind 'codi', 'coconut' and presets); remove it",
    "codi without a base": "{tmp}/base.toml: model.base: required for checkpoints (the base model's config and tokenizer, e.g. meta-llama/Llama-3.2-1B-Instruct)",
    "codi checkpoint folder without weights": "{tmp}/base.toml: model.base: '{tmp}/nobase' is not a folder here and not a hub id (owner/name)",
    "--set without =": "{tmp}/base.toml: --set: 'patch.site' has no '='; write --set dotted.key=value",
    "--set with an empty key part": "{tmp}/base.toml: --set: bad key 'patch..site'; write --set dotted.key=value",
    "--set below a value": "{tmp}/base.toml: name.first: 'name' is not a table; override a leaf key",
    "output below a file": "{tmp}/base.toml: run.output: {tmp}/f.txt is a file, not a folder; point run.output (or --out) at a folder",
    "output that cannot be made": "{tmp}/base.toml: run.output: cannot write to /proc/nnpatch/out (No such file or directory); point run.output (or --out) at a folder you can write",
    "missing pairs file": "{tmp}/base.toml: data.pairs: 'missing.jsonl' is neither a file (looked at {tmp}/missing.jsonl) nor a built-in set or generator (tiny-arithmetic, toy-arithmetic, gsm8k); give a path relative to the recipe's folder",
    "malformed pairs JSON": "{tmp}/base.toml: data.pairs: {tmp}/m.jsonl:1: malformed JSON (Expecting property name enclosed in double quotes); one object per line",
    "non-UTF-8 pairs file": "{tmp}/base.toml: data.pairs: {tmp}/l.jsonl: not UTF-8 text; save the pairs file as UTF-8",
    "empty pairs file": "{tmp}/base.toml: data.pairs: {tmp}/e.jsonl: no pairs in the file; one JSON object per line",
    "blank-lines pairs file": "{tmp}/base.toml: data.pairs: {tmp}/b.jsonl: no pairs in the file; one JSON object per line",
    "a JSON array line": "{tmp}/base.toml: data.pairs: {tmp}/arr.jsonl:1: expected a JSON object with fields id, clean_question, clean_answer, corrupted_question, corrupted_answer",
    "equal answers": "{tmp}/base.toml: data.pairs: {tmp}/eq.jsonl: pair 'a' has equal clean and corrupted answers ('3'); patching needs answers that differ",
    "the same question twice": "{tmp}/base.toml: data.pairs: {tmp}/sameq.jsonl: pair 'a' has the same clean and corrupted question; patching needs questions that differ (change one number)",
    "questions that differ only in CODI's whitespace": "{tmp}/base.toml: data.pairs: pair 'a': the clean and corrupted questions reach tiny-random-codi as the same tokens (they differ only in what its question preparation removes, such as whitespace); change a number",
    "duplicate pair ids": "{tmp}/base.toml: data.pairs: {tmp}/dup.jsonl: pair id 'a' appears twice; ids must be unique",
    "empty pair id": "{tmp}/base.toml: data.pairs: {tmp}/noid.jsonl:1: field 'id' is empty",
    "pair missing a field": "{tmp}/base.toml: data.pairs: {tmp}/half.jsonl:1: field 'clean_answer' is missing or not text; every row needs id, clean_question, clean_answer, corrupted_question, corrupted_answer",
    "a boolean answer": "{tmp}/base.toml: data.pairs: {tmp}/bool.jsonl:1: field 'clean_answer' is missing or not text; every row needs id, clean_question, clean_answer, corrupted_question, corrupted_answer",
    "a list question": "{tmp}/base.toml: data.pairs: {tmp}/list.jsonl:1: field 'clean_question' is missing or not text; every row needs id, clean_question, clean_answer, corrupted_question, corrupted_answer",
    "answers with the same tokens": "{tmp}/base.toml: data.pairs: pair 'a': answers 'pears' and 'grapes' give the same tokens; use answers that differ",
    "a question longer than the context": "{tmp}/base.toml: data.pairs: pair 'a': its clean question needs 619 positions with its answer, more than tiny-random-codi's context of 512; shorten the question or drop the pair",
    "gsm8k without a source": "{tmp}/base.toml: data.pairs: 'gsm8k' generates pairs from a file: set data.source to it",
    "gsm8k source missing": "{tmp}/base.toml: data.pairs: 'no.jsonl' is neither a file (looked at {tmp}/no.jsonl) nor a built-in set or generator (tiny-arithmetic, toy-arithmetic, gsm8k); give a path relative to the recipe's folder",
    "gsm8k source of the wrong shape": "{tmp}/base.toml: data.pairs: {tmp}/g.jsonl:1: expected an object with text fields 'question' and 'answer'",
    "span markers never closed": "{tmp}/base.toml: data.pairs: prompt opens the span with '[[' but never closes it with ']]': 'Tom [[has 3 coins'",
    "both-correct on a plain LM": "{tmp}/base.toml: data.filter: tiny-random-gpt2 cannot decode answers; use filter = 'none' for plain causal LMs",
    "--limit -1": "Invalid value for '--limit': -1 is not in the range x>=1.",
    "--limit 0": "Invalid value for '--limit': 0 is not in the range x>=1.",
    "--limit not a number": "Invalid value for '--limit': 'x' is not a valid integer range.",
    "--resume with --limit": "--resume takes the recipe, overrides and output of the run",
    "--resume with --set": "--resume takes the recipe, overrides and output of the run",
    "--resume with a recipe": "give a RECIPE to start a run, or --resume RUN_DIR to continue one",
    "run with nothing": "give a RECIPE to start a run, or --resume RUN_DIR to continue one",
    "unknown command": "No such command 'frobnicate'.",
    "unknown option": "No such option '--colour'. Did you mean '--out'?",
    "pairs: --out is --input": "--out {gsm8k} is the --input file itself; writing it would destroy the GSM8K data, so nothing was written: choose another --out",
    "pairs: --out names --input another way": "--out {gsm8k_dir}/x/../{gsm8k_name} is the --input file itself; writing it would destroy the GSM8K data, so nothing was written: choose another --out",
    "pairs: --out is a link to --input": "--out {tmp}/link.jsonl is the --input file itself; writing it would destroy the GSM8K data, so nothing was written: choose another --out",
    "pairs: --out is a hard link to --input": "--out {tmp}/hard.jsonl is the --input file itself; writing it would destroy the GSM8K data, so nothing was written: choose another --out",
    "pairs: --out is a folder": "Invalid value for '--out': {tmp} is a folder; give a .jsonl file, or --format dataset to write a dataset folder",
    "pairs: --format dataset over a file": "Invalid value for '--out': {tmp}/f.txt exists and is not an empty folder; nothing was written: choose a new folder",
    "pairs: --n 0": "Invalid value for '--n': 0 is not in the range x>=1.",
    "pairs: input missing": "{tmp}/no.jsonl: cannot read GSM8K file (FileNotFoundError)",
    "pairs: input malformed": "{tmp}/gbad.jsonl:1: malformed JSON (Expecting property name enclosed in double quotes)",
    "pairs: --out below a file": "--out {tmp}/f.txt/p.jsonl: {tmp}/f.txt is a file, not a folder; choose another --out",
    "inspect: missing checkpoint": "{tmp}/base.toml: cannot load the model (codi checkpoint {tmp}/none (base {tmp}/none)): model.base: '{tmp}/none' is not a folder here and not a hub id (owner/name) | model.checkpoint: '{tmp}/none' is not a folder here and not a hub id (owner/name)",
    "report on a failed run": "{run}: not finished: failed: RuntimeError: boom; continue it with: nnpatch run --resume {run}",
    "report on a running-dead run": "{run}: not finished: its process is gone (killed or crashed); continue it with: nnpatch run --resume {run}",
    "report on an interrupted run": "{run}: not finished: interrupted by Ctrl-C; continue it with: nnpatch run --resume {run}",
    "report on a running run": "{run}: not finished: still running as process {pid}; wait for it",
    "report on a non-run folder": "{tmp}: not a run folder (no manifest.json); pass a folder nnpatch run wrote",
    "report on a file": "Invalid value for 'RUN_DIR': Directory '{tmp}/r.txt' is a file.",
    "compare with an interrupted run": "{run}: not finished: interrupted by Ctrl-C; continue it with: nnpatch run --resume {run}",
    "compare into a run folder": "--out {run}/cmp is inside the run folder {run}, which is never edited; choose another --out",
    "resume a non-run folder": "{tmp}: not a run folder (no manifest.json); pass a folder nnpatch run wrote",
    "resume a finished run": "{run}: this run already finished; there is nothing to resume",
    "resume a live run": "{run}: still running as process {pid}; stop it before resuming",
    "resume: not-json": "{tmp}/copies/not-json/manifest.json: unreadable manifest (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); start a new run",
    "resume: not-object": "{tmp}/copies/not-object/manifest.json: not a JSON object (a list); the folder is damaged, start a new run",
    "resume: no-status": "{tmp}/copies/no-status/manifest.json: field 'status' is missing; the folder is damaged (or written by another tool): start a new run",
    "resume: no-fingerprint": "{run}/manifest.json: no fingerprint (written by an older nnpatch); start a new run",
    "resume: no-recipe-file": "{run}/manifest.json: field 'recipe_file' is missing; the folder is damaged (or written by another tool): start a new run",
    "resume: fingerprint-not-object": "{run}/manifest.json: field 'fingerprint' is not a dict; the folder is damaged (or written by another tool): start a new run",
    "resume: fingerprint-no-model": "{run}/manifest.json: fingerprint.model is missing; the folder is damaged: start a new run",
    "resume: overrides-not-list": "{run}/manifest.json: field 'overrides' is not a list of text; the folder is damaged: start a new run",
    "resume: recipe-gone": "{run}/manifest.json: recipe_file {tmp}/gone.toml is gone; put the recipe back there to resume",
    "resume: truncated-shard": "{run}/shards/rows-000000000.npy: is truncated or corrupt (ValueError); it is not a whole shard of this run: delete it and resume again (its rows are recomputed)",
    "resume: stray-shard": "{run}/shards/rows-abc.npy: is not a shard nnpatch writes; it is not a whole shard of this run: delete it and resume again (its rows are recomputed)",
    "resume: narrow-shard": "{run}/shards/rows-000000000.npy: holds float32 (2, 3), not [rows, 7]; it is not a whole shard of this run: delete it and resume again (its rows are recomputed)",
    "resume: shard at no batch": "{run}/shards/rows-000000001.npy: starts at row 1, where no batch of this run does; it is not a whole shard of this run: delete it and resume again (its rows are recomputed)",
    "report: no-results": "{run}: not a finished run folder (results.parquet is missing)",
    "compare: no-results": "{run}: not a finished run folder (results.parquet is missing)",
    "report: garbage-results": "{run}/results.parquet: unreadable (ComputeError: parquet: File out of specification: A Parquet file must contain a header and footer with at least 12 bytes); the run folder is damaged",
    "compare: garbage-results": "{run}/results.parquet: unreadable (ComputeError: parquet: File out of specification: A Parquet file must contain a header and footer with at least 12 bytes); the run folder is damaged",
    "report: resolved-not-object": "{run}/resolved.json: not the resolved recipe nnpatch writes",
    "compare: resolved-not-object": "{run}/resolved.json: not the resolved recipe nnpatch writes",
    "report: no-model": "{run}/manifest.json: field 'model' is missing; the folder is damaged (or written by another tool): start a new run",
    "compare: no-model": "{run}/manifest.json: field 'model' is missing; the folder is damaged (or written by another tool): start a new run",
    "report: finished-not-object": "{tmp}/copies/finished-not-object/manifest.json: not a JSON object (a str); the folder is damaged, start a new run",
    "compare: finished-not-object": "{tmp}/copies/finished-not-object/manifest.json: not a JSON object (a str); the folder is damaged, start a new run",
    "SIGTERM mid-run": "interrupted by SIGTERM; continue with: nnpatch run --resume {run}",
    "SIGHUP mid-run": "interrupted by SIGHUP; continue with: nnpatch run --resume {run}",
    "SIGINT mid-run": "interrupted by Ctrl-C; continue with: nnpatch run --resume {run}",
    "Ctrl-C while the report renders": "interrupted by Ctrl-C; continue with: nnpatch run --resume {run}",
    "disk full writing a shard": "{run}/shards/rows-000000000.npy: No space left on device; continue with: nnpatch run --resume {run}",
    "disk full writing the tables": "{run}/results.parquet: No space left on device; continue with: nnpatch run --resume {run}",
    "disk full before the run starts": "{tmp}/faults/full-start: cannot write a run folder there (No space left on device); nothing was run: free some space or choose another run.output (or --out)",
    "folder uncreatable": "{tmp}/faults/mk: No space left on device; choose another run.output (or --out)",
    "a model folder that asks for its own code": "{tmp}/sweep.toml: model.checkpoint: {tmp}/remote-code/config.json asks for custom code (auto_map); nnpatch never runs code from a model folder: use a model of a standard transformers architecture",
    "a corrupt tokenizer": "{tmp}/sweep.toml: model.checkpoint: {tmp}/bad-tokenizer: cannot load its tokenizer (Expecting ',' delimiter: line 1 column 44 (char 43))",
    "the lens on the attn site": "{tmp}/base.toml: patch.site: Input should be 'resid' or 'thought'; got 'attn'",
    "a direction on the lens": "{tmp}/base.toml: patch.direction: unknown key; remove it or check its spelling against the recipe reference (docs/reference/recipe.md)",
    "top_k zero": "{tmp}/base.toml: patch.top_k: Input should be greater than or equal to 1; got 0",
    "top_k on patching": "{tmp}/base.toml: patch.top_k: unknown key; remove it or check its spelling against the recipe reference (docs/reference/recipe.md)",
    "max_export not a size": "{tmp}/base.toml: run.max_export: write a size such as 2GiB, 512MiB, 1.5GB or a number of bytes; got 'lots'",
    "max_export zero": "{tmp}/base.toml: run.max_export: write a size such as 2GiB, 512MiB, 1.5GB or a number of bytes; got 0",
    "an export over the limit": "{tmp}/base.toml: run.max_export: the export would be 36.0 KiB (144 activations of 64 float32 values), more than 1.0 KiB; raise run.max_export, or narrow patch.layers, patch.positions or data.limit",
    "record: a folder": "{tmp}: (file): is a folder, not a recipe file; give a .toml file",
    "steps not a list": '{tmp}/base.toml: data.pairs: {tmp}/st.jsonl:1: field \'clean_steps\' must be a list of values (each calculator step\'s result, in order), e.g. ["24", "72"]',
    "a boolean step": '{tmp}/base.toml: data.pairs: {tmp}/sb.jsonl:1: field \'corrupted_steps\' must be a list of values (each calculator step\'s result, in order), e.g. ["24", "72"]',
    "scale without steer": "{tmp}/base.toml: patch.scale: applies to source 'steer' only; remove it",
    "heads without the head site": "{tmp}/base.toml: patch.heads: applies to site 'head' only; remove it",
    "a head out of range": "{tmp}/base.toml: patch.heads: head 99 is out of range for tiny-random-codi (heads 0..3); use heads in range or 'all'",
    "a head listed twice": "{tmp}/base.toml: patch.heads: a head is listed twice; list each once; got [1, 1]",
    "heads empty": "{tmp}/base.toml: patch.heads: List should have at least 1 item after validation, not 0; got []",
    "an unknown source": "{tmp}/base.toml: patch.source: Input should be 'donor', 'mean', 'zero', 'random' or 'steer'; got 'noise'",
    "an empty source list": "{tmp}/base.toml: patch.source: List should have at least 1 item after validation, not 0; got []",
    "an unknown site in a list": "{tmp}/base.toml: patch.site: Input should be 'resid', 'attn', 'mlp', 'head' or 'thought'; got 'residual'",
    "the mean of one pair": "{tmp}/base.toml: patch.source: 'mean' averages the other pairs' activations and this run has 1 pair; use more pairs, or another source",
    "steer scale as text": "{tmp}/base.toml: patch.scale: Input should be a valid number; got '2'",
    "head site on the lens": "{tmp}/base.toml: patch.site: Input should be 'resid' or 'thought'; got 'head'",
    "sets on subsets": "{tmp}/base.toml: patch.sets: unknown key; remove it or check its spelling against the recipe reference (docs/reference/recipe.md)",
    "subsets over max_rows": "{tmp}/base.toml: run.max_rows: the plan has 1,512 rows (3 pairs), more than run.max_rows = 10; raise run.max_rows, or narrow patch.layers, patch.positions or data.limit",
    "a grid over max_rows": "{tmp}/base.toml: run.max_rows: the plan has 288 rows (3 pairs), more than run.max_rows = 5; raise run.max_rows, or narrow patch.layers, patch.positions or data.limit",
    "max_rows zero": "{tmp}/base.toml: run.max_rows: Input should be greater than or equal to 1; got 0",
    "fdr zero": "{tmp}/base.toml: stats.fdr: Input should be greater than 0; got 0.0",
    "fdr one": "{tmp}/base.toml: stats.fdr: Input should be less than 1; got 1.0",
    "fdr as a boolean": "{tmp}/base.toml: stats.fdr: Input should be a valid number; got True",
    "fdr as text": "{tmp}/base.toml: stats.fdr: Input should be a valid number; got '5%'",
    "mediation on a plain LM": "{tmp}/base.toml: patch.mode: mediation follows a thought loop and tiny-random-gpt2 has none (a plain LM); use a continuous-thought model (`nnpatch models` lists them)",
    "mediation at the attn site": "{tmp}/base.toml: patch.site: Input should be 'resid' or 'thought'; got 'attn'",
    "a source on mediation": "{tmp}/base.toml: patch.source: unknown key; remove it or check its spelling against the recipe reference (docs/reference/recipe.md)",
    "knockout to eot": "{tmp}/base.toml: patch.to: eot is a query of the answer, not a key before it; drop eot",
    "knockout to a later key": "{tmp}/base.toml: patch.to: key '2' comes after query thought '1': a query never attends a later position, so the cut would change nothing; list keys at or before the earliest query",
    "knockout windows and layers": "{tmp}/base.toml: patch.layer_groups: is given with patch.layers; give one of the two",
    "knockout window out of range": "{tmp}/base.toml: patch.layer_groups.0: layer 9 is out of range for tiny-random-codi (layers 0..3); use layers in range",
    "knockout window listed twice": "{tmp}/base.toml: patch.layer_groups: a window is listed twice; list each once",
    "knockout empty window": "{tmp}/base.toml: patch.layer_groups: List should have at least 1 item after validation, not 0; got []",
    "knockout layer twice in a window": "{tmp}/base.toml: patch.layer_groups: a layer is listed twice; list each once; got [1, 1]",
    "an empty model table": "{tmp}/base.toml: model: names no model; set model.preset (one of tiny-random-codi, tiny-random-codi-gpt2, toy-codi, tiny-random-gpt2, tiny-random-llama), model.kind with its checkpoint, or a checkpoint `nnpatch models` lists; got {{}}",
    "knockout window reversed": "{tmp}/base.toml: patch.layer_groups: the layers are not in ascending order; write a window from its first layer to its last, e.g. [0, 2]; got [2, 0]",
    "steer scale nan": "{tmp}/base.toml: patch.scale: Input should be a finite number; got nan",
    "steer scale -inf": "{tmp}/base.toml: patch.scale: Input should be a finite number; got -inf",
    "fdr inf": "{tmp}/base.toml: stats.fdr: Input should be a finite number; got inf",
    "run seed negative": "{tmp}/base.toml: run.seed: Input should be greater than or equal to 0; got -1",
    "data seed negative": "{tmp}/base.toml: data.seed: Input should be greater than or equal to 0; got -1",
    "empty span markers": "{tmp}/base.toml: data.span_markers: String should have at least 1 character; got ''",
    "overlapping span markers": "{tmp}/base.toml: data.span_markers: the opening and closing markers '[[' and '[' overlap, so a span's end cannot be told from its start; use two different markers such as [\"[[\", \"]]\"]; got ['[[', '[']",
    "max_memory under a byte": "{tmp}/base.toml: run.max_memory: write a size such as 2GiB, 512MiB, 1.5GB or a number of bytes; got '0.5B'",
    "an empty output": "{tmp}/base.toml: run.output: String should have at least 1 character; got ''",
    "an empty W&B project": "{tmp}/base.toml: run.wandb.project: String should have at least 1 character; got ''",
    "knockout from nothing": "{tmp}/base.toml: patch.from: List should have at least 1 item after validation, not 0; got []",
    "knockout from the question": "{tmp}/base.toml: patch.from: Input should be 'answer'; got 'question'",
    "knockout to nothing": "{tmp}/base.toml: patch.to: List should have at least 1 item after validation, not 0; got []",
    "knockout of both runs": "{tmp}/base.toml: patch.run: Input should be 'clean' or 'corrupted'; got 'both'",
    "a direction on knockout": "{tmp}/base.toml: patch.direction: unknown key; remove it or check its spelling against the recipe reference (docs/reference/recipe.md)",
    "knockout on a plain LM": "{tmp}/base.toml: patch.mode: knockout cuts attention inside a thought loop and tiny-random-gpt2 has none; use a continuous-thought model (`nnpatch models` lists them)",
    "knockout from a thought out of range": "{tmp}/base.toml: patch.from: thought position 99 is out of range for tiny-random-codi (thoughts 0..5); use 0..5",
}
