"""Every way a request to NDIF can fail mid-sweep ends in one `Error:` line that says what
happened and how to resume, a failed status in the manifest, and the rows already saved
kept. nnsight's remote backend is stood in for at the request (no network here); the real
server's own failures are tried by tests/ndif against NDIF's software."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import SPAN_PAIRS, write_pairs, write_recipe
from nnsight.intervention.backends.remote import RemoteBackend, RemoteError
from nnsight.modeling import huggingface as nnsight_hf

import nnpatch.run.remote
from nnpatch.cli import main

HOST = "http://127.0.0.1:9"


def _hosted(tmp_path, monkeypatch, **run):
    """A remote recipe naming a hub id that an offline Hugging Face cache holds (a remote run
    reads only its config and tokenizer), a key, and a status page listing it as running."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "ndif"))
    from hub_cache import hub_id, write_tiny_models

    cache = tmp_path / "hub"
    write_tiny_models(cache, ("gpt2",))
    repo = hub_id("gpt2")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))  # read at import
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(nnsight_hf._ID_CACHE, repo, repo)  # nnsight asks the Hub otherwise
    monkeypatch.setattr("nnsight.CONFIG.API.APIKEY", "test-key")
    monkeypatch.setattr("nnsight.CONFIG.API.HOST", HOST)
    running = {"deployments": {"a": {"repo_id": repo, "application_state": "RUNNING"}}}
    monkeypatch.setattr(nnpatch.run.remote, "_fetch_status", lambda: running)
    return write_recipe(
        tmp_path,
        model={"kind": "causal_lm", "checkpoint": repo},
        data={"pairs": str(write_pairs(tmp_path / "pairs.jsonl", SPAN_PAIRS))},
        patch={"mode": "single", "layers": [0]},
        run={"batch_size": 4, "output": str(tmp_path / "out"), "report": "none", "remote": True}
        | run,
    )


def _slow(*args, **kwargs):
    time.sleep(30)


FAILURES = {
    "refused": (
        RemoteError("Failed to send request: 401 Unauthorized: bad key"),
        "refused the request (401 Unauthorized: bad key)",
    ),
    "not-deployed": (
        RemoteError("Failed to send request: Model gpt2 is not deployed"),
        "has no such model deployed",
    ),
    "job-error": (
        RemoteError("IndexError: index 9 is out of bounds"),
        "ran the request and it failed (IndexError: index 9 is out of bounds)",
    ),
    "dropped": (ConnectionResetError("Connection reset by peer"), "lost the connection"),
}


@pytest.mark.parametrize("case", [*FAILURES, "timeout"])
def test_a_failed_request_is_one_line_and_a_true_status(tmp_path, monkeypatch, case):
    """Refused, not deployed, a job error, a dropped connection, no answer in time: one
    line naming NDIF's host and what happened, exit 2, status failed, resumable."""
    if case == "timeout":
        recipe = _hosted(tmp_path, monkeypatch, remote_timeout=0.5)
        monkeypatch.setattr(RemoteBackend, "request", _slow)
        expected = "gave no answer within 0.5 s (run.remote_timeout)"
    else:
        recipe = _hosted(tmp_path, monkeypatch)
        error, expected = FAILURES[case]

        def fail(*args, **kwargs):
            raise error

        monkeypatch.setattr(RemoteBackend, "request", fail)
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: NDIF at {HOST}") or "lost the connection to NDIF" in line
    assert expected in line and "continue with: nnpatch run --resume" in line
    (manifest,) = (tmp_path / "out").glob("*/*/manifest.json")
    record = json.loads(manifest.read_text())
    assert record["status"] == "failed" and expected in record["error"]
