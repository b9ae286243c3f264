"""Golden values for CoLaR (xiaomi-research/colar), computed by THE AUTHORS' code on a tiny
checkpoint.

Not part of the test suite: run by hand, outside the project's environment.

Authors' code: github xiaomi-research/colar, commit 4b6ae9a05da2a8a09d5356aeda3e896d53957414.
Work tree extracted outside the repo:

    git --git-dir=<bare git dir of xiaomi-research/colar> archive 4b6ae9a \
        | tar -x -C /tmp/authors/colar

Venv (outside the repo; pins from their requirements.txt: transformers 4.45.2, peft 0.15.2,
lightning 2.5.1.post0, omegaconf 2.3.0; torch 2.13.0 CPU instead of their 2.4.1):

    python3.11 -m venv /work/golden-venv-colar
    /work/golden-venv-colar/bin/pip install torch==2.13.0 transformers==4.45.2 peft==0.15.2 \
        lightning==2.5.1.post0 omegaconf==2.3.0 accelerate safetensors pyyaml

Regenerate (writes tests/golden/colar/{models,logs,datasets,golden.json}):

    /work/golden-venv-colar/bin/python tests/golden/make_colar.py \
        --checkout /tmp/authors/colar --out tests/golden/colar

Layout of <out> (= the `--workspace_path` the authors' run.py is given):
    models/llms/Llama-3.2-1B-Instruct/   tiny Llama base (model_id kept so MODEL_EMB_STD = 0.018)
    logs/colar/qsa-gsm/colar-final/hparams.yaml
    logs/colar/qsa-gsm/colar-final/checkpoints/colar_best.ckpt   (hub path of AlbertTan/CoLaR)
    datasets/gsm/test.json               the questions, in QSADataModule's format

What it does
1. build: tiny Llama base + Llama-3-like tokenizer (BOS post-processor, eos <|eot_id|>, `###` one
   token); the training config assembled by THEIR run.py `get_processed_args_and_config()`
   (argv `--model colar --dataset qsa --devices 0 --workspace_path <out>` plus tiny-size
   overrides lora r/alpha, lp_intermediate_size); `LitCoLaR` instantiated by their
   `instantiate_from_config` after `pl.seed_everything(0)` as main() does; gentle random LoRA B
   (the latent policy keeps its random init); the base's layers drawn with std 0.2 and its
   embedding with std 0.02 (a tiny model drawn at 0.02 throughout only echoes its input token);
   the `###` row of the (tied) base embedding is scaled so that the three questions stop after
   three different latent counts (searched by running their `latent_generate`; the base on disk
   carries the scaled row); `configure_optimizers()`
   (their method, fills trainable_parameter_names) and Lightning's `trainer.save_checkpoint(...,
   weights_only=True)` (what ModelCheckpoint(save_weights_only=True) calls; their
   on_save_checkpoint keeps only trainable params); hparams.yaml written by Lightning's
   `save_hparams_to_yaml(model.hparams)` as its loggers do.
2. run: THEIR `run.py main()` test path, in a fresh interpreter per batch size, cwd = checkout:
       run.py --test_ckpt_path <ckpt> --workspace_path <out> --test_times 2
              trainer.accelerator=cpu trainer.precision=64-true trainer.logger=false
              model.model_kwargs.latent_generation_config.latent_temperature=1e-200
              model.model_kwargs.latent_generation_config.eol_temperature=1e-9
              model.model_kwargs.answer_generation_config.do_sample=false
              model.model_kwargs.latent_generation_config.max_n_latent_forward=12
              dataloader.val_batch_size=<1 or 3>
   i.e. float64 via Lightning's 64-true precision; the policy sample equals its mean exactly in
   float64 (std * 1e-200 vanishes next to the mean); the end-of-latent multinomial over
   softmax(logits / 1e-9) is one-hot = argmax (the run asserts a margin); greedy answer decode;
   at most 12 latents (their default cap is 64; one golden row stops by reaching the cap).
   Only their config knobs are used, no monkeypatch of their loop.  Two environment adaptations:
   config.trainer.devices is set to 1 after their config assembly (run.py always turns --devices
   into a GPU index list, which Lightning's CPU accelerator refuses), and
   TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, restoring torch<2.6's torch.load default that their
   do_test relies on (the .ckpt pickles OmegaConf hparams).  Values are read, without changing
   them, by forward hooks on the Llama and its final norm, by wrapping the latent policy's bound
   forward (latent_generate calls `.forward` directly, so module hooks never fire there) and the
   model's latent_generate (to group calls per batch); all installed by wrapping run.do_test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

COMMIT = "4b6ae9a05da2a8a09d5356aeda3e896d53957414"
MODEL_ID = "Llama-3.2-1B-Instruct"
CKPT_REL = "logs/colar/qsa-gsm/colar-final/checkpoints/colar_best.ckpt"
LORA_R, LORA_ALPHA = 8, 16  # release config: r 128, alpha 32
LP_INTERMEDIATE = 64  # release config: 2048
MAX_LATENT = 12  # test-time cap (their max_n_latent_forward is 64)
DATA = [
    {
        "question": "Tom has 3 apples and buys 5 more. How many apples does he have now?",
        "steps": ["<<3+5=8>>"],
        "answer": "8",
    },
    {
        "question": "Each box has 4 pens. Ann buys 2 boxes. How many pens does Ann have?",
        "steps": ["<<4*2=8>>"],
        "answer": "8",
    },
    {
        "question": "Sam had 12 coins and gave 7 to Leo. How many coins are left?",
        "steps": ["<<12-7=5>>"],
        "answer": "5",
    },
]
TEST_OVERRIDES = [
    "trainer.accelerator=cpu",
    "trainer.precision=64-true",
    "trainer.logger=false",
    "model.model_kwargs.latent_generation_config.latent_temperature=1e-200",
    "model.model_kwargs.latent_generation_config.eol_temperature=1e-9",
    "model.model_kwargs.answer_generation_config.do_sample=false",
    f"model.model_kwargs.latent_generation_config.max_n_latent_forward={MAX_LATENT}",
]
WORDS = """
Question Let s think step by Thinking speed Answer the answer is a and of to in on for with
from how many much does do did have has had left total now more less than each every he she
they it his her them there are was were what apples pens books coins cards box boxes bags buys gets
gives sells eats loses makes takes away bought got gave sold ate lost made took Tom Sam Ann Leo
Mia The How What He She They Each
""".split()


def build_llama3_tokenizer():
    """Word-level stand-in for the Llama-3 Instruct tokenizer: BOS <|begin_of_text|> prepended by
    the post-processor (so add_special_tokens=False matters), eos <|eot_id|>, no pad, `###` a
    single token as in Llama-3's vocabulary; the special tokens sit after the ordinary ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in ["###"] + list("0123456789") + list(".,?:!;$'-+*/=()<>") + WORDS:
        vocab.setdefault(tok, len(vocab))
    for special in ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<unk>"]:
        vocab[special] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(r"###|[A-Za-z]+|\d|[^A-Za-z\d]"), behavior="isolated"),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        special_tokens=[("<|begin_of_text|>", vocab["<|begin_of_text|>"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        unk_token="<unk>",
        additional_special_tokens=["<|end_of_text|>"],
        model_max_length=131072,
    )


def build(checkout: Path, out: Path) -> None:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.core.saving import save_hparams_to_yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    os.chdir(checkout)
    sys.path.insert(0, str(checkout))
    import run as authors_run  # their run.py
    from src.utils.utils import instantiate_from_config

    out.mkdir(parents=True, exist_ok=True)
    base_dir = out / "models" / "llms" / MODEL_ID
    torch.manual_seed(0)
    tok = build_llama3_tokenizer()
    vocab = len(tok)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        initializer_range=0.2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    base = LlamaForCausalLM(cfg).eval()
    # layers drawn with std 0.2 so that a 2-layer model does not just echo its (tied) input
    # token; the embedding brought back to std 0.02, the scale embeds_std = 0.018 assumes; the
    # saved initializer_range 0.02 is what their resize uses for the new [PAD] row
    with torch.no_grad():
        base.get_input_embeddings().weight.mul_(0.1)
    base.config.initializer_range = 0.02
    base.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)

    data_dir = out / "datasets" / "gsm"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "test.json").write_text(json.dumps(DATA, indent=1))

    # their config assembly for a training run
    sys.argv = [
        "run.py",
        "--model",
        "colar",
        "--dataset",
        "qsa",
        "--devices",
        "0",
        "--workspace_path",
        str(out),
        f"model.model_kwargs.lora_config.r={LORA_R}",
        f"model.model_kwargs.lora_config.lora_alpha={LORA_ALPHA}",
        f"model.model_kwargs.latent_policy_config.lp_intermediate_size={LP_INTERMEDIATE}",
    ]
    args, config = authors_run.get_processed_args_and_config()
    config.trainer.logger.version = "colar-final"  # the hub's folder name
    pl.seed_everything(args.seed)
    model = instantiate_from_config(config.model, extra_kwargs={"all_config": config})

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))

    # scale the `###` row (tied embedding / lm_head) so the end-of-latent argmax fires early,
    # differently per question; searched with their latent_generate in float64, deterministic
    sep = model.thinking_separator_id
    emb = model.llm.get_input_embeddings().weight
    row = emb[sep].detach().clone()
    questions = [d["question"] for d in DATA]
    lg = model.model_kwargs.latent_generation_config
    lg.latent_temperature = 1e-200
    lg.eol_temperature = 1e-9
    lg.max_n_latent_forward = MAX_LATENT
    model.model_kwargs.answer_generation_config.do_sample = False
    chosen = None
    for alpha in [x / 16 for x in range(8, 161)]:
        with torch.no_grad():
            emb[sep] = row * alpha
        model.double()
        outs = [model.latent_generate(questions=[q]) for q in questions]
        model.float()
        counts = [int(o[1].item()) for o in outs]
        [o[0][0].tolist() for o in outs]
        # three different latent counts; at least one row stops on `###` before the cap (a row
        # that reaches the cap exercises the other way out of their loop)
        if len(set(counts)) == len(counts) and min(counts) < MAX_LATENT:
            chosen = alpha
            break
    assert chosen is not None, "no ### scale gives distinct latent counts"
    print("### row scale", chosen, "latent counts", counts)
    with torch.no_grad():
        base.get_input_embeddings().weight[sep] = emb[sep]
    base.save_pretrained(base_dir)  # the base on disk carries the scaled row

    # restore the release's generation settings before saving hparams
    lg.latent_temperature = 1.0
    lg.pop("eol_temperature")
    lg.max_n_latent_forward = 64
    model.model_kwargs.answer_generation_config.do_sample = True

    model.configure_optimizers()  # their method: fills trainable_parameter_names
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(model)
    ckpt = out / CKPT_REL
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(ckpt, weights_only=True)
    save_hparams_to_yaml(ckpt.parent.parent / "hparams.yaml", model.hparams)
    (out / "build_info.json").write_text(
        json.dumps({"sep_row_scale": chosen, "latent_counts_at_build": counts})
    )


