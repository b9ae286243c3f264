"""Cywiński et al.'s CODI re-trainings: the thought markers come from the tokenizer shipped
with the weights (checked against the embedding rows), an eos sits between the question and
the thought token where the checkpoint was trained so, and answer-only checkpoints read the
question with their instruction and write the bare answer right after eot."""

from __future__ import annotations

import copy

import pytest
import torch
from release_builders import CYWINSKI_TOKENS, write_cywinski_release

from nnpatch.errors import ModelError
from nnpatch.models.kinds.codi import load_codi
from nnpatch.models.text import ANSWER_ONLY
from nnpatch.pairs.builtin import tiny_arithmetic
from nnpatch.recipe import ModelSection

PAIR = tiny_arithmetic()[3]


def section(base, checkpoint, **extra) -> ModelSection:
    fields = {"eos_before_thought": True, "prompt": "answer-only", "num_thoughts": 6} | extra
    return ModelSection(kind="codi", base=str(base), checkpoint=str(checkpoint), **fields)


def their_latent_loop(module, tokenizer, question: str, answer: str, thoughts: int = 6):
    """Their generate() in latent mode with remove_eos False, on the peft module: question
    (stripped, double spaces made one, the answer-only instruction) with BOS, then eos and
    <|bocot|>; prefill; prj; `thoughts` fed latents; <|eocot|>'s embedding; teacher-forced
    answer tokens as their training builds them (the bare number, no BOS, then eos); and
    greedy decoding over ids below vocab_size - 1."""
    bocot, eocot = tokenizer.convert_tokens_to_ids(CYWINSKI_TOKENS)
    text = question.strip().replace("  ", " ") + " Output only the answer and nothing else."
    ids = tokenizer(text).input_ids + [tokenizer.eos_token_id, bocot]
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    lm, prj = module.codi, module.prj
    embed = lm.get_input_embeddings()
    with torch.no_grad():
        out = lm(input_ids=torch.tensor([ids]), use_cache=True, output_hidden_states=True)
        cache, latent = out.past_key_values, prj(out.hidden_states[-1][:, -1:])
        for _ in range(thoughts):
            out = lm(
                inputs_embeds=latent,
                past_key_values=cache,
                use_cache=True,
                output_hidden_states=True,
            )
            cache, latent = out.past_key_values, prj(out.hidden_states[-1][:, -1:])
        greedy_cache = copy.deepcopy(cache)
        tail = embed(torch.tensor([[eocot, *answer_ids]]))
        logits = lm(inputs_embeds=tail, past_key_values=cache, use_cache=True).logits[0]
        tokens, step_in = [], embed(torch.tensor([[eocot]]))
        limit = lm.config.vocab_size - 1
        for _ in range(8):
            step = lm(inputs_embeds=step_in, past_key_values=greedy_cache, use_cache=True)
            token = int(step.logits[0, -1, :limit].argmax())
            tokens.append(token)
            if token == tokenizer.eos_token_id:  # stop as their loop does
                break
            step_in = embed(torch.tensor([[token]]))
    return ids, answer_ids, logits[: len(answer_ids)], tokens


def test_the_shipped_tokenizer_names_the_markers(tmp_path):
    """pad, bot and eot are the shipped tokenizer's [PAD], <|bocot|> and <|eocot|>, and
    every key of the file lands."""
    _, tokenizer, base, checkpoint = write_cywinski_release(tmp_path)
    model = load_codi(section(base, checkpoint))
    ids = tokenizer.convert_tokens_to_ids(["[PAD]", *CYWINSKI_TOKENS])
    assert [model.module.pad_id, model.module.bot_id, model.module.eot_id] == ids
    assert ids == [len(tokenizer) - 3, len(tokenizer) - 2, len(tokenizer) - 1]
    assert not model.key_report.missing and not model.key_report.unexpected


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3"])
def test_the_answer_only_latent_loop_matches_theirs(tmp_path, family):
    """Question ids (instruction, eos, <|bocot|>), answer ids (bare), teacher-forced answer
    logits (within 1e-5) and greedy tokens equal their latent-mode generate's, on Llama,
    GPT-2 and Qwen3 (cds-jb's re-training: the tokenizer's own pad, no [PAD] added)."""
    module, tokenizer, base, checkpoint = write_cywinski_release(tmp_path, family)
    model = load_codi(section(base, checkpoint))
    ids, answer_ids, expected, greedy = their_latent_loop(
        module, tokenizer, PAIR.clean_question, PAIR.clean_answer
    )
    assert model.question_ids(PAIR.clean_question) == ids
    assert model.question_text(PAIR.clean_question).endswith(ANSWER_ONLY)
    answer = model.answer_ids(PAIR.clean_answer)
    assert answer == answer_ids
    encoded = model.encode([PAIR.clean_question], [answer], [answer])
    with torch.no_grad():
        logits = model.module(*encoded.args())[0][0]
        tokens = model.module.generate(
            encoded.input_ids, encoded.attention_mask, tokenizer.eos_token_id, max_new=8
        )
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert [*tokens[0], tokenizer.eos_token_id][: len(greedy)] == greedy


def test_left_padded_batches_equal_one_question_at_a_time(tmp_path):
    """Two questions of different lengths in one left-padded batch give each one's own
    logits (the mask is kept after the question pass)."""
    _, _, base, checkpoint = write_cywinski_release(tmp_path)
    model = load_codi(section(base, checkpoint))
    pairs = tiny_arithmetic()[:2]
    questions = [p.clean_question + " and more words" * i for i, p in enumerate(pairs)]
    answers = [model.answer_ids(p.clean_answer) for p in pairs]
    with torch.no_grad():
        batched = model.module(*model.encode(questions, answers, answers).args())[0]
        for i, question in enumerate(questions):
            alone = model.module(*model.encode([question], [answers[i]], [answers[i]]).args())[0]
            width = len(answers[i])
            torch.testing.assert_close(batched[i, :width], alone[0, :width], rtol=1e-5, atol=1e-5)


def test_a_tokenizer_of_another_size_than_the_embeddings_is_refused(tmp_path):
    """A shipped tokenizer with one token more than the embeddings' rows is one line."""
    _, tokenizer, base, checkpoint = write_cywinski_release(tmp_path)
    tokenizer.add_tokens(["<|extra|>"])
    tokenizer.save_pretrained(checkpoint)
    with pytest.raises(ModelError, match=r"embeddings have \d+ rows but the shipped tokenizer"):
        load_codi(section(base, checkpoint))


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_patched_rows_equal_the_hook_reference(tmp_path, direction):
    """A run on the release (eos before the thought, answer-only) gives every row's metrics
    of one hooked recurrent forward per patch."""
    from helpers import run_recipe, write_recipe
    from reference import assert_matches_reference

    _, _, base, checkpoint = write_cywinski_release(tmp_path)
    fields = {"kind": "codi", "base": str(base), "checkpoint": str(checkpoint)}
    fields |= {"eos_before_thought": True, "prompt": "answer-only", "num_thoughts": 6}
    patch = {"mode": "single", "layers": [0, 2], "positions": ["bot", 1, "eot"]}
    patch["direction"] = direction
    recipe = write_recipe(tmp_path, model=fields, patch=patch, data={"limit": 3})
    results = run_recipe(recipe)
    model = load_codi(ModelSection(**fields))
    assert_matches_reference(results, model, "resid", direction, tiny_arithmetic()[:3])
