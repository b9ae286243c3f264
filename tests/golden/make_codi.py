"""Goldens from the CODI authors' own code: zhenyi4/codi (the reference) and SIM-CoT's CODI.

For each tiny base (GPT-2, Llama) this script

1. writes a tiny base folder (config, word-level tokenizer, seeded random weights);
2. builds THEIR `CODI` module on it (`src/model.py`: their resizing to V + 3, their
   `get_peft_model` LoRA wrapping, their `prj`; SIM-CoT: `use_decoder`, so the module also
   holds their training-only `decoder`), with the arguments their train scripts pass; sets
   the LoRA B matrices to 0.05 x N(0, 1) (zero after init, so the adapters matter as after
   training); saves the whole module's state dict as `pytorch_model.bin`, which is what
   their Trainer's `save_model` writes for a plain nn.Module with `--save_safetensors False`;
3. rewrites the base weights with another seed (their test.py loads the base, then the
   checkpoint with strict=False: any key the checkpoint failed to set would show);
4. imports THEIR `test.py` from the checkout and calls its `evaluation(...)` with the
   arguments of their `scripts/test_*.sh` (sizes changed; batch size 2; greedy), exactly as
   its `__main__` block does, and records with forward hooks what its loop computed: each
   latent vector it feeds back ([K, d], the `inputs_embeds` of its K latent calls) and the
   logits of the first decode steps after `<eot>` (all ids), with the tokens its loop
   appended (read where it decodes them).

Monkeypatches (all in effect only while their loop runs, all observation or environment):
- `load_dataset` (their test.py fetches GSM8K from the hub) → a tiny in-memory test set of
  the questions below; SIM-CoT's `read_json` (files on the authors' cluster) likewise, and
  its `write_json` of results to the cluster → not written;
- "cuda" → "cpu" in torch.tensor / torch.zeros / Tensor.to / Module.to (hard-coded in their
  loop), and their `model.to(torch.bfloat16)` → `model.to(torch.float64)`;
- `--use_cpu True` is added to their arguments: transformers' TrainingArguments refuses
  `--bf16` on a machine without a GPU otherwise (their model is still built in bf16);
- SIM-CoT only: `pdb.set_trace` → no-op (a live breakpoint sits in its decode loop);
- SIM-CoT only: torch's default dtype is float64 while its evaluation runs: its pinned
  transformers 4.46.2 builds GPT-2's causal mask as `torch.full(..., finfo(float64).min)`
  in the default dtype, which overflows float32 ("value cannot be converted to type float
  without overflow") for a float64 model given an attention mask (the question pass).
Their test.py cannot run one question alone (its greedy step squeezes a batch of one to a
0-d tensor), so questions run two at a time: Q1+Q2 (same length: no padding), Q3+Q3, and
Q1+Q3 (Q3 left-padded; their loop drops the attention mask after the question pass, so
that row is batch-dependent: kept as data, not as a single-row golden).

Setup (done once; versions from their requirements.txt, torch as on this machine):

    python -m venv /work/golden-venv            # zhenyi4/codi
    /work/golden-venv/bin/pip install torch==2.13.0 transformers==4.52.4 peft==0.15.2 \
        accelerate==1.7.0 safetensors==0.5.3 datasets==3.6.0 tokenizers==0.21.1 numpy
    python -m venv /work/golden-venv-446        # SIM-CoT (and Coconut)
    /work/golden-venv-446/bin/pip install torch==2.13.0 transformers==4.46.2 peft==0.17.0 \
        accelerate==1.10.0 safetensors==0.6.2 datasets==3.1.0 numpy
    git clone https://github.com/zhenyi4/codi /tmp/authors/zhenyi4_codi
    git -C /tmp/authors/zhenyi4_codi checkout 4fd88d4b76f7f7a4d912c07cfd4796ee9e0a0339
    git clone https://github.com/InternLM/SIM-CoT /tmp/authors/InternLM_SIM-CoT
    git -C /tmp/authors/InternLM_SIM-CoT checkout f3ae9679945baff02ac9b3ad48b6217737cedba1

Regenerate (from the repository root):

    /work/golden-venv/bin/python tests/golden/make_codi.py --family zhenyi4 \
        --checkout /tmp/authors/zhenyi4_codi --out tests/golden/zhenyi4
    /work/golden-venv-446/bin/python tests/golden/make_codi.py --family simcot \
        --checkout /tmp/authors/InternLM_SIM-CoT/CODI --out tests/golden/simcot

(`--commit HASH` names the commit when the checkout is an archive rather than a clone.)
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from golden_common import (  # noqa: E402
    QUESTIONS,
    CallRecorder,
    checkout_commit,
    cuda_on_cpu_float64,
    gentle_lora,
    unpadded,
    versions,
    write_base,
    write_golden,
)

COMMITS = {
    "zhenyi4": "4fd88d4b76f7f7a4d912c07cfd4796ee9e0a0339",
    "simcot": "f3ae9679945baff02ac9b3ad48b6217737cedba1",
}
REPOS = {"zhenyi4": "github.com/zhenyi4/codi", "simcot": "github.com/InternLM/SIM-CoT (CODI/)"}
# their train.py / test.py choose LoRA targets by the base's name
TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
}
# tiny settings per base: LoRA rank and alpha (alpha differs per base so that the loader
# must honour it), prj width (not the hidden size, so it must be read or given)
SETTINGS = {
    "gpt2": {"lora_r": 8, "lora_alpha": 16, "prj_dim": 48},
    "llama": {"lora_r": 8, "lora_alpha": 32, "prj_dim": 48},
}
NUM_LATENT = 6  # every released CODI evaluates 6 latents
# question order for their batches of 2: (Q1, Q2), (Q3, Q3), (Q1, Q3)
ORDER = [0, 1, 2, 2, 0, 2]
BATCH = 2
STEPS = 6  # decode steps whose logits are kept
TOKENS = 16  # greedy tokens kept


def import_theirs(checkout: Path):
    """Their src.model and test.py, imported from the checkout (test.py as a module, so its
    __main__ block does not run; main() below does what that block does)."""
    sys.path.insert(0, str(checkout))
    import src.model as model_module

    spec = importlib.util.spec_from_file_location("their_test", checkout / "test.py")
    test_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_module)
    return model_module, test_module


def build_checkpoint(theirs, family: str, base: str, base_dir: Path, out: Path) -> Path:
    """Their CODI module on the tiny base, as their train scripts build it; LoRA B made
    nonzero; the whole state dict saved as pytorch_model.bin."""
    from peft import LoraConfig, TaskType

    s = SETTINGS[base]
    model_args = theirs.ModelArguments(
        model_name_or_path=str(base_dir),
        lora_r=s["lora_r"],
        lora_alpha=s["lora_alpha"],
        lora_init=True,
        full_precision=True,
        train=True,
        **({"use_decoder": True} if family == "simcot" else {}),
    )
    training_args = theirs.TrainingArguments(
        output_dir=str(base_dir.parent / "train-out"),
        bf16=True,
        use_cpu=True,
        num_latent=NUM_LATENT,
        use_lora=True,
        use_prj=True,
        prj_dim=s["prj_dim"],
        prj_dropout=0.0,
        prj_no_ln=False,
        remove_eos=True,
        save_safetensors=False,
    )
    lora_config = LoraConfig(  # the values their train.py passes
        task_type=TaskType.CAUSAL_LM,
        inference_mode=False,
        r=s["lora_r"],
        lora_alpha=s["lora_alpha"],
        lora_dropout=0.1,
        target_modules=TARGETS[base],
        init_lora_weights=True,
    )
    torch.manual_seed(2)
    module = theirs.CODI(model_args, training_args, lora_config)
    gentle_lora(module, seed=3)
    if family == "simcot":  # a trained decoder differs from the base it was copied from
        with torch.no_grad():
            for param in module.decoder.parameters():
                param.add_(0.01 * torch.randn_like(param))
    checkpoint = out / "checkpoint"
    checkpoint.mkdir(parents=True, exist_ok=True)
    # what Trainer.save_model writes for a plain nn.Module with save_safetensors False
    torch.save(module.state_dict(), checkpoint / "pytorch_model.bin")
    return checkpoint


def their_arguments(base: str, base_dir: Path, checkpoint: Path, work: Path) -> list[str]:
    """scripts/test_gpt2.sh and test_llama1b.sh, sizes changed, batch size 2, --use_cpu."""
    s = SETTINGS[base]
    return [
        "--data_name", "gsm8k",
        "--output_dir", str(work / "eval-out"),
        "--model_name_or_path", str(base_dir),
        "--seed", "11",
        "--model_max_length", "512",
        "--bf16",
        "--use_cpu", "True",
        "--lora_r", str(s["lora_r"]), "--lora_alpha", str(s["lora_alpha"]), "--lora_init",
        "--batch_size", str(BATCH),
        "--greedy", "True",
        "--num_latent", str(NUM_LATENT),
        "--use_prj", "True",
        "--prj_dim", str(s["prj_dim"]),
        "--prj_no_ln", "False",
        "--prj_dropout", "0.0",
        "--inf_latent_iterations", str(NUM_LATENT),
        "--inf_num_iterations", "1",
        "--remove_eos", "True",
        "--use_lora", "True",
        "--ckpt_dir", str(checkpoint),
    ]  # fmt: skip


def run_their_test(theirs, testpy, family: str, argv: list[str]) -> dict:
    """Their evaluation(), as test.py's __main__ calls it, with the recorders attached."""
    import transformers

    parser = transformers.HfArgumentParser(
        (theirs.ModelArguments, theirs.DataArguments, theirs.TrainingArguments)
    )
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    testpy.data_args = data_args  # a global their __main__ block leaves for extract_answer_number

    test_set = [{"question": q, "answer": "#### 0"} for q in (QUESTIONS[i] for i in ORDER)]
    if family == "simcot":
        testpy.read_json = lambda path: test_set
        testpy.write_json = lambda data, path: None
    else:
        testpy.load_dataset = lambda *args, **kwargs: {"test": test_set}

    recorder = CallRecorder()
    seen: dict = {"decoded": [], "load": []}
    codi_init, codi_load = theirs.CODI.__init__, theirs.CODI.load_state_dict
    decode = transformers.PreTrainedTokenizerBase.decode

    def init(self, *args, **kwargs):
        codi_init(self, *args, **kwargs)
        recorder.attach(self.codi)

    def load_state_dict(self, state, strict=True, **kwargs):
        result = codi_load(self, state, strict=strict, **kwargs)
        seen["load"].append(result)
        return result

    def decode_and_note(self, token_ids, *args, **kwargs):
        seen["decoded"].append([int(t) for t in token_ids])
        return decode(self, token_ids, *args, **kwargs)

    import pdb

    set_trace = pdb.set_trace
    theirs.CODI.__init__, theirs.CODI.load_state_dict = init, load_state_dict
    transformers.PreTrainedTokenizerBase.decode = decode_and_note
    pdb.set_trace = lambda *a, **k: None
    if family == "simcot":
        torch.set_default_dtype(torch.float64)  # see the docstring
    try:
        with cuda_on_cpu_float64(("CODI",)):
            accuracy = testpy.evaluation(model_args, data_args, training_args)
    finally:
        torch.set_default_dtype(torch.float32)
        theirs.CODI.__init__, theirs.CODI.load_state_dict = codi_init, codi_load
        transformers.PreTrainedTokenizerBase.decode = decode
        pdb.set_trace = set_trace
        recorder.detach()
    return {"calls": recorder.calls, **seen, "accuracy": accuracy}


