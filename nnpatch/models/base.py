"""ThoughtModel: what the engine needs from a continuous-thought model, whatever its kind.

It owns the nn.Module whose forward runs the whole recurrent computation, the tokenizer,
and the map from abstract cells (site, layer, position) to the module call that carries
them, so the engine never sees a backend path or a sequence index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from nnpatch.errors import ModelError
from nnpatch.models.codi import CodiModel, Decode
from nnpatch.models.text import QUESTION_STYLES

SITES = ("resid", "attn", "mlp", "head", "thought")
ANSWER_PREFIX = "The answer is:"


@dataclass(frozen=True)
class Cell:
    """Where one (site, layer, position) activation lives in the recurrent forward."""

    path: str  # module path relative to the ThoughtModel's module root
    call: int  # which call of that module (nnsight iteration)
    token: int  # token index within that call's output (-1: the last)
    tuple_output: bool  # the module returns a tuple whose first element is patched
    port: str = "output"  # "input": the module's first input (a head: o_proj's input)
    features: slice | None = None  # the features of the cell (one head's), or all


@dataclass(frozen=True)
class ModelShape:
    """What a recipe's cells are checked against: known without loading any weights."""

    name: str
    num_layers: int
    num_thoughts: int  # thoughts, or span tokens for plain causal LMs
    named_positions: bool = True  # bot and eot exist (continuous-thought models)
    sites: tuple[str, ...] = SITES
    num_heads: int | None = None  # attention (query) heads per layer, when known
    # parallel loops (PCCoT): thoughts are also cells of the iterations before the last one,
    # labelled "s@t" (slot s at iteration t = 0..iterations-1); a plain "s" is the last
    iterations: int = 0
    # modes that cannot apply to this model's loop, and why (one line each)
    refused_modes: tuple[tuple[str, str], ...] = ()

    def position_labels(self) -> list[str]:
        """Every patchable position, in sequence order: bot, 0..K-1, eot (with the earlier
        iterations' slots, s@t, before the last one's)."""
        indices = list(map(str, range(self.num_thoughts)))
        earlier = [f"{s}@{t}" for t in range(self.iterations) for s in indices]
        return ["bot", *earlier, *indices, "eot"] if self.named_positions else indices

    def describe_positions(self) -> str:
        """The positions a recipe may name, as a hint."""
        top = self.num_thoughts - 1
        if not self.named_positions:
            return f"span token indices 0..{top}"
        text = f"thoughts 0..{top}, 'bot' or 'eot'"
        if self.iterations:
            text += f", or 's@t' for slot s at an earlier iteration t = 0..{self.iterations - 1}"
        return text

    def thought_input(self, label: str) -> bool:
        """Whether a position has a thought input that site `thought` can patch (an earlier
        iteration's slot does from iteration 1 on; iteration 0 reads placeholder tokens)."""
        if label.isdigit():
            return True
        slot, _, iteration = label.partition("@")
        return slot.isdigit() and iteration.isdigit() and int(iteration) >= 1


@dataclass
class Encoded:
    """A batch ready for the recurrent forward: receiver questions, both answers of each pair."""

    input_ids: torch.Tensor  # [B, T] left-padded question + bot
    attention_mask: torch.Tensor  # [B, T]
    prefix_ids: torch.Tensor  # [P]
    clean_answer: torch.Tensor  # [B, A] right-padded, ends with eos
    corrupt_answer: torch.Tensor  # [B, A']
    clean_mask: torch.Tensor  # [B, A] 1 on real answer tokens
    corrupt_mask: torch.Tensor  # [B, A']
    offsets: torch.Tensor  # [rows] added to a cell's token index (zeros: fixed positions)
    thought_counts: torch.Tensor | None = None  # [B] thoughts per row, where they differ
    thought_ids: torch.Tensor | None = None  # [B, K] written thoughts (verbalized)
    decode: Decode | None = None  # also decode each row's answer (set by the engine)

    def args(self) -> tuple[torch.Tensor, ...]:
        return (
            self.input_ids,
            self.attention_mask,
            self.prefix_ids,
            self.clean_answer,
            self.corrupt_answer,
        )


