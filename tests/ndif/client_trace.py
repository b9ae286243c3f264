"""Client script for the loopback NDIF: one trace run locally and remotely, compared.

    python client_trace.py REPO [--repeats N] [--call MODULE [--register]]

Prints one JSON line: the model key the client minted, the largest |remote - local| for a
read and for a patch-then-read trace, per-trace latencies, and, with --call, what a trace
body calling MODULE.double(...) (a module the server lacks) did.
"""

import argparse
import importlib
import json
import time

import nnsight
import torch
from nnsight.modeling.transformers import TransformersModel
from transformers import AutoTokenizer

PROMPT = "Tom has 3 apples and gets 2 more ."


def read(model, gpt2, remote):
    with model.trace(PROMPT, remote=remote):
        logits = model.lm_head.output.save()  # [1, T, V]
    return logits


def patch_then_read(model, gpt2, remote):
    with model.trace(PROMPT, remote=remote):
        layers = model.transformer.h if gpt2 else model.model.layers
        layers[0].mlp.output[:, 1] = 0  # zero one position's MLP write
        logits = model.lm_head.output.save()
    return logits


def call_module(model, helper, remote):
    with model.trace(PROMPT, remote=remote):
        doubled = helper.double(model.lm_head.output).save()
    return doubled


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("repo")
    args.add_argument("--repeats", type=int, default=10)
    args.add_argument("--call")
    args.add_argument("--register", action="store_true")
    opts = args.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(opts.repo)  # nnsight guesses none offline (W5)
    common = dict(tokenizer=tokenizer, revision="main", task="text-generation")
    remote_model = TransformersModel(opts.repo, **common)  # meta weights: the key is all it sends
    local_model = TransformersModel(opts.repo, dispatch=True, **common)
    gpt2 = hasattr(local_model._module, "transformer")
    report = {"model_key": remote_model.to_model_key()}

    if opts.call:
        helper = importlib.import_module(opts.call)
        if opts.register:
            nnsight.register(helper)
        try:
            got = call_module(remote_model, helper, True)
            want = call_module(local_model, helper, False)
            report["call"] = {"ok": True, "max_diff": (got - want).abs().max().item()}
        except Exception as err:  # noqa: BLE001 - the failure is what is being measured
            report["call"] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:400]}
        print(json.dumps(report))
        return

    for name, trace in (("read", read), ("patch", patch_then_read)):
        local = trace(local_model, gpt2, False)
        remote = trace(remote_model, gpt2, True)
        report[f"{name}_max_diff"] = (remote - local).abs().max().item()
        report[f"{name}_shape"] = list(remote.shape)
    report["patch_changed_logits"] = bool(
        (read(local_model, gpt2, False) != patch_then_read(local_model, gpt2, False)).any()
    )
    latencies = []
    for _ in range(opts.repeats):
        began = time.perf_counter()
        read(remote_model, gpt2, True)
        latencies.append(time.perf_counter() - began)
    report["latency_s"] = latencies
    print(json.dumps(report))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
