"""The one front end: prompt -> token ids -> a validated Request -> the scheduler, and back out.

`Engine`, the gateway's gRPC API and its HTTP API all go through a `Frontend`. What differs between
them is passed in: the tokenizer, the EOS ids, the vocabulary size and context length (values, or
callables for a gateway whose workers can change), the model's name, and the sink that takes requests
(the Engine's scheduler through `SchedulerSink`, the gateway's engine loop).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

from minedraft.spec.request import Request, build_request
from minedraft.spec.sampling import SamplingParams


class Sink(Protocol):
    scheduler: object  # its mode, k and max_num_seqs are the model info's

    def submit(self, request: Request, events=None): ...

    def abort(self, request_id: str) -> bool: ...


class SchedulerSink:
    """An in-process engine's sink: the scheduler itself (the caller steps it; no events)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def submit(self, request: Request, events=None) -> None:
        self.scheduler.add(request)

    def abort(self, request_id: str) -> bool:
        s = self.scheduler
        found = (request_id in s.running or any(r.request_id == request_id for r in s.waiting)
                 or s.is_staged(request_id))
        s.abort(request_id)
        return found


@dataclasses.dataclass(frozen=True)
class PromptWords:
    """How a face's error messages name what to send instead of text (their wording is part of the API)."""

    holder: str = "this checkpoint"
    instead: str = "pass token ids"
    empty_hint: str = ""


ENGINE_WORDS = PromptWords()  # the Engine's: it takes text or token-id lists


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What any face reports of the model it serves (the gateway adds its workers' endpoints)."""

    model: str
    mode: str
    num_speculative_tokens: int | str  # "auto": the controller picks k per step
    max_num_seqs: int
    vocab_size: int
    context_len: int

    @property
    def auto_k(self) -> bool:
        return self.num_speculative_tokens == "auto"


def _read(source):
    return source() if callable(source) else source


class Frontend:
    def __init__(self, sink: Sink, tokenizer, eos_ids, vocab_size: int | Callable[[], int],
                 context_len: int | Callable[[], int], model: str | Callable[[], str] = "",
                 words: PromptWords = ENGINE_WORDS):
        self.sink, self.tokenizer, self.eos_ids, self.words = sink, tokenizer, tuple(eos_ids), words
        self._vocab_size, self._context_len, self._model = vocab_size, context_len, model
        self._max_token_bytes: int | None = None

    @property
    def vocab_size(self) -> int:
        return _read(self._vocab_size)

    @property
    def context_len(self) -> int:
        """What a request may use: prompt and output together."""
        return _read(self._context_len)

    @property
    def model(self) -> str:
        return _read(self._model)

    def encode(self, prompt: str | list[int]) -> list[int]:
        if not isinstance(prompt, str):
            return list(prompt)
        if not prompt:
            raise ValueError(f"prompt: must not be empty{self.words.empty_hint}")
        if self.tokenizer is None:
            raise ValueError(f"prompt: {self.words.holder} has no tokenizer; {self.words.instead}")
        at_least = len(prompt.encode("utf-8", "surrogatepass")) // self._longest_token_bytes()
        if at_least >= self.context_len:  # refused without tokenising it (seconds for megabytes)
            raise ValueError(f"prompt: {len(prompt)} characters make at least {at_least} tokens, more than the "
                             f"model's context of {self.context_len}")
        return self.tokenizer.encode(prompt, add_special_tokens=True)

    def _longest_token_bytes(self) -> int:
        """No token covers more bytes of text than this: bytes // it is a lower bound on the tokens."""
        if self._max_token_bytes is None:
            vocab = getattr(self.tokenizer, "get_vocab", dict)()
            # byte-level BPE spells each byte as one character; a generous floor for other schemes
            self._max_token_bytes = max([4 * len(t) for t in vocab] + [64])
        return self._max_token_bytes

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None else ""

    def make_request(self, prompt: str | list[int], params: SamplingParams, request_id: str) -> Request:
        """Tokenise and validate. Raises ValueError whose message starts with the field's name."""
        return build_request(request_id, self.encode(prompt), params, self.vocab_size, self.context_len,
                             self.eos_ids)

    def enqueue(self, request: Request, events=None):
        """Hand a made request to the sink; returns what the sink returns (the gateway's event queue)."""
        return self.sink.submit(request, events)

    def submit(self, prompt: str | list[int], params: SamplingParams, request_id: str, events=None) -> Request:
        """make_request + enqueue. The sink may raise too (the gateway's QueueFull, a duplicate id)."""
        request = self.make_request(prompt, params, request_id)
        self.enqueue(request, events)
        return request

    def abort(self, request_id: str) -> bool:
        """Whether it was in flight; its rows are freed by the scheduler's next step."""
        return self.sink.abort(request_id)

    def model_info(self) -> ModelInfo:
        s = self.sink.scheduler
        return ModelInfo(self.model, s.mode, s.k, s.max_num_seqs, self.vocab_size, self.context_len)

