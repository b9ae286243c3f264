"""Goldens from Cywiński et al.'s own CODI code (github.com/cywinski/codi, HEAD).

On a tiny Llama base this script

1. writes a tiny base folder (config, word-level tokenizer with BOS, seeded weights);
2. prepares the tokenizer as their train.py does (right padding; [PAD] added when the
   tokenizer has none; `<|bocot|>`, `<|eocot|>` added as additional special tokens), builds
   THEIR `CODI(model_args, training_args, lora_config, tokenizer)` (their resizing to
   len(tokenizer) without mean resizing, their LoRA wrapping, their prj, their cast of the
   whole module to bf16) with the arguments of configs/llama1b_gsm8k-aug-nl.yaml (the
   answer-only release: remove_eos False, prj, LoRA dropout 0.1; sizes made tiny), sets the
   LoRA B matrices to 0.05 x N(0, 1), and saves what their Trainer pushes:
   `pytorch_model.bin` (the whole module's state dict) and the tokenizer files beside it
   (Trainer also writes training_args.bin, a pickle no loader reads: left out);
3. rewrites the base weights with another seed (their loader reads the base, then the
   checkpoint with strict=False: a key it failed to set would show);
4. loads it with THEIR `CODI.from_pretrained` (device "cpu", as their experiments call it)
   and runs THEIR `CODI.generate` in latent mode (remove_eos False, greedy, 6 latent
   iterations, `sot_token`/`eot_token` looked up by name) on each question alone, and on
   Q1 + Q3 left-padded together as their test.py batches them; questions are prepared as
   their test.py prepares answer-only ones (strip, one pass of double spaces → one, then
   " Output only the answer and nothing else."). Forward hooks record the fed latents (the
   `inputs_embeds` of the latent calls; they equal generate's own `latent_vectors[:K]`) and
   the logits of the first decode steps after `<|eocot|>`; the tokens are generate's
   `sequences`.

Monkeypatches / casts:
- transformers' TrainingArguments refuses bf16 without a GPU; their `from_pretrained`
  builds one with `bf16=True`, so the check (`is_torch_bf16_gpu_available`) answers True
  while their code runs (only arguments are built; nothing runs in bf16 on a GPU);
- while `from_pretrained` runs, their `CODI.__init__`'s `self.to(dtype=torch.bfloat16)`
  becomes `self.to(dtype=torch.float64)` (golden_common.cuda_on_cpu_float64). This matters
  beyond the weights: that cast also rounds Llama's rotary `inv_freq` buffer to bf16
  (0.1 → 0.1001), which no later float64 cast undoes; left in, their float64 run differs
  from an exact one by ~6e-4 in the logits. (Their real bf16 runs do use bf16-rounded
  rotary frequencies; so does zhenyi4's test.py after its `model.to(torch.bfloat16)`.)
Their test.py itself is not run: at HEAD it passes `ablate_latent` to a generate() that has
no such argument (TypeError), so this script calls from_pretrained/generate as their
experiments/*.py do.

Setup: the venv /work/golden-venv of make_codi.py (their requirements.txt pins the same
transformers 4.52.4 / peft 0.15.2), and

    git clone https://github.com/cywinski/codi /tmp/authors/cywinski_codi
    git -C /tmp/authors/cywinski_codi checkout f0bf2fa0f5a54c749395a5d095bc406ad18b8efc

Regenerate (from the repository root):

    /work/golden-venv/bin/python tests/golden/make_cywinski.py \
        --checkout /tmp/authors/cywinski_codi --out tests/golden/cywinski
"""

from __future__ import annotations

import argparse
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

COMMIT = "f0bf2fa0f5a54c749395a5d095bc406ad18b8efc"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]
SETTINGS = {"lora_r": 8, "lora_alpha": 32, "prj_dim": 48}
NUM_LATENT = 6
MARKERS = ["<|bocot|>", "<|eocot|>"]
ANSWER_ONLY = " Output only the answer and nothing else."  # their test.py, answer_only
BATCHES = [[0], [1], [2], [0, 2]]
MAX_NEW = 16
STEPS = 6