def goldens(record: dict) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Split the recorded calls into their batches: the question pass (input_ids), the K
    latent calls (their inputs_embeds are the fed latents), then the decode steps."""
    starts = [i for i, c in enumerate(record["calls"]) if c["input_ids"] is not None]
    bounds = [*starts, len(record["calls"])]
    decoded = iter(record["decoded"])
    batches, tensors = [], {}
    for b, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False)):
        calls = record["calls"][start:stop]
        prefill, latent_calls, steps = calls[0], calls[1 : 1 + NUM_LATENT], calls[1 + NUM_LATENT :]
        if any(
            c["inputs_embeds"] is None or c["inputs_embeds"].shape[1] != 1 for c in latent_calls
        ):
            raise RuntimeError("their loop did not feed one latent per call")
        questions = ORDER[b * BATCH : (b + 1) * BATCH]
        mask = prefill["attention_mask"]
        rows = []
        for r, question in enumerate(questions):
            tokens = next(decoded)
            kept = min(STEPS, len(tokens))
            tensors[f"batch{b}.row{r}.latents"] = torch.stack(
                [c["inputs_embeds"][r, 0] for c in latent_calls]
            )
            tensors[f"batch{b}.row{r}.logits"] = torch.stack([c["logits"][r] for c in steps[:kept]])
            rows.append(
                {
                    "question": question,
                    "input_ids": unpadded(prefill["input_ids"][r], mask[r]),
                    "pad_count": int((mask[r] == 0).sum()),
                    "tokens": tokens[:TOKENS],
                    "steps": kept,
                }
            )
        # their loop passes no attention mask after the question pass
        batches.append({"questions": questions, "mask_kept": False, "rows": rows})
    return batches, tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(COMMITS), required=True)
    parser.add_argument("--checkout", type=Path, required=True, help="their CODI folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--commit", default=None)
    parser.add_argument("--bases", default="gpt2,llama")
    args = parser.parse_args()
    commit = checkout_commit(args.checkout, args.commit or COMMITS[args.family])
    theirs, testpy = import_theirs(args.checkout.resolve())
    for base in args.bases.split(","):
        out = args.out / base
        shutil.rmtree(out, ignore_errors=True)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            base_dir = work / f"tiny-{base}-base"  # their code reads the family off the name
            write_base(base_dir, base, seed=1, weights=True)
            checkpoint = build_checkpoint(theirs, args.family, base, base_dir, out)
            write_base(base_dir, base, seed=99, weights=True)  # not the checkpoint's weights
            argv = their_arguments(base, base_dir, checkpoint, work)
            record = run_their_test(theirs, testpy, args.family, argv)
            shown = [a.replace(str(checkpoint), "<checkpoint>").replace(tmp, "<tmp>") for a in argv]
        write_base(out / "base", base, seed=1, weights=False)  # config + tokenizer only
        loads = record["load"]
        if len(loads) != 1 or loads[0].missing_keys:
            raise RuntimeError(f"their load_state_dict left keys unset: {loads}")
        batches, tensors = goldens(record)
        meta = {
            "family": args.family,
            "authors_code": REPOS[args.family],
            "commit": commit,
            "versions": versions(),
            "made_by": f"tests/golden/make_codi.py --family {args.family} --bases {base}",
            "base": base,
            "settings": {**SETTINGS[base], "num_thoughts": NUM_LATENT, "remove_eos": True},
            "their_arguments": shown,
            "their_load_state_dict": {
                "missing": list(loads[0].missing_keys),
                "unexpected": len(loads[0].unexpected_keys),
            },
            "questions": QUESTIONS,
            "batches": batches,
            "tensors": "golden.safetensors: batch{b}.row{r}.latents [K, d] (the fed latents), "
            "batch{b}.row{r}.logits [steps, V + 3] (decode steps after eot, all ids)",
        }
        write_golden(out, meta, tensors)
        print(f"{out}: {len(batches)} batches, accuracy {record['accuracy']}")


if __name__ == "__main__":
    main()