def run(checkout: Path, out: Path, batch_size: int, dump: Path) -> None:
    import torch

    os.chdir(checkout)
    sys.path.insert(0, str(checkout))
    import run as authors_run

    ckpt = out / CKPT_REL
    sys.argv = [
        "run.py",
        "--test_ckpt_path",
        str(ckpt),
        "--workspace_path",
        str(out),
        "--test_times",
        "2",
        *TEST_OVERRIDES,
        f"dataloader.val_batch_size={batch_size}",
    ]
    records: list[dict] = []
    state: dict = {}

    original_do_test = authors_run.do_test

    def do_test(model, trainer, ckpt_path, data_module, args):
        llama = model.llm.get_base_model()
        state["model"] = model
        calls: list[dict] = []

        def llama_pre(module, a, kw):
            pkv = kw.get("past_key_values")
            past = 0
            if pkv is not None:
                past = (
                    pkv.get_seq_length() if hasattr(pkv, "get_seq_length") else pkv[0][0].shape[-2]
                )
            e = kw.get("inputs_embeds")
            ids = kw.get("input_ids")
            calls.append(
                {
                    "inputs_embeds": None if e is None else e.detach().clone(),
                    "input_ids": None if ids is None else ids.tolist(),
                    "attention_mask": None
                    if kw.get("attention_mask") is None
                    else kw["attention_mask"].tolist(),
                    "position_ids": None
                    if kw.get("position_ids") is None
                    else kw["position_ids"].tolist(),
                    "cache_position": None
                    if kw.get("cache_position") is None
                    else kw["cache_position"].tolist(),
                    "past_len": int(past),
                }
            )

        def llama_post(module, a, kw, o):
            calls[-1]["logits_last"] = o.logits[:, -1].detach().clone()
            if o.hidden_states is not None:
                calls[-1]["hidden_last"] = o.hidden_states[-1][:, -1].detach().clone()

        def norm_post(module, a, o):
            calls[-1]["norm_out_last"] = o[:, -1].detach().clone()

        policy_io: list[dict] = []

        # latent_generate calls self.latent_policy.forward(...) directly, so module hooks never
        # fire: wrap the bound forward instead (it still runs their LatentPolicy.forward)
        policy_forward = model.latent_policy.forward

        def policy_wrapped(x, temperature=1.0):
            o = policy_forward(x, temperature=temperature)
            policy_io.append(
                {
                    "x": x.detach().clone(),
                    "mean": o.mean.detach().clone(),
                    "std": o.stddev.detach().clone(),
                    "temperature": temperature,
                }
            )
            return o

        llama.register_forward_pre_hook(llama_pre, with_kwargs=True)
        llama.register_forward_hook(llama_post, with_kwargs=True)
        llama.model.norm.register_forward_hook(norm_post)
        model.latent_policy.forward = policy_wrapped

        original_latent_generate = model.latent_generate

        def latent_generate(questions, **kw):
            calls.clear()
            policy_io.clear()
            pred_ids, n_latent = original_latent_generate(questions=questions, **kw)
            records.append(
                {
                    "questions": list(questions),
                    "calls": list(calls),
                    "policy": list(policy_io),
                    "pred_ids": pred_ids.tolist(),
                    "n_latent_forward": n_latent.squeeze(1).tolist(),
                }
            )
            return pred_ids, n_latent

        model.latent_generate = latent_generate
        state["load_result"] = None
        result = original_do_test(
            model=model, trainer=trainer, ckpt_path=ckpt_path, data_module=data_module, args=args
        )
        state["results"] = result
        return result

    original_get_config = authors_run.get_processed_args_and_config

    def get_processed_args_and_config():
        # run.py turns --devices (default "0") into the GPU index list [0] after applying the
        # overrides; Lightning's CPU accelerator wants a count instead
        args, config = original_get_config()
        config.trainer.devices = 1
        return args, config

    authors_run.get_processed_args_and_config = get_processed_args_and_config
    authors_run.do_test = do_test
    authors_run.main()

    model = state["model"]
    tok = model.tokenizer
    sep = model.thinking_separator_id
    std = model.embeds_std
    out_runs = []
    for rec in records:
        calls = rec["calls"]
        B = len(rec["questions"])
        prompt = calls[0]
        # calls: 0 = prompt, 1..K = one per latent step, then generate(): K+1 = full-sequence
        # prefill of inputs_embeds, then one call per generated token
        max(rec["n_latent_forward"])
        n_latent_calls = len(rec["policy"])  # one policy call per latent step
        latent_calls = calls[1 : 1 + n_latent_calls]
        gen_calls = calls[1 + n_latent_calls :]
        steps = []
        for k, (c, pol) in enumerate(zip(latent_calls, rec["policy"], strict=False)):
            fed = c["inputs_embeds"][:, 0]
            mean = pol["mean"][:, 0]
            assert torch.equal(fed, mean * std), "fed latent != policy mean * embeds_std"
            logits = c["logits_last"]
            top2 = logits.topk(2, dim=-1)
            steps.append(
                {
                    "k": k + 1,
                    "policy_input_hidden": pol["x"][:, 0].tolist(),
                    "policy_input_equals_final_norm_output_of_previous_call": bool(
                        torch.equal(pol["x"][:, 0], calls[k]["norm_out_last"])
                    ),
                    "latent_pre_scale_mean": mean.tolist(),
                    "policy_std_times_temperature_max": float(pol["std"].max()),
                    "latent_fed": fed.tolist(),
                    "attention_mask": c["attention_mask"],
                    "position_ids": c["position_ids"],
                    "past_len": c["past_len"],
                    "eol_logits": logits.tolist(),
                    "eol_argmax": logits.argmax(-1).tolist(),
                    "eol_top2_margin": (top2.values[:, 0] - top2.values[:, 1]).tolist(),
                    "sep_logit": logits[:, sep].tolist(),
                }
            )
        prefill = gen_calls[0]
        answer_steps = [prefill] + gen_calls[1:]
        out_runs.append(
            {
                "questions": rec["questions"],
                "prompt": {
                    "input_ids": None,
                    "attention_mask": prompt["attention_mask"],
                    "position_ids": prompt["position_ids"],
                    "inputs_embeds_shape": list(prompt["inputs_embeds"].shape),
                },
                "n_latent_forward": rec["n_latent_forward"],
                "n_latent_loop_iterations": n_latent_calls,
                "latent_steps": steps,
                "answer_prefill": {
                    "inputs_embeds_len": prefill["inputs_embeds"].shape[1],
                    "attention_mask": prefill["attention_mask"],
                    "position_ids": prefill["position_ids"],
                    "cache_position": prefill["cache_position"],
                    "past_len": prefill["past_len"],
                    "sep_embedding_is_last_input": bool(
                        torch.equal(
                            prefill["inputs_embeds"][:, -1],
                            model.embedding.weight[sep].expand(B, -1),
                        )
                    ),
                },
                "answer_calls": [
                    {
                        "input_ids": c["input_ids"],
                        "position_ids": c["position_ids"],
                        "past_len": c["past_len"],
                        "attention_mask_len": None
                        if c["attention_mask"] is None
                        else len(c["attention_mask"][0]),
                    }
                    for c in gen_calls[1:]
                ],
                "answer_step_logits": [c["logits_last"].tolist() for c in answer_steps],
                "pred_ids": rec["pred_ids"],
                "decoded": tok.batch_decode(
                    torch.tensor(rec["pred_ids"]), skip_special_tokens=True
                ),
            }
        )
    # the prompt token ids, from their prepare_inputs
    ids, mask = model.prepare_inputs(
        [d["question"] for d in DATA],
        padding_side="left",
        part="question",
        suffix=model.speed_template.format(
            model.model_kwargs.latent_generation_config["compression_factor"]
        )
        + model.thinking_separator,
    )
    dump.write_text(
        json.dumps(
            {
                "batch_size": batch_size,
                "runs": out_runs,
                "sample_logs": {str(k): v for k, v in model.sample_logs.items()},
                "results": [dict(x) for x in state["results"]]
                if isinstance(state["results"], tuple)
                else None,
                "prompt_ids_batch": ids.tolist(),
                "prompt_mask_batch": mask.tolist(),
                "pad_row": model.embedding.weight[tok.pad_token_id].tolist(),
                "pad_id": tok.pad_token_id,
                "sep_id": sep,
                "eos_id": tok.eos_token_id,
                "embeds_std": std,
                "dtype": str(model.embedding.weight.dtype),
                "generation_config": model.llm.generation_config.to_dict(),
            },
            default=str,
        )
    )


