"""Suffix decoding (SuffixDecoding, arXiv 2411.04975; ArcticInference's `suffix_decoding/`): a
depth-bounded suffix trie per request over its prompt + output (held as its token array and matched
at query time, `RequestIndex`: appending stays cheap), and one global trie over the outputs of recent
requests (LRU by request, within a memory cap). A proposal matches the longest suffix of
the request's tokens in a trie and walks from there along the most frequent continuation while its
estimated probability stays at least `min_token_prob`; the trie whose walk expects more accepted
tokens (the sum of the probabilities) wins.

The trie: every substring of length <= depth of the inserted sequences is a node; `count` is how many
times it occurred and `out` how many of those occurrences were followed by a token, so the estimated
probability of continuation t after u is u.children[t].count / u.out. Matches are suffix-closed
(a string that occurred followed by something has every suffix occur followed by the same), so the
longest matching suffix is found by bisection. A match is at most depth - k tokens long, so that the
walk below it has room for k tokens in the depth-bounded trie.

Draft length: at most min(k, max_spec_factor * match length + max_spec_offset), as ArcticInference:
a long match has earned a long draft, a one-token match a short one. The draft is a function of the
committed tokens (and of finished requests' outputs): q is one-hot and verification stays exact.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc

import numpy as np

from minedraft.drafting.ngram import TokenHistory

DEFAULT_DEPTH = 24  # longest substring kept: matches past ~20 tokens add nothing to a copy's prediction
NODE_BYTES = 280  # a node with its children dict, measured (tracemalloc) at ~264 B; tests/test_model_free_proposers.py


@dataclasses.dataclass(frozen=True)
class SuffixParams:
    depth: int = DEFAULT_DEPTH
    max_spec_factor: float = 1.0
    max_spec_offset: float = 0.0
    min_token_prob: float = 0.1
    max_cached_requests: int = 1000  # outputs kept in the global trie (LRU); 0: no global trie
    cache_mib: float = 256.0  # the global trie's memory cap

    def __post_init__(self):
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 2:
            raise ValueError(f"suffix_depth: must be an integer >= 2, got {self.depth!r}")
        if not 0.0 <= self.min_token_prob <= 1.0:
            raise ValueError(f"suffix_min_token_prob: must be in [0, 1], got {self.min_token_prob!r}")
        if self.max_spec_factor <= 0:
            raise ValueError(f"suffix_max_spec_factor: must be > 0, got {self.max_spec_factor!r}")
        if not isinstance(self.max_cached_requests, int) or self.max_cached_requests < 0:
            raise ValueError(f"suffix_max_cached_requests: must be an integer >= 0, got {self.max_cached_requests!r}")
        if not self.cache_mib > 0:
            raise ValueError(f"suffix_cache_mib: must be > 0, got {self.cache_mib!r}")


class Node:
    __slots__ = ("count", "out", "children")

    def __init__(self):
        self.count = 0
        self.out = 0
        self.children: dict[int, Node] = {}


class SuffixTrie:
    """All substrings up to `depth` tokens of the sequences inserted, with their counts."""

    def __init__(self, depth: int = DEFAULT_DEPTH):
        self.depth = depth
        self.root = Node()
        self.num_nodes = 1

    # -- building --------------------------------------------------------------------------------------
    def insert(self, tokens: list[int]) -> None:
        """Add every substring of tokens (up to depth) once per occurrence."""
        d = self.depth
        with _collector_paused():
            for start in range(len(tokens)):
                self._walk_add(tokens[start:start + d], +1)

    def remove(self, tokens: list[int]) -> None:
        """Undo insert(tokens); nodes left with no occurrence are freed."""
        d = self.depth
        with _collector_paused():
            for start in range(len(tokens)):
                self._walk_add(tokens[start:start + d], -1)

    def _walk_add(self, path: list[int], delta: int) -> None:
        node = self.root
        node.count += delta
        for t in path:
            node.out += delta
            child = node.children.get(t)
            if child is None:
                child = node.children[t] = Node()
                self.num_nodes += 1
            child.count += delta
            if child.count == 0:  # gone with what was removed, and so is everything below it
                del node.children[t]
                self.num_nodes -= _size(child)
                return
            node = child

    # -- reading --------------------------------------------------------------------------------------
    def find(self, path) -> Node | None:
        node = self.root
        for t in path:
            node = node.children.get(t)
            if node is None:
                return None
        return node

    def longest_match(self, context: list[int]) -> tuple[int, Node]:
        """(m, node): the longest suffix of context, m <= depth - 1, that occurred followed by a token."""
        lo, hi, best = 0, min(len(context), self.depth - 1), self.root
        while lo < hi:  # invariant: the suffix of length lo matches (length 0: the root)
            mid = (lo + hi + 1) // 2
            node = self.find(context[len(context) - mid:])
            if node is not None and node.out > 0:
                lo, best = mid, node
            else:
                hi = mid - 1
        return lo, best

    def walk(self, node: Node, max_len: int, min_prob: float) -> tuple[list[int], list[float]]:
        """The most frequent continuation from node: tokens and the probability of each prefix."""
        tokens, probs, p = [], [], 1.0
        while len(tokens) < max_len and node.out > 0:
            t, child = max(node.children.items(), key=lambda item: item[1].count)
            p *= child.count / node.out
            if p < min_prob:
                break
            tokens.append(t)
            probs.append(p)
            node = child
        return tokens, probs


@contextlib.contextmanager
def _collector_paused():
    """An output's insert makes ~depth nodes per token, and every 700 of them the cyclic collector
    ran and, now and then, walked the whole heap: a finished request (152 tokens, in a process
    holding three engines) cost 23-26 ms,
    3-9 ms with the collector paused here, 1.5-2.6 ms with it off. The trie holds no cycles (parents
    own children), so reference counting frees it; the collector runs again, once, with the next
    allocations after this. Nodes the collector does not track at all (flat arrays) would be the
    whole fix."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _size(node: Node) -> int:
    n, stack = 0, [node]
    while stack:
        u = stack.pop()
        n += 1
        stack.extend(u.children.values())
    return n


