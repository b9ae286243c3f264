"""CODI: a causal LM that reasons in K continuous thoughts fed back through a projection.

The forward runs the whole recurrent computation of DESIGN.md in one call, so a single
nnsight trace sees every step (each decoder layer is called K + 3 times per forward):

    call 0        question + bot (left-padded), fills the KV cache
    call 1..K     thought t = prj(final hidden of the previous step), fed as inputs_embeds
    call K+1      eot + answer prefix + clean answer (teacher-forced)
    call K+2      corrupted answer, continuing from the cache truncated after the prefix

Attention mask and position ids are passed at every step, so a left-padded batch equals
the same questions run one by one (the CODI reference loop passes neither).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.torch_version import TorchVersion
from transformers import DynamicCache, PreTrainedModel

from nnpatch.models.architectures import Architecture, architecture_of


class Projection(nn.Module):
    """CODI's `prj`: Dropout → Linear(d, prj_dim) → GELU → Linear(prj_dim, d) → LayerNorm(d).

    Indices match the released state-dict keys `prj.1.*`, `prj.3.*`, `prj.ln.*`.
    """

    def __init__(self, hidden_size: int, prj_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.add_module("0", nn.Dropout(dropout))
        self.add_module("1", nn.Linear(hidden_size, prj_dim))
        self.add_module("2", nn.GELU())
        self.add_module("3", nn.Linear(prj_dim, hidden_size))
        self.ln = nn.LayerNorm(hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for index in range(4):
            hidden = self._modules[str(index)](hidden)
        return self.ln(hidden)


class CodiModel(nn.Module):
    """A base causal LM plus `prj`, run as CODI runs it at inference.

    `forward` takes a batch already encoded by `nnpatch.models.encode` and returns the
    teacher-forced logits of both answers: `(logits_clean, logits_corrupt)`, each
    `[batch, answer_len, vocab]`, where entry j predicts answer token j.
    """

    def __init__(
        self,
        lm: PreTrainedModel,
        prj: Projection,
        num_thoughts: int,
        bot_id: int,
        eot_id: int,
        pad_id: int,
        marker_ids: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.lm = lm
        self.prj = prj
        self.num_thoughts = num_thoughts
        self.bot_id = bot_id
        self.eot_id = eot_id
        self.pad_id = pad_id
        # the model's own markers, never decoded as text (CODI: pad, bot, eot; Coconut: its
        # three latent tokens, wherever the tokenizer put them)
        self.marker_ids = tuple(marker_ids) if marker_ids is not None else (pad_id, bot_id, eot_id)
        self.architecture: Architecture = architecture_of(lm)

    @property
    def num_layers(self) -> int:
        return self.lm.config.num_hidden_layers

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Answer logits in float32: in bfloat16 a logit of 20 is only good to 0.125."""
        return float32_logits(self.lm.lm_head, hidden)

    def _decode(
        self,
        cache: DynamicCache,
        mask: torch.Tensor,
        positions: torch.Tensor,
        ids: torch.Tensor | None = None,
        embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One decoder call on new tokens; returns the final-norm hidden states."""
        decoder = self.architecture.decoder(self.lm)
        out = decoder(
            input_ids=ids,
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        return out.last_hidden_state

    def ask(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, thoughts: int = 0
    ) -> Asked:
        """The question + bot pass, then the first `thoughts` thoughts: the state the rest of
        the forward continues from."""
        cache = DynamicCache(config=self.lm.config)
        mask = attention_mask.long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self._decode(cache, mask, positions, ids=input_ids)
        state = Asked(cache, mask, positions[:, -1:] + 1, hidden[:, -1:], 0)
        for _ in range(thoughts):
            state = self._thought(state)
        return state

    def _thought(
        self, state: Asked, counts: torch.Tensor | None = None, written: torch.Tensor | None = None
    ) -> Asked:
        """One recurrent step: prj of the last hidden state, fed back as the next input.

        `counts` [B]: thoughts each row thinks (CoLaR decides per question); a row past its
        count feeds a masked thought that nothing after it sees, as CoLaR's batched loop does.
        `written` [B, K]: token ids each row wrote instead (a verbalized chain of thought):
        step t feeds token t's embedding.
        """
        if written is None:
            thought = self.prj(state.hidden)  # [B, 1, d]
        else:
            step = written[:, state.thoughts : state.thoughts + 1]
            thought = self.lm.get_input_embeddings()(step)
        if counts is None:
            step = state.mask.new_ones(state.mask.shape[0], 1)
        else:
            step = (counts > state.thoughts).to(state.mask.dtype)[:, None]
        mask = torch.cat([state.mask, step], dim=1)
        hidden = self._decode(state.cache, mask, state.next_position, embeds=thought)
        position = state.next_position + step
        return Asked(state.cache, mask, position, hidden[:, -1:], state.thoughts + 1)

    def think(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        asked: Asked | None = None,
        thought_hidden: list[torch.Tensor] | None = None,
        thought_counts: torch.Tensor | None = None,
        thought_ids: torch.Tensor | None = None,
    ) -> Thinking:
        """The K recurrent thoughts after the question pass, continuing from `asked` when the
        question pass (and perhaps some thoughts) already ran; the state the answer follows.
        `thought_hidden`, if given, receives each thought's final hidden state [B, d];
        `thought_counts` [B] (at most K) masks each row's thoughts after its own count."""
        state = self.ask(input_ids, attention_mask) if asked is None else asked
        while state.thoughts < self.num_thoughts:
            state = self._thought(state, thought_counts, thought_ids)
            if thought_hidden is not None:
                thought_hidden.append(state.hidden[:, 0])
        return Thinking(state.cache, state.mask, state.next_position)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T] left-padded question + bot
        attention_mask: torch.Tensor,  # [B, T]
        prefix_ids: torch.Tensor,  # [P] the "The answer is:" tokens
        clean_answer: torch.Tensor,  # [B, A] right-padded
        corrupt_answer: torch.Tensor,  # [B, A'] right-padded
        asked: Asked | None = None,  # the question pass (+ thoughts), run before the trace
        thought_counts: torch.Tensor | None = None,  # [B] per-row thoughts (CoLaR)
        thought_ids: torch.Tensor | None = None,  # [B, K] written thoughts (verbalized)
        decode: Decode | None = None,  # also decode each row's answer greedily
    ) -> tuple[torch.Tensor, ...]:
        """Both answers' teacher-forced logits; with `decode`, also each row's greedy answer
        ids [B, decode.tokens] (-1 after its eos), continuing from the same (patched) eot."""
        state = self.think(
            input_ids, attention_mask, asked, thought_counts=thought_counts, thought_ids=thought_ids
        )
        cache, mask, batch = state.cache, state.mask, input_ids.shape[0]
        eot = input_ids.new_full((batch, 1), self.eot_id)
        prefix = prefix_ids.to(input_ids.device).expand(batch, -1)
        tail = torch.cat([eot, prefix, clean_answer], dim=1)
        length_before_answer = cache.get_seq_length() + 1 + prefix.shape[1]
        tail_mask = torch.cat([mask, mask.new_ones(tail.shape)], dim=1)
        tail_positions = state.next_position + torch.arange(tail.shape[1], device=tail.device)
        hidden = self._decode(cache, tail_mask, tail_positions, ids=tail)
        first = prefix.shape[1]  # tail index of the last prefix token
        logits_clean = self._logits(hidden[:, first : first + clean_answer.shape[1]])
        # the model writes its answer after eot (CODI), or after a prompt it reads (PCCoT)
        kept = 1 + (first if decode is not None and decode.after_prefix else 0)
        start = cache.get_seq_length() - tail.shape[1] + kept

        truncate_cache(cache, length_before_answer)
        corrupt_mask = torch.cat(
            [tail_mask[:, :length_before_answer], mask.new_ones(corrupt_answer.shape)], dim=1
        )
        corrupt_positions = (
            tail_positions[:, first : first + 1]
            + 1
            + torch.arange(corrupt_answer.shape[1], device=tail.device)
        )
        hidden_corrupt = self._decode(cache, corrupt_mask, corrupt_positions, ids=corrupt_answer)
        logits_corrupt = torch.cat(
            [
                logits_clean[:, :1],
                self._logits(hidden_corrupt[:, : corrupt_answer.shape[1] - 1]),
            ],
            dim=1,
        )
        if decode is None:
            return logits_clean, logits_corrupt
        truncate_cache(cache, start)
        decoded = self._greedy(
            cache,
            tail_mask[:, :start],
            tail_positions[:, kept - 1 : kept],
            self._logits(hidden[:, kept - 1]),
            decode,
        )
        return logits_clean, logits_corrupt, decoded

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        eos_id: int,
        max_new: int = 24,
        prompt_ids: list[int] = (),
        thought_counts: torch.Tensor | None = None,
        thought_ids: torch.Tensor | None = None,
    ) -> list[list[int]]:
        """Greedy decoding after eot (and `prompt_ids`, for families that read their answer
        prompt as input), as the family's evaluation does; token ids up to eos per row.

        The model's marker ids (CODI's pad, bot, eot; Coconut's latent tokens) are never chosen.
        """
        state = self.think(
            input_ids, attention_mask, thought_counts=thought_counts, thought_ids=thought_ids
        )
        batch = input_ids.shape[0]
        token = torch.tensor([[self.eot_id, *prompt_ids]], device=input_ids.device)
        token = token.expand(batch, -1)
        mask = torch.cat([state.mask, state.mask.new_ones(batch, token.shape[1])], dim=1)
        steps = state.next_position + torch.arange(token.shape[1], device=token.device)
        hidden = self._decode(state.cache, mask, steps, ids=token)
        ids = self._greedy(
            state.cache, mask, steps[:, -1:], self._logits(hidden[:, -1]), Decode(max_new, eos_id)
        )
        return [[t for t in row if t >= 0] for row in ids.tolist()]

    def _greedy(
        self,
        cache: DynamicCache,
        mask: torch.Tensor,  # [B, keys so far]
        position: torch.Tensor,  # [B, 1] of the last token read
        logits: torch.Tensor,  # [B, V] after it
        decode: Decode,
    ) -> torch.Tensor:
        """Greedy answer ids from `logits` on, each token fed back through the cache."""

        def step(token: torch.Tensor, mask: torch.Tensor, position: torch.Tensor):
            hidden = self._decode(cache, mask, position, ids=token)
            return self._logits(hidden[:, -1])

        return greedy_tokens(step, logits, mask, position, decode, self.marker_ids)


