"""Streaming text from a growing list of token ids without decoding the whole output at every token.

A full decode per token costs O(output length) per token. Byte-level BPE needs only a little left
context to give a token its text right (a leading space, a character split over several tokens), so each
step decodes a short window twice: from the first token of the last emitted piece to what was already
emitted, and to the end; the difference is the new text. A window ending inside a UTF-8 character
decodes to U+FFFD, and its text is held back until the character is complete.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self.decode = decode
        self.window_start = 0  # the context tokens of the next decode
        self.emitted = 0  # tokens whose text has been returned

    def new_text(self, tokens: Sequence[int]) -> str:
        """The text that `tokens` (the whole output so far) adds since the last call; '' while held back."""
        before = self.decode(tokens[self.window_start : self.emitted])
        after = self.decode(tokens[self.window_start :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.window_start, self.emitted = self.emitted, len(tokens)
        return after[len(before) :]