class RequestIndex:
    """A request's own tokens, matched at query time instead of kept in a trie: appending a token is
    an array write, where a trie updated `depth` nodes per token (that was ~95% of the proposer's
    step at 64 rows). It answers what the depth-bounded trie of the request's tokens would: the
    longest suffix that occurred followed by a token, and the walk along the most frequent
    continuation, with the same counts, the same tie-break (the continuation seen first) and the
    same depth bound, so the proposals are the trie's exactly (tests/test_model_free_proposers.py)."""

    def __init__(self, depth: int, tokens: list[int]):
        self.depth = depth
        self.history = TokenHistory(tokens)  # numpy view for the match
        self.tokens: list[int] = list(tokens)  # Python ints for the walk's few lookups

    def extend(self, tokens: list[int]) -> None:
        self.history.extend(tokens)
        self.tokens.extend(tokens)

    def longest_match(self, max_len: int) -> tuple[int, list[int]]:
        """(m, ends): the longest suffix, m <= min(max_len, depth - 1), that occurred earlier
        followed by a token, and the end positions of those occurrences (ascending)."""
        t = self.history.view()
        n = len(t)
        limit = min(max_len, self.depth - 1, n - 1)
        if limit < 1:
            return 0, []
        ends = np.flatnonzero(t[:n - 1] == t[n - 1])
        if not ends.size:
            return 0, []
        if limit > 1:  # how far back each candidate agrees with the suffix, all candidates at once
            back = np.arange(limit)
            pos = ends[:, None] - back
            agree = (t[np.maximum(pos, 0)] == t[n - 1 - back]) & (pos >= 0)
            lengths = np.where(agree.all(axis=1), limit, agree.argmin(axis=1))
            m = int(lengths.max())
            ends = ends[lengths == m]
        else:
            m = 1
        return m, ends.tolist()

    def walk(self, ends: list[int], m: int, max_len: int, min_prob: float) -> tuple[list[int], list[float]]:
        """The most frequent continuation of the match of length m ending at `ends`."""
        toks, last = self.tokens, len(self.tokens) - 1
        tokens, probs, p, length = [], [], 1.0, m
        while len(tokens) < max_len and ends and length < self.depth:  # the trie keeps no longer string
            counts: dict[int, int] = {}  # insertion order: the continuation seen first wins a tie
            for e in ends:
                nxt = toks[e + 1]
                counts[nxt] = counts.get(nxt, 0) + 1
            t, c = max(counts.items(), key=_second)
            p *= c / len(ends)
            if p < min_prob:
                break
            tokens.append(t)
            probs.append(p)
            ends = [e + 1 for e in ends if e + 1 < last and toks[e + 1] == t]
            length += 1
        return tokens, probs

    def memory_bytes(self) -> int:
        return self.history.buf.nbytes + 8 * len(self.tokens)


