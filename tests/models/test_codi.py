"""The CODI module against CODI's own inference loop, and padding invariance."""

from __future__ import annotations

import pytest
import torch

from nnpatch.models.base import ANSWER_PREFIX
from nnpatch.pairs.builtin import tiny_arithmetic


def codi_reference_loop(model, question: str, answer: list[int]) -> torch.Tensor:
    """CODI's loop as its source writes it: HF forward, hidden_states[-1], prj, no masks.

    Returns the teacher-forced logits predicting each answer token, [A, V].
    """
    lm, prj = model.module.lm, model.module.prj
    ids = torch.tensor([model.question_ids(question)])
    with torch.no_grad():
        out = lm(input_ids=ids, use_cache=True, output_hidden_states=True)
        cache = out.cache
        latent = prj(out.hidden_states[-1][:, -1:])
        for _ in range(model.num_thoughts):
            out = lm(inputs_embeds=latent, cache=cache, use_cache=True, output_hidden_states=True)
            cache = out.cache
            latent = prj(out.hidden_states[-1][:, -1:])
        prefix = model.tokenizer(ANSWER_PREFIX, add_special_tokens=False).input_ids
        tail = torch.tensor([[model.module.eot_id, *prefix, *answer]])
        out = lm(input_ids=tail, cache=cache, use_cache=True)
    first = len(prefix)
    return out.logits[0, first : first + len(answer)]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_forward_equals_codi_reference_loop(family, request):
    """Unpadded, the module's answer logits equal CODI's loop within 1e-5 (float32)."""
    model = request.getfixturevalue(family)
    pair = tiny_arithmetic()[0]
    clean, corrupt = model.answer_ids(pair.clean_answer), model.answer_ids(pair.corrupted_answer)
    encoded = model.encode([pair.clean_question], [clean], [corrupt])
    with torch.no_grad():
        logits_clean, logits_corrupt = model.module(*encoded.args())
    torch.testing.assert_close(
        logits_clean[0],
        codi_reference_loop(model, pair.clean_question, clean),
        rtol=1e-5,
        atol=1e-5,
    )
    torch.testing.assert_close(
        logits_corrupt[0],
        codi_reference_loop(model, pair.clean_question, corrupt),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_left_padded_batch_equals_one_by_one(family, request):
    """Mask and positions at every step: a padded batch equals each question run alone."""
    model = request.getfixturevalue(family)
    pairs = tiny_arithmetic()[:4]
    questions = [p.corrupted_question for p in pairs]
    assert len({len(model.question_ids(q)) for q in questions}) > 1
    clean = [model.answer_ids(p.clean_answer) for p in pairs]
    corrupt = [model.answer_ids(p.corrupted_answer) for p in pairs]
    with torch.no_grad():
        batch = model.module(*model.encode(questions, clean, corrupt).args())
        for i in range(len(pairs)):
            alone = model.module(*model.encode([questions[i]], [clean[i]], [corrupt[i]]).args())
            for side in (0, 1):
                width = alone[side].shape[1]
                torch.testing.assert_close(
                    batch[side][i, :width], alone[side][0], rtol=1e-4, atol=1e-4
                )


def test_each_layer_runs_once_per_step(llama):
    """Question pass, K thoughts, answer, corrupted answer: every layer is called K + 3 times."""
    calls = []
    hook = llama.module.lm.model.layers[0].register_forward_hook(
        lambda m, a, o: calls.append(o.shape[1])
    )
    pair = tiny_arithmetic()[0]
    encoded = llama.encode([pair.clean_question], [llama.answer_ids("4")], [llama.answer_ids("11")])
    with torch.no_grad():
        llama.module(*encoded.args())
    hook.remove()
    assert len(calls) == llama.num_thoughts + 3
    assert calls[1 : llama.num_thoughts + 1] == [1] * llama.num_thoughts


def test_thoughts_carry_information(llama):
    """The answer depends on the thoughts: zeroing one thought input changes the logits."""
    pair = tiny_arithmetic()[0]
    encoded = llama.encode([pair.clean_question], [llama.answer_ids("4")], [llama.answer_ids("11")])
    with torch.no_grad():
        plain = llama.module(*encoded.args())[0]
        hook = llama.module.prj.register_forward_hook(lambda m, a, o: torch.zeros_like(o))
        zeroed = llama.module(*encoded.args())[0]
        hook.remove()
    assert (plain - zeroed).abs().max() > 1e-2


def test_pad_rows_builds_repeated_rows_once_and_keeps_their_order():
    """A sweep's batch repeats each pair's row once per patch; padding gathers them."""
    from nnpatch.models.base import pad_rows

    rows = [[5, 6], [7], [5, 6], [8, 9, 1], [7]]
    for left in (True, False):
        ids, mask = pad_rows(rows, 0, left)
        for i, row in enumerate(rows):
            span = slice(3 - len(row), 3) if left else slice(0, len(row))
            assert ids[i, span].tolist() == row
            assert mask[i].sum() == len(row) and mask[i, span].all()
            assert (ids[i][mask[i] == 0] == 0).all()


def test_float32_logits_off_cuda_are_the_upcast_product():
    """Off CUDA the head runs in float32 on the upcast weight (bfloat16 in, float32 out)."""
    from nnpatch.models.codi import float32_logits

    head = torch.nn.Linear(16, 40, dtype=torch.bfloat16)
    hidden = torch.randn(3, 2, 16, dtype=torch.bfloat16)
    logits = float32_logits(head, hidden)
    want = hidden.double() @ head.weight.double().T + head.bias.double()
    assert logits.dtype == torch.float32 and logits.shape == (3, 2, 40)
    torch.testing.assert_close(logits.double(), want, rtol=1e-6, atol=1e-6)
