"""Incremental detokenisation for streaming: emit only the new text, and hold back a trailing
partial UTF-8 character (shown as U+FFFD) until the token that completes it arrives.

Each push decodes a short window, not the whole output, so a long stream costs O(tokens) in all:
the tokens not yet sent, after the ones sent last time as context (a tokenizer may render a token
differently at the start of a string, e.g. without its leading space). vLLM does the same."""

from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # the window starts here
        self.read_offset = 0  # tokens before this one are in the text sent so far

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, new_ids: list[int], final: bool = False) -> str:
        if self.tokenizer is None:
            return ""
        self.ids.extend(new_ids)
        prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if text.endswith("\ufffd") and not final:
            return ""  # a character split over tokens: wait for the rest
        if len(text) <= len(prefix_text) or not text.startswith(prefix_text):
            return ""  # nothing printable yet (special tokens), or the merge changed earlier text
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(prefix_text):]
