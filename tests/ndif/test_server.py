"""NDIF's real server on loopback: nnsight `remote=True` against it equals a local run.

Opt-in (NNPATCH_NDIF=1): the first run builds two venvs (~6 GB, minutes); each run brings
the stack up (~40 s), deploys both tiny models (~25-40 s) and holds ~3.5 GB of memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hub_cache import hub_id
from throwaway import installed_throwaway

CLIENT_TRACE = Path(__file__).with_name("client_trace.py")


def trace(ndif, client, *args) -> dict:
    done = ndif.run([client, CLIENT_TRACE, *args], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_remote_trace_equals_local(ndif, client, family):
    """A read and a patch-then-read trace sent to NDIF give the local logits within 1e-5."""
    report = trace(ndif, client, hub_id(family), "--repeats", "3")
    deployed = {m.hub_id: m.model_key for m in ndif.models}
    assert report["model_key"] == deployed[hub_id(family)]
    assert report["patch_changed_logits"]
    assert report["read_max_diff"] <= 1e-5
    assert report["patch_max_diff"] <= 1e-5


def test_site_packages_module_needs_register(ndif, client, tmp_path):
    """A trace body calling a pip-installed (non-editable) module the server lacks fails
    there with ModuleNotFoundError, and runs once the module is nnsight.register-ed."""
    with installed_throwaway(client, tmp_path):
        plain = trace(ndif, client, hub_id("gpt2"), "--call", "nnp_throwaway")["call"]
        registered = trace(ndif, client, hub_id("gpt2"), "--call", "nnp_throwaway", "--register")[
            "call"
        ]
    assert not plain["ok"] and "No module named 'nnp_throwaway'" in plain["error"]
    assert registered["ok"] and registered["max_diff"] <= 1e-5