def _second(item):
    return item[1]


class SuffixProposer:
    method = "suffix"

    def __init__(self, params: SuffixParams | None = None):
        self.params = params or SuffixParams()
        self.requests: dict[str, RequestIndex] = {}
        self.prompt_len: dict[str, int] = {}
        self.global_trie = SuffixTrie(self.params.depth)
        self.cached: collections.OrderedDict[str, list[int]] = collections.OrderedDict()  # LRU of outputs

    def add(self, request_id: str, tokens: list[int]) -> None:
        self.requests[request_id] = RequestIndex(self.params.depth, tokens)
        self.prompt_len[request_id] = len(tokens)

    def extend(self, request_id: str, tokens: list[int]) -> None:
        if tokens:
            self.requests[request_id].extend(tokens)

    def propose(self, request_id: str, k: int) -> tuple[list[int], list[float]]:
        """(tokens, probability of each prefix): the better of the request's and the global trie's."""
        index = self.requests[request_id]
        # room below the match for k tokens: the trie holds substrings of at most depth tokens
        room = max(1, self.params.depth - k)
        best: tuple[list[int], list[float]] = ([], [])
        m, ends = index.longest_match(room)
        if m:
            best = index.walk(ends, m, self._limit(k, m), self.params.min_token_prob)
        m, node = self.global_trie.longest_match(index.tokens[-room:])
        if m:
            drafted = self.global_trie.walk(node, self._limit(k, m), self.params.min_token_prob)
            if sum(drafted[1]) > sum(best[1]):
                best = drafted
        return best

    def _limit(self, k: int, m: int) -> int:
        return min(k, int(self.params.max_spec_factor * m + self.params.max_spec_offset))

    def release(self, request_id: str) -> None:
        """The request's output joins the global trie (LRU by request, within the memory cap)."""
        index = self.requests.pop(request_id, None)
        start = self.prompt_len.pop(request_id, 0)
        if index is None or self.params.max_cached_requests == 0:
            return
        output = index.tokens[start:]
        if not output:
            return
        if request_id in self.cached:  # an id used again: its older output leaves first
            self.global_trie.remove(self.cached.pop(request_id))
        self.global_trie.insert(output)
        self.cached[request_id] = output
        while self.cached and (len(self.cached) > self.params.max_cached_requests or
                               self.global_bytes() > self.params.cache_mib * 2**20):
            _, old = self.cached.popitem(last=False)
            self.global_trie.remove(old)

    def global_bytes(self) -> int:
        return self.global_trie.num_nodes * NODE_BYTES

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.requests

    def __len__(self) -> int:
        return len(self.requests)

    def memory_bytes(self) -> int:
        return sum(r.memory_bytes() for r in self.requests.values()) + self.global_bytes()
