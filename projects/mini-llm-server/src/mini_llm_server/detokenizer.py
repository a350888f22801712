"""Streaming text from a growing list of token ids, one token's work per token.

A full decode per token costs O(output length) per token; byte-level BPE needs only a little left context
to give a token its text right (a leading space, a character split over several tokens). The tokenizers
library's DecodeStream keeps that context itself and returns each new piece of text in one call, where a
hand-rolled version decoded two short windows per token. A token that ends inside a UTF-8 character
yields no text until the character is complete.
"""

from __future__ import annotations

from collections.abc import Sequence

from tinyllm.tokenizer import Tokenizer
from tokenizers.decoders import DecodeStream


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer.tk
        self.stream = DecodeStream(skip_special_tokens=True)  # as Tokenizer.decode
        self.fed = 0  # tokens given to the stream so far

    def new_text(self, tokens: Sequence[int]) -> str:
        """The text that `tokens` (the whole output so far) adds since the last call; '' while held back."""
        new, self.fed = list(tokens[self.fed :]), len(tokens)
        return (self.stream.step(self.tokenizer, new) or "") if new else ""
