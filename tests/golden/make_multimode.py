"""Goldens from Dilgren & Wiegreffe's own code for their "multimode" CODI and Coconut.

Authors' code: github.com/connordilgren/are-lrms-easily-interpretable @ COMMIT below
(`src_codi_multimode/` replaces files of zhenyi4/codi for training; `src_coconut_multimode/`
replaces files of facebookresearch/coconut; `models/`, `dataset_utils/`, `experiments/` are
the analysis code the paper's numbers come from). Nothing here needs zhenyi4's or facebook's
checkouts: the multimode files import only each other.

--family codi (tests/golden/multimode_codi/<base>/), for each tiny base (GPT-2, Llama).
Their README has the multimode CODI files copied into a zhenyi4/codi checkout, so training
and test.py run in zhenyi4's environment (transformers 4.52.4, peft 0.15.2), while their
analysis wrapper runs in this repository's own (transformers 4.46.2, peft 0.15.2). Part 1
runs as a subprocess under --zhenyi4-python and hands its files over in --work:

1. writes a tiny base folder (golden_common's config and tokenizers; the Llama tokenizer
   also gets `<|eot_id|>` as its eos token, as Llama-3.2-1B-Instruct has: their CODI class
   looks that token up by name, and without it a Llama base is treated like GPT-2);
2. builds THEIR `CODI` (`src_codi_multimode/src/model.py`: bocot = V, eocot = V + 1,
   resize to V + 2, their LoRA, input embeddings and lm_head set trainable, their prj) with
   the arguments of their `args_codi_multimode/train_*.sh` (bf16, LoRA dropout 0.1,
   prj with LayerNorm, dropout 0, remove_eos True, 6 latents; sizes made tiny; prj_dim =
   the hidden size, as in every released config and as their inference wrapper assumes);
   sets the LoRA B matrices to 0.05 x N(0, 1) and moves the two new embedding rows by
   0.05 x N(0, 1) (trained rows); saves it with THEIR `CustomTrainer.save_model` (train.py
   L777-795; a plain nn.Module with --save_safetensors False → `pytorch_model.bin`, the
   whole module's state dict). Only pytorch_model.bin is kept (the Trainer also writes the
   tokenizer with `<bocot>`, `<eocot>` added, and training_args.bin);
3. rewrites the base weights with another seed (both of their loaders read the base, then
   the checkpoint; a key the file failed to set would show);
4. runs THEIR `src_codi_multimode/test.py` `evaluation(...)` (the training repository's
   evaluation) in each mode on batches of 2: Q1+Q2, Q3+Q3, Q1+Q3 (Q3 left-padded); latent
   values kept, direct/verbalized ids and tokens kept (their first-step logits are compared
   with the wrapper's). (Under transformers 4.46.2 their test.py always runs the latent loop:
   that version's BatchEncoding.to drops the non-tensor `inference_mode` entry it reads back.)
Part 2, here:
5. runs THEIR analysis pipeline as experiments/dataset_performance/run.py does it (the
   code behind the paper's tables): `MultimodeCODIModel(...).load()` (their
   `MultimodeCODIInference` wrapper, `load_checkpoint` with its codi.→model. remap and its
   0-missing/0-unexpected check), `dataset_utils.base.load_dataset` (their Coconut
   `get_dataset`: question + "\n"), then their `evaluate_model(...)` in each mode
   (latent, direct, verbalized; batch size 1; greedy; 6 latent iterations), whose
   `DatasetAdapter` decodes the question, strips it and tokenizes it again.
Forward hooks on the causal LM record what each loop fed and the last-position logits.

--family coconut (tests/golden/multimode_coconut/<base>/), for each tiny base:

1. tiny base as above;
2. builds the model as their src_coconut_multimode/run.py does for `multimode: True`
   (L106-221: base, tokenizer pad := eos, `<|eot_id|>` looked up for Llama only,
   `add_tokens` `<|bocot|>`, `<|eocot|>`, `<|latent|>` → V, V+1, V+2, resize to
   len(tokenizer), new rows set from `<<`, THEIR `Coconut(...)` with the multimode ids);
   moves the three new rows by 0.05 x N(0, 1); Llama: `model.to(torch.bfloat16)` (their
   Llama yamls set bf16: True, run.py L239-240, before the FSDP state dict is saved);
   `torch.save(model.state_dict(), "checkpoint_N")` (run.py L522-526);
3. rewrites the base weights with another seed;
4. runs THEIR `MultimodeCoconutModel(...).load()` and `evaluate_model(...)` in the three
   modes (their eval wrapper's `prepare_input`: latent = q [eot] <|bocot|> <|latent|>x6
   <|eocot|>); their training-loop validation input for latent mode
   (`get_multimode_eval_dataset`, no <|eocot|>) through `MyCollator` and `Coconut.generate`;
   and `Coconut.forward` on their collated Q1 + Q3 (left-padded; mask and positions kept).

Monkeypatches / casts (all documented, all undone after each run):
- hub → local: their wrapper loads GPT-2's tokenizer as "gpt2" (hub id) → the tiny base
  folder; test.py's `load_dataset("gsm8k", "main")` → the tiny question set;
- cuda → cpu in torch.tensor / torch.zeros / Tensor.to / Module.to (test.py hard-codes
  "cuda"); `--use_cpu True` added to test.py's arguments (transformers refuses --bf16 on a
  machine without a GPU otherwise);
- bf16 → float64: their wrapper's `from_pretrained(torch_dtype=torch.bfloat16)` and
  `self.prj.to(torch.bfloat16)`, test.py's `model.to(torch.bfloat16)`; Coconut: the model
  their loader builds (float32) is cast to float64 after loading;
- torch's default dtype is float64 while their loops run (their pinned transformers 4.46.2
  builds GPT-2's causal mask with the default dtype, which overflows float32 for a float64
  model given an attention mask);
- `datasets.Dataset.map` runs with num_proc=None instead of their num_proc=32;
- max_new_tokens 16 instead of their 256 (the golden keeps the first 16 tokens anyway);
- Llama Coconut: their eval wrapper's eager attention takes its softmax in float32 even
  in float64; the golden keeps it (golden.json cross_checks: its distance from float64
  SDPA, ~3e-7) but leaves out the left-padded batched forward, where that float32 softmax
  turns the float64 mask minimum into -inf and a fully masked pad row into NaN (a cast
  artefact: their float32 run has no NaN);
- observation only: `MultimodeCODIModel.generate` / `MultimodeCoconutModel.generate` /
  `Coconut.forward` are wrapped to note where each question's calls start and what came
  back; `PreTrainedTokenizerBase.decode` notes the token lists test.py decodes.

Setup: /work/golden-venv (make_codi.py; zhenyi4's pins transformers 4.52.4, peft 0.15.2)
for CODI part 1, and for the rest a venv with Dilgren's pins (transformers 4.46.2, peft
0.15.2; torch as on this machine), made from /work/golden-venv-446 with peft 0.15.2 on top:

    /work/golden-venv-446/bin/python -m venv /work/golden-venv-dilgren
    /work/golden-venv-dilgren/bin/pip install peft==0.15.2 --no-deps
    echo /work/golden-venv-446/lib/python3.11/site-packages > \\
        /work/golden-venv-dilgren/lib/python3.11/site-packages/zz_golden_venv_446.pth
    git clone https://github.com/connordilgren/are-lrms-easily-interpretable /tmp/authors/dilgren
    git -C /tmp/authors/dilgren checkout 3483c3d0530377990e45db18bdd48429195e9088

Regenerate (from the repository root; --zhenyi4-python defaults to /work/golden-venv's):

    /work/golden-venv-dilgren/bin/python tests/golden/make_multimode.py --family codi \\
        --checkout /tmp/authors/dilgren --out tests/golden/multimode_codi
    /work/golden-venv-dilgren/bin/python tests/golden/make_multimode.py --family coconut \\
        --checkout /tmp/authors/dilgren --out tests/golden/multimode_coconut

(`--commit HASH` names the commit when the checkout is an archive rather than a clone.)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
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
    base_config,
    build_tokenizer,
    checkout_commit,
    cuda_on_cpu_float64,
    gentle_lora,
    save_tokenizer,
    unpadded,
    versions,
    write_golden,
)

COMMIT = "3483c3d0530377990e45db18bdd48429195e9088"
REPO = "github.com/connordilgren/are-lrms-easily-interpretable"
NUM_LATENT = 6  # experiments/*/run_all.sh: NUM_LATENTS=6; every multimode config trains 6
USED = [0, 1, 2]  # the questions run (Q3: stray and double spaces)
MAX_NEW = 16  # their run_all.sh uses 256
STEPS = 6  # decode steps whose logits are kept
MODE_STEPS = 4  # ... in direct / verbalized mode
TEST_ORDER = [0, 1, 2, 2, 0, 2]  # test.py batches of 2: (Q1, Q2), (Q3, Q3), (Q1, Q3)
TEST_BATCH = 2

CODI_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
}
# tiny LoRA: rank 8; alpha differs per base (released: r 128, alpha 32 everywhere)
CODI_SETTINGS = {"gpt2": {"lora_r": 8, "lora_alpha": 16}, "llama": {"lora_r": 8, "lora_alpha": 32}}
# their yamls: gpt2_gsm8k_multimode (c_thought 2 x max stage 3), llama32-1b_* (1 x 6)
COCONUT_CONFIG = {
    "gpt2": {"c_thought": 2, "max_latent_stage": 3, "pad_latent_to_max": True, "stage": 3},
    "llama": {"c_thought": 1, "max_latent_stage": 6, "pad_latent_to_max": True, "stage": 6},
}
# gpt2-gsm8k-multimode-coconut ships checkpoint_41; the Llama number is arbitrary
COCONUT_FILE = {"gpt2": "checkpoint_41", "llama": "checkpoint_10"}
COCONUT_TOKENS = ["<|bocot|>", "<|eocot|>", "<|latent|>"]


# ----------------------------------------------------------------------------- bases


def tiny_tokenizer(base: str):
    """golden_common's tokenizer; Llama's also has `<|eot_id|>` as eos (Llama-3.2-1B-
    Instruct's eos), added last, so that their name lookup finds it."""
    tokenizer = build_tokenizer(base)
    if base == "llama":
        tokenizer.add_special_tokens({"eos_token": "<|eot_id|>"})
    return tokenizer


def write_base(folder: Path, base: str, seed: int, weights: bool) -> None:
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer(base)
    config = base_config(base, tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, folder, base)
    if weights:
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    else:
        config.save_pretrained(folder)


def write_questions(path: Path) -> None:
    """The tiny test set in their JSON format (question / steps / answer)."""
    data = [{"question": QUESTIONS[q], "answer": ANSWERS[q], "steps": ["<<1+1=2>>"]} for q in USED]
    path.write_text(json.dumps(data), encoding="utf-8")


def finite_or_raise(tensors: dict[str, torch.Tensor]) -> None:
    bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise RuntimeError(f"non-finite golden values: {bad}")


# ----------------------------------------------------------------------------- patches


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


@contextlib.contextmanager
def default_float64():
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(torch.float32)


@contextlib.contextmanager
def wrapper_local_float64(wrapper_module, gpt2_dir: Path):
    """Their MultimodeCODIInference: hub "gpt2" tokenizer → the tiny base folder;
    from_pretrained(torch_dtype=bf16) and prj.to(bf16) → float64."""
    real_model, real_tokenizer = wrapper_module.AutoModelForCausalLM, wrapper_module.AutoTokenizer

    class Model:
        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            if kwargs.get("torch_dtype") in (torch.bfloat16, torch.float16):
                kwargs["torch_dtype"] = torch.float64
            return real_model.from_pretrained(name, *args, **kwargs)

    class Tokenizer:
        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            return real_tokenizer.from_pretrained(
                str(gpt2_dir) if name == "gpt2" else name, *args, **kwargs
            )

    wrapper_module.AutoModelForCausalLM, wrapper_module.AutoTokenizer = Model, Tokenizer
    try:
        with cuda_on_cpu_float64(("Sequential",)):  # their `self.prj.to(torch.bfloat16)`
            yield
    finally:
        wrapper_module.AutoModelForCausalLM = real_model
        wrapper_module.AutoTokenizer = real_tokenizer


class GenerateNotes:
    """Observation only: wraps an object's `generate` to note, per call, where its forward
    calls start in the recorder and what it was given and returned."""

    def __init__(self, owner, recorder: CallRecorder) -> None:
        self.notes: list[dict] = []
        original = owner.generate

        def generate(input_ids, attention_mask, *args, **kwargs):
            start = len(recorder.calls)
            result = original(input_ids, attention_mask, *args, **kwargs)
            self.notes.append(
                {
                    "start": start,
                    "stop": len(recorder.calls),
                    "input_ids": [int(t) for t in input_ids[0]],
                    "result": result,
                    "kwargs": {k: v for k, v in kwargs.items() if isinstance(v, (int, str))},
                }
            )
            return result

        owner.generate = generate


def import_dilgren(checkout: Path):
    """Their analysis packages (models, dataset_utils, experiments) from the checkout root."""
    root = str(checkout)
    if root not in sys.path:
        sys.path.insert(0, root)
    import experiments.dataset_performance.run as performance
    from dataset_utils.base import load_dataset

    return performance, load_dataset


# ----------------------------------------------------------------------------- CODI


def import_codi(checkout: Path):
    """Their multimode src/model.py, train.py and test.py (train.py and test.py as modules,
    so that their __main__ blocks do not run)."""
    folder = checkout / "src_codi_multimode"
    sys.path.insert(0, str(folder))
    import src.model as model_module

    modules = []
    for name in ("train", "test"):
        spec = importlib.util.spec_from_file_location(f"their_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return model_module, *modules


def codi_training_args(theirs, base: str, base_dir: Path, work: Path):
    """args_codi_multimode/train_*_codi_multimode.sh, sizes made tiny, --use_cpu."""
    s = CODI_SETTINGS[base]
    model_args = theirs.ModelArguments(
        model_name_or_path=str(base_dir),
        lora_r=s["lora_r"],
        lora_alpha=s["lora_alpha"],
        lora_init=True,
        full_precision=True,
        train=True,
    )
    training_args = theirs.TrainingArguments(
        output_dir=str(work / "train-out"),
        bf16=True,
        use_cpu=True,
        seed=11,
        model_max_length=512,
        num_latent=NUM_LATENT,
        use_lora=True,
        use_prj=True,
        prj_dim=32,  # the hidden size (released: 768 for GPT-2, 2048 for Llama-3.2-1B)
        prj_dropout=0.0,
        prj_no_ln=False,
        distill_loss_div_std=True,
        remove_eos=True,
        print_ref_model_stats=True,
        train_direct_answer=True,
        direct_loss_factor=1.0,
        save_strategy="no",
        save_safetensors=False,
        report_to=[],
    )
    return model_args, training_args


def build_codi(theirs, train_module, base: str, base_dir: Path, checkpoint: Path, work: Path):
    """Their CODI as train.py builds it; nonzero LoRA B and moved new rows; saved by their
    CustomTrainer.save_model. Returns what was learned about the file."""
    import transformers
    from peft import LoraConfig, TaskType

    s = CODI_SETTINGS[base]
    model_args, training_args = codi_training_args(theirs, base, base_dir, work)
    lora_config = LoraConfig(  # train.py L397-406
        task_type=TaskType.CAUSAL_LM,
        inference_mode=False,
        r=s["lora_r"],
        lora_alpha=s["lora_alpha"],
        lora_dropout=0.1,
        target_modules=CODI_TARGETS[base],
        init_lora_weights=True,
    )
    torch.manual_seed(2)
    module = theirs.CODI(model_args, training_args, lora_config)
    tokenizer = transformers.AutoTokenizer.from_pretrained(  # train.py L410-425
        model_args.model_name_or_path,
        model_max_length=training_args.model_max_length,
        padding_side="right",
        use_fast=False,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.add_tokens(["<bocot>", "<eocot>"], special_tokens=True)

    gentle_lora(module, seed=3)
    embed = module.get_embd(module.codi, module.model_name).weight
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():  # trained rows: apart from the mean-resized init
        rows = [module.bocot_id, module.eocot_id]
        noise = 0.05 * torch.randn(len(rows), embed.shape[1], generator=generator)
        embed[rows] += noise.to(embed.dtype)
    trainer = train_module.CustomTrainer(model=module, tokenizer=tokenizer, args=training_args)
    trainer.save_model(output_dir=str(work / "saved"))
    written = sorted(p.name for p in (work / "saved").iterdir())
    checkpoint.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "saved" / "pytorch_model.bin", checkpoint / "pytorch_model.bin")
    state = torch.load(checkpoint / "pytorch_model.bin", map_location="cpu")
    ids = {
        "V": int(module.codi.config.vocab_size) - 2,
        "bocot": int(module.bocot_id),
        "eocot": int(module.eocot_id),
        "eot": None if module.eot_id is None else int(module.eot_id),
        "use_eot_id": bool(module.use_eot_id),
        "eos": int(tokenizer.eos_token_id),
        "pad": int(tokenizer.pad_token_id),
        "bos": None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id),
        "train_tokenizer_added": {
            "<bocot>": int(tokenizer.convert_tokens_to_ids("<bocot>")),
            "<eocot>": int(tokenizer.convert_tokens_to_ids("<eocot>")),
        },
    }
    trainable = sorted(n for n, p in module.named_parameters() if p.requires_grad)
    info = {
        "trainer_wrote": written,
        "keys": len(state),
        "key_shapes_dtypes": {
            k: [list(v.shape), str(v.dtype).replace("torch.", "")]
            for k, v in state.items()
            if "layers.1" not in k and ".h.1." not in k
        },
        "trainable_non_lora": [n for n in trainable if "lora_" not in n],
    }
    return ids, info


def run_wrapper_codi(checkout, performance, load_dataset, base, base_dir, checkpoint, data):
    """Their MultimodeCODIModel.load() and evaluate_model() in each mode."""
    import models.multimode_codi.multimode_codi_wrapper as wrapper_module
    from models.multimode_codi.multimode_codi_model import MultimodeCODIModel

    s = CODI_SETTINGS[base]
    recorder = CallRecorder()
    loads: list = []
    real_load = torch.nn.Module.load_state_dict

    def load_and_note(self, state, strict=True, **kwargs):
        result = real_load(self, state, strict=strict, **kwargs)
        if type(self).__name__ == "MultimodeCODIInference":
            loads.append(result)
        return result

    torch.nn.Module.load_state_dict = load_and_note
    try:
        with wrapper_local_float64(wrapper_module, base_dir):
            model = MultimodeCODIModel(  # run.py's ModelFactory.create(...) + their kwargs
                model_path=str(checkpoint / "pytorch_model.bin"),
                device="cpu",
                num_latent=NUM_LATENT,
                lora_r=s["lora_r"],
                lora_alpha=s["lora_alpha"],
                model_id=str(base_dir),
            )
            model.load()
    finally:
        torch.nn.Module.load_state_dict = real_load
    inner = model.model  # MultimodeCODIInference
    lm = inner.model  # their PeftModel
    dtypes = sorted({str(p.dtype) for p in inner.parameters()})
    recorder.attach(lm)
    notes = GenerateNotes(model, recorder)
    results = {}
    with serial_map():
        dataset = load_dataset(str(data), tokenizer=model.tokenizer)
    with default_float64():
        for mode in ("latent", "direct", "verbalized"):
            results[mode] = performance.evaluate_model(
                model,
                dataset,
                max_new_tokens=MAX_NEW,
                num_latents=NUM_LATENT,
                mode=mode,
                device="cpu",
            )
    recorder.detach()
    facts = {
        "their_load_state_dict": {
            "missing": [k for r in loads for k in r.missing_keys],
            "unexpected": [k for r in loads for k in r.unexpected_keys],
        },
        "special_token_ids": dict(model.special_tokens),
        "use_eot": bool(inner.use_eot),
        "config_vocab_size_after_resize": int(lm.config.vocab_size),
        "embedding_rows": int(inner.get_embd(lm, inner.model_name).weight.shape[0]),
        "tokenizer_len": len(model.tokenizer),
        "param_dtypes": dtypes,
    }
    embed = inner.get_embd(lm, inner.model_name)
    return recorder.calls, notes.notes, results, facts, embed


def codi_wrapper_goldens(calls, notes, results, ids, embed, tensors):
    """Split their wrapper's calls per question and mode."""
    control_latent = ([ids["eot"]] if ids["use_eot_id"] else []) + [ids["bocot"]]
    control_direct = ([ids["eot"]] if ids["use_eot_id"] else []) + [ids["eocot"]]
    control = {"latent": control_latent, "verbalized": control_latent, "direct": control_direct}
    batches, modes = [], {"direct": [], "verbalized": []}
    per_mode = {m: [n for n in notes if n["kwargs"].get("mode") == m] for m in control}
    for mode, mode_notes in per_mode.items():
        if len(mode_notes) != len(USED):
            raise RuntimeError(f"{mode}: {len(mode_notes)} generate calls")
        for q, note, result in zip(USED, mode_notes, results[mode]["results"], strict=True):
            mine = calls[note["start"] : note["stop"]]
            fed = note["input_ids"] + control[mode]
            prefill = mine[0]["inputs_embeds"][0]
            expect = embed(torch.tensor(fed)).to(prefill.dtype)
            if prefill.shape != expect.shape or not torch.equal(prefill, expect):
                raise RuntimeError(f"{mode} Q{q}: the prefill is not the embedding of {fed}")
            out = [int(t) for t in note["result"].output_ids[0]]
            if mode == "latent":
                latent_calls, steps = mine[1 : 1 + NUM_LATENT], mine[1 + NUM_LATENT :]
                if any(c["inputs_embeds"].shape[1] != 1 for c in latent_calls):
                    raise RuntimeError("their loop did not feed one latent per call")
                if steps[0]["inputs_embeds"].shape[1] != 1 or not torch.equal(
                    steps[0]["inputs_embeds"][0, 0], embed.weight[ids["eocot"]]
                ):
                    raise RuntimeError("the call after the latents is not <eocot>")
                marks = fed + [ids["bocot"]] * NUM_LATENT + [ids["eocot"]]
                if out[: len(marks)] != marks:
                    raise RuntimeError(f"unexpected output layout {out}")
                tokens = out[len(marks) :]
                logits = [c["logits"][0] for c in steps]
            else:
                if out[: len(fed)] != fed:
                    raise RuntimeError(f"unexpected output layout {out}")
                tokens = out[len(fed) :]
                logits = [c["logits"][0] for c in mine]
            if len(tokens) < MAX_NEW:  # it stopped at eos, whose step was computed
                tokens.append(ids["eos"])
            keep = STEPS if mode == "latent" else MODE_STEPS
            kept = min(keep, len(tokens))
            row = {
                "question": q,
                "input_ids": fed,
                "pad_count": 0,
                "tokens": tokens[:MAX_NEW],
                "steps": kept,
                "their_output_text": result["output"],
                "their_predicted_answer": result["predicted_answer"],
            }
            if mode == "latent":
                b = len(batches)
                tensors[f"batch{b}.row0.latents"] = torch.stack(
                    [c["inputs_embeds"][0, 0] for c in latent_calls]
                )
                tensors[f"batch{b}.row0.logits"] = torch.stack(logits[:kept])
                batches.append(
                    {"path": "wrapper", "questions": [q], "mask_kept": True, "rows": [row]}
                )
            else:
                tensors[f"{mode}.q{q}.logits"] = torch.stack(logits[:kept])
                modes[mode].append({"path": "wrapper", **row})
    return batches, modes


def codi_test_arguments(base, base_dir, checkpoint, work, mode):
    s = CODI_SETTINGS[base]
    return [
        "--data_name", "gsm8k",
        "--output_dir", str(work / "eval-out"),
        "--model_name_or_path", str(base_dir),
        "--seed", "11",
        "--model_max_length", "512",
        "--bf16",
        "--use_cpu", "True",
        "--lora_r", str(s["lora_r"]), "--lora_alpha", str(s["lora_alpha"]), "--lora_init",
        "--batch_size", str(TEST_BATCH),
        "--greedy", "True",
        "--num_latent", str(NUM_LATENT),
        "--use_prj", "True",
        "--prj_dim", "32",
        "--prj_no_ln", "False",
        "--prj_dropout", "0.0",
        "--inf_latent_iterations", str(NUM_LATENT),
        "--inf_num_iterations", "1",
        "--remove_eos", "True",
        "--use_lora", "True",
        "--inference_mode", mode,
        "--ckpt_dir", str(checkpoint),
    ]  # fmt: skip


def run_test_py(theirs, testpy, argv):
    """Their evaluation(), as test.py's __main__ calls it, with the recorders attached."""
    import transformers

    parser = transformers.HfArgumentParser(
        (theirs.ModelArguments, theirs.DataArguments, theirs.TrainingArguments)
    )
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    testpy.data_args = data_args  # a global their __main__ leaves for extract_answer_number
    test_set = [{"question": QUESTIONS[q], "answer": f"#### {ANSWERS[q]}"} for q in TEST_ORDER]
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
        if kwargs.get("skip_special_tokens"):  # the per-row decode, not its debug prints
            seen["decoded"].append([int(t) for t in token_ids])
        return decode(self, token_ids, *args, **kwargs)

    theirs.CODI.__init__, theirs.CODI.load_state_dict = init, load_state_dict
    transformers.PreTrainedTokenizerBase.decode = decode_and_note
    try:
        with default_float64(), cuda_on_cpu_float64(("CODI",)):
            accuracy = testpy.evaluation(model_args, data_args, training_args)
    finally:
        theirs.CODI.__init__, theirs.CODI.load_state_dict = codi_init, codi_load
        transformers.PreTrainedTokenizerBase.decode = decode
        recorder.detach()
    return {"calls": recorder.calls, **seen, "accuracy": accuracy}


def codi_test_goldens(record, mode, start_batch, tensors):
    """test.py's calls split into its batches: the question pass (input_ids), then (latent)
    the K latent calls and the <eocot> call, then the decode steps."""
    starts = [i for i, c in enumerate(record["calls"]) if c["input_ids"] is not None]
    bounds = [*starts, len(record["calls"])]
    decoded = iter(record["decoded"])
    batches = []
    for b, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False)):
        calls = record["calls"][start:stop]
        prefill = calls[0]
        if mode == "latent":
            latent_calls = calls[1 : 1 + NUM_LATENT]
            steps = calls[1 + NUM_LATENT :]
            if any(c["inputs_embeds"].shape[1] != 1 for c in latent_calls):
                raise RuntimeError("their loop did not feed one latent per call")
            if steps[0]["inputs_embeds"].shape[1] != 1:
                raise RuntimeError("expected one <eocot> embedding after the latents")
        else:
            steps = calls
        questions = TEST_ORDER[b * TEST_BATCH : (b + 1) * TEST_BATCH]
        mask = prefill["attention_mask"]
        rows = []
        for r, question in enumerate(questions):
            tokens = next(decoded)
            kept = min(STEPS, len(tokens))
            row = {
                "question": question,
                "input_ids": unpadded(prefill["input_ids"][r], mask[r]),
                "pad_count": int((mask[r] == 0).sum()),
                "tokens": tokens[:MAX_NEW],
                "steps": kept,
            }
            if mode == "latent":
                key = f"batch{start_batch + b}.row{r}"
                tensors[f"{key}.latents"] = torch.stack(
                    [c["inputs_embeds"][r, 0] for c in latent_calls]
                )
                tensors[f"{key}.logits"] = torch.stack([c["logits"][r] for c in steps[:kept]])
            else:
                row["first_step_logits"] = steps[0]["logits"][r]  # compared, not stored
            rows.append(row)
        # their loop passes no attention mask after the question pass
        batches.append(
            {"path": "test.py", "questions": questions, "mask_kept": False, "rows": rows}
        )
    return batches


