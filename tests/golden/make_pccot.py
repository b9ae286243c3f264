"""Golden values for PCCoT (whyNLP/PCCoT), computed by THE AUTHORS' code on a tiny checkpoint.

Not part of the test suite: run by hand, outside the project's environment.

Authors' code: github whyNLP/PCCoT, branch dev-publish, commit
2e32e3e4ae253b1ba75ed73038121cf5e88f7a56.  Work tree extracted outside the repo:

    git --git-dir=<bare git dir of whyNLP/PCCoT> archive 2e32e3e | tar -x -C /tmp/authors/pccot

Venv (outside the repo; transformers pin from their requirements.txt "~= 4.46.3"; PEFT is not
pinned there but `trainable_token_indices` (run_ccot.py L718-729) needs PEFT >= 0.15):

    python3.11 -m venv /work/golden-venv-pccot
    /work/golden-venv-pccot/bin/pip install torch==2.13.0 transformers==4.46.3 peft==0.15.2 \
        accelerate safetensors

Regenerate (writes tests/golden/pccot/{gpt2,whyNLP/pccot-gpt2,golden.json}):

    /work/golden-venv-pccot/bin/python tests/golden/make_pccot.py \
        --checkout /tmp/authors/pccot --out tests/golden/pccot

What it does
1. build (run_ccot.py's setup, replayed with tiny sizes): a tiny GPT-2 base saved as the hub's
   `gpt2` would be (folder `<out>/gpt2`: config.json model_type gpt2, model.safetensors fp32,
   generation_config.json, a word-level tokenizer whose `<|endoftext|>` is the last base id as in
   GPT-2, no BOS/pad); the authors' configs/pccot_gpt2_small.json + `--config_overrides`
   (num_iterations=3 as run_ccot.sh.template, plus tiny sizes); tokenizer special tokens added by
   the same calls as run_ccot.py L466-481; `PCCoTGPT2LMHeadModel.from_pretrained("gpt2",
   config=..., torch_dtype=bfloat16)` as the template's --torch_dtype bfloat16; resize to
   len(tokenizer) (L541-543); PEFT LoraConfig exactly as L718-729 (r/alpha from pccot_args,
   trainable_token_indices on wte for [bot, eot, latent, pad, eos], fan_in_fan_out); gentle
   random LoRA B and trainable-token rows; then saved as run_ccot.py saves: pccot_args.save
   (L716), Trainer.save_model (L755: PEFT adapter + tokenizer + training_args.bin), the base
   config (L757-759).  cwd is <out> so that base_model_name_or_path "gpt2" names the local base,
   the string the release's adapter_config.json carries (run_ccot.sh.template passes
   --model_name_or_path gpt2; PEFT records it).
2. run (fresh process, cwd <out>, HF_HUB_OFFLINE=1): example.py's loading verbatim with
   model_name_or_path "whyNLP/pccot-gpt2" (a local folder of that name), then the model cast to
   float64 and torch's default dtype set to float64 (transformers 4.46.3's SDPA mask helper
   otherwise overflows a float32 torch.full with finfo(float64).min), then their
   `COTDataProcessor.process` + `model.generate(collated=...,
   max_new_tokens=10, do_sample=False)` (example.py / test_ccot.py eval_ccot).  Values are read
   with forward hooks on the GPT2Model (`transformer`) and on the lm_head; nothing of the loop is
   reimplemented here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

COMMIT = "2e32e3e4ae253b1ba75ed73038121cf5e88f7a56"
RELEASE = "whyNLP/pccot-gpt2"
N_LATENT = 4  # release: 24 (run_ccot.sh.template); tiny here
N_ITER = 3  # release template: --config_overrides num_iterations=3
LORA_R, LORA_ALPHA = 8, 16  # release: 128 / 32 (pccot_args defaults); scaling 2 here, 0.25 there
QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have now?",
    "Each box has 4 pens. Ann buys 2 boxes. How many pens does Ann have?",
    "Sam had 12 coins and gave 7 to Leo. How many coins are left?",
]
WORDS = """
the answer is a and of to in on for with from how many much does do did have has had left
total now more less than each every he she they it his her them there are was were what
apples pens books coins cards box boxes bags buys gets gives sells eats loses makes takes away
bought got gave sold ate lost made took Tom Sam Ann Leo Mia The How What He She They Each
""".split()


def build_gpt2_tokenizer():
    """GPT-2-like word-level tokenizer: `<|endoftext|>` is bos = eos = unk and the last base id
    (as 50256 is in GPT-2); no pad; no special token added on encode (GPT-2 adds none)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in list("0123456789") + list(".,?:!;$'-+*/=()") + WORDS:
        vocab.setdefault(tok, len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=64,
    )


