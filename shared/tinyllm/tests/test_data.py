import hashlib
import math

import pytest
import torch
from tinyllm import corpus as C
from tinyllm.data import eval_batches, random_batch, tokenize, unigram_perplexity
from tinyllm.tokenizer import SPECIAL_TOKENS, Tokenizer

TEXT = "def f(x):\n    return x + 1\n# a comment\nclass A:\n    pass\n" * 200


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([TEXT], vocab_size=400)


def test_tokenizer_round_trip_any_text(tok, tmp_path):
    for s in ["", "hello", TEXT[:500], "unicode: héllo wörld, 日本語, emoji 🙂\ttabs\r\n", "\x00\x01 bytes"]:
        assert tok.decode(tok.encode(s)) == s
    assert [tok.bos_id, tok.eos_id, tok.pad_id] == [0, 1, 2]
    assert tok.vocab_size <= 400 and len(tok.encode(TEXT[:200])) < 200 / 2  # merges compress the text
    ids = tok.encode("x = 1", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "x = 1"
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json")
    assert again.encode(TEXT[:300]) == tok.encode(TEXT[:300]) and again.eos_id == 1


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 259"):
        Tokenizer.train(["x"], vocab_size=100)
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{broken")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        Tokenizer.load(tmp_path / "bad.json")
    assert SPECIAL_TOKENS[0] == "<|bos|>"


def test_tokenize_stream_equals_plain_encode(tok, monkeypatch):
    import tinyllm.data as D

    monkeypatch.setattr(D, "CHUNK_CHARS", 300)  # several chunks, cut at newlines
    assert tokenize(TEXT, tok).tolist() == tok.encode(TEXT)


def test_batches():
    data = torch.arange(1000)
    x, y = random_batch(data, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    fixed = eval_batches(data, 4, 16, 3)
    assert len(fixed) == 3 and all(b[0].shape == (4, 16) for b in fixed)
    assert torch.equal(fixed[0][0], eval_batches(data, 4, 16, 3)[0][0])
    with pytest.raises(ValueError, match="too short"):
        random_batch(torch.arange(10), 1, 16, torch.Generator())


def test_unigram_baseline():
    train = torch.tensor([0, 0, 1, 1])
    # counts + 1 = [3, 3, 1, 1] over 8: p(0) = 3/8
    assert unigram_perplexity(train, torch.tensor([0, 0]), 4) == pytest.approx(8 / 3)
    assert unigram_perplexity(train, torch.tensor([0, 1]), 2) == pytest.approx(2.0)


def test_stdlib_corpus_is_deterministic_and_disjoint():
    a, b = C.stdlib_corpus(max_bytes=400_000), C.stdlib_corpus(max_bytes=400_000)
    assert a == b
    assert 300_000 < len(a.train) < 600_000 and len(a.val) > 10_000
    assert a.val[:2000] not in a.train


def test_local_corpora(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("abcdefghij" * 10)
    c = C.load_corpus(str(f))
    assert len(c.train) == 90 and len(c.val) == 10
    for i in range(30):
        (tmp_path / f"d{i}.txt").write_text(f"file {i}\n")
    d = C.load_corpus(str(tmp_path))
    assert d.train and d.val
    with pytest.raises(FileNotFoundError, match="not 'stdlib'"):
        C.load_corpus(str(tmp_path / "missing"))


def test_download_verifies_checksum(tmp_path, monkeypatch):
    src = tmp_path / "src.txt"
    src.write_text("to be or not to be\n" * 100)
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    url = src.as_uri()  # file:// - tests never touch the network
    monkeypatch.setitem(C.REMOTE, "local", C.RemoteCorpus(url=url, sha256=good, num_bytes=1900))
    path = C.download("local", tmp_path / "cache")
    assert path.read_bytes() == src.read_bytes()
    monkeypatch.setitem(C.REMOTE, "bad", C.RemoteCorpus(url=url, sha256="0" * 64, num_bytes=1900))
    with pytest.raises(ValueError, match="expected 0000"):
        C.download("bad", tmp_path / "cache")
    assert not (tmp_path / "cache" / "bad.txt").exists()
    with pytest.raises(ValueError, match="unknown corpus"):
        C.download("nope")


def test_named_corpus_is_pinned():
    spec = C.REMOTE["tinyshakespeare"]
    assert len(spec.sha256) == 64 and spec.url.startswith("https://") and math.isclose(spec.val_fraction, 0.1)
