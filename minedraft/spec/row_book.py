"""Per-request state of an in-process worker (LocalDraftWorker, LocalTargetWorker): its row in the
runner's KV cache, its sampling parameters and random generator, and the committed tokens the cache
still needs; admission that counts the KV blocks a request really needs (cached prefix blocks are free)."""

from __future__ import annotations

import dataclasses

import torch

from minedraft.runner.block_manager import NoRoom
from minedraft.runner.model_runner import ModelRunner
from minedraft.spec.coupled_sampling import COUPLED_STREAM
from minedraft.spec.logits_processing import make_generator, step_seed
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.workers import NewRequest

# The draft's random stream differs from the target's, except for seeded rows (coupled_sampling.py).
TARGET_STREAM, DRAFT_STREAM = COUPLED_STREAM, 0x5EED


class Committed:
    """A row's committed tokens as far as its KV cache needs them: how many there are, and those from
    the first that a later step may (re)write. The older ones are in the cache for good; the whole
    record is the scheduler's (Request), so a worker keeps no copy of it."""

    __slots__ = ("start", "tail")

    def __init__(self, tokens: list[int]):
        # add() prefills all but the last (or all, for a fresh target row); no rollback goes below that
        self.start, self.tail = len(tokens) - 1, list(tokens[-1:])

    def __len__(self) -> int:
        return self.start + len(self.tail)

    @property
    def last(self) -> int:
        return self.tail[-1]

    def since(self, i: int) -> list[int]:
        if i < self.start:
            raise IndexError(f"committed token {i} was settled (tokens are kept from {self.start})")
        return self.tail[i - self.start:]

    def append(self, token: int) -> None:
        self.tail.append(token)

    def extend(self, tokens: list[int]) -> None:
        self.tail.extend(tokens)

    def settle(self, kv_len: int) -> None:
        """Forget what no later step reads: a rollback keeps at least min(kv_len, len - 1) positions."""
        drop = min(kv_len, len(self) - 1) - self.start
        if drop > 0:
            del self.tail[:drop]
            self.start += drop


@dataclasses.dataclass
class RowState:
    row: int  # the runner's sequence handle
    seed: int
    params: SamplingParams
    generator: torch.Generator
    tokens: Committed  # the committed tokens its KV cache still needs
    drafted: list[int] = dataclasses.field(default_factory=list)  # draft side: last proposal