def greedy_tokens(step, logits, mask, position, decode: Decode, markers=()) -> torch.Tensor:
    """Greedy tokens [B, decode.tokens] from `logits` [B, V] on: `step(token [B, 1], mask,
    position)` feeds one token and returns the next logits. -1 from a row's eos on (eos
    itself is not kept); `markers` are never chosen. Stops once every row has written eos,
    unless `decode.every_step` (a trace that acts on each decoding call needs them all)."""
    batch = logits.shape[0]
    markers = torch.tensor(markers, dtype=torch.long, device=logits.device)
    out = torch.full((batch, decode.tokens), -1, dtype=torch.long, device=logits.device)
    done = torch.zeros(batch, dtype=torch.bool, device=logits.device)
    for index in range(decode.tokens):
        logits = logits.float()
        logits[:, markers] = float("-inf")
        token = logits.argmax(-1)
        done = done | (token == decode.eos_id)
        out[:, index] = torch.where(done, -1, token)
        if index + 1 == decode.tokens or (done.all() and not decode.every_step):
            break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        position = position + 1
        logits = step(token[:, None], mask, position)
    return out


@dataclass(frozen=True)
class Decode:
    """What greedy decoding after the answer's start is asked for."""

    tokens: int  # the most tokens written per row (eos included)
    eos_id: int
    after_prefix: bool = False  # start after the answer prefix (families that read it)
    every_step: bool = False  # run all `tokens` steps even once every row has ended


