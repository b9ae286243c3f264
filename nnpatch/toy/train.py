"""Train the embedded toy CODI model (seeded, deterministic, CPU).

    python -m nnpatch.toy.train --out nnpatch/weights/toy-codi

CODI's objective on toy multi-step arithmetic (nnpatch.pairs.toy), one shared model:
- teacher: cross-entropy on the explicit steps and the answer after the question;
- student: question + bot, K recurrent thoughts through `prj`, eot, "The answer is:",
  cross-entropy on the answer;
- distillation: the student's hidden states at the token before the answer (the ":" of the
  prefix) pulled towards the teacher's, every layer, smooth-L1 divided by the teacher's std;
- one addition, so a model this small learns in minutes: thought k's final hidden state, read
  through the (tied) LM head, is trained to name step k's result, as CODI's released thoughts
  are found to decode to intermediate results. The teacher trains alone for the first steps.
The weights are saved in the CODI release layout (`codi.base_model.model.*`, `prj.*`; no LoRA,
the model is trained from scratch), with the config and tokenizer beside them, so the preset
loads through the same loader as released checkpoints.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from nnpatch.models.base import ThoughtModel, pad_rows
from nnpatch.models.codi import CodiModel, Projection
from nnpatch.models.tiny_tokenizer import build_tiny_tokenizer
from nnpatch.pairs.toy import NUM_OPS, Problem, sample
from nnpatch.toy.evaluate import accuracy, held_out

SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}
NUM_THOUGHTS = 3  # one per step
DISTILL_FACTOR = 0.5
THOUGHT_FACTOR = 1.0


def build_model(seed: int) -> ThoughtModel:
    tokenizer = build_tiny_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **SHAPE,
    )
    lm = LlamaForCausalLM(config)
    lm.resize_token_embeddings(vocab + 3, mean_resizing=False)
    prj = Projection(SHAPE["hidden_size"], 2 * SHAPE["hidden_size"])
    module = CodiModel(lm, prj, NUM_THOUGHTS, bot_id=vocab + 1, eot_id=vocab + 2, pad_id=vocab)
    return ThoughtModel(module, tokenizer, "toy-codi")


def encode_batch(model: ThoughtModel, problems) -> dict[str, torch.Tensor]:
    tok, pad = model.tokenizer, model.module.pad_id
    prefix = model.prefix_ids()
    teacher_rows, teacher_labels, colon = [], [], []
    for p in problems:
        question = tok(p.question, add_special_tokens=True).input_ids
        steps = tok(" ".join(p.steps), add_special_tokens=False).input_ids
        answer = model.answer_ids(str(p.answer))
        row = question + steps + prefix + answer
        teacher_rows.append(row)
        teacher_labels.append([-100] * len(question) + steps + prefix + answer)
        colon.append(len(question) + len(steps) + len(prefix) - 1)
    teacher, teacher_mask = pad_rows(teacher_rows, pad, left=False)
    labels, _ = pad_rows(teacher_labels, -100, left=False)
    questions, question_mask = pad_rows(
        [model.question_ids(p.question) for p in problems], pad, left=True
    )
    answers, answer_mask = pad_rows(
        [model.answer_ids(str(p.answer)) for p in problems], pad, left=False
    )
    return {
        "teacher": teacher,
        "teacher_mask": teacher_mask,
        "labels": labels,
        "colon": torch.tensor(colon),
        "questions": questions,
        "question_mask": question_mask,
        "answers": answers,
        "answer_mask": answer_mask,
        "prefix": torch.tensor(prefix),
        "results": torch.tensor([p.results for p in problems]),  # thought k names result k
        "digits": torch.tensor(tok.convert_tokens_to_ids([str(d) for d in range(10)])),
    }


def student_forward(module: CodiModel, b: dict):
    """Logits after eot [B, P + A, V] (prefix and answer), every layer's hidden state at
    the ':' before the answer, and each thought's final hidden state [B, d]. CODI trains the
    student on the whole text after eot, so it decodes "The answer is: X" by itself."""
    thoughts: list[torch.Tensor] = []
    state = module.think(b["questions"], b["question_mask"], thought_hidden=thoughts)
    batch = b["questions"].shape[0]
    tail = torch.cat(
        [
            b["questions"].new_full((batch, 1), module.eot_id),
            b["prefix"].expand(batch, -1),
            b["answers"],
        ],
        dim=1,
    )
    mask = torch.cat([state.mask, state.mask.new_ones(tail.shape)], dim=1)
    positions = state.next_position + torch.arange(tail.shape[1])
    out = module.architecture.decoder(module.lm)(
        input_ids=tail,
        attention_mask=mask,
        position_ids=positions,
        cache=state.cache,
        use_cache=True,
        output_hidden_states=True,
    )
    colon = b["prefix"].shape[0]  # tail index of the last prefix token
    logits = module.lm.lm_head(out.last_hidden_state[:, :-1])  # predicts tail tokens 1..
    return logits, tuple(h[:, colon] for h in out.hidden_states[1:]), thoughts


def teacher_loss(model: ThoughtModel, b: dict) -> torch.Tensor:
    logits = model.module.lm(input_ids=b["teacher"], attention_mask=b["teacher_mask"]).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        b["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
    )


def losses(model: ThoughtModel, b: dict) -> dict[str, torch.Tensor]:
    module = model.module
    teacher = module.lm(
        input_ids=b["teacher"], attention_mask=b["teacher_mask"], output_hidden_states=True
    )
    logits = teacher.logits[:, :-1]
    teacher_ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1), ignore_index=-100
    )
    rows = torch.arange(b["teacher"].shape[0])
    targets = [h[rows, b["colon"]].detach() for h in teacher.hidden_states[1:]]
    student_logits, student_hidden, thoughts = student_forward(module, b)
    batch = b["answers"].shape[0]
    answer_labels = b["answers"].masked_fill(b["answer_mask"] == 0, -100)
    labels = torch.cat([b["prefix"].expand(batch, -1), answer_labels], dim=1)
    student_ce = F.cross_entropy(
        student_logits.reshape(-1, student_logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )
    distill = sum(
        F.smooth_l1_loss(s, t) / (t.std() + 1e-6)
        for s, t in zip(student_hidden, targets, strict=True)
    ) / len(targets)
    per_step = len(thoughts) // b["results"].shape[1]  # thoughts per arithmetic step
    thought_ce = (
        sum(
            F.cross_entropy(
                module.lm.lm_head(thoughts[(k + 1) * per_step - 1])[:, b["digits"]],
                b["results"][:, k],
            )
            for k in range(b["results"].shape[1])
        )
        / b["results"].shape[1]
    )
    return {
        "teacher_ce": teacher_ce,
        "student_ce": student_ce,
        "distill": distill,
        "thought_ce": thought_ce,
    }


def _fresh(rng: random.Random, num_ops: int, unseen: set) -> Problem:
    """A training problem never evaluated on."""
    while True:
        problem = sample(rng, num_ops)
        if (problem.start, problem.ops) not in unseen:
            return problem


def _pair_problems(num_ops: int) -> set:
    """(start, ops) of both sides of every toy-arithmetic pair."""
    from nnpatch.pairs.toy import PAIR_COUNT, PAIR_SEED, pair_problems

    pairs = pair_problems(PAIR_COUNT, PAIR_SEED, num_ops)
    return {(p.start, p.ops) for pair in pairs for p in pair}


def train(
    out: Path,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    num_ops: int,
    distill_factor: float = DISTILL_FACTOR,
    teacher_steps: int = 500,
    thought_factor: float = THOUGHT_FACTOR,
    evaluate_every: int = 200,
) -> dict:
    """`teacher_steps` first train the explicit-steps task alone (a warm-up: the student learns
    nothing until the teacher can do the arithmetic), then CODI's joint objective."""
    torch.set_num_threads(2)
    model = build_model(seed)
    module = model.module.train()
    rng = random.Random(seed)
    problems = held_out(512, num_ops)
    # nothing evaluated (held-out problems, the toy-arithmetic pairs) is ever trained on
    unseen = {(p.start, p.ops) for p in problems} | _pair_problems(num_ops)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.01)
    warmup, decay = 50, int(0.7 * steps)  # constant, then a cosine to 10% over the last 30%

    def rate(s: int) -> float:
        tail = max(0, s - decay) / (steps - decay)
        return min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * tail)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    started = time.time()
    for step in range(steps):
        b = encode_batch(model, [_fresh(rng, num_ops, unseen) for _ in range(batch)])
        if step < teacher_steps:
            parts = {"teacher_ce": teacher_loss(model, b)}
            loss = parts["teacher_ce"]
        else:
            parts = losses(model, b)
            loss = (
                parts["teacher_ce"]
                + parts["student_ce"]
                + distill_factor * parts["distill"]
                + thought_factor * parts["thought_ce"]
            )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 2.0)
        optimizer.step()
        schedule.step()
        if evaluate_every and (step % evaluate_every == 0 or step == steps - 1):
            module.eval()
            acc = accuracy(model, problems[:128])
            module.train()
            print(
                f"step {step:5d}  "
                + "  ".join(f"{k} {v.item():.4f}" for k, v in parts.items())
                + f"  held-out acc {acc:.3f}  {time.time() - started:.0f}s",
                flush=True,
            )
    module.eval()
    card = {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "num_ops": num_ops,
        "distill_factor": distill_factor,
        "teacher_steps": teacher_steps,
        "thought_factor": thought_factor,
        "train_seconds": round(time.time() - started),
        "shape": SHAPE,
        "num_thoughts": NUM_THOUGHTS,
        "held_out_accuracy": accuracy(model, problems) if evaluate_every else None,
    }
    save(model, out, card)
    return card


