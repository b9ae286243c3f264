"""CODI (`kind = "codi"`): zhenyi4's release format and the re-trainings that share it.

zhenyi4/codi saves one state dict of the whole CODI module: `codi.base_model.model.<HF keys>`
with unmerged LoRA, plus `prj.*`; embeddings resized to V + 3 with pad = V, bot = V + 1,
eot = V + 2 as bare ids (no tokenizer entries). The loop is `nnpatch.models.codi.CodiModel`:
question + bot, K thoughts each prj(final hidden) fed back, eot, the answer.

- SIM-CoT (InternLM/SIM-CoT) adds a training-only step decoder (`decoder.*`, and
  `pj_in`/`pj_out` when trained with a decoder path); its test loop never builds it, so its
  keys are dropped, by name and count in the key report.
- Cywiński et al. (cywinski/codi) push a tokenizer with the weights that names the markers
  `<|bocot|>`/`<|eocot|>` (checked against the embedding rows); answer-only checkpoints read
  the question with an instruction and write the bare answer after eot, and those trained
  with remove_eos False read an eos before the thought token (recipe fields `prompt`,
  `eos_before_thought`). CODI on Qwen3 (cds-jb) is the same format.

A position is bot, thought 0..K-1 (one KV entry each) or eot.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from nnpatch.errors import ModelError
from nnpatch.models.base import ANSWER_PREFIX, ThoughtModel
from nnpatch.models.checkpoint import KeyReport, load_exactly, merge_lora
from nnpatch.models.codi import CodiModel, Projection
from nnpatch.models.hub import TOKENIZER_FILES, load_tokenizer
from nnpatch.models.kinds.base import Kind
from nnpatch.models.kinds.files import (
    WEIGHT_FILES,
    ReleaseFiles,
    base_config_and_tokenizer,
    empty_language_model,
    keys_of,
    load_dtype,
    release_weights,
    thought_model,
    thought_shape,
    tied_keys,
)

PREFIX = "codi.base_model.model."
NAMED_TOKENS = ("<|bocot|>", "<|eocot|>")  # Cywiński et al.'s thought markers
TOKEN_LISTS = ("tokenizer.json", "tokenizer_config.json", "added_tokens.json")
# modules a release trains beside the model and never runs at test time (SIM-CoT's step
# decoders; `pj_in`/`pj_out` hold weights only when trained with a decoder_path)
TRAINING_ONLY = {
    "decoder.": "SIM-CoT's training-only step decoder",
    "pj_in.": "SIM-CoT's decoder input projection",
    "pj_out.": "SIM-CoT's decoder output projection",
}
THOUGHTS = 6  # every release's inf_latent_iterations


def load_codi_files(base: str, checkpoint: str, num_thoughts: int | None = None) -> ThoughtModel:
    """A CODI release from its base folder and checkpoint, with the release defaults."""
    return load_codi(ReleaseFiles(base, checkpoint, num_thoughts=num_thoughts))


def load_codi(section) -> ThoughtModel:
    config, tokenizer = base_config_and_tokenizer(section)
    path, state = release_weights(section)
    report = KeyReport(path)
    state = report.drop(state, TRAINING_ONLY)
    vocab = config.vocab_size
    rows, (pad, bot, eot) = vocab + 3, (vocab, vocab + 1, vocab + 2)  # zhenyi4: bare ids
    markers = None
    if getattr(section, "thought_tokens", None) == "multimode":
        # Dilgren & Wiegreffe's multimode CODI adds only <bocot>, <eocot> and pads with eos,
        # which must stay decodable
        rows, (pad, bot, eot) = vocab + 2, (tokenizer.eos_token_id, vocab, vocab + 1)
        markers = (bot, eot)
    shipped = shipped_tokenizer(path)
    if shipped is not None:  # Cywiński et al.: named tokens in the checkpoint's tokenizer
        tokenizer, rows = shipped, len(shipped)
        pad, bot, eot = named_ids(tokenizer, state, path)
    lm = empty_language_model(config, rows, load_dtype(section))
    lm_state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    prj_state = {k[len("prj.") :]: v for k, v in state.items() if k.startswith("prj.")}
    report.unexpected += [k for k in state if not k.startswith((PREFIX, "prj."))]
    merged = merge_lora(
        lm_state, lm, float(section.lora_alpha), section.lora_r, report, load_dtype(section)
    )
    report.missing = [PREFIX + k for k in report.missing]
    report.unexpected = [PREFIX + k if "lora_" in k else k for k in report.unexpected]
    if getattr(section, "projection", None) is False:
        prj = nn.Identity()  # use_prj False: the final hidden state is the next input
    else:
        prj_dim = section.prj_dim or _rows(prj_state.get("1.weight"), 2 * config.hidden_size)
        prj = Projection(config.hidden_size, prj_dim)
    module = CodiModel(
        lm,
        prj,
        section.num_thoughts or THOUGHTS,
        bot_id=bot,
        eot_id=eot,
        pad_id=pad,
        marker_ids=markers,
    )
    combined = {f"lm.{k}": v for k, v in merged.items()} | {
        f"prj.{k}": v for k, v in prj_state.items()
    }
    load_exactly(module, combined, report, tied_keys(config))
    lm.tie_weights()
    answer_only = getattr(section, "prompt", None) == "answer-only"
    return thought_model(section)(
        module,
        tokenizer,
        section.checkpoint,
        answer_prefix="" if answer_only else ANSWER_PREFIX,
        question_style="answer-only" if answer_only else ("strip" if markers else "codi"),
        key_report=report,
        eos_before_bot=bool(getattr(section, "eos_before_thought", None)),
        direct=getattr(section, "thinking", None) == "direct",
        answer_space=not answer_only,
    )


def shipped_tokenizer(weights: str):
    """The checkpoint folder's own tokenizer when it names the thought markers (Cywiński
    et al. push it with the weights), else None (zhenyi4: the base's, bare ids)."""
    folder = Path(weights).parent
    texts = []
    for name in TOKEN_LISTS:  # read as text first: a folder without the markers (zhenyi4's
        try:  # releases) never has its tokenizer loaded, whatever state it is in
            texts.append((folder / name).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    if not all(any(token in text for text in texts) for token in NAMED_TOKENS):
        return None
    tokenizer = load_tokenizer(folder, "model.checkpoint")
    vocab = tokenizer.get_vocab()
    return tokenizer if all(token in vocab for token in NAMED_TOKENS) else None


def named_ids(tokenizer, state: dict, path: str) -> tuple[int, int, int]:
    """(pad, bot, eot) from the shipped tokenizer, checked against the checkpoint's
    embedding rows: every id must be a row, and the rows must be the tokenizer's length."""
    bot, eot = tokenizer.convert_tokens_to_ids(list(NAMED_TOKENS))
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ModelError(f"{path}: its tokenizer has no pad token; CODI's training adds [PAD]")
    rows = next(
        (
            int(v.shape[0])
            for k, v in state.items()
            if k.endswith("embed_tokens.base_layer.weight")
            or k.endswith("embed_tokens.weight")
            or k.endswith("wte.weight")
        ),
        None,
    )
    if rows is not None and rows != len(tokenizer):
        raise ModelError(
            f"{path}: the embeddings have {rows} rows but the shipped tokenizer has "
            f"{len(tokenizer)} tokens; the tokenizer is not the one trained with these weights"
        )
    return pad, bot, eot


def _rows(weight, default: int) -> int:
    return default if weight is None else int(weight.shape[0])


def _recognise(folder: Path) -> bool:
    keys = keys_of(folder, WEIGHT_FILES)
    return any(k.startswith(PREFIX) for k in keys)


KIND = Kind(
    name="codi",
    about="CODI: zhenyi4, SIM-CoT, Cywiński et al., cds-jb Qwen3 (codi.* + prj.* state dicts)",
    fields=(
        "checkpoint",
        "base",
        "revision",
        "num_thoughts",
        "prj_dim",
        "projection",
        "lora_r",
        "lora_alpha",
        "eos_before_thought",
        "prompt",
        "thought_tokens",
        "thinking",
    ),
    load=load_codi,
    shape=lambda section: thought_shape(section, THOUGHTS),
    recognise=_recognise,
)

__all__ = ["KIND", "TOKENIZER_FILES", "load_codi", "load_codi_files"]
