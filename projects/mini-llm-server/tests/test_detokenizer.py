import random

import pytest
from mini_llm_server.detokenizer import IncrementalDetokenizer
from tinyllm.tokenizer import Tokenizer

CORPUS = ["the quick brown fox jumps over the lazy dog", "naïve café, 日本語のテキスト, emoji 🎉🚀", "def f(x): x"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS * 20, vocab_size=320)


def stream(tok, ids):
    det, pieces = IncrementalDetokenizer(tok), []
    for n in range(1, len(ids) + 1):
        pieces.append(det.new_text(ids[:n]))
    return pieces


@pytest.mark.parametrize("text", ["the lazy dog jumps", "naïve 日本語 🎉 x", "  two  spaces\nand a newline 🚀"])
def test_pieces_join_to_the_full_decode(tok, text):
    ids = tok.encode(text)
    pieces = stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces)  # a character split over tokens is held back, never mangled


def test_random_ids_never_emit_text_the_full_decode_does_not_start_with(tok):
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 40))]
        assert tok.decode(ids).startswith("".join(stream(tok, ids)))


def test_tokens_arriving_several_at_a_time_give_the_same_text(tok):
    """A stream that fell behind the engine takes every token since it last looked in one call."""
    ids = tok.encode("naïve café, 日本語のテキスト 🎉 and the lazy dog")
    det, pieces, n = IncrementalDetokenizer(tok), [], 0
    for step in (1, 3, 2, 5, 1, 4, 100):
        n = min(n + step, len(ids))
        pieces.append(det.new_text(ids[:n]))
    assert "".join(pieces) == tok.decode(ids)
    assert det.new_text(ids) == ""  # nothing new: no text


def test_special_tokens_are_skipped_as_the_full_decode_skips_them(tok):
    ids = tok.encode("the quick brown fox")
    ids = ids[:2] + [tok.eos_id] + ids[2:]
    assert "".join(stream(tok, ids)) == tok.decode(ids) == tok.decode([i for i in ids if i != tok.eos_id])
