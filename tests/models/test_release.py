"""Released checkpoint formats load exactly: same logits and answers as the authors' loops."""

from __future__ import annotations

import json

import pytest
import torch
from release_builders import (
    COCONUT_TOKENS,
    write_coconut_release,
    write_codi_release,
    write_simcot_coconut_release,
    write_simcot_codi_release,
)

from nnpatch.errors import ModelError
from nnpatch.models.kinds.coconut import load_coconut
from nnpatch.models.kinds.codi import load_codi
from nnpatch.pairs.builtin import tiny_arithmetic
from nnpatch.recipe import ModelSection

PAIR = tiny_arithmetic()[2]


def codi_section(base, checkpoint, **extra) -> ModelSection:
    return ModelSection(
        kind="codi",
        base=str(base),
        checkpoint=str(checkpoint),
        lora_alpha=32,
        num_thoughts=6,
        **extra,
    )


def codi_loop(module, ids: list[int], answer: list[int], vocab: int, prefix: list[int]):
    """CODI's test.py loop on the peft module: teacher-forced answer logits, greedy tokens."""
    lm, prj = module.codi, module.prj
    with torch.no_grad():
        out = lm(input_ids=torch.tensor([ids]), use_cache=True, output_hidden_states=True)
        cache, latent = out.cache, prj(out.hidden_states[-1][:, -1:])
        for _ in range(6):
            out = lm(inputs_embeds=latent, cache=cache, use_cache=True, output_hidden_states=True)
            cache, latent = out.cache, prj(out.hidden_states[-1][:, -1:])
        import copy

        greedy_cache = copy.deepcopy(cache)
        tail = torch.tensor([[vocab + 2, *prefix, *answer]])
        logits = lm(input_ids=tail, cache=cache, use_cache=True).logits[0]
        tokens, token = [], torch.tensor([[vocab + 2]])
        for _ in range(12):
            step = lm(input_ids=token, cache=greedy_cache, use_cache=True).logits[0, -1]
            token = step[:vocab].argmax().view(1, 1)
            tokens.append(int(token))
    first = len(prefix)
    return logits[first : first + len(answer)], tokens