def codi_zhenyi4_part(args) -> None:
    """Part 1, in zhenyi4/codi's environment (where their multimode src/model.py, train.py
    and test.py are meant to run): base folders, the checkpoint, test.py in three modes.
    Everything is left in --work for part 2."""
    theirs, train_module, testpy = import_codi(args.checkout)
    for base in args.bases.split(","):
        work = args.work / base
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        base_dir = work / f"tiny-{base}-base"  # their code reads the family off the name
        checkpoint = work / "checkpoint"
        write_base(base_dir, base, seed=1, weights=True)
        ids, file_info = build_codi(theirs, train_module, base, base_dir, checkpoint, work)
        write_base(base_dir, base, seed=99, weights=True)  # not the checkpoint's weights
        records, shown = {}, None
        for mode in ("latent", "direct", "verbalized"):
            argv = codi_test_arguments(base, base_dir, checkpoint, work, mode)
            record = run_test_py(theirs, testpy, argv)
            if len(record["load"]) != 1 or record["load"][0].missing_keys:
                raise RuntimeError(f"test.py's load left keys unset: {record['load']}")
            records[mode] = record
            if shown is None:
                shown = [
                    a.replace(str(checkpoint), "<checkpoint>").replace(str(work), "<tmp>")
                    for a in argv
                ]
                shown[shown.index("--inference_mode") + 1] = "<mode>"
        tensors: dict[str, torch.Tensor] = {}
        batches = codi_test_goldens(records["latent"], "latent", 0, tensors)
        other = {
            m: [row for b in codi_test_goldens(records[m], m, 0, {}) for row in b["rows"]]
            for m in ("direct", "verbalized")
        }
        torch.save(
            {
                "ids": ids,
                "file_info": file_info,
                "batches": batches,
                "other_modes": other,
                "tensors": tensors,
                "arguments": shown,
                "unexpected": len(records["latent"]["load"][0].unexpected_keys),
                "accuracy": {m: r["accuracy"] for m, r in records.items()},
                "versions": versions(),
            },
            work / "zhenyi4_part.pt",
        )
        print(f"{work}: checkpoint and test.py records written")


