"""Training text: the embedded default corpus, local files, and named public corpora.

The default is the Python standard library's own source, read from the running interpreter: present
on every machine, offline, a few tens of MB of real code and prose (docstrings, comments). Files are
split into train and validation by a hash of their path, so the split is the same on every machine
with the same Python version and never mixes lines of one file across the two.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

VAL_EVERY = 20  # 1 file in 20 (5%) goes to validation


@dataclass(frozen=True, slots=True, kw_only=True)
class Corpus:
    name: str
    train: str
    val: str

    def describe(self) -> str:
        return f"{self.name}: {len(self.train) / 1e6:.1f} MB train, {len(self.val) / 1e6:.2f} MB validation"


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteCorpus:
    url: str
    sha256: str
    num_bytes: int
    val_fraction: float = 0.1  # the last 10% of the text


REMOTE = {
    "tinyshakespeare": RemoteCorpus(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        num_bytes=1_115_394,
    ),
}


def _is_val(relpath: str) -> bool:
    return zlib.crc32(relpath.encode()) % VAL_EVERY == 0


def stdlib_corpus(max_bytes: int | None = None) -> Corpus:
    """The stdlib's .py files (tests and site-packages left out), train up to max_bytes, val up to max_bytes/10."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train: list[str] = []
    val: list[str] = []
    sizes = [0, 0]
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "test/", "idlelib/idle_test/")) or "/tests/" in rel:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        i = 1 if _is_val(rel) else 0
        cap = None if max_bytes is None else (max_bytes if i == 0 else max_bytes // 10)
        if cap is not None and sizes[i] >= cap:
            continue
        (val if i else train).append(text)
        sizes[i] += len(text)
    if not train or not val:
        raise RuntimeError(f"found no standard-library source under {root}")
    return Corpus(name="stdlib", train="\n".join(train), val="\n".join(val))


def text_corpus(paths: list[Path], name: str = "local") -> Corpus:
    """Local text files: several files split by path hash, a single file by its last 10%."""
    texts = {}
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"no corpus file at {p}")
        texts[str(p)] = p.read_text(encoding="utf-8")
    if len(texts) == 1:
        (text,) = texts.values()
        cut = int(len(text) * 0.9)
        return Corpus(name=name, train=text[:cut], val=text[cut:])
    val = [t for k, t in texts.items() if _is_val(k)] or [list(texts.values())[-1]]
    train = [t for k, t in texts.items() if not _is_val(k) and t not in val]
    return Corpus(name=name, train="\n".join(train), val="\n".join(val))


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinyllm"


def download(name: str, directory: Path | None = None) -> Path:
    """Fetch a named corpus into the cache once, verifying its SHA-256; a corrupt copy is replaced."""
    if name not in REMOTE:
        raise ValueError(f"unknown corpus {name!r}; named corpora: {', '.join(REMOTE)}")
    spec = REMOTE[name]
    path = (directory or cache_dir() / "corpora") / f"{name}.txt"
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(spec.url, timeout=60) as resp:
        data = resp.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ValueError(f"{name}: downloaded {len(data)} bytes with SHA-256 {digest}, expected {spec.sha256}")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def load_corpus(spec: str, *, max_bytes: int | None = None) -> Corpus:
    """'stdlib' (default), a named public corpus (downloaded once), or a path to a file or folder of .txt files."""
    if spec == "stdlib":
        return stdlib_corpus(max_bytes)
    if spec in REMOTE:
        text = download(spec).read_text(encoding="utf-8")
        cut = int(len(text) * (1 - REMOTE[spec].val_fraction))
        return Corpus(name=spec, train=text[:cut], val=text[cut:])
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise FileNotFoundError(f"no .txt files under {path}")
        return text_corpus(files, name=path.name)
    if path.exists():
        return text_corpus([path], name=path.stem)
    raise FileNotFoundError(
        f"corpus {spec!r} is not 'stdlib', a named corpus ({', '.join(REMOTE)}), or an existing path"
    )