class PlacedModule:
    """What both model adapters share: where the module's weights live, the tokenizer's eos."""

    module: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str

    @property
    def eos_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ModelError(f"{self.name}: the tokenizer has no eos token")
        return eos

    @property
    def device(self) -> torch.device:
        """Where inputs go: this machine's CPU when the weights live on NDIF (meta here)."""
        device = next(self.module.parameters()).device
        return torch.device("cpu") if device.type == "meta" else device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def context_length(self) -> int | None:
        """The most positions one forward may use (the config's limit), None when unstated."""
        config = getattr(self.module, "lm", self.module).config
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def sequence_length(self, question: str, answer_tokens: int) -> int:
        """Positions one forward of `question` uses, teacher-forcing an answer this long."""
        fixed = len(self.question_ids(question)) + self.loop_positions + len(self.prefix_ids())
        return fixed + answer_tokens

    loop_positions = 0  # positions between the question and the answer prefix

    # the text after the last of these in a decoded answer is what the family's evaluation
    # reads (Coconut: "#", CoLaR: "Answer:"); None: all of it (CODI: its last number)
    answer_marker: str | None = None
    prompt_in_input = False  # the answer prefix is read as input before decoding (PCCoT)

    def read_answer(self, decoded: str) -> str:
        """The part of a decoded answer the family's own evaluation reads."""
        if self.answer_marker and self.answer_marker in decoded:
            return decoded.rsplit(self.answer_marker, 1)[1]
        return decoded

    def decoding(self, tokens: int, every_step: bool = False) -> Decode:
        """Greedy decoding of `tokens` answer tokens at most, as the family decodes."""
        return Decode(tokens, self.eos_id, self.prompt_in_input, every_step)

    def answer_text(self, ids: list[int]) -> str:
        """Decoded answer ids (-1: after its end) as text."""
        return self.tokenizer.decode([t for t in ids if t >= 0], skip_special_tokens=True)

    @property
    def lm(self) -> torch.nn.Module:
        """The Hugging Face causal LM inside (CODI's base model, or the plain LM itself)."""
        return getattr(self.module, "lm", self.module)

    @property
    def hidden_size(self) -> int:
        return self.lm.config.hidden_size

    @property
    def num_heads(self) -> int:
        """Query heads per layer (grouped-query attention shares key/value heads among them;
        each query head still writes its own slice of the output projection's input)."""
        config = self.lm.config
        return getattr(config, "num_attention_heads", None) or config.n_head

    def head_features(self, head: int) -> slice:
        if not 0 <= head < self.num_heads:
            raise ModelError(f"{self.name} has heads 0..{self.num_heads - 1}, not {head!r}")
        width = getattr(self.lm.config, "head_dim", None) or self.hidden_size // self.num_heads
        return slice(head * width, (head + 1) * width)

    @torch.no_grad()
    def lens_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., d] read as the model reads its last one: its own final norm,
        then its LM head, in float32 (the logit lens)."""
        from nnpatch.models.architectures import architecture_of
        from nnpatch.models.codi import float32_logits

        norm = self.lm.get_submodule(architecture_of(self.lm).norm_path)
        return float32_logits(self.lm.lm_head, norm(hidden.to(self.dtype)))


class ThoughtModel(PlacedModule):
    """A CODI-architecture model with its tokenizer, ready to encode and patch."""

    def __init__(
        self,
        module: CodiModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        answer_prefix: str = ANSWER_PREFIX,
        question_style: str = "codi",
        key_report: object | None = None,
        eos_before_bot: bool = False,
        answer_space: bool = True,
        direct: bool = False,
    ) -> None:
        self.module = module.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.answer_prefix = answer_prefix  # CODI: "The answer is:"; Coconut: "###"
        self.question_style = question_style  # how the authors' code prepares a question
        self.key_report = key_report  # how a checkpoint's keys were accounted for
        # checkpoints trained with remove_eos False read [eos, bot] after the question
        self.eos_before_bot = eos_before_bot
        # whether the answer's text starts with a space (after a prefix such as "The answer
        # is:"); answer-only checkpoints write the bare number right after eot
        self.answer_space = answer_space
        # direct mode: no bot and no thoughts; the question's last token stands as bot
        self.direct = direct
        if direct:
            module.num_thoughts = 0

    @property
    def num_layers(self) -> int:
        return self.module.num_layers

    @property
    def thoughts_settable(self) -> bool:
        """Whether any number of thoughts may be run (`nnpatch eval`'s K): the loop's length
        is the caller's to choose (not in direct mode, where there is no loop)."""
        return not self.direct

    @property
    def num_thoughts(self) -> int:
        return self.module.num_thoughts

    @property
    def shape(self) -> ModelShape:
        return ModelShape(self.name, self.num_layers, self.num_thoughts, num_heads=self.num_heads)

    @property
    def loop_positions(self) -> int:
        return self.num_thoughts + 1  # the thoughts and eot

    def position_labels(self) -> list[str]:
        return self.shape.position_labels()

    def cell(self, site: str, layer: int | None, position: str, head: int | None = None) -> Cell:
        """Locate the activation of one (site, layer, position[, head]) cell in the forward."""
        if site == "thought":
            if not position.isdigit():
                raise ModelError(f"site 'thought' has only thought positions, not {position!r}")
            return Cell("prj", int(position), 0, False)
        if layer is None:
            raise ModelError(f"site {site!r} needs a layer")
        path = "lm." + self.module.architecture.site_path(site, layer)
        if position == "bot":
            call, token = 0, -1
        elif position == "eot":
            call, token = self.num_thoughts + 1, 0
        else:
            call, token = int(position) + 1, 0
        if site == "head":  # no head: the whole input (every head), as the baselines read it
            features = None if head is None else self.head_features(head)
            return Cell(path, call, token, False, "input", features)
        return Cell(path, call, token, site == "attn")

    def span_of(self, pair) -> int | None:
        """Positions are the same for every pair (bot, thoughts, eot): no per-pair span."""
        return None

    def position_tokens(self, question: str) -> dict[str, tuple[int, str]]:
        """Each position's absolute index in the unpadded sequence, and a name for its token:
        question 0..n-1, bot at n, thought t at n+1+t, eot at n+K+1."""
        n = len(self.question_ids(question)) - 1
        out = {"bot": (n, "<last question token>" if self.direct else "<bot>")}
        out |= {str(t): (n + 1 + t, f"<thought {t}>") for t in range(self.num_thoughts)}
        out["eot"] = (n + 1 + self.num_thoughts, "<eot>")
        return out

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an answer as the model writes it after the prefix, then eos.

        The eos makes answers that are prefixes of one another ("1" / "12") differ.
        """
        text = (" " if self.answer_space else "") + answer.strip()
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return [*ids, self.eos_id]

    def prefix_ids(self) -> list[int]:
        return self.tokenizer(self.answer_prefix, add_special_tokens=False).input_ids

    def greedy_answers(self, questions: list[str], max_new: int = 24) -> list[str]:
        """Decode each question's answer greedily through the real thought loop."""
        ids, mask = pad_rows([self.question_ids(q) for q in questions], self.module.pad_id, True)
        prompt = self.prefix_ids() if self.prompt_in_input else []
        rows = self.module.generate(
            ids.to(self.device), mask.to(self.device), self.eos_id, max_new, prompt
        )
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in rows]

    def question_text(self, question: str) -> str:
        """The text the tokenizer sees, prepared exactly as the model's authors prepare it."""
        return QUESTION_STYLES[self.question_style](question)

    def question_ids(self, question: str) -> list[int]:
        ids = self.tokenizer(self.question_text(question), add_special_tokens=True).input_ids
        eos = [self.eos_id] if self.eos_before_bot else []
        return [*ids, *eos] if self.direct else [*ids, *eos, self.module.bot_id]

    def encode(
        self, questions: list[str], clean_answers: list[list[int]], corrupt_answers: list[list[int]]
    ) -> Encoded:
        tokenised = {q: self.question_ids(q) for q in dict.fromkeys(questions)}  # once each
        questions_ids = [tokenised[q] for q in questions]
        pad = self.module.pad_id
        input_ids, mask = pad_rows(questions_ids, pad, left=True)
        prefix = torch.tensor(self.prefix_ids(), dtype=torch.long)  # [P], P may be 0
        clean, clean_mask = pad_rows(clean_answers, pad, left=False)
        corrupt, corrupt_mask = pad_rows(corrupt_answers, pad, left=False)
        offsets = torch.zeros(len(questions), dtype=torch.long)
        tensors = (input_ids, mask, prefix, clean, corrupt, clean_mask, corrupt_mask, offsets)
        return Encoded(*(t.to(self.device) for t in tensors))

    # ---- how the engine traces this model ------------------------------------------------
    row_copies = 1  # forward rows per encoded row
    shares_question = True  # rows of one question can continue from one `ask` state

    def thoughts_before(self, path: str, call: int) -> int | None:
        """How many thoughts complete before this module call (prj call t builds thought t's
        input; decoder call c runs thought c - 1); None inside the question pass."""
        if path == "prj":
            return call
        return min(call - 1, self.num_thoughts) if call > 0 else None

    @staticmethod
    def call_after(path: str, call: int, ran: int) -> int:
        """This module call's index in a forward that starts after the question pass and
        `ran` thoughts."""
        return call - ran - (0 if path == "prj" else 1)

    def traced(self, decodes: bool = False):
        """The nnsight wrapper the engine traces: the recurrent module itself (which decodes
        answers when asked, `decodes` or not)."""
        from nnsight import NNsight

        return NNsight(self.module)

    def trace_inputs(self, encoded: Encoded) -> tuple[tuple, dict]:
        return encoded.args(), decode_input(encoded)

    def answers_of(self, encoded: Encoded) -> ReadAnswers:
        """What reads a traced forward's result: the module returns (clean, corrupted)
        teacher-forced answer logits, then the decoded ids when it decoded."""
        return ReadAnswers(encoded.decode is not None)


@dataclass(frozen=True)
class ReadAnswers:
    """(answer logits of the clean and the corrupted answer, decoded ids or None) from a
    recurrent module's result. Small and free of the model, so a trace body that calls it
    ships to NDIF as a few bytes (a model adapter would pickle its tokenizer)."""

    decoded: bool

    def __call__(self, result) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return result[0], result[1], result[2] if self.decoded else None


def decode_input(encoded: Encoded) -> dict:
    """The forward's keyword asking it to decode, when the engine asked for answers."""
    return {} if encoded.decode is None else {"decode": encoded.decode}


def pad_rows(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask, padded on the left or right. A sweep repeats each pair's rows once per
    patch, so each distinct row is built once and the batch gathers them."""
    distinct = list(dict.fromkeys(map(tuple, rows)))
    width = max(len(r) for r in distinct)
    ids = torch.full((len(distinct), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(distinct), width), dtype=torch.long)
    for i, row in enumerate(distinct):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    if len(distinct) == len(rows):
        return ids, mask
    where = {row: i for i, row in enumerate(distinct)}
    index = torch.tensor([where[tuple(row)] for row in rows])
    return ids[index], mask[index]