def assert_agrees_with_codi_loop(model, module) -> None:
    """The loaded model's teacher-forced answer logits (within 1e-5) and greedy tokens equal
    CODI's loop on the release's own peft module."""
    vocab = model.module.pad_id
    answer = model.answer_ids(PAIR.clean_answer)
    expected, greedy = codi_loop(
        module, model.question_ids(PAIR.clean_question), answer, vocab, model.prefix_ids()
    )
    encoded = model.encode([PAIR.clean_question], [answer], [answer])
    with torch.no_grad():
        logits = model.module(*encoded.args())[0][0]
        tokens = model.module.generate(encoded.input_ids, encoded.attention_mask, -1, max_new=12)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert tokens[0] == greedy


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_codi_release_matches_peft_reference(tmp_path, family, fmt):
    """Merged-LoRA nnpatch model = peft module in CODI's loop (logits within 1e-5, greedy)."""
    module, base, checkpoint = write_codi_release(tmp_path, family, fmt)
    model = load_codi(codi_section(base, checkpoint))
    report = model.key_report
    assert not report.missing and not report.unexpected and len(report.merged_lora) > 0
    assert_agrees_with_codi_loop(model, module)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_a_sharded_release_reads_every_shard_of_its_index(tmp_path, fmt):
    """Larger releases split their state dict over shards named by an index: the shards
    together load as the single file does; a shard the index names but the folder lacks,
    or one holding other tensors than the index says, is one line."""
    import json

    from safetensors.torch import load_file, save_file

    module, base, single = write_codi_release(tmp_path, "llama", "safetensors")
    state = load_file(str(single / "model.safetensors"))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    keys = sorted(state)
    names = [
        f"model-0000{i}-of-00002.{'safetensors' if fmt == 'safetensors' else 'bin'}" for i in (1, 2)
    ]
    if fmt == "bin":
        names = [n.replace("model-", "pytorch_model-") for n in names]
    weight_map = {}
    for name, part in zip(names, (keys[::2], keys[1::2]), strict=True):
        tensors = {k: state[k] for k in part}
        if fmt == "safetensors":
            save_file(tensors, str(sharded / name))
        else:
            torch.save(tensors, sharded / name)
        weight_map |= dict.fromkeys(part, name)
    index = sharded / (
        "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    )
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = load_codi(codi_section(base, sharded))
    assert model.key_report.file == str(index) and not model.key_report.missing
    assert_agrees_with_codi_loop(model, module)
    (sharded / names[1]).unlink()
    with pytest.raises(ModelError, match=rf"names shard {names[1]}, which is not in"):
        load_codi(codi_section(base, sharded))


def test_lora_scale_uses_alpha_over_rank(tmp_path):
    """A wrong lora_alpha changes the merged weights (the merge is not a no-op)."""
    _, base, checkpoint = write_codi_release(tmp_path, "llama", "bin")
    right = load_codi(codi_section(base, checkpoint))
    wrong = load_codi(
        ModelSection(kind="codi", base=str(base), checkpoint=str(checkpoint), lora_alpha=8)
    )
    q = "lm.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(right.module.state_dict()[q], wrong.module.state_dict()[q])


@pytest.mark.parametrize(
    "drop",
    [
        "codi.base_model.model.model.layers.1.mlp.up_proj.lora_B.default.weight",
        "codi.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        "prj.3.weight",
        "prj.ln.bias",
    ],
)
def test_missing_key_fails_naming_it(tmp_path, drop):
    """Removing one LoRA or prj key fails the load with a message naming that key."""
    _, base, checkpoint = write_codi_release(tmp_path, "llama", "bin")
    path = checkpoint / "pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    del state[drop]
    torch.save(state, path)
    with pytest.raises(ModelError, match="missing key") as err:
        load_codi(codi_section(base, checkpoint))
    assert drop in str(err.value)


def test_unexpected_key_fails(tmp_path):
    """A key the model has no place for is an error too."""
    _, base, checkpoint = write_codi_release(tmp_path, "gpt2", "bin")
    path = checkpoint / "pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    state["codi.extra_head.weight"] = torch.zeros(2)
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"1 unexpected key\(s\) \(codi\.extra_head\.weight\)"):
        load_codi(codi_section(base, checkpoint))


def test_wrong_rank_is_named(tmp_path):
    """lora_r that disagrees with the tensors is reported, not guessed around."""
    _, base, checkpoint = write_codi_release(tmp_path, "llama", "bin")
    with pytest.raises(ModelError, match="rank 8, the recipe says model.lora_r = 4"):
        load_codi(codi_section(base, checkpoint, lora_r=4))


def test_pickled_code_is_refused(tmp_path):
    """torch.load runs with weights_only=True: a pickle that would run code is refused."""
    _, base, checkpoint = write_codi_release(tmp_path, "llama", "bin")

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, checkpoint / "pytorch_model.bin")
    with pytest.raises(ModelError, match="cannot read the checkpoint"):
        load_codi(codi_section(base, checkpoint))


def coconut_loop(lm, tokenizer, question: str, answer: list[int], thoughts: int = 6):
    """Coconut's semantics without a cache: each latent is the last hidden state before it."""
    start, end, latent = tokenizer.convert_tokens_to_ids(COCONUT_TOKENS)
    ids = tokenizer(question + "\n").input_ids + [start] + [latent] * thoughts + [end]
    prefix = tokenizer("###", add_special_tokens=False).input_ids
    embeds = lm.get_input_embeddings()(torch.tensor([ids + prefix + answer]))
    first = ids.index(latent)
    with torch.no_grad():
        for step in range(thoughts):
            out = lm(inputs_embeds=embeds[:, : first + step], output_hidden_states=True)
            embeds[:, first + step] = out.hidden_states[-1][:, -1]
        logits = lm(inputs_embeds=embeds).logits[0]
    at = len(ids) + len(prefix) - 1
    return logits[at : at + len(answer)]