def collect(out: Path, dumps: list[Path], checkout: Path) -> None:
    import lightning
    import peft
    import torch
    import transformers

    d1, d3 = (json.loads(p.read_text()) for p in dumps)
    singles, batch = d1["runs"][:3], d3["runs"][0]
    singles_replicated = d1["runs"][:3] == d1["runs"][3:6]  # test_times=2, seeds 0 and 1
    batch_replicated = d3["runs"][0] == d3["runs"][1]
    # the end-of-latent multinomial over softmax(logits / 1e-9) is an argmax only with a margin
    for run in singles + [batch]:
        for step in run["latent_steps"]:
            assert min(step["eol_top2_margin"]) > 1e-6, step["eol_top2_margin"]

    def diff(a, b):
        return float((torch.tensor(a) - torch.tensor(b)).abs().max())

    batch_vs_single = []
    for i, single in enumerate(singles):
        n = single["n_latent_forward"][0]
        batch_vs_single.append(
            {
                "n_latent_same": batch["n_latent_forward"][i] == n,
                "latent_fed_max_abs_diff": max(
                    diff(
                        batch["latent_steps"][k]["latent_fed"][i],
                        single["latent_steps"][k]["latent_fed"][0],
                    )
                    for k in range(n)
                ),
                "first_answer_logits_max_abs_diff": diff(
                    batch["answer_step_logits"][0][i], single["answer_step_logits"][0][0]
                ),
                "same_pred_ids": batch["pred_ids"][i] == single["pred_ids"][0],
            }
        )
    # keep the batch record lean: per-step decisions, not every logit
    for step in batch["latent_steps"]:
        step.pop("eol_logits")
        step.pop("policy_input_hidden")
    batch["answer_step_logits"] = batch["answer_step_logits"][:3]
    for single in singles:  # greedy ids are kept for all 16 steps, logits for the first 4
        single["answer_step_logits"] = single["answer_step_logits"][:4]
    ck = torch.load(out / CKPT_REL, map_location="cpu", weights_only=False)
    golden = {
        "family": "colar",
        "authors_commit": COMMIT,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "lightning": lightning.__version__,
            "python": sys.version.split()[0],
        },
        "dtype": "float64 (Lightning trainer.precision=64-true: module.double())",
        "ckpt": CKPT_REL,
        "ckpt_top_level_keys": sorted(ck.keys()),
        "ckpt_state_dict": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
            for k, v in ck["state_dict"].items()
        },
        "test_overrides": TEST_OVERRIDES,
        "build": json.loads((out / "build_info.json").read_text()),
        "ids": {"sep": d1["sep_id"], "pad": d1["pad_id"], "eos": d1["eos_id"]},
        "embeds_std": d1["embeds_std"],
        "pad_row_used": d1["pad_row"],
        "prompt_ids_batch": d1["prompt_ids_batch"],
        "prompt_mask_batch": d1["prompt_mask_batch"],
        "generation_config_in_run": d1["generation_config"],
        # test_times=2: the second replication must reproduce the first exactly
        "singles_replication_identical": singles_replicated,
        "batch_replication_identical": batch_replicated,
        "batch_vs_single": batch_vs_single,
        "singles": singles,
        "batch": batch,
        "sample_logs_batch1": d1["sample_logs"],
        "sample_logs_batch3": d3["sample_logs"],
    }
    (out / "golden.json").write_text(json.dumps(golden, indent=1))
    (out / "build_info.json").unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", type=Path, default=Path("/tmp/authors/colar"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "colar")
    ap.add_argument("--phase", choices=["all", "build", "run"], default="all")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--dump", type=Path)
    a = ap.parse_args()
    checkout, out = a.checkout.resolve(), a.out.resolve()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    if a.phase == "build":
        build(checkout, out)
    elif a.phase == "run":
        run(checkout, out, a.batch_size, a.dump)
    else:
        me = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--checkout",
            str(checkout),
            "--out",
            str(out),
        ]
        subprocess.run(me + ["--phase", "build"], check=True)
        dumps = []
        for bs in (1, 3):
            dump = Path(f"/tmp/colar_golden_bs{bs}.json")
            subprocess.run(
                me + ["--phase", "run", "--batch-size", str(bs), "--dump", str(dump)], check=True
            )
            dumps.append(dump)
        collect(out, dumps, checkout)


if __name__ == "__main__":
    main()