@dataclass
class Asked:
    """The state after the question + bot pass and the first `thoughts` thoughts."""

    cache: DynamicCache
    mask: torch.Tensor  # [B, T + thoughts]
    next_position: torch.Tensor  # [B, 1]
    hidden: torch.Tensor  # [B, 1, d] the last final hidden state (bot, or the last thought)
    thoughts: int

    def rows(self, index: torch.Tensor) -> Asked:
        """These rows, repeated as `index` says (the cache is reordered in place)."""
        self.cache.reorder_cache(index)
        return Asked(
            self.cache,
            self.mask.index_select(0, index),
            self.next_position.index_select(0, index),
            self.hidden.index_select(0, index),
            self.thoughts,
        )


@dataclass
class Thinking:
    """The recurrent state after the last thought: the answer pass continues from it."""

    cache: DynamicCache
    mask: torch.Tensor  # [B, T + K]
    next_position: torch.Tensor  # [B, 1]


# torch.mm's out_dtype overload (float32 out of half-precision inputs, CUDA) came in torch 2.8
MM_FLOAT32_OUT = TorchVersion(torch.__version__) >= "2.8"


def _float32_out_mm(head: nn.Linear, hidden: torch.Tensor) -> bool:
    """Whether the head can use mm's float32-out overload: CUDA, half precision, and no
    gradient wanted (the overload has no derivative; attribution takes the upcast path)."""
    wants_grad = torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)
    return (
        MM_FLOAT32_OUT
        and hidden.is_cuda
        and hidden.dtype in (torch.bfloat16, torch.float16)
        and not wants_grad
    )


def float32_logits(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """`head(hidden)` with a float32 result (float64 in a float64 run). On CUDA a
    half-precision matmul already sums in float32, so it returns that sum (`out_dtype`) rather
    than upcasting the vocab-sized weight and running a float32 matmul, which took a quarter
    of a llama-1b sweep's GPU time. On an H100 both land within 2e-6 relative of a float64
    product (benchmarks/gpu.sh checks)."""
    bias = None if head.bias is None else head.bias.float()
    if _float32_out_mm(head, hidden):
        flat = torch.mm(
            hidden.reshape(-1, hidden.shape[-1]), head.weight.t(), out_dtype=torch.float32
        )
        logits = flat.reshape(*hidden.shape[:-1], flat.shape[-1])
        return logits if bias is None else logits + bias
    wide = torch.promote_types(hidden.dtype, torch.float32)  # float64 runs stay float64
    bias = None if head.bias is None else head.bias.to(wide)
    return torch.nn.functional.linear(hidden.to(wide), head.weight.to(wide), bias)


def truncate_cache(cache: DynamicCache, length: int) -> None:
    """Drop every cached key and value after the first `length` positions."""
    for layer in cache.layers:
        layer.keys = layer.keys[..., :length, :]
        layer.values = layer.values[..., :length, :]
