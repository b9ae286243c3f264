"""Plain causal LMs (GPT-2, Llama families) that reason in written text.

The patched positions are the tokens of a marked span of the prompt, e.g. a GSM8K solution
written between the question and the answer: `Q: ... A: [[Natalia sold 48/2 = 24 ...]]`.
The markers are removed; the text before, inside and after them is tokenized piece by piece,
so span token t is exactly the t-th token of the marked text. Clean and corrupted spans must
have the same number of tokens, or the pair is rejected. A prompt without markers is one
span: positions are then plain token indices.

The engine traces these models through nnsight's TransformersModel (the wrapper nnsight can
also send to NDIF). Each receiver row runs twice in one forward, once teacher-forcing the
clean answer and once the corrupted one, so both whole-answer log-probabilities come from
the same patched activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from nnpatch.errors import ModelError, PairsError
from nnpatch.models.architectures import Architecture, architecture_of
from nnpatch.models.base import (
    ANSWER_PREFIX,
    Cell,
    Encoded,
    ModelShape,
    PlacedModule,
    pad_rows,
)
from nnpatch.models.decoding import DecodingLM

MARKERS = ("[[", "]]")


class CausalLM(PlacedModule):
    """A Hugging Face causal LM with its tokenizer, patched over a marked span."""

    row_copies = 2  # each row runs with the clean and with the corrupted answer
    shares_question = False
    sites = ("resid", "attn", "mlp", "head")

    def __init__(
        self,
        lm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        answer_prefix: str = ANSWER_PREFIX,
        markers: tuple[str, str] = MARKERS,
    ) -> None:
        self.module = lm.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.answer_prefix = answer_prefix
        self.markers = markers
        self.architecture: Architecture = architecture_of(lm)
        self.span_length: int | None = None  # longest span over the bound pairs
        self.span_lengths: dict[str, int] = {}  # pair id → its span's token count
        self.key_report = None
        self.remote_traced = None  # the nnsight wrapper NDIF knows, for remote runs

    # ---- shape -----------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.module.config.num_hidden_layers

    @property
    def shape(self) -> ModelShape:
        if self.span_length is None:
            raise ModelError(
                f"{self.name}: span positions are known once its tokenizer reads "
                "the pairs; nnpatch run checks them"
            )
        return ModelShape(
            self.name,
            self.num_layers,
            self.span_length,
            named_positions=False,
            sites=self.sites,
            num_heads=self.num_heads,
        )

    def position_labels(self) -> list[str]:
        return self.shape.position_labels()

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.eos_id if pad is None else pad

    # ---- text ------------------------------------------------------------------------------
    def pieces(self, prompt: str) -> tuple[list[int], list[int], list[int]]:
        """Token ids before, inside and after the marked span (no markers: all span); the
        prompt is stripped of surrounding whitespace first."""
        start, end = self.markers
        prompt = prompt.strip()
        if start not in prompt:
            before, span, after = "", prompt, ""
        else:
            before, _, rest = prompt.partition(start)
            span, found, after = rest.partition(end)
            if not found:
                raise PairsError(
                    f"prompt opens the span with {start!r} but never closes it "
                    f"with {end!r}: {prompt[:60]!r}"
                )
        encode = self.tokenizer
        head = encode(before, add_special_tokens=True).input_ids
        return (
            head,
            encode(span, add_special_tokens=False).input_ids,
            encode(after, add_special_tokens=False).input_ids,
        )

    def question_ids(self, prompt: str) -> list[int]:
        """The prompt's ids as the model reads them, markers removed."""
        return [token for piece in self.pieces(prompt) for token in piece]

    def bind_pairs(self, pairs, markers: tuple[str, str] = MARKERS) -> None:
        """Check that each pair's clean and corrupted spans align; record each pair's span
        length. Positions run to the longest span; a pair's rows past its own span are left
        out (and counted), never patched at a token outside the span."""
        self.markers = tuple(markers)
        lengths = []
        for pair in pairs:
            clean = len(self.pieces(pair.clean_question)[1])
            corrupt = len(self.pieces(pair.corrupted_question)[1])
            if clean != corrupt:
                raise PairsError(
                    f"pair {pair.id!r}: the clean span has {clean} tokens and the "
                    f"corrupted span {corrupt}; patched spans must align token for "
                    "token (change a number that keeps the token count)"
                )
            if clean == 0:
                raise PairsError(f"pair {pair.id!r}: the marked span is empty")
            lengths.append(clean)
        self.span_lengths = {pair.id: n for pair, n in zip(pairs, lengths, strict=True)}
        self.span_length = max(lengths)

    def span_of(self, pair) -> int | None:
        """How many span positions this pair has."""
        return self.span_lengths[pair.id]

    def position_tokens(self, prompt: str) -> dict[str, tuple[int, str]]:
        """Each span position's absolute index in the prompt and its token's text."""
        head, span, _ = self.pieces(prompt)
        return {
            str(t): (len(head) + t, self.tokenizer.decode([token])) for t, token in enumerate(span)
        }

    def answer_ids(self, answer: str) -> list[int]:
        ids = self.tokenizer(" " + answer.strip(), add_special_tokens=False).input_ids
        return [*ids, self.eos_id]

    def prefix_ids(self) -> list[int]:
        if not self.answer_prefix:
            return []  # answer_prefix = "": the answer follows the prompt directly
        return self.tokenizer(" " + self.answer_prefix, add_special_tokens=False).input_ids

    def cell(self, site: str, layer: int | None, position: str, head: int | None = None) -> Cell:
        if site not in self.sites or layer is None or not position.isdigit():
            raise ModelError(
                f"plain causal LMs patch {'/'.join(self.sites)} at span token "
                f"indices, not site {site!r} at position {position!r}"
            )
        path = self.architecture.site_path(site, layer)
        if site == "head":  # no head: the whole input (every head), as the baselines read it
            features = None if head is None else self.head_features(head)
            return Cell(path, 0, int(position), False, "input", features)
        return Cell(path, 0, int(position), site == "attn")

    def encode(
        self, questions: list[str], clean_answers: list[list[int]], corrupt_answers: list[list[int]]
    ) -> Encoded:
        """Rows [clean-answer copies; corrupted-answer copies], prompts left-padded."""
        prefix = self.prefix_ids()
        prompts, span_starts = [], []
        for question in questions:
            head, span, tail = self.pieces(question)
            prompts.append(head + span + tail + prefix)
            span_starts.append(len(head))
        width = max(map(len, prompts))
        answer_width = max(map(len, clean_answers + corrupt_answers))
        rows = []
        for answers in (clean_answers, corrupt_answers):
            rows += [
                p + a + [self.pad_id] * (answer_width - len(a))
                for p, a in zip(prompts, answers, strict=True)
            ]
        input_ids, mask = pad_rows(rows, self.pad_id, left=True)
        for i, answers in enumerate(clean_answers + corrupt_answers):  # right pads are not text
            mask[i, mask.shape[1] - (answer_width - len(answers)) :] = 0
        offsets = torch.tensor(
            [width - len(p) + s for p, s in zip(prompts, span_starts, strict=True)] * 2
        )
        clean, clean_mask = pad_rows(clean_answers, self.pad_id, left=False)
        corrupt, corrupt_mask = pad_rows(corrupt_answers, self.pad_id, left=False)
        tensors = (
            input_ids,
            mask,
            torch.tensor(prefix, dtype=torch.long),
            clean,
            corrupt,
            clean_mask,
            corrupt_mask,
            offsets,
        )
        return Encoded(*(t.to(self.device) for t in tensors))

    # ---- how the engine traces this model ----------------------------------------------------
    def traced(self, decodes: bool = False):
        """nnsight's wrapper of the LM; with `decodes`, of the LM that also decodes answers."""
        from nnsight import NNsight
        from nnsight.modeling.transformers import TransformersModel

        if self.remote_traced is not None:
            if decodes:
                raise ModelError(
                    f"{self.name}: decoded answers on NDIF are not supported yet for plain LMs; "
                    "run the recipe locally, or use metrics without answer/correct"
                )
            return self.remote_traced
        if decodes:
            return NNsight(DecodingLM(self.module))
        return TransformersModel(self.module, tokenizer=self.tokenizer)

    def trace_inputs(self, encoded: Encoded) -> tuple[tuple, dict]:
        mask = encoded.attention_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = {"input_ids": encoded.input_ids, "attention_mask": mask, "position_ids": positions}
        keep = _answer_width(encoded) + 1
        if encoded.decode is None:
            return (inputs,), {"logits_to_keep": keep}
        width = _answer_width(encoded)
        return (), {
            "inputs": inputs,
            "logits_to_keep": keep,
            "answer_width": width,
            "decode": encoded.decode,
        }

    def answers_of(self, encoded: Encoded) -> SplitAnswers:
        return SplitAnswers(
            encoded.clean_answer.shape[1],
            encoded.corrupt_answer.shape[1],
            encoded.decode is not None,
        )


