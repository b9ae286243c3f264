"""Remote execution: the NDIF code path, rehearsed in-process (nnsight remote="local"), gives
the local rows; each refusal is one line, checked without network access."""

from __future__ import annotations

import polars as pl
import pytest
from click.testing import CliRunner
from helpers import SPAN_PAIRS as PAIRS
from helpers import run_recipe, write_pairs, write_recipe

from nnpatch.cli import main
from nnpatch.models.causal_lm import load_remote_causal_lm
from nnpatch.models.tiny import tiny_random_lm
from nnpatch.recipe import ModelSection

HOSTED = {"kind": "causal_lm", "checkpoint": "openai-community/gpt2"}


def _recipe(tmp_path, **sections):
    pairs = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    return write_recipe(
        tmp_path,
        data={"pairs": str(pairs)},
        patch={"mode": "single", "positions": [0, 2]},
        **sections,
    )


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_remote_local_equals_the_local_run(tmp_path, family):
    """Every trace serialised as for NDIF and executed from the payload: identical rows."""
    recipe = _recipe(tmp_path, model={"preset": f"tiny-random-{family}"}, run={"batch_size": 4})
    local = run_recipe(recipe)
    remote = run_recipe(recipe, ["run.remote='local'"])
    assert local.height > 0 and remote.equals(local)


def test_remote_local_really_goes_through_the_serialiser(tmp_path, monkeypatch):
    from nnsight.intervention.backends.local import LocalSimulationBackend

    calls = []
    real = LocalSimulationBackend.__call__
    monkeypatch.setattr(
        LocalSimulationBackend, "__call__", lambda self, t: calls.append(1) or real(self, t)
    )
    recipe = _recipe(tmp_path, model={"preset": "tiny-random-gpt2"}, run={"batch_size": 4})
    run_recipe(recipe, ["run.remote='local'"])
    assert len(calls) > 1  # the baseline pass and every patch batch


def _run(recipe, *extra):
    result = CliRunner().invoke(main, ["run", str(recipe), *extra])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


def test_no_api_key(tmp_path, monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    line = _run(_recipe(tmp_path, model=HOSTED), "--remote")
    assert "run.remote: no NDIF API key; set NDIF_API_KEY" in line


def test_service_unreachable(tmp_path, monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", "test-key")
    monkeypatch.setattr(CONFIG.API, "HOST", "http://127.0.0.1:9")  # nothing listens there
    line = _run(_recipe(tmp_path, model=HOSTED), "--set", "run.remote=true")
    assert "run.remote: NDIF at http://127.0.0.1:9 is unreachable" in line


def test_model_not_hosted(tmp_path, monkeypatch):
    from nnsight import CONFIG

    import nnpatch.run.remote

    monkeypatch.setattr(CONFIG.API, "APIKEY", "test-key")
    status = {
        "deployments": {
            "a": {"repo_id": "meta-llama/Llama-3.1-70B", "application_state": "RUNNING"},
            "b": {"repo_id": "openai-community/gpt2", "application_state": "DEPLOYING"},
        }
    }
    monkeypatch.setattr(nnpatch.run.remote, "_fetch_status", lambda: status)
    line = _run(_recipe(tmp_path, model=HOSTED), "--set", "run.remote=true")
    assert "model.checkpoint: openai-community/gpt2 is not running on NDIF" in line
    assert "meta-llama/Llama-3.1-70B" in line


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ({"preset": "tiny-random-codi"}, "model.preset"),
        ({"kind": "codi", "checkpoint": "zen-E/CODI-llama3.2-1b-Instruct"}, "model.kind"),
        ({"kind": "coconut", "checkpoint": "x/y"}, "model.kind"),
    ],
)
def test_continuous_thought_models_are_explained(tmp_path, model, field):
    for mode in ("true", "'local'"):
        line = _run(_recipe(tmp_path, model=model), "--set", f"run.remote={mode}")
        assert f"{field}: " in line and "NDIF does not host" in line