class RowBook:
    """request id -> sequence handle and per-request state, shared by both worker kinds."""

    def __init__(self, runner: ModelRunner, stream: int):
        self.runner = runner
        self.stream = stream
        self.states: dict[str, RowState] = {}

    def kv_ids(self, tokens: list[int]) -> list[int]:
        """Token ids as this runner's KV holds them (a draft reads ids past its vocabulary as 0)."""
        v = self.runner.vocab_size
        return [t if t < v else 0 for t in tokens]

    def admit(self, requests: list[NewRequest]) -> list[tuple[NewRequest, bool]]:
        """The longest prefix of requests whose prefill fits the free blocks (cached prefix blocks
        cost nothing), with one block of headroom per running sequence; a request alone always gets
        its chance. Each comes with whether it shares blocks an earlier one of them writes first."""
        blocks = self.runner.blocks
        free = blocks.num_free
        taken, seen = 0, set()
        plan = blocks.prefix_plan([self.kv_ids(r.prompt_ids) for r in requests])
        for i, (req, (need, _)) in enumerate(zip(requests, plan)):
            if req.request_id in self.states or req.request_id in seen:
                raise ValueError(f"request_id: {req.request_id!r} is already running")
            seen.add(req.request_id)
            headroom = len(self.states) + i + 1 if (self.states or i) else 0
            if taken + need + headroom > free:
                return list(zip(requests[:i], [f for _, f in plan[:i]]))
            taken += need
        return list(zip(requests, [f for _, f in plan]))

    def add_all(self, admitted: list[tuple[NewRequest, bool]], prefill) -> list[RowState]:
        """Allocate and prefill the admitted requests; those sharing a prefix that another one of them
        writes go second, so that they find its blocks cached. prefill(states, requests) computes."""
        states: dict[str, RowState] = {}
        for second in (False, True):
            group = [r for r, follower in admitted if follower == second]
            if group:
                new = [self.add(r) for r in group]
                prefill(new, group)
                states.update((r.request_id, s) for r, s in zip(group, new))
        return [states[r.request_id] for r, _ in admitted]

    def add(self, req: NewRequest) -> RowState:
        gen = make_generator(step_seed(req.seed, self.stream, len(req.prompt_ids)), self.runner.device)
        row = self.runner.allocate(self.kv_ids(req.prompt_ids))  # its cached prefix blocks, if any
        state = RowState(row, req.seed, req.params, gen, Committed(req.prompt_ids))
        self.states[req.request_id] = state
        return state

    def commit(self, state: RowState, tokens: list[int]) -> None:
        """Tokens the row committed, after any rollback: its full blocks become shareable."""
        self.runner.commit(state.row, self.kv_ids(tokens))

    def context(self, states: list[RowState], requests: list[NewRequest], upto: int):
        """(rows, tokens) of the prompt positions not yet in each row's KV, below len(prompt) + upto."""
        rows, tokens = [], []
        for s, r in zip(states, requests):
            todo = r.prompt_ids[self.runner.length(s.row):len(r.prompt_ids) + upto]
            if todo:
                rows.append(s.row)
                tokens.append(todo)
        return rows, tokens

    def get(self, request_ids: list[str]) -> list[RowState]:
        missing = [r for r in request_ids if r not in self.states]
        if missing:
            raise KeyError(f"unknown request ids: {missing}")
        return [self.states[r] for r in request_ids]

    def settle(self, states: list[RowState]) -> None:
        for s in states:
            s.tokens.settle(self.runner.length(s.row))

    def reseed(self, states: list[RowState]) -> None:
        """Seed each sampled row's generator from its committed length (see step_seed)."""
        for s in states:
            if not s.params.greedy:
                s.generator.manual_seed(step_seed(s.seed, self.stream, len(s.tokens)))

    def release(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            state = self.states.pop(rid, None)
            if state is not None:
                self.runner.free(state.row)

    def kv_usage(self) -> dict:
        b = self.runner.blocks
        return dict(num_kv_blocks=b.num_usable, num_free_kv_blocks=b.num_free, kv_block_size=b.block_size,
                    kv_cache_usage=b.usage, prefix_cache_queries=b.prefix_cache_queries,
                    prefix_cache_hits=b.prefix_cache_hits)


class Riders:
    """Prefill-only rows (a staged prompt's chunks, which nobody decodes) waiting for their worker's next
    forward, which packs their tokens beside its own rows (ModelRunner.forward(riders=): one pass over
    the weights for both). Each is admitted and its blocks reserved when offered, so whether it fits is
    known then and a rider never leaves a later step short of room."""

    def __init__(self, book: RowBook):
        self.book = book
        self.waiting: dict[str, tuple[int, list[int]]] = {}  # request id -> (row, tokens to prefill)

    def take(self, requests: list[NewRequest], ids=None) -> int:
        """Admit the longest prefix of requests that fits; ids: the forward's view of token ids (a
        draft reads ids outside its vocabulary as 0)."""
        runner, admitted = self.book.runner, 0
        for req, _ in self.book.admit(requests):
            row = self.book.add(req).row
            try:
                runner.reserve({row: len(req.prompt_ids)})
            except NoRoom:
                self.book.release([req.request_id])
                break
            todo = self.book.kv_ids(req.prompt_ids[runner.length(row):])
            if todo:
                self.waiting[req.request_id] = (row, ids(todo) if ids is not None else todo)
            admitted += 1
        return admitted

    def forward(self, rows, tokens, **kwargs):
        """runner.forward of rows carrying every waiting rider (no longer waiting once it ran)."""
        out = self.book.runner.forward(rows, tokens, riders=list(self.waiting.values()), **kwargs)
        self.waiting.clear()
        return out

    def drop(self, request_ids) -> None:
        for rid in request_ids:
            self.waiting.pop(rid, None)

    def __bool__(self) -> bool:
        return bool(self.waiting)