@dataclass(frozen=True)
class SplitAnswers:
    """Both answers' logits from the kept logits of [clean copies; corrupted copies] (kept
    logit j predicts answer token j: the answers start at the same column), and the decoded
    ids when the forward decoded. Free of the model: it ships to NDIF as a few bytes."""

    clean_width: int
    corrupt_width: int
    decoded: bool

    def __call__(self, result) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        logits = result[0] if self.decoded else result.logits  # [2B, A + 1, V]
        batch = logits.shape[0] // 2
        ids = result[1] if self.decoded else None
        return logits[:batch, : self.clean_width], logits[batch:, : self.corrupt_width], ids


def _answer_width(encoded: Encoded) -> int:
    return max(encoded.clean_answer.shape[1], encoded.corrupt_answer.shape[1])


def load_remote_causal_lm(section) -> CausalLM:
    """A hosted model for NDIF: its architecture on the meta device, built from the config;
    only the config and tokenizer are read here, never the weights."""
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoTokenizer

    from nnpatch.models.hub import TOKENIZER_FILES, first_line, refuse_custom_code, resolve_folder

    if not section.checkpoint:
        raise ModelError("model.checkpoint: required (the hub id NDIF hosts)")
    source = section.base or section.checkpoint
    files = ["config.json", *TOKENIZER_FILES]
    folder = resolve_folder(source, "model.checkpoint", files, section.revision)
    refuse_custom_code(folder, "model.checkpoint")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        traced = TransformersModel(
            section.checkpoint,
            task="text-generation",
            tokenizer=tokenizer,
            revision=section.revision or "main",
            trust_remote_code=False,
        )
    except Exception as err:  # noqa: BLE001 - a broken config or tokenizer: one line
        raise ModelError(f"model.checkpoint: {first_line(err)}") from None
    model = CausalLM(traced._module, tokenizer, section.checkpoint, _prefix(section))
    model.remote_traced = traced
    return model


