"""A word-level tokenizer built in memory, so tiny presets need no download.

Digits are single tokens (numbers split digit by digit), punctuation is split off, and a
BOS is prepended as Llama's tokenizer does. Words outside the vocabulary become <unk>.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<unk>", "<bos>", "<eos>"]
DIGITS = list("0123456789")
PUNCTUATION = list(".,?:!;$'-+*/=()<>")
WORDS = """
the answer is a an and of to in on at for with from by then more less than each every
how many much does do did have has had left total now after before all together what is
are was were he she they it his her their them there has if now times per twice half
apples pens books coins cards marbles eggs cookies stickers candies boxes bags friends
buys gets finds gives sells eats loses makes adds takes away spends earns shares keeps
bought got found gave sold ate lost made added took spent earned shared kept Tom Sam Ann
Mia Leo Zoe Ben Eva Max Ivy Tim Kim Joe Liz Ray Amy The How What He She They Then If
Each
as
""".split()


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab: dict[str, int] = {}
    for token in SPECIALS + DIGITS + PUNCTUATION + WORDS:
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
