"""CoLaR (`kind = "colar"`): xiaomi-research/colar's Lightning checkpoints (AlbertTan/CoLaR).

The release is `<run>/checkpoints/<name>.ckpt` beside `<run>/hparams.yaml`: the checkpoint
keeps only what was trained (LoRA as `llm.base_model.model.<HF module>.lora_A/B.default.weight`
and the latent policy as `latent_policy.*`); the base model comes from `model.base`. The
tokenizer is the base's with `[PAD]` added (the authors' resize draws that row at random and
never saves it; nnpatch gives it the embeddings' mean and never decodes it). hparams.yaml
gives the LoRA rank and alpha (PEFT's defaults where unset), the thinking speed in the
prompt and the most latents a question may think; the embedding scale is the authors' table
per base (src/utils/constants.py).

The loop, with the policy's mean and argmax decisions, is `nnpatch.models.colar`.
"""

from __future__ import annotations

from pathlib import Path

from nnpatch.errors import ModelError
from nnpatch.models.checkpoint import KeyReport, load_exactly, merge_adapters, read_lightning_state
from nnpatch.models.colar import ColarModel, ColarThoughts, PolicyMean
from nnpatch.models.hub import TOKENIZER_FILES, load_tokenizer, resolve_folder
from nnpatch.models.kinds.base import Kind
from nnpatch.models.kinds.files import base_language_model

LORA_PREFIX = "llm.base_model.model."
POLICY_PREFIX = "latent_policy."
SEPARATOR = "###"
PROMPT = "Question: {question} Let's think step by step:(Thinking speed: {speed})" + SEPARATOR
ANSWER_PREFIX = "Answer:"  # the answer template "Answer:{}", right after the final ###
# the latent policy predicts embeddings in units of the base model's embedding std
EMBEDS_STD = {
    "DeepSeek-R1-Distill-Qwen-1.5B": 0.03,
    "Llama-3.2-1B-Instruct": 0.018,
    "Llama-3.2-3B-Instruct": 0.018,
    "Llama-3.1-8B-Instruct": 0.008,
    "gpt2": 0.12,
}
PEFT_DEFAULT_LORA = {"r": 8, "lora_alpha": 8}  # LoraConfig's defaults, when hparams omit them


def load_colar(section) -> ColarThoughts:
    checkpoint, hparams = colar_files(section)
    settings = hparams.get("model_kwargs") or {}
    model_id = str(settings.get("model_id", ""))
    if model_id not in EMBEDS_STD:
        raise ModelError(
            f"{checkpoint}: hparams model_id {model_id!r} has no embedding scale in CoLaR's "
            f"table (known: {', '.join(EMBEDS_STD)})"
        )
    tokenizer = load_tokenizer(_base_folder(section), "model.base")
    if tokenizer.pad_token is None or tokenizer.pad_token != "[PAD]":
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    separator = tokenizer.convert_tokens_to_ids(SEPARATOR)
    if separator is None or separator == tokenizer.unk_token_id:
        raise ModelError(f"model.base: its tokenizer has no {SEPARATOR!r} token; CoLaR needs one")
    lm = base_language_model(section, len(tokenizer))
    state = read_lightning_state(checkpoint)
    report = KeyReport(str(checkpoint))
    lora = settings.get("lora_config") or {}
    adapters = {k[len(LORA_PREFIX) :]: v for k, v in state.items() if k.startswith(LORA_PREFIX)}
    merge_adapters(
        lm,
        adapters,
        float(lora.get("lora_alpha", PEFT_DEFAULT_LORA["lora_alpha"])),
        int(lora.get("r", PEFT_DEFAULT_LORA["r"])),
        report,
    )
    policy_state = {
        k[len(POLICY_PREFIX) :]: v for k, v in state.items() if k.startswith(POLICY_PREFIX)
    }
    report.unexpected += [k for k in state if not k.startswith((LORA_PREFIX, POLICY_PREFIX))]
    report.check()
    first = policy_state.get("fc.0.weight")
    intermediate = 0 if first is None else int(first.shape[0])
    has_log_std = "log_std.weight" in policy_state
    policy = PolicyMean(lm.config.hidden_size, intermediate, EMBEDS_STD[model_id], has_log_std)
    load_exactly(policy, policy_state, report)
    generation = settings.get("latent_generation_config") or {}
    limit = int(generation.get("max_n_latent_forward", 64))
    module = ColarModel(
        lm,
        policy,
        limit,
        bot_id=separator,
        eot_id=separator,
        pad_id=tokenizer.pad_token_id,
        marker_ids=(tokenizer.pad_token_id,),
    )
    speed = generation.get("compression_factor", 5)
    model = ColarThoughts(
        module,
        tokenizer,
        section.checkpoint,
        answer_prefix=ANSWER_PREFIX,
        key_report=report,
        answer_space=False,
        max_thoughts=limit,
    )
    model.prompt = PROMPT.replace("{speed}", str(speed))
    return model


def colar_files(section) -> tuple[Path, dict]:
    """The .ckpt and the hparams.yaml beside its run (`<run>/checkpoints/x.ckpt`,
    `<run>/hparams.yaml`, where the authors' run.py reads it)."""
    import yaml

    if not section.checkpoint:
        raise ModelError("model.checkpoint: required (a .ckpt file, its run folder or a hub id)")
    patterns = ["*.ckpt", "*hparams.yaml", "**/*.ckpt", "**/hparams.yaml"]
    folder = resolve_folder(section.checkpoint, "model.checkpoint", patterns, section.revision)
    direct = Path(section.checkpoint).expanduser()
    found = [direct] if direct.is_file() else _colar_runs(folder)
    if len(found) != 1:
        what = "no CoLaR checkpoint" if not found else f"{len(found)} CoLaR checkpoints"
        raise ModelError(
            f"model.checkpoint: {folder} holds {what} (a .ckpt under <run>/checkpoints/ "
            "beside <run>/hparams.yaml with sft_method colar); name the .ckpt file itself"
        )
    hparams_path = found[0].parent.parent / "hparams.yaml"
    try:
        hparams = yaml.safe_load(hparams_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ModelError(f"{hparams_path}: cannot read CoLaR's hyper-parameters ({err})") from None
    if not isinstance(hparams, dict):
        raise ModelError(f"{hparams_path}: not a table of hyper-parameters")
    return found[0], hparams


def _colar_runs(folder: Path) -> list[Path]:
    import yaml

    runs = []
    for path in sorted(folder.glob("**/checkpoints/*.ckpt")):
        try:
            text = (path.parent.parent / "hparams.yaml").read_text(encoding="utf-8")
            settings = (yaml.safe_load(text) or {}).get("model_kwargs") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if settings.get("sft_method") == "colar":
            runs.append(path)
    return runs


def _base_folder(section) -> Path:
    if not section.base:
        raise ModelError("model.base: required (the base model CoLaR's adapters were trained on)")
    return resolve_folder(section.base, "model.base", ["config.json", *TOKENIZER_FILES])


def _shape(section):
    """Validate finds the release and its base (offline: says what to download), but the
    latent counts come from running the model on the pairs."""
    colar_files(section)
    _base_folder(section)
    raise ModelError(
        "CoLaR decides its latent count per question, so its positions are known once it "
        "reads the pairs (nnpatch inspect or run checks them)"
    )


def _recognise(folder: Path) -> bool:
    return bool(_colar_runs(folder))


KIND = Kind(
    name="colar",
    about="CoLaR: xiaomi-research/colar Lightning checkpoints (LoRA + latent policy)",
    fields=("checkpoint", "base", "revision"),
    load=load_colar,
    shape=_shape,
    recognise=_recognise,
)
