"""Costs and findings of the loopback NDIF, in one bring-up:  python tests/ndif/measure.py

Prints one JSON object: start / deploy / stop seconds, memory of the whole stack, per-trace
latency, remote-vs-local differences, what a site-packages module the server lacks does in a
trace body (with and without nnsight.register), and what nnpatch's own remote path (the dev
venv, nnpatch installed editable) does against the real server.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

from hub_cache import hub_id
from server import ndif_server
from throwaway import installed_throwaway
from venvs import client_python

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent

# Run by the dev venv's python inside the namespace: one nnpatch recipe on the served GPT-2,
# first through nnpatch's own checks, then with /status answered as a matching ndif would.
NNPATCH_RUN = """
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, {tests!r})
from helpers import SPAN_PAIRS, run_recipe, write_pairs, write_recipe
import nnpatch.run.remote as remote
repo, out = {repo!r}, {{}}
folder = Path(tempfile.mkdtemp())
pairs = write_pairs(folder / "pairs.jsonl", SPAN_PAIRS)
recipe = write_recipe(folder, data={{"pairs": str(pairs)}},
                      patch={{"mode": "single", "positions": [0, 2]}},
                      model={{"kind": "causal_lm", "checkpoint": repo}}, run={{"batch_size": 4}})
local = run_recipe(recipe)
def attempt(name):
    try:
        rows = run_recipe(recipe, ["run.remote=true"])
        out[name] = {{"ok": True, "rows": rows.height, "equal": rows.equals(local)}}
    except BaseException as err:
        out[name] = {{"ok": False, "error": (type(err).__name__ + ": " + str(err))[:600]}}
attempt("as_is")
running = {{"repo_id": repo, "application_state": "RUNNING"}}
remote._fetch_status = lambda: {{"deployments": {{"x": running}}}}
attempt("status_patched")
print(json.dumps(out))
"""

# A trace body calling an nnpatch function (nnpatch editable in the dev venv, absent on the server).
NNPATCH_CALL = """
import json, sys, nnsight, torch
from transformers import AutoTokenizer
from nnsight.modeling.transformers import TransformersModel
from nnpatch.engine import metrics
repo = sys.argv[1]
tok = AutoTokenizer.from_pretrained(repo)
model = TransformersModel(repo, tokenizer=tok, revision="main", task="text-generation")
out = {}
for registered in (False, True):
    if registered:
        import nnpatch
        nnsight.register(nnpatch)
    try:
        with model.trace("Tom has 3 apples .", remote=True):
            logits = model.lm_head.output
            kl = metrics._kl(logits, logits).save()
        out[str(registered)] = {"ok": True, "kl": float(kl.abs().max())}
    except Exception as err:
        out[str(registered)] = {"ok": False, "error": (type(err).__name__ + ": " + str(err))[:400]}
print(json.dumps(out))
"""


def last_json(done) -> dict:
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"rc": done.returncode, "stderr": done.stderr[-1500:]}
    return json.loads(lines[-1])


def main() -> None:
    client = client_python()
    report: dict = {}
    with ndif_server(("gpt2", "llama")) as ndif:
        report["memory_after_deploy_gib"] = ndif.memory_bytes() / 2**30
        for family, repeats in (("gpt2", 20), ("llama", 10)):
            got = last_json(
                ndif.run(
                    [client, HERE / "client_trace.py", hub_id(family), "--repeats", str(repeats)],
                    timeout=600,
                )
            )
            lat = sorted(got.pop("latency_s", [0]))
            got["latency_ms"] = {
                "median": round(statistics.median(lat) * 1000),
                "min": round(lat[0] * 1000),
                "max": round(lat[-1] * 1000),
            }
            report[family] = got
        report["memory_after_traces_gib"] = ndif.memory_bytes() / 2**30
        with tempfile.TemporaryDirectory() as tmp, installed_throwaway(client, Path(tmp)):
            for flag in ([], ["--register"]):
                got = last_json(
                    ndif.run(
                        [
                            client,
                            HERE / "client_trace.py",
                            hub_id("gpt2"),
                            "--call",
                            "nnp_throwaway",
                            *flag,
                        ]
                    )
                )
                report[f"site_packages_module{'_registered' if flag else ''}"] = got.get(
                    "call", got
                )
        report["nnpatch_call_in_trace"] = last_json(
            ndif.run_python(NNPATCH_CALL, hub_id("gpt2"), timeout=600)
        )
        report["nnpatch_recipe_remote"] = last_json(
            ndif.run_python(NNPATCH_RUN.format(tests=str(TESTS), repo=hub_id("gpt2")), timeout=900)
        )
    report["timings_s"] = {k: round(v, 1) for k, v in ndif.timings.items()}  # stop_s too
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