def test_remote_model_is_built_without_weights(tmp_path):
    """Only config and tokenizer are read; the parameters stay on the meta device."""
    lm = tiny_random_lm("gpt2")
    lm.module.save_pretrained(tmp_path / "lm")
    lm.tokenizer.save_pretrained(tmp_path / "lm")
    (tmp_path / "lm" / "model.safetensors").unlink()
    model = load_remote_causal_lm(ModelSection(kind="causal_lm", checkpoint=str(tmp_path / "lm")))
    assert next(model.module.parameters()).is_meta
    assert model.num_layers == lm.num_layers and str(model.device) == "cpu"
    assert model.traced() is model.remote_traced


def test_manifest_records_the_remote_mode(tmp_path):
    recipe = _recipe(tmp_path, model={"preset": "tiny-random-gpt2"})
    run_recipe(recipe, ["run.remote='local'"])
    import json

    (manifest,) = (tmp_path / "outputs").glob("*/*/manifest.json")
    assert json.loads(manifest.read_text())["remote"] == "local"
    assert pl.read_parquet(manifest.parent / "results.parquet").height > 0


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("attribution", "attribution takes its gradients with local hooks"),
        ("lens", "the lens applies the model's final norm and head on this machine"),
    ],
)
def test_modes_that_need_local_weights_are_refused_remotely(tmp_path, mode, why):
    """Modes that read the weights here cannot run on NDIF: one line says why."""
    recipe = _recipe(tmp_path, model={"preset": "tiny-random-gpt2"})
    line = _run(recipe, "--set", "run.remote='local'", "--set", f"patch.mode='{mode}'")
    assert f"patch.mode: {why}" in line


# /status as NDIF's own server (ndif 0.1.2) answered on loopback: the running Ray deployment
# names its repo only inside its key; listed models carry a repo_id and a deployment level
NDIF_012_STATUS = {
    "deployments": {
        'e73f9:ModelActor:nnsight.modeling.transformers.TransformersModel:{"repo_id": '
        '"nnpatch-test/tiny-gpt2", "revision": "main", "task": "text-generation"}': {
            "application_state": "RUNNING"
        },
        "nnpatch-test/tiny-llama": {
            "deployment_level": "COLD",
            "repo_id": "nnpatch-test/tiny-llama",
        },
        "nnpatch-test/tiny-gpt2": {"deployment_level": "COLD", "repo_id": "nnpatch-test/tiny-gpt2"},
    }
}


def test_running_models_are_read_from_either_status_layout():
    """A repo is running when a RUNNING deployment names it, in its repo_id (hosted NDIF) or
    in its key's model-key JSON (ndif 0.1.2); a listed COLD model is not running."""
    from nnpatch.run.remote import running_repos

    assert running_repos(NDIF_012_STATUS["deployments"]) == {"nnpatch-test/tiny-gpt2"}
    hosted = {"a": {"repo_id": "openai-community/gpt2", "application_state": "RUNNING"}}
    assert running_repos(hosted) == {"openai-community/gpt2"}


def test_a_listed_model_that_is_not_running_says_its_state(tmp_path, monkeypatch):
    """The deployment's state is read before anything runs: a COLD model is named as such."""
    import nnpatch.run.remote

    monkeypatch.setenv("NDIF_API_KEY", "k")
    monkeypatch.setattr("nnsight.CONFIG.API.APIKEY", "k")
    monkeypatch.setattr(nnpatch.run.remote, "_fetch_status", lambda: NDIF_012_STATUS)
    model = {"kind": "causal_lm", "checkpoint": "nnpatch-test/tiny-llama"}
    line = _run(_recipe(tmp_path, model=model), "--set", "run.remote=true")
    assert "nnpatch-test/tiny-llama is not running on NDIF (listed, deployment level COLD)" in line
    assert "running: nnpatch-test/tiny-gpt2" in line