def load_causal_lm(section) -> CausalLM:
    """A Hugging Face causal LM folder or hub id; every weight must load."""
    from transformers import AutoModelForCausalLM

    from nnpatch.models.hub import first_line, load_tokenizer, refuse_custom_code, resolve_folder

    if not section.checkpoint:
        raise ModelError("model.checkpoint: required (a model folder or hub id)")
    patterns = [
        "config.json",
        "*.safetensors",
        "*.bin",
        "tokenizer*",
        "special_tokens_map.json",
        "vocab*",
        "merges.txt",
        "generation_config.json",
        "*.model",
    ]
    folder = resolve_folder(section.checkpoint, "model.checkpoint", patterns, section.revision)
    refuse_custom_code(folder, "model.checkpoint")
    tokenizer_folder, tokenizer_field = folder, "model.checkpoint"
    if section.base:
        tokenizer_folder = resolve_folder(section.base, "model.base", patterns, section.revision)
        tokenizer_field = "model.base"
        refuse_custom_code(tokenizer_folder, tokenizer_field)
    try:
        lm, info = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, output_loading_info=True, trust_remote_code=False
        )
    except Exception as err:  # noqa: BLE001 - broken weights or config: one line
        raise ModelError(
            f"model.checkpoint: {folder}: cannot load it ({first_line(err)})"
        ) from None
    tokenizer = load_tokenizer(tokenizer_folder, tokenizer_field)
    tied = {"lm_head.weight"} if getattr(lm.config, "tie_word_embeddings", False) else set()
    missing = sorted(set(info.get("missing_keys", [])) - tied)
    unexpected = sorted(info.get("unexpected_keys", []))
    if missing or unexpected:
        raise ModelError(
            f"{folder}: missing keys {missing[:4]}, unexpected keys {unexpected[:4]};"
            " the weights do not match the config"
        )
    return CausalLM(lm, tokenizer, section.checkpoint, answer_prefix=_prefix(section))


def _prefix(section) -> str:
    """The recipe's answer prefix; "" is no prefix at all (the answer follows the prompt)."""
    return ANSWER_PREFIX if section.answer_prefix is None else section.answer_prefix
