"""nnpatch's trace code reaches a server that does not have nnpatch: each request of a remote
sweep is read back in a fresh process where importing nnpatch fails, as on NDIF's servers.
nnsight's own rehearsal (`remote = "local"`) cannot show this: it re-imports nnpatch from
wherever it is installed while it replays a request."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from cloudpickle import cloudpickle
from helpers import SPAN_PAIRS, write_pairs, write_recipe
from nnsight.schema import request as nnsight_request

import nnpatch.run.prepare
from nnpatch.models.tiny import tiny_random_lm
from nnpatch.run.execute import execute
from nnpatch.run.prepare import prepare

SERVER = textwrap.dedent(
    """
    import sys, importlib.abc
    class NoNnpatch(importlib.abc.MetaPathFinder):  # the server has no nnpatch installed
        def find_spec(self, name, path=None, target=None):
            if name == "nnpatch" or name.startswith("nnpatch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, NoNnpatch())
    from pathlib import Path
    from nnsight.modeling.transformers import TransformersModel
    from nnsight.schema.request import RequestModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder = sys.argv[1]
    lm = AutoModelForCausalLM.from_pretrained(folder)
    model = TransformersModel(lm, tokenizer=AutoTokenizer.from_pretrained(folder))
    objects = model._remoteable_persistent_objects()
    for blob in sorted(Path(sys.argv[2]).glob("*.bin")):
        RequestModel.deserialize(blob.read_bytes(), objects, compress=False)
    print("read", len(list(Path(sys.argv[2]).glob("*.bin"))))
    """
)


@pytest.mark.parametrize("shipped", [True, False], ids=["shipped", "not-shipped"])
def test_every_request_is_readable_on_a_server_without_nnpatch(tmp_path, monkeypatch, shipped):
    """With nnpatch's code shipped by value every request of a sweep (the baseline pass and
    the patched batches) deserializes without nnpatch; without it, the first fails with
    ModuleNotFoundError: the test fails when shipping is dropped."""
    if not shipped:  # as before nnpatch registered itself: pickled by reference
        monkeypatch.setattr(nnpatch.run.prepare, "ship_code", lambda: None)
        kept = {m for m in cloudpickle._PICKLE_BY_VALUE_MODULES if not m.startswith("nnpatch")}
        monkeypatch.setattr(cloudpickle, "_PICKLE_BY_VALUE_MODULES", kept)
    blobs = tmp_path / "requests"
    blobs.mkdir()
    original = nnsight_request.RequestModel.serialize

    def keep(tracer, compress=False):
        blob = original(tracer, compress)
        (blobs / f"{len(list(blobs.iterdir())):04d}.bin").write_bytes(blob)
        return blob

    monkeypatch.setattr(nnsight_request.RequestModel, "serialize", staticmethod(keep))
    folder = tmp_path / "lm"
    model = tiny_random_lm("gpt2")
    model.module.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    recipe = write_recipe(
        tmp_path,
        model={"kind": "causal_lm", "checkpoint": str(folder)},
        data={"pairs": str(write_pairs(tmp_path / "pairs.jsonl", SPAN_PAIRS))},
        patch={"mode": "single", "layers": [0], "positions": [0, 1]},
        metrics={"names": ["logit_diff", "recovery", "kl_to_clean"]},
        run={"batch_size": 4, "output": str(tmp_path / "out"), "report": "none", "remote": "local"},
    )
    execute(prepare(recipe))
    assert len(list(blobs.iterdir())) >= 3
    server = subprocess.run(
        [sys.executable, "-c", SERVER, str(folder), str(blobs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if shipped:
        assert server.returncode == 0, server.stderr[-2000:]
        assert server.stdout.startswith("read")
    else:
        assert server.returncode != 0
        assert "No module named 'nnpatch" in server.stderr
