"""Incremental detokenisation for streaming: emit only the new text, and hold back a trailing
partial UTF-8 character (shown as U+FFFD) until the token that completes it arrives."""

from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def push(self, new_ids: list[int], final: bool = False) -> str:
        if self.tokenizer is None:
            return ""
        self.ids.extend(new_ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and not final:
            return ""
        if not text.startswith(self.sent):  # merges changed earlier text: send only what is new
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta
