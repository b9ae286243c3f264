"""Goldens from facebookresearch/coconut's own code: its `Coconut` class and data pipeline.

On a tiny GPT-2 base this script

1. writes a tiny base folder (config, GPT-2-style byte-level BPE tokenizer, seeded weights);
2. builds the model as their run.py does before training (lines 103-164 at the commit
   below): the base from `from_pretrained`, pad := eos, `add_tokens` for
   `<|start-latent|>`, `<|end-latent|>`, `<|latent|>` (in that order), embeddings resized
   and the new rows set from the `<<` token, then THEIR `Coconut(...)` wrapper; adds
   0.05 x N(0, 1) to the three new rows (trained rows differ from `<<` and from each other)
   and saves `torch.save(model.state_dict(), "checkpoint_15")`: the raw state dict with
   `base_causallm.*` and the `embedding.weight` alias, as their run.py saves it;
3. rewrites the base weights with another seed and rebuilds the model as run.py does for
   evaluation (`args/gsm_coconut_eval.yaml`: coconut, c_thought 2, max_latent_stage 3,
   pad_latent_to_max, resume 15 → stage 5 → 6 latents), then loads the checkpoint with
   their `load_state_dict(saved_weights, strict=False)`;
4. prepares the questions with THEIR `dataset.get_dataset` (question + "\\n") and
   `get_question_latent_dataset` and collates them with THEIR `MyCollator`, then runs
   THEIR `Coconut.generate` (batch size 1, greedy; `output_embedding=True` returns the
   input embeddings with the latents filled in) on each question, and THEIR
   `Coconut.forward` on Q1 + Q4 collated together (their collator left-pads to align the
   latents and passes a mask and position ids: their batched path, used for validation).
   A forward hook on `base_causallm` records the logits at the last position of each call:
   the first answer step is the last position of forward's final pass (the
   `<|end-latent|>` position), later steps are generate's re-runs.

Monkeypatches / casts:
- the model is cast to float64 after loading (their GSM config runs it in float32);
- torch's default dtype is float64 while their generate/forward run: their pinned
  transformers 4.46.2 builds GPT-2's causal mask as `torch.full(..., finfo(float64).min)`
  in the default dtype, which overflows float32 ("value cannot be converted to type float
  without overflow") for any float64 model given an attention mask;
- `datasets.Dataset.map` runs with `num_proc=None` instead of their `num_proc=32` (the same
  function over 3 examples, without 32 worker processes on a 2-core machine).
FSDP/DDP and torch.distributed (which run.py needs) are not used: generate and forward are
called on the module itself, as run.py does through `parallel_model.module`.

Setup: the venv /work/golden-venv-446 of make_codi.py (their requirements.txt pins
transformers 4.46.2, datasets 3.1.0), and

    git clone https://github.com/facebookresearch/coconut /tmp/authors/facebookresearch_coconut
    git -C /tmp/authors/facebookresearch_coconut checkout 27273cb8cca4bb763c041a63b036d0c3b7cbbb48

Regenerate (from the repository root):

    /work/golden-venv-446/bin/python tests/golden/make_coconut.py \
        --checkout /tmp/authors/facebookresearch_coconut --out tests/golden/coconut
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from golden_common import (  # noqa: E402
    ANSWERS,
    QUESTIONS,
    CallRecorder,
    checkout_commit,
    unpadded,
    versions,
    write_base,
    write_golden,
)

COMMIT = "27273cb8cca4bb763c041a63b036d0c3b7cbbb48"
TOKENS = ["<|start-latent|>", "<|end-latent|>", "<|latent|>"]
# args/gsm_coconut_eval.yaml, and the stage its resume (15) gives with 3 epochs per stage
EVAL_CONFIG = {"c_thought": 2, "max_latent_stage": 3, "pad_latent_to_max": True}
STAGE = 15 // 3
NUM_LATENT = 6
CHECKPOINT = "checkpoint_15"
MAX_NEW = 16
STEPS = 6


def build(base_dir: Path, coconut_cls):
    """run.py lines 103-164: base, tokenizer with pad := eos and the three tokens, resized
    embeddings with the new rows set from `<<`, the Coconut wrapper."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    tokenizer.pad_token = tokenizer.eos_token
    for token in TOKENS:
        tokenizer.add_tokens(token)
    start, end, latent = tokenizer.convert_tokens_to_ids(TOKENS)
    model.resize_token_embeddings(len(tokenizer))
    embeddings = model.get_input_embeddings()
    source = tokenizer.convert_tokens_to_ids("<<")
    if source == tokenizer.unk_token_id:
        raise RuntimeError("the tiny tokenizer has no `<<` token")
    for token_id in (latent, start, end):
        embeddings.weight.data[token_id] = embeddings.weight.data[source]
        model.lm_head.weight.data[token_id] = model.lm_head.weight.data[source]
    wrapper = coconut_cls(model, latent, start, end, tokenizer.eos_token_id)
    return wrapper, tokenizer, (start, end, latent)


