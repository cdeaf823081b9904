"""OpenAI's HTTP protocol: request bodies -> validated parameters, results -> response JSON.

Validation is strict in OpenAI's own way: a wrong type or range is a 400 naming the field, an
unknown field is refused, and a known field this server does not implement (n > 1, logprobs, tools,
...) is refused with a message that says so instead of being ignored."""

from __future__ import annotations

import dataclasses
import math
import time
import uuid

from minedraft.spec.sampling import SamplingParams


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, type_: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param)


class HugeInt:
    """A JSON integer too long to be any field's value (json would build it digit by digit, and past
    4,300 digits it refuses): kept as its length, so that the field that holds it names the error."""

    MAX_DIGITS = 40

    def __init__(self, digits: str):
        self.n = len(digits.lstrip("-"))

    def __repr__(self) -> str:
        return f"<an integer of {self.n} digits>"


def _parse_int(digits: str):
    return int(digits) if len(digits) <= HugeInt.MAX_DIGITS else HugeInt(digits)


def parse_json(raw: bytes):
    """The body as JSON; 400 for anything that is not (bad syntax, bad UTF-8, nesting too deep)."""
    import json

    try:
        return json.loads(raw, parse_int=_parse_int)
    except RecursionError:
        raise ApiError(400, "the request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


def text(v: str, name: str) -> str:
    """A string that can be encoded (JSON's \\ud800 escapes make lone surrogates no tokenizer takes)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise bad(name, f"is not valid Unicode: a lone surrogate at character {exc.start}") from None
    return v


COMMON_FIELDS = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids",
                 "ignore_eos", "stream", "stream_options", "user"}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt"}
CHAT_FIELDS = COMMON_FIELDS | {"messages", "max_completion_tokens"}
# Known OpenAI fields this server does not implement: accepted only at their neutral value.
UNSUPPORTED = {
    "n": (None, 1), "best_of": (None, 1), "echo": (None, False), "suffix": (None, ""),
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "repetition_penalty": (None, 1), "logit_bias": (None, {}), "tools": (None, []), "tool_choice": (None, "none"),
    "functions": (None, []), "function_call": (None, "none"), "parallel_tool_calls": (None,), "audio": (None,),
    "modalities": (None, ["text"]), "prediction": (None,), "response_format": (None, {"type": "text"}),
    "service_tier": (None, "auto", "default"), "store": (None, False), "metadata": (None,),
    "reasoning_effort": (None,), "web_search_options": (None,),
}


@dataclasses.dataclass
class GenerationRequest:
    """What both endpoints boil down to."""

    model: str
    prompt: str | list[int] | None  # completions
    messages: list[dict] | None  # chat
    params: SamplingParams
    stop_strings: list[str]
    stream: bool
    include_usage: bool


# -- field checks -------------------------------------------------------------------------------------
def _int(body, name, default, lo=None):
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(name, f"must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise bad(name, f"must be >= {lo}, got {v}")
    return v


def _float(body, name, default, lo, hi, lo_open=False):
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(name, f"must be a finite number, got {v!r}")
    if v < lo or v > hi or (lo_open and v == lo):
        raise bad(name, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
    return float(v)


def _bool(body, name, default):
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(name, f"must be true or false, got {v!r}")
    return v


def _token_ids(v, name) -> list[int]:
    if not isinstance(v, list) or any(isinstance(t, bool) or not isinstance(t, int) for t in v):
        raise bad(name, "must be a list of integer token ids")
    return v


def _stops(body) -> tuple[list[str], list[int]]:
    """`stop`: a string or a list of strings and/or token ids; `stop_token_ids` (vLLM's extension)."""
    v = body.get("stop")
    items = [] if v is None else [v] if isinstance(v, str) else v
    if not isinstance(items, list):
        raise bad("stop", f"must be a string or a list of strings/token ids, got {v!r}")
    strings, ids = [], list(_token_ids(body.get("stop_token_ids") or [], "stop_token_ids"))
    for item in items:
        if isinstance(item, str) and item:
            strings.append(text(item, "stop"))
        elif isinstance(item, int) and not isinstance(item, bool):
            ids.append(item)
        else:
            raise bad("stop", f"entries must be non-empty strings or token ids, got {item!r}")
    return strings, ids


def _check_fields(body: dict, allowed: set[str]) -> None:
    for name, value in body.items():
        if name in allowed:
            continue
        if name in UNSUPPORTED:
            if any(value is ok or (value == ok and isinstance(value, bool) == isinstance(ok, bool))
                   for ok in UNSUPPORTED[name]):
                continue
            accepted = " or ".join(repr(x) for x in UNSUPPORTED[name] if x is not None) or "null"
            raise bad(name, f"not supported by this server (got {value!r}; accepted only as {accepted})")
        raise bad(name, "unrecognized request argument")


def _messages(v) -> list[dict]:
    if not isinstance(v, list) or not v:
        raise bad("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(v):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, "must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "developer", "user", "assistant"):
            raise bad(f"{where}.role", f"must be system, developer, user or assistant, got {role!r}")
        if isinstance(content, list):  # content parts: only text is supported
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad(f"{where}.content[{j}]", "only {\"type\": \"text\", \"text\": ...} parts are supported")
                texts.append(text(part["text"], f"{where}.content[{j}].text"))
            content = "".join(texts)
        if not isinstance(content, str):
            raise bad(f"{where}.content", f"must be a string or a list of text parts, got {content!r}")
        text(content, f"{where}.content")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def _prompt(v):
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], (str, list)):
        v = v[0]  # a batch of one
    if isinstance(v, str):
        if not v:
            raise bad("prompt", "must not be empty")
        return text(v, "prompt")
    if isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        return v
    if isinstance(v, list) and v and all(isinstance(p, (str, list)) for p in v):
        raise bad("prompt", "several prompts in one request are not supported; send one request per prompt")
    raise bad("prompt", "must be a non-empty string or a list of token ids")