def save(model: ThoughtModel, out: Path, card: dict) -> None:
    """CODI release layout: codi.base_model.model.<HF keys> + prj.*, config and tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    module = model.module
    state = {
        f"codi.base_model.model.{k}": v.contiguous()
        for k, v in module.lm.state_dict().items()
        if k != "lm_head.weight"
    }  # tied
    state |= {f"prj.{k}": v.contiguous() for k, v in module.prj.state_dict().items()}
    from safetensors.torch import save_file

    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(module.lm.config)
    config.vocab_size = module.pad_id  # the base vocabulary; the loader resizes to V + 3
    config.save_pretrained(out)
    model.tokenizer.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(card, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the embedded toy CODI model.")
    parser.add_argument("--out", type=Path, default=Path("nnpatch/weights/toy-codi"))
    parser.add_argument("--steps", type=int, default=3200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distill", type=float, default=DISTILL_FACTOR)
    parser.add_argument("--teacher-steps", type=int, default=500)
    parser.add_argument("--thought-factor", type=float, default=THOUGHT_FACTOR)
    parser.add_argument("--num-ops", type=int, default=NUM_OPS)
    args = parser.parse_args()
    card = train(
        args.out,
        args.steps,
        args.batch,
        args.lr,
        args.seed,
        args.num_ops,
        args.distill,
        args.teacher_steps,
        args.thought_factor,
    )
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