def bf16_allowed_on_cpu():
    """TrainingArguments(bf16=True) without a GPU: let its check pass (see the docstring)."""
    import contextlib

    import transformers.training_args as training_args

    @contextlib.contextmanager
    def patched():
        original = training_args.is_torch_bf16_gpu_available
        training_args.is_torch_bf16_gpu_available = lambda: True
        try:
            yield
        finally:
            training_args.is_torch_bf16_gpu_available = original

    return patched()


def build_checkpoint(theirs, base_dir: Path, out: Path) -> Path:
    import transformers
    from peft import LoraConfig, TaskType

    # their train.py: the base's tokenizer, right padding, [PAD] if none, the two markers
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(base_dir), model_max_length=512, padding_side="right", use_fast=False
    )
    if tokenizer.pad_token_id is None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        tokenizer.pad_token_id = tokenizer.convert_tokens_to_ids("[PAD]")
    tokenizer.add_special_tokens({"additional_special_tokens": MARKERS})
    model_args = theirs.ModelArguments(
        model_name_or_path=str(base_dir),
        lora_r=SETTINGS["lora_r"],
        lora_alpha=SETTINGS["lora_alpha"],
        lora_init=True,
        full_precision=True,
        train=True,
    )
    with bf16_allowed_on_cpu():
        training_args = theirs.TrainingArguments(
            output_dir=str(base_dir.parent / "train-out"),
            bf16=True,
            num_latent=NUM_LATENT,
            use_prj=True,
            prj_dim=SETTINGS["prj_dim"],
            prj_dropout=0.0,
            remove_eos=False,
            answer_only=True,
            save_safetensors=False,
        )
    lora_config = LoraConfig(  # the values their train.py passes
        task_type=TaskType.CAUSAL_LM,
        inference_mode=False,
        r=SETTINGS["lora_r"],
        lora_alpha=SETTINGS["lora_alpha"],
        lora_dropout=0.1,
        target_modules=TARGETS,
        init_lora_weights=True,
    )
    torch.manual_seed(2)
    module = theirs.CODI(model_args, training_args, lora_config, tokenizer)
    gentle_lora(module, seed=3)
    checkpoint = out / "checkpoint"
    checkpoint.mkdir(parents=True, exist_ok=True)
    # what Trainer's save (push_to_hub) writes for a plain nn.Module with a tokenizer
    torch.save(module.state_dict(), checkpoint / "pytorch_model.bin")
    tokenizer.save_pretrained(checkpoint)
    return checkpoint