def make_codi(args, commit) -> None:
    """Part 1 in a subprocess under --zhenyi4-python, then part 2 here (Dilgren's
    environment): their wrapper, and the golden folder."""
    import subprocess

    subprocess.run(
        [str(args.zhenyi4_python), str(Path(__file__).resolve()), "--family", "codi",
         "--part", "zhenyi4", "--checkout", str(args.checkout), "--out", str(args.out),
         "--work", str(args.work), "--bases", args.bases],
        check=True,
    )  # fmt: skip
    performance, load_dataset = import_dilgren(args.checkout)
    for base in args.bases.split(","):
        work = args.work / base
        part1 = torch.load(work / "zhenyi4_part.pt", map_location="cpu", weights_only=False)
        ids = part1["ids"]
        base_dir = work / f"tiny-{base}-base"
        checkpoint = work / "checkpoint"
        data = work / "questions.json"
        write_questions(data)
        calls, notes, results, wrapper_facts, embed = run_wrapper_codi(
            args.checkout, performance, load_dataset, base, base_dir, checkpoint, data
        )
        if (
            wrapper_facts["their_load_state_dict"]["missing"]
            or wrapper_facts["their_load_state_dict"]["unexpected"]
        ):
            raise RuntimeError(f"their wrapper's load: {wrapper_facts['their_load_state_dict']}")
        tensors: dict[str, torch.Tensor] = {}
        batches, modes = codi_wrapper_goldens(calls, notes, results, ids, embed, tensors)
        # test.py's latent batches follow the wrapper's
        offset = len(batches)
        for key, value in part1["tensors"].items():
            b, rest = key.split(".", 1)
            tensors[f"batch{int(b[5:]) + offset}.{rest}"] = value
        batches += part1["batches"]
        checks = {}
        for mode, rows in part1["other_modes"].items():
            worst = 0.0
            wrapper_rows = {row["question"]: row for row in modes[mode]}
            seen_rows: dict = {}
            for row in rows:
                logits = row.pop("first_step_logits")
                mine = wrapper_rows.get(row["question"])
                if row["pad_count"] == 0 and mine and mine["input_ids"] == row["input_ids"]:
                    first = tensors[f"{mode}.q{row['question']}.logits"][0]
                    worst = max(worst, float((logits - first).abs().max()))
                if row["pad_count"] == 0:
                    seen_rows.setdefault(row["question"], row)
            for _, row in sorted(seen_rows.items()):
                modes[mode].append({"path": "test.py", **row})
            checks[f"{mode}: |test.py - wrapper| first-step logits, same ids, no pad"] = worst
        wrapper_rows = {
            b["rows"][0]["question"]: (i, b["rows"][0])
            for i, b in enumerate(batches)
            if b["path"] == "wrapper"
        }
        worst = {"latents": 0.0, "logits": 0.0}
        for i, batch in enumerate(batches):
            if batch["path"] != "test.py":
                continue
            for r, row in enumerate(batch["rows"]):
                mine = wrapper_rows.get(row["question"])
                if row["pad_count"] or not mine or mine[1]["input_ids"] != row["input_ids"]:
                    continue
                for part in ("latents", "logits"):
                    a = tensors[f"batch{i}.row{r}.{part}"]
                    w = tensors[f"batch{mine[0]}.row0.{part}"]
                    n = min(len(a), len(w))
                    worst[part] = max(worst[part], float((a[:n] - w[:n]).abs().max()))
        checks["latent: |test.py - wrapper|, same ids, no pad"] = worst

        out = args.out / base
        shutil.rmtree(out, ignore_errors=True)
        (out / "checkpoint").mkdir(parents=True)
        shutil.copy(checkpoint / "pytorch_model.bin", out / "checkpoint" / "pytorch_model.bin")
        (out / "base").mkdir()
        for path in base_dir.iterdir():  # config + tokenizer, not the weights
            if path.suffix != ".safetensors" and path.name != "generation_config.json":
                shutil.copy(path, out / "base" / path.name)
        meta = {
            "family": "multimode_codi",
            "authors_code": REPO,
            "commit": commit,
            "versions": {
                "wrapper (Dilgren's requirements.txt)": versions(),
                "checkpoint and test.py (zhenyi4/codi's requirements.txt)": part1["versions"],
            },
            "made_by": f"tests/golden/make_multimode.py --family codi --bases {base}",
            "base": base,
            "settings": {
                **CODI_SETTINGS[base],
                "prj_dim": 32,
                "prj_no_ln": False,
                "num_thoughts": NUM_LATENT,
                "remove_eos": True,
                "use_eot_id": ids["use_eot_id"],
            },
            "special_ids": ids,
            "checkpoint_file": {"path": "checkpoint/pytorch_model.bin", **part1["file_info"]},
            "wrapper": wrapper_facts,
            "their_calls": {
                "wrapper": "MultimodeCODIModel(model_path=<checkpoint>/pytorch_model.bin, "
                "device='cpu', num_latent=6, lora_r, lora_alpha, model_id=<base>).load(); "
                "load_dataset(<questions.json>, model.tokenizer); evaluate_model(model, "
                "dataset, max_new_tokens=16, num_latents=6, mode=m) for m in latent, direct, "
                "verbalized (batch size 1, greedy)",
                "test.py": part1["arguments"],
            },
            "their_load_state_dict": {"missing": [], "unexpected": part1["unexpected"]},
            "test_py_accuracy": part1["accuracy"],
            "questions": QUESTIONS,
            "batches": batches,
            "modes": modes,
            "cross_checks": checks,
            "tensors": "golden.safetensors: batch{b}.row{r}.latents [K, d] (the fed latents), "
            "batch{b}.row{r}.logits [steps, V + 2] (latent mode: decode steps after <eocot>, "
            "all ids); {direct,verbalized}.q{i}.logits [steps, V + 2] (their wrapper, from "
            "the step after the control token)",
        }
        finite_or_raise(tensors)
        write_golden(out, meta, tensors)
        print(f"{out}: {len(batches)} batches; checks {checks}")


