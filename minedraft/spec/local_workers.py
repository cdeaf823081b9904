"""In-process DraftWorker and TargetWorker over a ModelRunner. The services wrap these same classes,
so a step computes the same thing whether the scheduler calls it directly or over gRPC.

KV blocks: `add` admits the longest prefix of the requests whose prompts fit (keeping a block of
headroom per running sequence, so that admitting does not force an immediate preemption); `propose`,
`verify` and `decode` reserve what the whole step needs before computing anything and raise
`NoRoom` (changing nothing but, for propose, the committed-token updates it absorbed) when it is not
there. The scheduler answers NoRoom by preempting a request.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from minedraft.runner.block_manager import NoRoom
from minedraft.runner.model_runner import ModelRunner
from minedraft.runner.transfer import host_tensor, to_device
from minedraft.spec.coupled_sampling import drawn_elsewhere, is_coupled, reads_q, redraw_coupled
from minedraft.spec.draft_beliefs import draft_confidence, normalised_q, proposal_to_host
from minedraft.spec.logits_processing import probs_from_logits, sample, sample_tensor
from minedraft.spec.placement import PREFILL_THREADS_MIN_TOKENS, threads_for
from minedraft.spec.row_book import DRAFT_STREAM, TARGET_STREAM, Riders, RowBook, RowState
from minedraft.spec.verification import check_lengths, verify_batch
from minedraft.spec.workers import DraftWorker, NewRequest, Proposal, TargetWorker, Verdict

Q_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class _CarriesRiders:
    """riding / settle_riders of a worker whose `riders` go with its `_forward` (row_book.Riders)."""

    riders: Riders

    @property
    def riding(self) -> bool:
        return bool(self.riders)

    def settle_riders(self) -> None:
        if self.riders:
            self._forward([], [])


class LocalDraftWorker(_CarriesRiders, DraftWorker):
    def __init__(self, runner: ModelRunner, full_q: bool = True, q_dtype: str = "float32"):
        self.runner = runner
        self.full_q = full_q  # send q for sampled requests (else draft greedily with one-hot q)
        # bfloat16: q crosses the channel at half the bytes. Exactness holds because the draft samples
        # from that very rounded q (multinomial normalises it) and verification normalises it too.
        if q_dtype not in Q_DTYPES:
            raise ValueError(f"q_dtype: must be one of {', '.join(Q_DTYPES)}, got {q_dtype!r}")
        self.q_dtype = Q_DTYPES[q_dtype]
        self.book = RowBook(runner, DRAFT_STREAM)
        self.riders = Riders(self.book)
        self.context_len = runner.context_len

    def add(self, requests: list[NewRequest]) -> int:
        admitted = self.book.admit(requests)
        self.book.add_all(admitted, self._prefill)
        return len(admitted)

    def _prefill(self, states, requests) -> None:
        # The last known token stays pending: propose() feeds it and gets the next logits.
        rows, tokens = self.book.context(states, requests, -1)
        if rows:
            self._forward(rows, tokens)

    def ride(self, requests):
        """As LocalTargetWorker.ride: their tokens go with the next forward of host tokens (a proposal's
        first step, or a prefill)."""
        return self.riders.take(requests, self._in_vocabulary)

    def _in_vocabulary(self, tokens: list[int]) -> list[int]:
        """A draft whose vocabulary is a prefix of the target's still reads every committed token:
        ids it lacks (never real tokens in practice: padding rows of the target's embedding) are
        read as id 0. That can only lower acceptance, never change the output."""
        v = self.runner.vocab_size
        return [t if t < v else 0 for t in tokens]

    def _forward(self, rows, tokens):
        if torch.is_tensor(tokens):  # the draft's own samples: always inside its vocabulary
            return self.runner.forward(rows, tokens)
        tokens = [self._in_vocabulary(row) for row in tokens]
        return self.riders.forward(rows, tokens) if self.riders else self.runner.forward(rows, tokens)

    def _apply_update(self, state: RowState, update: list[int]) -> None:
        """Roll the KV cache back to the longest prefix that still matches the committed tokens."""
        committed = len(state.tokens)
        kv_len = self.runner.length(state.row)
        in_kv_drafts = kv_len - committed  # drafted tokens whose KV was written (k-1 after a proposal)
        same = 0
        while same < min(len(update), max(in_kv_drafts, 0)) and update[same] == state.drafted[same]:
            same += 1
        # At least the last committed token stays pending (fed by the next step): after a discarded
        # proposal (NoRoom, draft failover) no update arrives and the drafts just roll back.
        self.runner.rollback(state.row, min(kv_len, committed + same, committed + len(update) - 1))
        self.book.commit(state, update)  # after the rollback: the KV below its length now holds them
        state.tokens.extend(update)
        state.tokens.settle(self.runner.length(state.row))
        state.drafted = []

    def propose(self, request_ids, k, updates):
        t0 = time.perf_counter()
        states = self.book.get(request_ids)
        for rid, s in zip(request_ids, states):
            self._apply_update(s, updates.get(rid, []))
        # The whole proposal's blocks up front: k - 1 drafted tokens plus what is pending get written.
        self.runner.reserve({s.row: len(s.tokens) + k - 1 for s in states})
        self.book.reseed(states)
        rows = [s.row for s in states]
        params = [s.params for s in states]
        gens = [s.generator for s in states]
        q_rows = [i for i, p in enumerate(params) if reads_q(p)]  # the rows whose verify reads q
        want_q = self.full_q and bool(q_rows)
        if not self.full_q:  # one-hot q: those rows must draft deterministically, so greedily
            params = [p if is_coupled(p) else dataclasses.replace(p, temperature=0.0) for p in params]
        # seeded rows draw each drafted position with the target's noise for it (coupled_sampling.py)
        coupled = [(i, gens[i], s.seed, len(s.tokens)) for i, s in enumerate(states) if is_coupled(params[i])]
        draw_params = drawn_elsewhere(params)
        pending = [s.tokens.since(self.runner.length(s.row)) for s in states]
        # which rows rank their drafts by the q they sampled from (the others by the logits)
        sampling = [not p.greedy for p in params]
        with_q = host_tensor(sampling, torch.bool, self.runner.device) if any(sampling) else None
        tokens, probs, beliefs = [], [], []
        for step in range(k):
            logits = self._forward(rows, pending)
            q = probs_from_logits(logits, params)
            if want_q and self.q_dtype != torch.float32:
                q = q.to(self.q_dtype)  # what is sent is what is sampled from
            # [B] on the device: fed back into the next step without a host sync
            chosen = sample_tensor(q.float(), draw_params, gens)  # .float(): a no-op unless q was rounded
            redraw_coupled(chosen, q, coupled, step)
            tokens.append(chosen)
            beliefs.append(draft_confidence(logits, q, chosen, with_q))
            if want_q:  # q only for the rows whose verify reads it
                probs.append(q[q_rows] if len(q_rows) < len(rows) else q)
            pending = chosen[:, None]
        token_tensor, confidence, top_prob = proposal_to_host(tokens, beliefs)
        # The last drafted token was never fed: its KV is written when the target accepts it.
        for s, row_tokens in zip(states, token_tensor.tolist()):
            s.drafted = row_tokens
        # [S, k, V] stays on the device: the channel's writer orders its own copies (no device-wide sync)
        prob_tensor = torch.stack(probs, dim=1) if want_q else None
        nbytes = token_tensor.nbytes + (prob_tensor.nbytes if prob_tensor is not None else 0)
        return Proposal(list(request_ids), k, token_tensor, prob_tensor, confidence=confidence, top_prob=top_prob,
                        compute_s=time.perf_counter() - t0, channel_bytes=nbytes)

    def release(self, request_ids):
        self.riders.drop(request_ids)
        self.book.release(request_ids)


class LocalTargetWorker(_CarriesRiders, TargetWorker):
    def __init__(self, runner: ModelRunner, prefill_threads: int | None = None, feature_store=None):
        """feature_store: a drafting.features.FeatureStore when an EAGLE draft is attached; every forward
        then also writes the committed positions' features there (None: no features computed)."""
        self.runner = runner
        self.features = feature_store
        self.prefill_threads = prefill_threads  # intra-op threads of a long prefill (placement.py)
        self.book = RowBook(runner, TARGET_STREAM)
        self.context_len = runner.context_len
        self.vocab_size = runner.vocab_size
        self.max_num_batched_tokens, self.block_size = runner.max_num_batched_tokens, runner.blocks.block_size
        self.riders = Riders(self.book)

    def add(self, requests):
        admitted = self.book.admit(requests)
        first: dict[int, int] = {}
        states = self.book.add_all(admitted, lambda st, reqs: self._prefill(st, reqs, first))
        return [first.get(id(s)) for s in states]

    def ride(self, requests):
        """Rows allocated and their blocks reserved now (so a rider never makes a later step short of
        room); their tokens go with the next forward. An EAGLE target exports the features of every
        forwarded position, to its own request: its riders are prefilled by `add`."""
        if self.features is not None:
            return super().ride(requests)
        return self.riders.take(requests)

    def _forward_prefill(self, rows, tokens):
        """A prefill of many tokens (one long row, or many short ones together) runs at prefill_threads."""
        long = sum(len(t) for t in tokens) >= PREFILL_THREADS_MIN_TOKENS
        with threads_for(self.prefill_threads if long else None):
            return self._forward(rows, tokens)

    def _forward(self, rows, tokens, all_positions=False, all_committed=True):
        """runner.forward; with a feature store, the features of the forwarded positions go there when
        they are all committed (prefill, decode); a verify keeps them until it knows what it accepted."""
        if self.features is None:
            if not self.riders:
                return self.runner.forward(rows, tokens, all_positions=all_positions)
            with threads_for(self.prefill_threads):  # a prefill chunk rides along: it is the forward's bulk
                return self.riders.forward(rows, tokens, all_positions=all_positions)
        starts = [self.runner.length(r) for r in rows]
        logits, feats = self.runner.forward(rows, tokens, all_positions=all_positions, with_features=True,
                                            feature_layers=self.features.layers)
        self._last_features = (rows, starts, feats)
        if all_committed:
            owner = self._request_of
            for row, start, f in zip(rows, starts, feats):
                self.features.put(owner[row], start, f)
        return logits

    def _prefill(self, states, requests, first: dict[int, int]) -> None:
        """Prefill what each row's cached prefix does not hold; sample the first token of fresh rows."""
        fresh = [(s, r) for s, r in zip(states, requests) if not r.resume]
        # Resumed requests (preempted, or re-added after a restart) already committed their last
        # token: it stays pending, exactly as it was before they left.
        resumed = [(s, r) for s, r in zip(states, requests) if r.resume]
        rows, tokens = self.book.context([s for s, _ in resumed], [r for _, r in resumed], -1)
        if rows:
            self._forward_prefill(rows, tokens)
        if fresh:
            new_states = [s for s, _ in fresh]
            rows, tokens = self.book.context(new_states, [r for _, r in fresh], 0)  # never empty: see allocate
            logits = self._forward_prefill(rows, tokens)
            params = [s.params for s in new_states]
            sampled = sample(probs_from_logits(logits, params), params, [s.generator for s in new_states])
            for s, t in zip(new_states, sampled):
                s.tokens.append(t)  # committed, but its KV is written by the next forward
                self.book.commit(s, [t])
                first[id(s)] = t

    def decode(self, request_ids):
        t0 = time.perf_counter()
        states = self.book.get(request_ids)
        self.book.reseed(states)
        logits = self._forward([s.row for s in states], [[s.tokens.last] for s in states])
        params = [s.params for s in states]
        out = sample(probs_from_logits(logits, params), params, [s.generator for s in states])
        for s, t in zip(states, out):
            s.tokens.append(t)
            self.book.commit(s, [t])
        self.book.settle(states)
        self.last_decode_compute_s = time.perf_counter() - t0
        return out

    def verify(self, proposal: Proposal) -> Verdict:
        t0 = time.perf_counter()
        states = self.book.get(proposal.request_ids)
        rows = [s.row for s in states]
        kv_before = [self.runner.length(r) for r in rows]
        self.book.reseed(states)
        lengths = check_lengths(proposal.lengths, len(states), proposal.k)
        last = host_tensor([[s.tokens.last] for s in states], torch.long, self.runner.device)
        drafts = to_device(proposal.tokens.long(), self.runner.device)  # [B, k]
        logits = self._forward_verify(rows, last, drafts, lengths)  # [B, max L + 1, V]
        params = [s.params for s in states]
        p = probs_from_logits(logits, params)
        verdicts = verify_batch(p, drafts, normalised_q(proposal.probs), params,
                                [s.generator for s in states], lengths, positions=[len(s.tokens) for s in states])
        features = self._export_verified(proposal.request_ids, kv_before, verdicts)
        for s, row, before, v in zip(states, rows, kv_before, verdicts):
            # Keep the pending token and the accepted drafts; the new last token stays pending.
            self.runner.rollback(row, before + 1 + v.num_accepted)
            self.book.commit(s, v.tokens)  # after the rollback: the rejected drafts are gone
            s.tokens.extend(v.tokens)
        self.book.settle(states)
        return Verdict(list(proposal.request_ids), [v.tokens for v in verdicts],
                       [v.num_accepted for v in verdicts], compute_s=time.perf_counter() - t0, features=features)

    def _export_verified(self, request_ids, kv_before, verdicts):
        """With a feature store: the features of the positions this verify committed (the pending
        token's and the accepted drafts'), stored and returned per request; None without one."""
        if self.features is None:
            return None
        _rows, _starts, feats = self._last_features
        out = []
        for rid, before, f, v in zip(request_ids, kv_before, feats, verdicts):
            kept = f[:1 + v.num_accepted]
            self.features.put(rid, before, kept)
            out.append(kept)
        return out

    def _forward_verify(self, rows, last, drafts, lengths) -> torch.Tensor:
        """Every position's logits; NoRoom before any compute. Padded rows need more blocks: when
        they are not there, the verified tokens alone may still fit."""
        tokens = _verify_input(last, drafts, lengths)
        try:
            return self._forward(rows, tokens, all_positions=True, all_committed=False)
        except NoRoom:
            if lengths is None or not torch.is_tensor(tokens) or len(set(lengths)) == 1:
                raise
            return self._forward(rows, _verify_input(last, drafts, lengths, ragged_only=True),
                                 all_positions=True, all_committed=False)

    def features_of(self, requests: list[NewRequest], layers: tuple[int, ...] | None = None
                    ) -> list[tuple[str, int, torch.Tensor]]:
        """(request id, 0, features [n - 1, hidden]) of each request's committed tokens but the last
        (whose feature its next verify or decode exports), forwarded on scratch rows freed after: an
        EAGLE draft that takes a request over needs them all. No room for the rows: none (the draft
        reads missing features as zeros, which only costs acceptance). layers: which features (FeatureStore's
        layers); by default those of the store this worker exports into."""
        if layers is None and self.features is not None:
            layers = self.features.layers
        todo = [(r.request_id, self.book.kv_ids(r.prompt_ids[:-1])) for r in requests if len(r.prompt_ids) > 1]
        rows = [self.runner.allocate() for _ in todo]
        try:
            if not rows:
                return []
            _logits, feats = self.runner.forward(rows, [t for _, t in todo], with_features=True,
                                                 feature_layers=layers)
        except NoRoom:
            return []
        finally:
            for row in rows:
                self.runner.free(row)
        return [(rid, 0, f) for (rid, _), f in zip(todo, feats)]

    @property
    def _request_of(self) -> dict[int, str]:
        """sequence handle -> request id (feature export only: prefill and decode forward by row)."""
        return {s.row: rid for rid, s in self.book.states.items()}

    def release(self, request_ids):
        self.riders.drop(request_ids)
        self.book.release(request_ids)
        if self.features is not None:
            self.features.drop(request_ids)


# A ragged forward runs attention per sequence; at 16 rows on 2 CPU cores that costs about as much as
# half again the tokens on the uniform path, so nearly even lengths are verified padded.
PAD_RATIO = 1.5


def _verify_input(last: torch.Tensor, drafts: torch.Tensor, lengths: list[int] | None, ragged_only: bool = False):
    """What the target forwards, built on the device (the drafts are not read back to the host):
    each row's pending token and the drafts it verifies. One [B, L+1] tensor (the uniform path, CUDA
    graphs included) when every row has length L, or when padding the shorter rows with their own
    unverified drafts (logits unread, K/V rolled back) adds few tokens; else one tensor per row."""
    tokens = torch.cat([last, drafts], 1)  # [B, k+1]
    if lengths is None:
        return tokens
    width = 1 + max(lengths, default=0)
    if not ragged_only and len(lengths) * width <= PAD_RATIO * sum(1 + n for n in lengths):
        return tokens[:, :width]
    return [row[:1 + n] for row, n in zip(tokens, lengths)]


__all__ = ["LocalDraftWorker", "LocalTargetWorker", "NoRoom"]