def run_theirs(theirs, base_dir: Path, checkpoint: Path) -> tuple[list, dict, list]:
    loads: list = []
    codi_load = theirs.CODI.load_state_dict

    def load_state_dict(self, state, strict=True, **kwargs):
        result = codi_load(self, state, strict=strict, **kwargs)
        loads.append(result)
        return result

    theirs.CODI.load_state_dict = load_state_dict
    try:
        with bf16_allowed_on_cpu(), cuda_on_cpu_float64(("CODI",)):
            model = theirs.CODI.from_pretrained(
                checkpoint_path=str(checkpoint),
                model_name_or_path=str(base_dir),
                lora_r=SETTINGS["lora_r"],
                lora_alpha=SETTINGS["lora_alpha"],
                num_latent=NUM_LATENT,
                use_prj=True,
                prj_dim=SETTINGS["prj_dim"],
                device="cpu",
                dtype="bfloat16",
                strict=False,
                remove_eos=False,
                full_precision=True,
            )
    finally:
        theirs.CODI.load_state_dict = codi_load
    model.to(torch.float64)  # already float64 (the patched cast); stated for the reader
    tokenizer = model.tokenizer
    recorder = CallRecorder()
    recorder.attach(model.codi)
    batches, tensors = [], {}
    for b, questions in enumerate(BATCHES):
        texts = [QUESTIONS[q].strip().replace("  ", " ") + ANSWER_ONLY for q in questions]
        inputs = tokenizer(texts, return_tensors="pt", padding="longest", padding_side="left")
        recorder.calls.clear()
        with torch.no_grad():
            output = model.generate(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                tokenizer=tokenizer,
                max_new_tokens=MAX_NEW,
                num_latent_iterations=NUM_LATENT,
                greedy=True,
                return_latent_vectors=True,
                remove_eos=False,
                sot_token=tokenizer.convert_tokens_to_ids(MARKERS[0]),
                eot_token=tokenizer.convert_tokens_to_ids(MARKERS[1]),
            )
        calls = recorder.calls
        prefill, latent_calls, steps = calls[0], calls[1 : 1 + NUM_LATENT], calls[1 + NUM_LATENT :]
        fed = torch.cat([c["inputs_embeds"] for c in latent_calls], dim=1)  # [B, K, d]
        if not torch.equal(fed, torch.cat(output["latent_vectors"][:NUM_LATENT], dim=1)):
            raise RuntimeError("the fed latents are not generate's latent_vectors")
        rows = []
        for r, question in enumerate(questions):
            sequence = [int(t) for t in output["sequences"][r]]
            if tokenizer.eos_token_id in sequence:
                sequence = sequence[: sequence.index(tokenizer.eos_token_id) + 1]
            kept = min(STEPS, len(sequence))
            tensors[f"batch{b}.row{r}.latents"] = fed[r]
            tensors[f"batch{b}.row{r}.logits"] = torch.stack([c["logits"][r] for c in steps[:kept]])
            mask = prefill["attention_mask"][r]
            rows.append(
                {
                    "question": question,
                    "input_ids": unpadded(prefill["input_ids"][r], mask),
                    "pad_count": int((mask == 0).sum()),
                    "tokens": sequence,
                    "steps": kept,
                }
            )
        # generate passes no attention mask after the question pass
        batches.append({"questions": questions, "mask_kept": False, "rows": rows})
    recorder.detach()
    return batches, tensors, loads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--commit", default=COMMIT)
    args = parser.parse_args()
    commit = checkout_commit(args.checkout, args.commit)
    sys.path.insert(0, str(args.checkout.resolve()))
    import src.model as theirs

    out = args.out / "llama"
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "tiny-llama-base"  # their code reads the family off the name
        write_base(base_dir, "llama", seed=1, weights=True)
        checkpoint = build_checkpoint(theirs, base_dir, out)
        write_base(base_dir, "llama", seed=99, weights=True)  # not the checkpoint's weights
        batches, tensors, loads = run_theirs(theirs, base_dir, checkpoint)
    write_base(out / "base", "llama", seed=1, weights=False)  # config + tokenizer only
    if len(loads) != 1 or loads[0].missing_keys or loads[0].unexpected_keys:
        raise RuntimeError(f"their load_state_dict did not set exactly the file's keys: {loads}")
    meta = {
        "family": "cywinski",
        "authors_code": "github.com/cywinski/codi",
        "commit": commit,
        "versions": versions(),
        "made_by": "tests/golden/make_cywinski.py",
        "base": "llama",
        "settings": {
            **SETTINGS,
            "num_thoughts": NUM_LATENT,
            "remove_eos": False,
            "answer_only": True,
        },
        "their_calls": "CODI.from_pretrained(device='cpu', dtype='bfloat16', use_prj=True, "
        "remove_eos=False); model.to(float64); CODI.generate(greedy=True, remove_eos=False, "
        f"num_latent_iterations={NUM_LATENT}, max_new_tokens={MAX_NEW}, sot/eot by name)",
        "their_load_state_dict": {"missing": [], "unexpected": 0},
        "questions": QUESTIONS,
        "batches": batches,
        "tensors": "golden.safetensors: batch{b}.row{r}.latents [K, d] (the fed latents), "
        "batch{b}.row{r}.logits [steps, len(tokenizer)] (decode steps after <|eocot|>)",
    }
    write_golden(out, meta, tensors)
    print(f"{out}: {len(batches)} batches")


if __name__ == "__main__":
    main()