# ----------------------------------------------------------------------------- Coconut


def build_coconut(coconut_cls, base: str, base_dir: Path):
    """src_coconut_multimode/run.py L106-221 with multimode: True."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_id = str(base_dir)
    model = AutoModelForCausalLM.from_pretrained(model_id)
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    tokenizer.pad_token = tokenizer.eos_token
    use_eot = "llama" in model_id.lower()
    if use_eot:
        eot_id = tokenizer.convert_tokens_to_ids("<|eot_id|>")
        if eot_id == tokenizer.unk_token_id:
            raise RuntimeError("the tiny Llama tokenizer has no <|eot_id|>")
    else:
        eot_id = None
    for token in COCONUT_TOKENS:
        tokenizer.add_tokens(token)
    bocot_id, eocot_id, latent_id = tokenizer.convert_tokens_to_ids(COCONUT_TOKENS)
    model.resize_token_embeddings(len(tokenizer))
    embeddings = model.get_input_embeddings()
    target_id = tokenizer.convert_tokens_to_ids("<<")
    if target_id == tokenizer.unk_token_id:
        raise RuntimeError("the tiny tokenizer has no `<<` token")
    for token_id in (bocot_id, eocot_id, latent_id):
        embeddings.weight.data[token_id] = embeddings.weight.data[target_id]
        model.lm_head.weight.data[token_id] = model.lm_head.weight.data[target_id]
    wrapper = coconut_cls(
        model, latent_id, bocot_id, eocot_id, tokenizer.eos_token_id,
        eot_token_id=eot_id, bocot_token_id=bocot_id, eocot_token_id=eocot_id,
        loss_weights={"alpha": 1.0, "beta": 1.0, "gamma": 1.0},
    )  # fmt: skip
    ids = {
        "V": len(tokenizer) - 3,
        "bocot": bocot_id,
        "eocot": eocot_id,
        "latent": latent_id,
        "eot": eot_id,
        "use_eot": use_eot,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "bos": tokenizer.bos_token_id,
        "init_from": {"<<": target_id},
    }
    return wrapper, tokenizer, ids


def coconut_row(q, ids, mask, marks, tokens, steps) -> dict:
    """input_ids: the question ids up to and including <|bocot|>; full_input_ids:
    everything their model read."""
    cut = ids.index(marks["bocot"]) + 1
    pads = 0 if mask is None else int((mask == 0).sum())
    return {
        "question": q,
        "input_ids": ids[:cut],
        "full_input_ids": ids,
        "pad_count": pads,
        "tokens": tokens,
        "steps": steps,
    }


def generated_tokens(ids_in: list[int], out: list[int], eos: int) -> list[int]:
    """The tokens their generate appended, plus eos when it stopped there (generate
    computes the eos step but does not append it, except as the very first token)."""
    tokens = out[len(ids_in) :]
    if (not tokens or tokens[-1] != eos) and len(tokens) < MAX_NEW:
        tokens.append(eos)
    return tokens


def eager_vs_sdpa(model_cls, checkpoint: Path, row: dict, golden: torch.Tensor, base) -> float:
    """Their eval wrapper loads Llama with eager attention, whose softmax runs in float32
    even for a float64 model: how far that is from float64 SDPA (a loader's likely choice).
    The same load with `attn_implementation="sdpa"`; the golden's first decode steps."""
    import models.multimode_coconut.multimode_coconut_model as module

    real = module.AutoModelForCausalLM

    class Sdpa:
        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            kwargs["attn_implementation"] = "sdpa"
            return real.from_pretrained(name, *args, **kwargs)

    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / f"tiny-{base}-base"
        write_base(base_dir, base, seed=99, weights=True)
        module.AutoModelForCausalLM = Sdpa
        try:
            mm = model_cls(
                model_path=str(checkpoint),
                device="cpu",
                model_id=str(base_dir),
                num_latent=NUM_LATENT,
            )
            mm.load()
        finally:
            module.AutoModelForCausalLM = real
    mm.model.to(torch.float64)
    recorder = CallRecorder()
    recorder.attach(mm.model.base_causallm)
    ids = torch.tensor([row["full_input_ids"]])
    with default_float64(), torch.no_grad():
        mm.model.generate(ids, torch.ones_like(ids), max_new_tokens=row["steps"], mode="latent")
    recorder.detach()
    passes = NUM_LATENT + 1
    mine = [recorder.calls[passes - 1]["logits"][0]]
    mine += [c["logits"][0] for c in recorder.calls[passes:]]
    n = min(len(mine), len(golden))
    return float((torch.stack(mine[:n]) - golden[:n]).abs().max())


def make_coconut(args, commit) -> None:
    performance, load_dataset = import_dilgren(args.checkout)
    from models.multimode_coconut.multimode_coconut_model import MultimodeCoconutModel
    from src_coconut_multimode.coconut import Coconut
    from src_coconut_multimode.dataset import MyCollator, get_multimode_eval_dataset
    from src_coconut_multimode.utils import Config

    theirs = (
        performance,
        load_dataset,
        MultimodeCoconutModel,
        Coconut,
        MyCollator,
        get_multimode_eval_dataset,
        Config,
    )
    for base in args.bases.split(","):
        coconut_one_base(args, commit, base, theirs)


def coconut_one_base(args, commit, base: str, theirs) -> None:
    """One tiny base: the checkpoint, their runs, the golden folder."""
    (
        performance,
        load_dataset,
        MultimodeCoconutModel,
        Coconut,
        MyCollator,
        get_multimode_eval_dataset,
        Config,
    ) = theirs
    out = args.out / base
    shutil.rmtree(out, ignore_errors=True)
    checkpoint = out / "checkpoint"
    checkpoint.mkdir(parents=True)
    name = COCONUT_FILE[base]
    tensors: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / f"tiny-{base}-base"  # their code reads the family off it
        write_base(base_dir, base, seed=1, weights=True)
        torch.manual_seed(2)
        model, tokenizer, ids = build_coconut(Coconut, base, base_dir)
        with torch.no_grad():  # "trained" rows: apart from `<<` and from each other
            weight = model.get_embedding().weight
            rows = [ids["bocot"], ids["eocot"], ids["latent"]]
            weight[rows] += 0.05 * torch.randn(3, weight.shape[1])
        if base == "llama":  # their Llama yamls: bf16: True → model.to(bfloat16)
            model.to(torch.bfloat16)
        torch.save(model.state_dict(), checkpoint / name)
        state = torch.load(checkpoint / name, map_location="cpu")
        file_info = {
            "path": f"checkpoint/{name}",
            "keys": len(state),
            "key_shapes_dtypes": {
                k: [list(v.shape), str(v.dtype).replace("torch.", "")]
                for k, v in state.items()
                if "layers.1" not in k and ".h.1." not in k
            },
        }
        del model, state

        write_base(base_dir, base, seed=99, weights=True)  # not the checkpoint's weights
        data = Path(tmp) / "questions.json"
        write_questions(data)
        loaded: list = []
        real_load = torch.nn.Module.load_state_dict

        def load_and_note(self, state, strict=True, **kwargs):
            result = real_load(self, state, strict=strict, **kwargs)
            if type(self).__name__ == "Coconut":
                loaded.append(result)
            return result

        torch.nn.Module.load_state_dict = load_and_note
        try:
            mm = MultimodeCoconutModel(
                model_path=str(checkpoint / name),
                device="cpu",
                model_id=str(base_dir),
                num_latent=NUM_LATENT,
            )
            mm.load()
        finally:
            torch.nn.Module.load_state_dict = real_load
        if len(loaded) != 1 or loaded[0].missing_keys or loaded[0].unexpected_keys:
            raise RuntimeError(f"their load did not set exactly the file's keys: {loaded}")
        attn = mm.model.base_causallm.config._attn_implementation
        mm.model.to(torch.float64)  # documented cast (their eval runs float32)
        marks = dict(mm.special_tokens)
        recorder = CallRecorder()
        recorder.attach(mm.model.base_causallm)
        notes = GenerateNotes(mm, recorder)
        forwards: list = []
        real_forward = Coconut.forward

        def forward_and_note(self, *a, **k):
            result = real_forward(self, *a, **k)
            forwards.append((len(recorder.calls), result))
            return result

        Coconut.forward = forward_and_note
        results = {}
        try:
            with serial_map():
                dataset = load_dataset(str(data), tokenizer=mm.tokenizer)
            with default_float64():
                for mode in ("latent", "direct", "verbalized"):
                    results[mode] = performance.evaluate_model(
                        mm,
                        dataset,
                        max_new_tokens=MAX_NEW,
                        num_latents=NUM_LATENT,
                        mode=mode,
                        device="cpu",
                    )
                # their training-loop validation (run.py L589-640): no <|eocot|> after
                # the latents; MyCollator; generate(mode="latent")
                cfg = COCONUT_CONFIG[base]
                configs = Config({k: v for k, v in cfg.items() if k != "stage"})
                with serial_map():
                    val = get_multimode_eval_dataset(
                        cfg["stage"],
                        dataset,
                        configs,
                        marks["eot"],
                        marks["bocot"],
                        marks["eocot"],
                        marks["latent"],
                        mode="latent",
                        use_eot=mm.use_eot,
                    )
                collator = MyCollator(
                    mm.tokenizer, latent_id=marks["latent"], label_pad_token_id=-100
                )
                validation = []
                for q in range(len(USED)):
                    batch = collator([val[q]])
                    start = len(recorder.calls)
                    with torch.no_grad():
                        tokens = mm.model.generate(
                            input_ids=batch["input_ids"],
                            attention_mask=batch["attention_mask"],
                            max_new_tokens=MAX_NEW,
                            synced_gpus=False,
                            mode="latent",
                        )
                    validation.append((batch, tokens, start, len(recorder.calls)))
                # their batched path: Coconut.forward on Q1 + Q3 collated by MyCollator
                # (left pads align the latents; mask and positions kept), latent inputs
                # as their eval wrapper prepares them
                pair = [0, 2]
                feats = []
                for q in pair:
                    text = mm.tokenizer.decode(
                        dataset[q]["question_tokenized"], skip_special_tokens=True
                    ).strip()
                    prepared = mm.prepare_input(text, mode="latent", num_latents=NUM_LATENT)
                    tok = [int(t) for t in prepared["input_ids"][0]]
                    feats.append(
                        {
                            "input_ids": tok,
                            "attention_mask": [1] * len(tok),
                            "position_ids": list(range(len(tok))),
                        }
                    )
                collated = collator(feats)
                with torch.no_grad():
                    pair_out = mm.model(
                        collated["input_ids"],
                        collated["attention_mask"],
                        collated["input_ids"].clone(),
                        collated["position_ids"],
                    )
        finally:
            Coconut.forward = real_forward
            recorder.detach()

    eos = mm.tokenizer.eos_token_id
    batches, modes = [], {"direct": [], "verbalized": []}
    calls = recorder.calls
    forward_at = {stop: res for stop, res in forwards}
    for mode in ("latent", "direct", "verbalized"):
        mode_notes = [n for n in notes.notes if n["kwargs"].get("mode") == mode]
        if len(mode_notes) != len(USED):
            raise RuntimeError(f"{mode}: {len(mode_notes)} generate calls")
        for q, note, result in zip(USED, mode_notes, results[mode]["results"], strict=True):
            fed = note["input_ids"]
            out_ids = [int(t) for t in note["result"].output_ids[0]]
            tokens = generated_tokens(fed, out_ids, eos)
            mine = calls[note["start"] : note["stop"]]
            if mode == "latent":
                passes = NUM_LATENT + 1
                res = forward_at.get(note["start"] + passes)
                if res is None:
                    raise RuntimeError("their forward did not make K + 1 passes")
                logits = [mine[passes - 1]["logits"][0]] + [c["logits"][0] for c in mine[passes:]]
                positions = [i for i, t in enumerate(fed) if t == marks["latent"]]
                if len(positions) != NUM_LATENT or fed[-1] != marks["eocot"]:
                    raise RuntimeError(f"unexpected latent layout {fed}")
                kept = min(STEPS, len(tokens))
                b = len(batches)
                tensors[f"batch{b}.row0.latents"] = res.inputs_embeds[0, positions]
                tensors[f"batch{b}.row0.logits"] = torch.stack(logits[:kept])
                row = coconut_row(q, fed, None, marks, tokens[:MAX_NEW], kept)
                row["their_output_text"] = result["output"]
                row["their_predicted_answer"] = result["predicted_answer"]
                batches.append(
                    {
                        "path": "eval wrapper (prepare_input)",
                        "questions": [q],
                        "mask_kept": True,
                        "rows": [row],
                    }
                )
            else:
                logits = [c["logits"][0] for c in mine]
                kept = min(MODE_STEPS, len(tokens))
                tensors[f"{mode}.q{q}.logits"] = torch.stack(logits[:kept])
                modes[mode].append(
                    {
                        "path": "eval wrapper (prepare_input)",
                        "question": q,
                        "input_ids": fed,
                        "tokens": tokens[:MAX_NEW],
                        "steps": kept,
                        "their_output_text": result["output"],
                        "their_predicted_answer": result["predicted_answer"],
                    }
                )
    # the training-loop validation inputs (no <|eocot|>)
    validation_rows = []
    for q, (batch, tokens, start, stop) in zip(USED, validation, strict=True):
        fed = [int(t) for t in batch["input_ids"][0]]
        out_ids = [int(t) for t in tokens[0]]
        gen = generated_tokens(fed, out_ids, eos)
        mine = calls[start:stop]
        passes = NUM_LATENT + 1  # K passes and the final one (the last latent alone)
        logits = [mine[passes - 1]["logits"][0]] + [c["logits"][0] for c in mine[passes:]]
        kept = min(STEPS, len(gen))
        tensors[f"validation.q{q}.logits"] = torch.stack(logits[:kept])
        validation_rows.append(
            {"question": q, "full_input_ids": fed, "tokens": gen[:MAX_NEW], "steps": kept}
        )
    # the batched forward
    b, rows = len(batches), []
    skipped = None
    if not torch.isfinite(pair_out.inputs_embeds).all():
        # Llama's eager attention (their eval wrapper's choice) takes its softmax in
        # float32: the float64 mask minimum becomes -inf there, a left-pad query row is
        # all -inf, its NaN key/values reach the real rows through 0 x NaN. Their float32
        # run has finite minima and no NaN: a cast artefact, so the batch is left out.
        skipped = "NaN in float64 (eager Llama softmax in float32 on a fully masked pad row)"
        pair = []
    for r, q in enumerate(pair):
        row_ids = collated["input_ids"][r]
        positions = (row_ids == marks["latent"]).nonzero()[:, 0]
        tensors[f"batch{b}.row{r}.latents"] = pair_out.inputs_embeds[r, positions]
        tensors[f"batch{b}.row{r}.logits"] = pair_out.logits[r, -1:]
        mask = collated["attention_mask"][r]
        rows.append(coconut_row(q, unpadded(row_ids, mask), mask, marks, [], 1))
        rows[-1]["position_ids"] = [int(p) for p in collated["position_ids"][r]]
    if rows:
        batches.append(
            {
                "path": "Coconut.forward on MyCollator([Q1, Q3])",
                "questions": pair,
                "mask_kept": True,
                "rows": rows,
            }
        )

    write_base(out / "base", base, seed=1, weights=False)  # config + tokenizer only
    meta = {
        "family": "multimode_coconut",
        "authors_code": REPO,
        "commit": commit,
        "versions": versions(),
        "made_by": f"tests/golden/make_multimode.py --family coconut --bases {base}",
        "base": base,
        "settings": {
            "num_thoughts": NUM_LATENT,
            **COCONUT_CONFIG[base],
            "use_eot": ids["use_eot"],
            "checkpoint_dtype": "bfloat16" if base == "llama" else "float32",
            "their_eval_attn_implementation": attn,
        },
        "special_ids": ids,
        "eval_wrapper_special_ids": marks,
        "checkpoint_file": file_info,
        "their_calls": "MultimodeCoconutModel(model_path=<checkpoint file>, device='cpu', "
        "model_id=<base>, num_latent=6).load(); model.to(float64); load_dataset; "
        "evaluate_model(max_new_tokens=16, num_latents=6, mode=m) for m in latent, "
        "direct, verbalized; get_multimode_eval_dataset(mode='latent') + MyCollator + "
        "Coconut.generate(mode='latent', synced_gpus=False); Coconut.forward on "
        "MyCollator([Q1, Q3])",
        "their_load_state_dict": {"missing": [], "unexpected": 0},
        "questions": QUESTIONS,
        "batches": batches,
        "modes": modes,
        "validation_latent": validation_rows,
        "batched_forward_left_out": skipped,
        "tensors": "golden.safetensors: batch{b}.row{r}.latents [K, d] (the fed latents), "
        "batch{b}.row{r}.logits [steps, V + 3] (answer steps from <|eocot|> on; the "
        "batched forward keeps only the first); {direct,verbalized}.q{i}.logits and "
        "validation.q{i}.logits [steps, V + 3] (from the last input position on)",
    }
    if base == "llama":
        meta["cross_checks"] = {
            "latent Q1: |eager (theirs) - sdpa| logits, float64": eager_vs_sdpa(
                MultimodeCoconutModel,
                checkpoint / name,
                batches[0]["rows"][0],
                tensors["batch0.row0.logits"],
                base,
            )
        }
    finite_or_raise(tensors)
    write_golden(out, meta, tensors)
    print(f"{out}: {len(batches)} batches")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["codi", "coconut"], required=True)
    parser.add_argument("--checkout", type=Path, required=True, help="their repository root")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--commit", default=COMMIT)
    parser.add_argument("--bases", default="gpt2,llama")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/make_multimode_work"),
        help="hand-over folder between the two CODI parts",
    )
    parser.add_argument(
        "--zhenyi4-python",
        type=Path,
        default=Path("/work/golden-venv/bin/python"),
        help="python of zhenyi4/codi's environment (CODI part 1)",
    )
    parser.add_argument(
        "--part", choices=["all", "zhenyi4"], default="all", help="internal: CODI part 1 only"
    )
    args = parser.parse_args()
    args.checkout = args.checkout.resolve()
    args.work = args.work.resolve()
    commit = checkout_commit(args.checkout, args.commit)
    if args.family == "codi" and args.part == "zhenyi4":
        codi_zhenyi4_part(args)
    elif args.family == "codi":
        make_codi(args, commit)
    else:
        make_coconut(args, commit)


if __name__ == "__main__":
    main()
