"""Chat messages -> prompt token ids with the tokenizer's own chat template (as vLLM does).

The one place the gateway calls transformers' apply_chat_template; the template itself lives in the
checkpoint's tokenizer_config.json (the bundled pair has a small one, see minedraft/train_tiny.py)."""

from __future__ import annotations


class NoChatTemplate(ValueError):
    pass


def render_chat(tokenizer, messages: list[dict]) -> list[int]:
    if tokenizer is None:
        raise NoChatTemplate("messages: this gateway has no tokenizer; use /v1/completions with token ids")
    if not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplate("messages: this model's tokenizer has no chat template; use /v1/completions")
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - templates raise on input they reject (e.g. roles not alternating)
        raise NoChatTemplate(f"messages: the model's chat template rejected them: {exc}") from exc
    # The template writes the special tokens (BOS) itself: do not add them twice.
    return tokenizer.encode(text, add_special_tokens=False)