def build(checkout: Path, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainingArguments,
    )

    sys.path.insert(0, str(checkout))
    import models  # the authors' package: registers pccot-gpt2 / pccot-llama

    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # "gpt2" below is then the local tiny base, as "gpt2" is the hub's for them
    torch.manual_seed(0)

    # -- the hub's "gpt2", tiny ---------------------------------------------------------------
    base_tok = build_gpt2_tokenizer()
    vocab = len(base_tok)
    eos = base_tok.eos_token_id
    base_cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=eos,
        eos_token_id=eos,
        initializer_range=0.1,
    )
    base = GPT2LMHeadModel(base_cfg).eval()
    base.save_pretrained("gpt2")  # model.safetensors (fp32, tied lm_head dropped) + configs
    base_tok.save_pretrained("gpt2")

    # -- run_ccot.py main(), replayed ---------------------------------------------------------
    pccot_args = models.PCCoTArguments(
        num_latent_tokens=N_LATENT,
        lora_r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_target_modules="c_attn-c_fc-c_proj",
        lora_modules_to_save="",
    )
    # L433-444: --config_name configs/pccot_gpt2_small.json + --config_overrides
    config = AutoConfig.from_pretrained(str(checkout / "configs/pccot_gpt2_small.json"))
    config.update_from_string(
        f"num_iterations={N_ITER},n_embd=32,n_layer=2,n_head=4,n_positions=64,n_ctx=64,"
        f"vocab_size={vocab},bos_token_id={eos},eos_token_id={eos}"
    )
    tokenizer = AutoTokenizer.from_pretrained("gpt2")  # L455-457

    # L466-481 (the nested helper, same calls in the same order)
    def get_special_token(tokenizer, token):
        if token not in tokenizer.additional_special_tokens:
            tokenizer.add_special_tokens(
                {"additional_special_tokens": (token,)}, replace_additional_special_tokens=False
            )
        return tokenizer.convert_tokens_to_ids(token)

    pccot_args.bot_token_id = get_special_token(tokenizer, "<pcot.bot>")
    pccot_args.eot_token_id = get_special_token(tokenizer, "<pcot.eot>")
    pccot_args.latent_token_id = get_special_token(tokenizer, "<pcot.latent>")
    if tokenizer.pad_token_id is None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    if tokenizer.eos_token_id is None:
        tokenizer.add_special_tokens({"eos_token": "[EOS]"})

    # L518-529 (--torch_dtype bfloat16 in run_ccot.sh.template), L541-543
    model = AutoModelForCausalLM.from_pretrained("gpt2", config=config, torch_dtype=torch.bfloat16)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))

    trainer_args = TrainingArguments(output_dir=RELEASE, report_to="none", use_cpu=True)
    pccot_args.save(trainer_args.output_dir)  # L716

    # L718-729
    is_gpt2 = "gpt2" in config.model_type
    embedding_layer_name = "wte" if is_gpt2 else "embed_tokens"
    special_token_ids = [
        pccot_args.bot_token_id,
        pccot_args.eot_token_id,
        pccot_args.latent_token_id,
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
    ]
    peft_config = LoraConfig(
        inference_mode=False,
        r=pccot_args.lora_r,
        lora_alpha=pccot_args.lora_alpha,
        lora_dropout=pccot_args.lora_dropout,
        target_modules=pccot_args.lora_target_modules.split("-"),
        trainable_token_indices={embedding_layer_name: special_token_ids},
        modules_to_save=pccot_args.lora_modules_to_save.split("-")
        if pccot_args.lora_modules_to_save
        else None,
        fan_in_fan_out=is_gpt2,
    )
    model = get_peft_model(model, peft_config)

    # "training": gentle random values in every trainable tensor
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "lora_B" in name:
                p.copy_((0.05 * noise).to(p.dtype))
            elif "lora_A" in name:
                pass  # PEFT's kaiming init is already random
            else:  # trainable_tokens_delta: rows replacing wte rows of the 5 special ids
                p.copy_((p.float() + 0.1 * noise).to(p.dtype))

    # L733-759: Trainer(...).save_model() then the (base) config
    trainer = Trainer(model=model, args=trainer_args, processing_class=tokenizer)
    trainer.save_model()
    model.config.save_pretrained(trainer_args.output_dir)
    print("saved", sorted(os.listdir(RELEASE)))


def run(checkout: Path, out: Path) -> None:
    import peft
    import torch
    import transformers
    from safetensors import safe_open

    sys.path.insert(0, str(checkout))
    os.chdir(out)
    torch.set_num_threads(1)

    # ---- example.py, verbatim except the float64 cast ----------------------------------------
    import models
    from peft import AutoPeftModel
    from transformers import AutoConfig, AutoTokenizer, HfArgumentParser
    from transformers.utils.hub import cached_file

    model_name_or_path = RELEASE
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    config = AutoConfig.from_pretrained(model_name_or_path)
    model = AutoPeftModel.from_pretrained(model_name_or_path)
    model.get_base_model().config = config
    pccot_args_file = cached_file(model_name_or_path, models.PCCOT_ARGS_NAME)
    parser = HfArgumentParser(models.PCCoTArguments)
    (pccot_args,) = parser.parse_json_file(json_file=pccot_args_file)
    data_processor = models.COTDataProcessor(tokenizer=tokenizer, pccot_args=pccot_args)
    model = model.to(torch.float64)  # the one change: float64 instead of example.py's fp32
    # transformers 4.46.3's SDPA causal-mask helper calls torch.full() without a dtype and then
    # fills finfo(float64).min, which overflows a float32 default; a float64 default avoids it.
    torch.set_default_dtype(torch.float64)
    # --------------------------------------------------------------------------------------------

    base = model.get_base_model()
    assert type(base).__name__ == "PCCoTGPT2LMHeadModel", type(base)
    transformer_calls: list[dict] = []
    head_calls: list = []

    def pre_hook(module, args, kwargs):
        pkv = kwargs.get("past_key_values")
        am = kwargs.get("attention_mask")
        ids = args[0] if args else kwargs.get("input_ids")  # GPT2LMHeadModel passes it positionally
        transformer_calls.append(
            {
                "input_ids": None if ids is None else ids.tolist(),
                "inputs_embeds": None
                if kwargs.get("inputs_embeds") is None
                else kwargs["inputs_embeds"].detach().clone(),
                "position_ids": None
                if kwargs.get("position_ids") is None
                else kwargs["position_ids"].tolist(),
                "attention_mask": None if am is None else am.tolist(),
                "past_len": None if pkv is None else int(pkv[0][0].shape[-2]),
            }
        )

    def post_hook(module, args, kwargs, output):
        transformer_calls[-1]["last_hidden"] = output[0].detach().clone()

    base.transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    base.transformer.register_forward_hook(post_hook, with_kwargs=True)
    lm_head = model.get_output_embeddings()
    lm_head.register_forward_hook(lambda m, a, o: head_calls.append(o.detach().clone()))

    def rnd(t):
        return t.tolist()

    def one_run(questions):
        transformer_calls.clear()
        head_calls.clear()
        collated = data_processor.process(questions)
        q_b, l_b, kd = collated["key_indices"]
        inputs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in collated.items()}
        decoded_tokens = model.generate(collated=collated, max_new_tokens=10, do_sample=False)
        n_in = collated["input_ids"].shape[1]
        gen_ids = decoded_tokens[:, n_in:]
        answers = tokenizer.batch_decode(gen_ids, skip_special_tokens=True)
        # call 0 = teacher CoT (cot_input_ids), 1 = pass 0 over ids[:, :l_b], 2..T+1 = Jacobi
        # iterations, T+2 = answer prompt, then one GPT2LMHeadModel.forward per decode step.
        T = config.num_iterations
        calls = transformer_calls
        assert calls[1]["input_ids"] == collated["input_ids"][:, :l_b].tolist()
        iters = calls[2 : 2 + T]
        assert all(c["inputs_embeds"] is not None for c in iters)
        answer_call = calls[2 + T]
        decode_calls = calls[3 + T :]
        pass0_last_hidden = calls[1]["last_hidden"]
        last = iters[-1]
        final_unused = torch.cat([last["inputs_embeds"][:, :1], last["last_hidden"][:, :-1]], dim=1)
        # lm_head calls: 0 = teacher, 1 = answer positions, 2.. = decode steps
        answer_logits = head_calls[1]  # (B, len(eot + prompt), V)
        step_logits = [answer_logits[:, -1]] + [h[:, -1] for h in head_calls[2:]]
        return {
            "questions": [questions] if isinstance(questions, str) else questions,
            "collated": {
                k: inputs[k]
                for k in (
                    "input_ids",
                    "attention_mask",
                    "labels",
                    "key_indices",
                    "cot_input_ids",
                    "cot_attention_mask",
                    "cot_kd_indices",
                )
            },
            "question_boundary": q_b,
            "latent_boundary": l_b,
            "pass0": {
                "position_ids": calls[1]["position_ids"],
                "attention_mask": calls[1]["attention_mask"],
                "last_hidden_at_slot_sources": rnd(pass0_last_hidden[:, q_b - 1 : l_b - 1]),
            },
            "iterations": [
                {
                    "t": t + 1,
                    "slot_inputs": rnd(c["inputs_embeds"]),
                    "last_hidden": rnd(c["last_hidden"]),
                    "position_ids": c["position_ids"],
                    "attention_mask": c["attention_mask"],
                    "past_len": c["past_len"],
                }
                for t, c in enumerate(iters)
            ],
            "final_update_never_fed": rnd(final_unused),
            "answer_call": {
                "input_ids": answer_call["input_ids"],
                "position_ids": answer_call["position_ids"],
                "attention_mask_len": len(answer_call["attention_mask"][0]),
                "past_len": answer_call["past_len"],
                "logits": rnd(answer_logits),
            },
            "decode_calls": [
                {
                    "input_ids": c["input_ids"],
                    "position_ids": c["position_ids"],
                    "past_len": c["past_len"],
                    "attention_mask_len": len(c["attention_mask"][0]),
                }
                for c in decode_calls
            ],
            "step_logits": [rnd(s) for s in step_logits],
            "generated_ids": gen_ids.tolist(),
            "answers": answers,
        }

    singles = [one_run(q) for q in QUESTIONS]
    batch = one_run(list(QUESTIONS))

    # does the left-padded batch agree with the single runs?
    def max_diff(a, b):
        return float((torch.tensor(a) - torch.tensor(b)).abs().max())

    batch_vs_single = []
    for i, s in enumerate(singles):
        pad = batch["question_boundary"] - s["question_boundary"]
        batch_vs_single.append(
            {
                "left_pad": pad,
                "slot_inputs_max_abs_diff_per_iteration": [
                    max_diff(
                        batch["iterations"][t]["slot_inputs"][i],
                        s["iterations"][t]["slot_inputs"][0],
                    )
                    for t in range(config.num_iterations)
                ],
                "first_token_logits_max_abs_diff": max_diff(
                    batch["step_logits"][0][i], s["step_logits"][0][0]
                ),
                "same_generated_ids": batch["generated_ids"][i][: len(s["generated_ids"][0])]
                == s["generated_ids"][0],
            }
        )

    # stored adapter tensors (name -> shape, dtype)
    adapter = {}
    with safe_open(os.path.join(RELEASE, "adapter_model.safetensors"), "pt") as f:
        for k in f:
            t = f.get_tensor(k)
            adapter[k] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
    with safe_open(os.path.join("gpt2", "model.safetensors"), "pt") as f:
        base_keys = {k: list(f.get_slice(k).get_shape()) for k in f}

    # keep the file small: greedy ids for all 10 steps, logits for the first 4; the batch keeps
    # its slot inputs (the padding effect) but not the per-iteration outputs
    for r in singles + [batch]:
        r["step_logits"] = r["step_logits"][:4]
    for it in batch["iterations"]:
        it.pop("last_hidden")
    batch["answer_call"].pop("logits")

    golden = {
        "family": "pccot",
        "authors_commit": COMMIT,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "python": sys.version.split()[0],
        },
        "dtype": (
            "float64 (model.to(torch.float64) after example.py's loading); their code casts "
            "logits to float32 before argmax (generate.py L113/L152) - logits stored here are "
            "the lm_head outputs in float64"
        ),
        "release_folder": RELEASE,
        "base_folder": "gpt2",
        "special_ids": {
            "bot": pccot_args.bot_token_id,
            "eot": pccot_args.eot_token_id,
            "latent": pccot_args.latent_token_id,
            "pad": tokenizer.pad_token_id,
            "eos": tokenizer.eos_token_id,
            "len_tokenizer": len(tokenizer),
        },
        "answer_prompt_ids": data_processor.tokenized_answer_prompt,
        "num_iterations": config.num_iterations,
        "num_latent_tokens": pccot_args.num_latent_tokens,
        "use_projection": config.use_projection,
        "generate_kwargs": {"max_new_tokens": 10, "do_sample": False},
        "adapter_tensors": adapter,
        "base_tensors": base_keys,
        "singles": singles,
        "batch": batch,
        "batch_vs_single": batch_vs_single,
    }
    Path("golden.json").write_text(json.dumps(golden, indent=1))
    print("answers:", [s["answers"][0] for s in singles], batch["answers"])
    print(json.dumps(batch_vs_single, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", type=Path, default=Path("/tmp/authors/pccot"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "pccot")
    ap.add_argument("--phase", choices=["all", "build", "run"], default="all")
    a = ap.parse_args()
    checkout, out = a.checkout.resolve(), a.out.resolve()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if a.phase == "build":
        build(checkout, out)
    elif a.phase == "run":
        run(checkout, out)
    else:
        for phase in ("build", "run"):  # the reload runs in a fresh interpreter
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--phase",
                    phase,
                    "--checkout",
                    str(checkout),
                    "--out",
                    str(out),
                ],
                check=True,
            )


if __name__ == "__main__":
    main()
