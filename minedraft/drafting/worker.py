"""A DraftWorker without a model: a proposer (ngram.py, suffix.py) over each request's committed
tokens. No KV cache, so no rollback: the committed tokens that arrive with each proposal (`updates`)
are simply appended, and a discarded proposal (NoRoom, failover) leaves nothing behind.

Each row gets 0..k tokens (Proposal.lengths; 0: nothing matched, the row decodes target-only in its
verify), padded to k with token 0 that is never verified. q is one-hot (probs None): the drafts are
a function of the committed tokens, which keeps verification exact for sampled requests too.
confidence / top_prob: the proposer's probability of each drafted prefix (1.0 for a copy), 0 past the
row's length, so that a controller ranking positions (spec/draft_lengths.py) ranks the padding last."""

from __future__ import annotations

import time

import torch

from minedraft.config import DraftOptions
from minedraft.drafting.ngram import NgramProposer
from minedraft.drafting.suffix import SuffixParams, SuffixProposer
from minedraft.spec.workers import DraftWorker, NewRequest, Proposal

MODEL_FREE_METHODS = ("ngram", "suffix")


def make_proposer(options: DraftOptions | str):
    """The proposer of a draft node's options (minedraft.config.DraftOptions; a method name: its defaults)."""
    if isinstance(options, str):
        options = DraftOptions(method=options)
    if options.method == "ngram":
        return NgramProposer(options.ngram_min, options.ngram_max)
    if options.method == "suffix":
        return SuffixProposer(SuffixParams(
            depth=options.suffix_depth, max_spec_factor=options.suffix_max_spec_factor,
            min_token_prob=options.suffix_min_token_prob, max_cached_requests=options.suffix_max_cached_requests,
            cache_mib=options.suffix_cache_mib))
    raise ValueError(f"draft_method: a model-free draft is one of {', '.join(MODEL_FREE_METHODS)}, "
                     f"got {options.method!r}")


class _Rows:
    """What a service reads of a worker's rows (Info's num_active and KV fields): requests held, no KV."""

    def __init__(self, proposer):
        self.proposer = proposer

    @property
    def states(self):
        return self.proposer

    def kv_usage(self) -> dict:
        return {}


class ModelFreeDraftWorker(DraftWorker):
    def __init__(self, proposer, max_rows: int | None = None):
        """max_rows: requests held at once (a service's --max-num-seqs, what its token channel is sized
        for); add admits the longest prefix that fits, as a model draft's KV cache does."""
        self.proposer = proposer
        self.max_rows = max_rows
        self.method = proposer.method
        self.book = _Rows(proposer)

    def add(self, requests: list[NewRequest]) -> int:
        for r in requests:
            if r.request_id in self.proposer:
                raise ValueError(f"request_id: {r.request_id!r} is already running")
        room = len(requests) if self.max_rows is None else max(0, self.max_rows - len(self.proposer))
        admitted = requests[:room]
        for r in admitted:
            self.proposer.add(r.request_id, list(r.prompt_ids))
        return len(admitted)

    def propose(self, request_ids, k, updates):
        t0 = time.perf_counter()
        missing = [r for r in request_ids if r not in self.proposer]
        if missing:
            raise KeyError(f"unknown request ids: {missing}")
        rows, confs, lengths = [], [], []
        for rid in request_ids:
            self.proposer.extend(rid, updates.get(rid, []))
            draft, probs = self.proposer.propose(rid, k)
            pad = k - len(draft)
            rows.append(draft + [0] * pad)
            confs.append(probs + [0.0] * pad)
            lengths.append(len(draft))
        tokens = torch.tensor(rows, dtype=torch.int64).view(len(rows), k)
        confidence = torch.tensor(confs, dtype=torch.float32).view(len(rows), k)
        return Proposal(list(request_ids), k, tokens, None, confidence=confidence, top_prob=confidence.clone(),
                        lengths=lengths, methods=[self.method] * len(rows), compute_s=time.perf_counter() - t0,
                        channel_bytes=tokens.nbytes)

    def release(self, request_ids):
        for rid in request_ids:
            self.proposer.release(rid)