def test_coconut_release_matches_reference(tmp_path):
    """Coconut's layout (base_causallm., embedding alias, latent tokens) loads and agrees."""
    lm, tokenizer, base, path = write_coconut_release(tmp_path)
    model = load_coconut(
        ModelSection(kind="coconut", base=str(base), checkpoint=str(path), num_thoughts=6)
    )
    assert model.key_report.ignored == ["embedding.weight"] and not model.key_report.missing
    answer = model.answer_ids(PAIR.clean_answer)
    encoded = model.encode([PAIR.clean_question], [answer], [answer])
    with torch.no_grad():
        logits = model.module(*encoded.args())[0][0]
    expected = coconut_loop(lm, tokenizer, PAIR.clean_question, answer)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def coconut_greedy(lm, tokenizer, question: str, steps: int, never: tuple[int, ...]) -> list[int]:
    """Coconut's generate: full recompute each step, latents filled as in its forward; the
    ids in `never` are masked (Coconut masks none; nnpatch never decodes its markers)."""
    start, end, latent = tokenizer.convert_tokens_to_ids(COCONUT_TOKENS)
    ids = tokenizer(question + "\n").input_ids + [start] + [latent] * 6 + [end]
    embeds = lm.get_input_embeddings()(torch.tensor([ids]))
    first = ids.index(latent)
    tokens = []
    with torch.no_grad():
        for step in range(6):
            out = lm(inputs_embeds=embeds[:, : first + step], output_hidden_states=True)
            embeds[:, first + step] = out.hidden_states[-1][:, -1]
        for _ in range(steps):
            logits = lm(inputs_embeds=embeds).logits[0, -1]
            logits[list(never)] = float("-inf")
            token = logits.argmax()
            tokens.append(int(token))
            embeds = torch.cat([embeds, lm.get_input_embeddings()(token.view(1, 1))], dim=1)
    return tokens


def test_coconut_greedy_answers_match(tmp_path):
    """Greedy decoding through the cached loop equals Coconut's recomputing generate."""
    lm, tokenizer, base, path = write_coconut_release(tmp_path)
    model = load_coconut(ModelSection(kind="coconut", base=str(base), checkpoint=str(path)))
    encoded = model.encode([PAIR.clean_question], [[1]], [[2]])
    with torch.no_grad():
        tokens = model.module.generate(encoded.input_ids, encoded.attention_mask, -1, max_new=8)
    assert tokens[0] == coconut_greedy(
        lm, tokenizer, PAIR.clean_question, 8, model.module.marker_ids
    )


def test_coconut_answers_are_read_after_the_last_hash(tmp_path):
    """run.py reads the text after the last "#": "### 3 ### 12" gives 12, and the
    both-correct filter compares that."""
    from nnpatch.models.text import answer_is

    _, _, base, path = write_coconut_release(tmp_path)
    model = load_coconut(ModelSection(kind="coconut", base=str(base), checkpoint=str(path)))
    assert model.read_answer("### 3 ### 12") == " 12"
    assert answer_is(model.read_answer("### 3 ### 12"), "12")
    assert not answer_is(model.read_answer("### 12 ### 3"), "12")


def test_coconut_greedy_never_decodes_a_latent_token(tmp_path):
    """Even where the base config's vocabulary is padded past the tokenizer (so the latent
    tokens sit below config.vocab_size) and a latent token has the top logit, greedy
    decoding never emits one of Coconut's three latent tokens."""
    _, tokenizer, base, path = write_coconut_release(tmp_path, padded_vocab=16)
    model = load_coconut(ModelSection(kind="coconut", base=str(base), checkpoint=str(path)))
    latents = tokenizer.convert_tokens_to_ids(COCONUT_TOKENS)
    assert sorted(model.module.marker_ids) == sorted(latents)
    base_vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    assert max(latents) < base_vocab  # a "below the config's vocabulary" rule would miss them

    def favour_latent(module, inputs, output):
        output[..., latents[2]] += 1e4

    handle = model.module.lm.lm_head.register_forward_hook(favour_latent)
    try:
        encoded = model.encode([PAIR.clean_question], [[1]], [[2]])
        with torch.no_grad():
            tokens = model.module.generate(encoded.input_ids, encoded.attention_mask, -1, 8)
    finally:
        handle.remove()
    assert len(tokens[0]) == 8 and not set(tokens[0]) & set(latents)


