"""The command line: help everywhere, a run end to end, and bad input as one clean line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import GSM8K, ROOT, write_recipe

from nnpatch.cli import main


def _commands(group, path=()) -> list[list[str]]:
    """Every command and subcommand, as the words that reach it."""
    out = [list(path)]
    for name, command in getattr(group, "commands", {}).items():
        out += _commands(command, (*path, name))
    return out


@pytest.mark.parametrize("command", _commands(main), ids=" ".join)
def test_every_command_has_help(command):
    """--help works on the group and on each command."""
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_version():
    """--version prints the package version."""
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and "0.1.0" in result.output


def test_run_writes_a_finished_folder(tmp_path):
    """nnpatch run with --set, --limit and --out: a finished folder and a summary."""
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(ROOT / "recipes" / "chained.toml"),
            "--limit",
            "2",
            "--set",
            "patch.layers=[1]",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "top cells by mean recovery" in result.output
    [folder] = list((tmp_path / "chained").iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    # 2 pairs x 3 thoughts x (patch + control)
    assert manifest["status"] == "finished" and manifest["rows"] == 2 * 3 * 2


def test_validate_ok():
    """validate reports the model, pairs and plan size."""
    result = CliRunner().invoke(main, ["validate", str(ROOT / "recipes" / "layer.toml")])
    assert result.exit_code == 0 and "ok (toy-codi, 64 pairs, 3 patches" in result.output


def test_inspect_describes_the_model():
    """inspect: layers, positions, special ids."""
    result = CliRunner().invoke(main, ["inspect", str(ROOT / "recipes" / "position.toml")])
    assert result.exit_code == 0, result.output
    assert "3 layers" in result.output and "positions: bot, 0, 1, 2, eot" in result.output
    assert "ids: bot 154, eot 155, pad 153" in result.output


def test_inspect_reports_checkpoint_keys(tmp_path):
    """inspect on a release-format checkpoint accounts for its keys."""
    from release_builders import write_codi_release

    _, base, checkpoint = write_codi_release(tmp_path, "llama", "safetensors")
    recipe = write_recipe(
        tmp_path, model={"kind": "codi", "base": str(base), "checkpoint": str(checkpoint)}
    )
    result = CliRunner().invoke(main, ["inspect", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "LoRA merged into 21 modules" in result.output
    assert "absent because tied: lm.lm_head.weight" in result.output


def test_hub_recipe_offline_validates_and_inspect_explains(monkeypatch, tmp_path):
    """Offline: validate passes with a note; inspect exits 2 naming what to download."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    recipe = write_recipe(
        tmp_path,
        model={
            "kind": "codi",
            "base": "meta-llama/Llama-3.2-1B",
            "checkpoint": "zen-E/CODI-llama3.2-1b-Instruct",
        },
    )
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "note: model not checked here" in result.output
    result = CliRunner().invoke(main, ["inspect", str(recipe)])
    assert result.exit_code == 2
    assert "`hf download meta-llama/Llama-3.2-1B`" in result.output


@pytest.mark.parametrize("name", ["position", "layer", "chained", "lens"])
def test_gsm8k_llama1b_recipes_validate_offline(monkeypatch, tmp_path, name):
    """The original experiment's recipes validate with no hub: 57 generated GSM8K pairs."""
    if not GSM8K.exists():
        pytest.skip("GSM8K data not beside the repo")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    recipe = ROOT / "recipes" / "gsm8k-llama1b" / f"{name}.toml"
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "57 pairs" in result.output and "hf download meta-llama/Llama-3.2-1B" in result.output


def test_pairs_gsm8k_command(tmp_path):
    """nnpatch pairs gsm8k writes JSONL pairs and reports the yield."""
    if not GSM8K.exists():
        pytest.skip("GSM8K data not beside the repo")
    out = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(
        main, ["pairs", "gsm8k", "--input", str(GSM8K), "--out", str(out), "--n", "5"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and {"source_index", "old_value", "new_value"} <= set(rows[0])
    assert "kept 5/" in result.output
