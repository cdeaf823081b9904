"""A request as the scheduler sees it: prompt, parameters, what has been generated, counters."""

from __future__ import annotations

import dataclasses
import time

from minedraft.spec.sampling import SamplingParams
from minedraft.spec.workers import NewRequest


@dataclasses.dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    max_new_tokens: int  # min(params.max_tokens, room left in the context)
    stop_ids: frozenset
    output_ids: list[int] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    error: str | None = None  # why, when finish_reason is "error"
    fault: bool = False  # the error was the request's own (a worker refused its data), not a worker's
    num_drafted: int = 0
    num_accepted: int = 0
    arrival_s: float = dataclasses.field(default_factory=time.perf_counter)
    first_token_s: float | None = None
    finish_s: float | None = None
    new_since_emit: int = 0  # how many of output_ids the caller has not seen yet
    # How many of output_ids the draft has been given (in its prefill or with a proposal); the rest
    # ride with the next proposal, also after target-only steps (no draft node, or mode ar fallback).
    draft_known: int = 0
    in_draft: bool = False  # whether the draft holds it (a target-only regime admits to the target alone)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def append(self, tokens: list[int]) -> None:
        """Take committed tokens until a stop token or the length budget ends the request."""
        if self.first_token_s is None and tokens:
            self.first_token_s = time.perf_counter()
        for t in tokens:
            if self.finished:
                break
            self.output_ids.append(t)
            self.new_since_emit += 1
            if t in self.stop_ids:
                self.finish("stop")
            elif len(self.output_ids) >= self.max_new_tokens:
                self.finish("length")

    def finish(self, reason: str, error: str | None = None) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
            self.error = error
            self.finish_s = time.perf_counter()

    def worker_request(self, resume: bool = False) -> NewRequest:
        """What a worker prefills. A request with committed tokens (preempted, re-added after a restart,
        re-homed on another draft node) resumes: the prompt and every committed token, the last one
        pending, so nothing is sampled at admission."""
        if resume or self.output_ids:
            return NewRequest(self.request_id, self.prompt_ids + self.output_ids, self.params, self.seed,
                              resume=True)
        return NewRequest(self.request_id, self.prompt_ids, self.params, self.seed)

    def take_new_tokens(self) -> list[int]:
        new = self.output_ids[len(self.output_ids) - self.new_since_emit:] if self.new_since_emit else []
        self.new_since_emit = 0
        return new


def validate_prompt_ids(ids: list[int], vocab_size: int, context_len: int, name: str = "prompt") -> None:
    if len(ids) == 0:
        raise ValueError(f"{name}: must not be empty")
    bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"{name}: token id {bad[0]!r} is outside the vocabulary [0, {vocab_size})")
    if len(ids) >= context_len:
        raise ValueError(f"{name}: {len(ids)} tokens leave no room in the model's context of {context_len}")


def build_request(request_id: str, prompt_ids: list[int], params: SamplingParams, vocab_size: int,
                  context_len: int, eos_token_ids) -> Request:
    """Validate and make a Request; its length budget never lets it run past the context."""
    import secrets

    params.validate()
    validate_prompt_ids(prompt_ids, vocab_size, context_len)
    stop = set(params.stop_token_ids)
    if not params.ignore_eos:
        stop |= set(eos_token_ids)
    seed = params.seed if params.seed is not None else secrets.randbits(62)
    return Request(request_id, list(prompt_ids), params, seed,
                   min(params.max_tokens, context_len - len(prompt_ids)), frozenset(stop))
