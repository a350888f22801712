"""Byte-level BPE tokenizer: trained with the `tokenizers` library, saved as tokenizer.json.

Byte-level means every string round-trips exactly (any Unicode, any whitespace): the base alphabet is
the 256 bytes, and merges are learned on top. Special tokens <|bos|>, <|eos|>, <|pad|> take ids 0-2
in tokenizers this package trains; a checkpoint's own tokenizer.json keeps its ids, read from
config.json (bos_token_id, eos_token_id).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")


class Tokenizer:
    def __init__(self, tk: HFTokenizer, *, bos_id: int | None, eos_id: int | None, pad_id: int | None) -> None:
        self.tk, self.bos_id, self.eos_id, self.pad_id = tk, bos_id, eos_id, pad_id

    @staticmethod
    def train(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> Tokenizer:
        if vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(
                f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + specials), got {vocab_size}"
            )
        tk = HFTokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tk.train_from_iterator(texts, trainer=trainer)
        ids = [tk.token_to_id(t) for t in SPECIAL_TOKENS]
        return Tokenizer(tk, bos_id=ids[0], eos_id=ids[1], pad_id=ids[2])

    @staticmethod
    def load(
        path: Path, *, bos_id: int | None = None, eos_id: int | None = None, pad_id: int | None = None
    ) -> Tokenizer:
        """Read tokenizer.json; special ids default to this package's tokens when the file has them."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer at {path}")
        try:
            tk = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust library raises a bare Exception for malformed files
            raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None
        own = [tk.token_to_id(t) for t in SPECIAL_TOKENS]
        return Tokenizer(
            tk,
            bos_id=bos_id if bos_id is not None else own[0],
            eos_id=eos_id if eos_id is not None else own[1],
            pad_id=pad_id if pad_id is not None else own[2],
        )

    def save(self, path: Path) -> None:
        self.tk.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.tk.encode(text, add_special_tokens=False).ids
        if bos:
            ids = [self._need("bos", self.bos_id), *ids]
        if eos:
            ids = [*ids, self._need("eos", self.eos_id)]
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special)

    @staticmethod
    def _need(name: str, value: int | None) -> int:
        if value is None:
            raise ValueError(f"this tokenizer has no {name} token")
        return value