@contextlib.contextmanager
def serial_map():
    import datasets

    original = datasets.Dataset.map

    def map_serially(self, *args, **kwargs):
        kwargs["num_proc"] = None
        return original(self, *args, **kwargs)

    datasets.Dataset.map = map_serially
    try:
        yield
    finally:
        datasets.Dataset.map = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--commit", default=COMMIT)
    args = parser.parse_args()
    commit = checkout_commit(args.checkout, args.commit)
    sys.path.insert(0, str(args.checkout.resolve()))
    from coconut import Coconut
    from dataset import MyCollator, get_dataset, get_question_latent_dataset
    from utils import Config

    out = args.out / "gpt2"
    shutil.rmtree(out, ignore_errors=True)
    checkpoint = out / "checkpoint"
    checkpoint.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "tiny-gpt2-base"
        write_base(base_dir, "gpt2", seed=1, weights=True)
        torch.manual_seed(2)
        model, tokenizer, (start, end, latent) = build(base_dir, Coconut)
        with torch.no_grad():  # "trained" rows: apart from `<<` and from each other
            weight = model.base_causallm.get_input_embeddings().weight
            weight[[start, end, latent]] += 0.05 * torch.randn(3, weight.shape[1])
        torch.save(model.state_dict(), checkpoint / CHECKPOINT)

        write_base(base_dir, "gpt2", seed=99, weights=True)  # not the checkpoint's weights
        model, tokenizer, (start, end, latent) = build(base_dir, Coconut)
        saved = torch.load(checkpoint / CHECKPOINT, map_location="cpu")
        loaded = model.load_state_dict(saved, strict=False)
        if loaded.missing_keys or loaded.unexpected_keys:
            raise RuntimeError(
                f"their load_state_dict did not set exactly the file's keys: {loaded}"
            )
        model.to(torch.float64)
        model.eval()

        data = [
            {"question": q, "answer": a, "steps": ["<<1+1=2>>"]}
            for q, a in zip(QUESTIONS, ANSWERS, strict=True)
        ]
        path = Path(tmp) / "questions.json"
        path.write_text(json.dumps(data), encoding="utf-8")
        configs = Config(dict(EVAL_CONFIG))
        with serial_map():
            base_dataset = get_dataset(str(path), tokenizer)
            questions = get_question_latent_dataset(
                STAGE, base_dataset, configs, start, latent, end
            )
        collator = MyCollator(tokenizer, latent_id=latent, label_pad_token_id=-100)

        recorder = CallRecorder()
        recorder.attach(model.base_causallm)
        batches, tensors = [], {}
        torch.set_default_dtype(torch.float64)  # see the docstring
        for b, q in enumerate(range(len(QUESTIONS))):
            batch = collator([questions[q]])
            recorder.calls.clear()
            with torch.no_grad():  # run.py's evaluation call, with the analysis output on
                tokens, embeds = model.generate(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    max_new_tokens=MAX_NEW,
                    output_embedding=True,
                )
            ids = [int(t) for t in batch["input_ids"][0]]
            generated = [int(t) for t in tokens[0, len(ids) :]]
            if len(generated) < MAX_NEW:  # it stopped at eos, whose step was computed
                generated.append(tokenizer.eos_token_id)
            passes = NUM_LATENT + 1
            logits = [recorder.calls[passes - 1]["logits"][0]]
            logits += [c["logits"][0] for c in recorder.calls[passes:]]
            kept = min(STEPS, len(generated))
            positions = [i for i, t in enumerate(ids) if t == latent]
            tensors[f"batch{b}.row0.latents"] = embeds[0, positions]
            tensors[f"batch{b}.row0.logits"] = torch.stack(logits[:kept])
            row = _row(q, ids, None, start, latent, end, generated, kept)
            batches.append({"questions": [q], "mask_kept": True, "rows": [row]})

        pair = [0, 3]
        batch = collator([questions[q] for q in pair])
        recorder.calls.clear()
        with torch.no_grad():
            outputs = model(
                batch["input_ids"],
                batch["attention_mask"],
                batch["input_ids"].clone(),  # labels: a placeholder, as generate passes
                batch["position_ids"],
            )
        recorder.detach()
        torch.set_default_dtype(torch.float32)
        b, rows = len(batches), []
        for r, q in enumerate(pair):
            ids = batch["input_ids"][r]
            positions = (ids == latent).nonzero()[:, 0]
            tensors[f"batch{b}.row{r}.latents"] = outputs.inputs_embeds[r, positions]
            tensors[f"batch{b}.row{r}.logits"] = outputs.logits[r, -1:]
            mask = batch["attention_mask"][r]
            rows.append(_row(q, unpadded(ids, mask), mask, start, latent, end, [], 1))
        batches.append({"questions": pair, "mask_kept": True, "rows": rows})

    write_base(out / "base", "gpt2", seed=1, weights=False)  # config + tokenizer only
    meta = {
        "family": "coconut",
        "authors_code": "github.com/facebookresearch/coconut",
        "commit": commit,
        "versions": versions(),
        "made_by": "tests/golden/make_coconut.py",
        "base": "gpt2",
        "settings": {"num_thoughts": NUM_LATENT, **EVAL_CONFIG, "scheduled_stage": STAGE},
        "their_calls": "Coconut.generate(batch of 1, max_new_tokens=16, output_embedding=True)"
        " per question; Coconut.forward on their collated batch of Q1 + Q4",
        "their_load_state_dict": {"missing": [], "unexpected": 0},
        "questions": QUESTIONS,
        "batches": batches,
        "tensors": "golden.safetensors: batch{b}.row{r}.latents [K, d] (the fed latents), "
        "batch{b}.row{r}.logits [steps, V + 3] (answer steps from <|end-latent|> on; the "
        "batched forward keeps only the first)",
    }
    write_golden(out, meta, tensors)
    print(f"{out}: {len(batches)} batches")


def _row(question, ids, mask, start, latent, end, tokens, steps) -> dict:
    """input_ids: the question ids up to and including <|start-latent|> (what a loader
    calls the question); full_input_ids: everything their model read."""
    cut = ids.index(start) + 1
    if ids[cut:] != [latent] * NUM_LATENT + [end]:
        raise RuntimeError(f"unexpected latent layout: {ids}")
    pads = 0 if mask is None else int((mask == 0).sum())
    return {
        "question": question,
        "input_ids": ids[:cut],
        "full_input_ids": ids,
        "pad_count": pads,
        "tokens": tokens,
        "steps": steps,
    }


if __name__ == "__main__":
    main()