def test_coconut_embedding_alias_must_agree(tmp_path):
    """embedding.weight is the same tensor as wte in Coconut; a mismatch is an error."""
    _, _, base, path = write_coconut_release(tmp_path)
    state = torch.load(path, weights_only=True)
    state["embedding.weight"] = state["embedding.weight"] + 1
    torch.save(state, path)
    with pytest.raises(ModelError, match="embedding.weight differs"):
        load_coconut(ModelSection(kind="coconut", base=str(base), checkpoint=str(path)))


def test_uncached_hub_id_offline_says_what_to_download(monkeypatch):
    """A hub id that is not cached, with no hub: one line naming the download."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    section = ModelSection(kind="codi", base="nobody/not-a-model", checkpoint="nobody/ckpt")
    with pytest.raises(
        ModelError,
        match=r"model.base: 'nobody/not-a-model' is not in the "
        r"Hugging Face cache .*HF_HUB_OFFLINE is set.*`hf download nobody/not-a-model`",
    ):
        load_codi(section)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_simcot_codi_release_drops_its_decoder_by_name(tmp_path, family):
    """SIM-CoT's CODI file (its step decoder beside the model, its own shard name, an empty
    config.json) loads strictly: every decoder key is counted as dropped, every other key
    lands, and the model is CODI's loop on the same weights (within 1e-5)."""
    module, base, checkpoint, decoder_keys = write_simcot_codi_release(tmp_path, family)
    model = load_codi(codi_section(base, checkpoint))
    report = model.key_report
    assert not report.missing and not report.unexpected
    assert report.dropped == {"decoder.* (SIM-CoT's training-only step decoder)": decoder_keys}
    assert any("dropped on purpose: " in line for line in report.lines())
    assert_agrees_with_codi_loop(model, module)


def test_a_decoder_key_the_model_lacks_is_still_unexpected(tmp_path):
    """Dropping is by the training-only modules' names: any other stray key still fails."""
    from safetensors.torch import load_file, save_file

    _, base, checkpoint, _ = write_simcot_codi_release(tmp_path, "gpt2")
    path = checkpoint / "model-00001-of-00001.safetensors"
    state = load_file(str(path))
    state["decoders.0.weight"] = torch.zeros(2)
    save_file(state, str(path))
    with pytest.raises(ModelError, match=r"1 unexpected key\(s\) \(decoders\.0\.weight\)"):
        load_codi(codi_section(base, checkpoint))


def test_simcot_coconut_release_drops_its_explainer_and_thinks_ten_latents(tmp_path):
    """SIM-CoT's Coconut file (`expainable_llm` beside `base_causallm`) loads strictly with
    the explainer dropped by name, thinks its final stage's 10 latents by default, and
    agrees with Coconut's loop at 10 latents (within 1e-5)."""
    lm, tokenizer, base, path, aux_keys = write_simcot_coconut_release(tmp_path)
    model = load_coconut(ModelSection(kind="coconut", base=str(base), checkpoint=str(path)))
    report = model.key_report
    assert not report.missing and not report.unexpected
    assert report.dropped == {
        "expainable_llm.* (SIM-CoT's training-only explanation decoder)": aux_keys
    }
    assert model.num_thoughts == 10
    answer = model.answer_ids(PAIR.clean_answer)
    encoded = model.encode([PAIR.clean_question], [answer], [answer])
    with torch.no_grad():
        logits = model.module(*encoded.args())[0][0]
    expected = coconut_loop(lm, tokenizer, PAIR.clean_question, answer, thoughts=10)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
