"""PCCoT's loop: N latent slots updated in parallel over T Jacobi iterations.

whyNLP/PCCoT (models/modeling_gpt2.py, models/generate.py) runs, after the question:

    call 0      question + bot + N latent placeholders; the slots' first inputs are
                prj(final hidden) at bot and the first N - 1 placeholders; only the question
                + bot part of the KV cache is kept
    call 1..T   iteration t: all N slots in one forward against the question cache; slot
                s + 1's next input is prj(its hidden at slot s), slot 0's never changes
    call T + 1  eot + the answer prompt ("The answer is:") + the answer, against the question
                cache and the slots of iteration T (the update computed after it is unused)

so the cells of a latent are (slot, iteration). `slots` (an identity) sees each iteration's
slot inputs, [B, N, d], before the decoder does: site `thought` patches there. Unlike the
authors' loop, the iterations carry the attention mask, so a left-padded batch gives the
rows of its questions run one at a time.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from nnpatch.errors import ModelError
from nnpatch.models.base import Cell, ModelShape, ThoughtModel
from nnpatch.models.codi import CodiModel, Thinking, truncate_cache


class PccotModel(CodiModel):
    """CODI's answer pass and decoding after PCCoT's parallel thinking (`think`)."""

    def __init__(
        self,
        lm,
        prj: nn.Module,
        num_slots: int,
        num_iterations: int,
        bot_id: int,
        eot_id: int,
        pad_id: int,
        latent_id: int,
    ) -> None:
        markers = (bot_id, eot_id, latent_id, pad_id)
        super().__init__(lm, prj, num_slots, bot_id, eot_id, pad_id, marker_ids=markers)
        self.num_iterations = num_iterations
        self.latent_id = latent_id
        self.slots = nn.Identity()

    def ask(self, input_ids, attention_mask, thoughts: int = 0):
        raise NotImplementedError("PCCoT's slots depend on each other: no partial state")

    def think(
        self,
        input_ids: torch.Tensor,  # [B, Q + 1] left-padded question + bot
        attention_mask: torch.Tensor,
        asked=None,
        thought_hidden: list[torch.Tensor] | None = None,
        thought_counts: torch.Tensor | None = None,
        thought_ids: torch.Tensor | None = None,
    ) -> Thinking:
        """The placeholder pass and the T iterations; the cache then holds the question +
        bot and the slots of the last iteration. `thought_hidden`, if given, receives each
        slot's final hidden state of the last iteration, [B, d] per slot. Every row thinks
        all N slots (`thought_counts` is for loops that stop per row)."""
        batch, width, slots = input_ids.shape[0], input_ids.shape[1], self.num_thoughts
        placeholders = input_ids.new_full((batch, slots), self.latent_id)
        mask = torch.cat([attention_mask.long(), attention_mask.new_ones(batch, slots)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.lm.config)
        ids = torch.cat([input_ids, placeholders], dim=1)
        hidden = self._decode(cache, mask, positions, ids=ids)
        inputs = self.prj(hidden[:, width - 1 : width - 1 + slots])
        # slot 0 keeps its first input in every iteration: a copy, so a patch of what one
        # iteration reads (`slots` passes its input through) does not reach the next
        first = inputs[:, :1].clone()
        slot_positions = positions[:, width:]
        for iteration in range(self.num_iterations):
            truncate_cache(cache, width)  # each iteration reads the question cache alone
            hidden = self._decode(cache, mask, slot_positions, embeds=self.slots(inputs))
            if iteration + 1 < self.num_iterations:
                inputs = torch.cat([first, self.prj(hidden[:, :-1])], dim=1)
        if thought_hidden is not None:
            thought_hidden.extend(hidden.unbind(1))
        return Thinking(cache, mask, slot_positions[:, -1:] + 1)


PARALLEL = (
    (
        "mediation",
        "its latents are updated together in each iteration, so no thought runs after "
        "another; patch slots at iterations (positions 's@t') instead",
    ),
    (
        "knockout",
        "its slots attend to each other within every iteration, not along one sequential "
        "loop of thoughts",
    ),
    (
        "attention",
        "its slots attend to each other within every iteration against a question cache cut "
        "back each time, not along one sequential loop of thoughts",
    ),
)


class PccotThoughts(ThoughtModel):
    """PCCoT with its tokenizer: positions are bot, slot s of the last iteration (`s`), slot
    s of an earlier iteration t (`s@t`, t = 0 the placeholder pass) and eot."""

    shares_question = False  # every slot of every iteration depends on the others
    prompt_in_input = True  # the answer prompt is part of the input
    thoughts_settable = False  # its slots are trained as a fixed set, iterated together

    @property
    def num_iterations(self) -> int:
        return self.module.num_iterations

    @property
    def shape(self) -> ModelShape:
        return ModelShape(
            self.name,
            self.num_layers,
            self.num_thoughts,
            num_heads=self.num_heads,
            iterations=self.num_iterations,
            refused_modes=PARALLEL,
        )

    def slot_and_iteration(self, position: str) -> tuple[int, int]:
        """("3") → (3, T); ("3@1") → (3, 1)."""
        slot, _, iteration = position.partition("@")
        iteration_index = int(iteration) if iteration else self.num_iterations
        if not (0 <= int(slot) < self.num_thoughts and 0 <= iteration_index <= self.num_iterations):
            raise ModelError(f"{self.name} has no position {position!r}")
        return int(slot), iteration_index

    def cell(self, site: str, layer: int | None, position: str, head: int | None = None) -> Cell:
        """Decoder call t is iteration t (0: the placeholder pass), T + 1 the answer pass;
        `slots` call t - 1 holds iteration t's slot inputs."""
        last = self.num_iterations
        if site == "thought":
            if position in ("bot", "eot"):
                raise ModelError(f"site 'thought' has only slot positions, not {position!r}")
            slot, iteration = self.slot_and_iteration(position)
            if iteration == 0:
                raise ModelError("iteration 0 reads placeholder tokens: no thought input")
            return Cell("slots", iteration - 1, slot, False)
        if layer is None:
            raise ModelError(f"site {site!r} needs a layer")
        path = "lm." + self.module.architecture.site_path(site, layer)
        if position == "bot":
            call, token = 0, -(self.num_thoughts + 1)
        elif position == "eot":
            call, token = last + 1, 0
        else:
            slot, call = self.slot_and_iteration(position)
            token = slot - self.num_thoughts if call == 0 else slot  # call 0: after the question
        if site == "head":
            features = None if head is None else self.head_features(head)
            return Cell(path, call, token, False, "input", features)
        return Cell(path, call, token, site == "attn")

    def position_tokens(self, question: str) -> dict[str, tuple[int, str]]:
        """Question 0..n-1, bot at n, slot s at n+1+s in every iteration, eot at n+1+N."""
        n, slots = len(self.question_ids(question)) - 1, self.num_thoughts
        out = {"bot": (n, "<bot>")}
        for t in range(self.num_iterations):
            out |= {f"{s}@{t}": (n + 1 + s, f"<slot {s} @{t}>") for s in range(slots)}
        out |= {str(s): (n + 1 + s, f"<slot {s}>") for s in range(slots)}
        out["eot"] = (n + 1 + slots, "<eot>")
        return out