def parse_request(body, chat: bool, context_len: int) -> GenerationRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    _check_fields(body, CHAT_FIELDS if chat else COMPLETION_FIELDS)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model", "required (a string; GET /v1/models lists it)")
    if chat:
        messages, prompt = _messages(body.get("messages")), None
        if body.get("max_completion_tokens") is not None and body.get("max_tokens") is not None:
            raise bad("max_completion_tokens", "give max_tokens or max_completion_tokens, not both")
        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _int(body, name, context_len, lo=1)  # chat: up to the end of the context
    else:
        if "prompt" not in body:
            raise bad("prompt", "required")
        messages, prompt = None, _prompt(body["prompt"])
        max_tokens = _int(body, "max_tokens", 16, lo=1)  # OpenAI's default for completions
    top_k = _int(body, "top_k", 0, lo=-1)
    strings, stop_ids = _stops(body)
    params = SamplingParams(
        temperature=_float(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=max(top_k, 0),  # -1 (vLLM's "off") = 0
        max_tokens=max_tokens,
        seed=_int(body, "seed", None),
        stop_token_ids=tuple(stop_ids),
        ignore_eos=_bool(body, "ignore_eos", False),
    )
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad("stream_options", "only allowed when stream is true")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise bad("stream_options", "must be an object with include_usage")
        include_usage = _bool(options, "include_usage", False)
    return GenerationRequest(model, prompt, messages, params, strings, stream, include_usage)


# -- responses ------------------------------------------------------------------------------------------
def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _envelope(rid: str, model: str, chat: bool, chunk: bool) -> dict:
    obj = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model}


def full_response(rid, model, chat, text, finish_reason, prompt_tokens, completion_tokens) -> dict:
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {**_envelope(rid, model, chat, False), "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens)}


def stream_chunk(rid, model, chat, text, finish_reason=None, first=False, include_usage=False) -> dict:
    if chat:
        delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    chunk = {**_envelope(rid, model, chat, True), "choices": [choice]}
    if include_usage:  # OpenAI: every chunk carries usage: null, the extra last one the counts
        chunk["usage"] = None
    return chunk


def usage_chunk(rid, model, chat, prompt_tokens, completion_tokens) -> dict:
    return {**_envelope(rid, model, chat, True), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


def model_list(name: str, context_len: int) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": int(time.time()),
                                        "owned_by": "minedraft", "max_model_len": context_len}]}
