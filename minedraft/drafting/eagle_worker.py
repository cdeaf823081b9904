"""A DraftWorker over an EAGLE head (EAGLE-1: drafting/eagle_head.py; EAGLE-3: drafting/eagle3_head.py,
whose target feature is 3H wide and whose fed-back hidden is its own H-wide pre-norm output), fed by the
target's features.

Head entry j pairs committed token j+1 with the target's feature f_j, and sits at position j of the
head's own paged KV cache (one layer). With committed tokens x_0..x_n (x_n just sampled, so no feature
yet) the entries 0..n-1 hold true features; a proposal runs those not yet in the KV, then drafts:
each step feeds the drafted token with the head's own predicted feature, as EAGLE does. The drafted
entries are rolled back at the next proposal, which recomputes the accepted positions from the
target's true features (EAGLE-1's convention). Greedy rows draft the argmax; sampled rows draw from
the head's q and send it, so the target's rejection sampling stays exact. A head with a reduced
vocabulary (d2t) drafts over it; its ids and q are mapped onto the target's vocabulary.

Features come from a drafting.features.FeatureStore: the in-process target fills it, or, on a draft
node, the draft service from the target's feature channel. A missing feature (none expected in
process; over the services, see README) reads as zeros and is counted in `missing_features`: that can
only lower acceptance, never change the output."""

from __future__ import annotations

import dataclasses
import time

import torch

from minedraft.drafting.eagle3_head import Eagle3Head
from minedraft.drafting.eagle_head import EagleHead
from minedraft.drafting.features import FeatureStore
from minedraft.runner.attention import ForwardBatch, SeqSlice
from minedraft.runner.block_manager import BlockManager, blocks_for
from minedraft.runner.chain_batch import ChainSteps
from minedraft.runner.kv_cache import PagedKVCache
from minedraft.runner.transfer import host_tensor
from minedraft.spec.coupled_sampling import drawn_elsewhere, is_coupled, reads_q, redraw_coupled
from minedraft.spec.draft_beliefs import draft_confidence, proposal_to_host
from minedraft.spec.logits_processing import make_generator, probs_from_logits, sample_tensor, step_seed
from minedraft.spec.row_book import DRAFT_STREAM
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.workers import DraftWorker, NewRequest, Proposal


@dataclasses.dataclass
class _HeadRow:
    seq: int  # the head's KV sequence handle
    seed: int
    params: SamplingParams
    generator: torch.Generator
    tokens: list[int]  # every committed token
    feature_base: int = 0  # position of features[0]
    features: torch.Tensor | None = None  # the target's features from feature_base on, not yet all used
    true_entries: int = 0  # entries in the KV computed from true features (the rest are drafts)

    def add_features(self, start: int, rows: torch.Tensor) -> None:
        """Features of positions start.. (a later write of a position wins; a gap reads as zeros)."""
        if self.features is None:
            self.feature_base, self.features = start, rows
            return
        end = self.feature_base + self.features.shape[0]
        if start > end:
            rows = torch.cat([rows.new_zeros(start - end, rows.shape[1]), rows])
            start = end
        keep = max(0, start - self.feature_base)
        self.features = torch.cat([self.features[:keep], rows])
        self.feature_base = min(self.feature_base, start)

    def feature_rows(self, lo: int, hi: int, hidden: int) -> tuple[torch.Tensor, int]:
        """Features of positions lo..hi-1, zeros where none arrived; and how many did not."""
        out = torch.zeros(hi - lo, hidden, dtype=torch.float32,
                          device=self.features.device if self.features is not None else "cpu")
        found = 0
        if self.features is not None:
            a, b = max(lo, self.feature_base), min(hi, self.feature_base + self.features.shape[0])
            if a < b:
                out[a - lo:b - lo] = self.features[a - self.feature_base:b - self.feature_base]
                found = b - a
        return out, hi - lo - found

    def forget_features_below(self, position: int) -> None:
        if self.features is not None and position > self.feature_base:
            self.features = self.features[position - self.feature_base:]
            self.feature_base = position


class _Book:
    """What a service reads of the worker's rows (Info's num_active and KV fields)."""

    def __init__(self, worker: "EagleDraftWorker"):
        self.worker = worker

    @property
    def states(self):
        return self.worker.rows

    def kv_usage(self) -> dict:
        b = self.worker.blocks
        return dict(num_kv_blocks=b.num_usable, num_free_kv_blocks=b.num_free, kv_block_size=b.block_size,
                    kv_cache_usage=b.usage)


class EagleDraftWorker(DraftWorker):
    method = "eagle"

    def __init__(self, head: EagleHead | Eagle3Head, features: FeatureStore, context_len: int, max_num_seqs: int = 64,
                 lookahead: int = 16, block_size: int = 16, device: str = "cpu"):
        head.fold_embeddings()  # drafting only from here on
        self.head = head
        self.store = features
        self.device = torch.device(device)
        self.hidden = head.feature_width  # the target's feature: H (EAGLE-1) or 3H (EAGLE-3)
        num_blocks = 1 + max_num_seqs * blocks_for(context_len + lookahead, block_size)  # block 0: null
        self.blocks = BlockManager(num_blocks, block_size, enable_prefix_caching=False)
        cfg = head.cfg
        self.cache = PagedKVCache(1, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim,
                                  head.dtype, self.device)
        self.context_len = context_len
        self.rows: dict[str, _HeadRow] = {}
        self.book = _Book(self)
        self.missing_features = 0  # committed positions whose feature never arrived (read as zeros)

    # -- requests -------------------------------------------------------------------------------------
    def add(self, requests: list[NewRequest]) -> int:
        for r in requests:
            if r.request_id in self.rows:
                raise ValueError(f"request_id: {r.request_id!r} is already running")
        for r in requests:  # the head's prefill waits for the target's features (first proposal)
            gen = make_generator(step_seed(r.seed, DRAFT_STREAM, len(r.prompt_ids)), self.device)
            self.rows[r.request_id] = _HeadRow(self.blocks.new_sequence(), r.seed, r.params, gen,
                                               list(r.prompt_ids))
        return len(requests)

    def release(self, request_ids):
        for rid in request_ids:
            row = self.rows.pop(rid, None)
            if row is not None:
                self.blocks.free(row.seq)
        self.store.drop(request_ids)

    # -- drafting -------------------------------------------------------------------------------------
    def _catch_up(self, request_id: str, row: _HeadRow, update: list[int]) -> list[int]:
        """Absorb the update and the new features, roll the drafted entries back; return the entry
        indices to run with true features (always at least the last one, whose output starts the chain)."""
        taken = self.store.take(request_id)
        for _start, rows in taken:  # checked before the row changes: a refused update leaves it as it was
            if rows.shape[-1] != self.hidden:
                raise ValueError(f"features: the target sent width {rows.shape[-1]}, this {self.head.variant} head "
                                 f"reads {self.hidden} (feature layers {list(self.head.feature_layers)})")
        row.tokens.extend(update)
        for start, rows in taken:
            row.add_features(start, rows.to(self.device, torch.float32))
        entries = len(row.tokens) - 1
        row.true_entries = min(row.true_entries, max(entries - 1, 0))
        self.blocks.truncate(row.seq, row.true_entries)
        return list(range(row.true_entries, entries))

    def _run(self, rows: list[_HeadRow], tokens, features, counts):
        """One head pass: counts[i] entries of rows[i] -> (hidden, logits) of each row's last entry."""
        slices, index, at = [], [], 0
        flat = tokens if torch.is_tensor(tokens) else [t for ts in tokens for t in ts]
        for i, (row, c) in enumerate(zip(rows, counts)):
            toks = tokens[i:i + 1] if torch.is_tensor(tokens) else tokens[i]
            slices.append(SeqSlice(row.seq, self.blocks.lengths[row.seq], c, toks))
            at += c
            index.append(at - 1)
        tables = [self.blocks.tables[r.seq] for r in rows]
        batch = ForwardBatch(slices, flat, tables, self.blocks.block_size, index, self.device)
        out = self.head.forward_paged(batch, features, self.cache)
        for row, c in zip(rows, counts):
            self.blocks.advance(row.seq, c)
        return out

    def _step(self, rows: list[_HeadRow], chain: ChainSteps, step: int, tokens: torch.Tensor, features):
        """A one-token pass of the chain after its first: tokens [B] and features [B, H] on the device."""
        if not chain.usable:
            return self._run(rows, tokens, features, [1] * len(rows))
        out = self.head.forward_paged(chain.batch(step, tokens), features, self.cache)
        for row in rows:
            self.blocks.advance(row.seq, 1)
        return out

    def propose(self, request_ids, k, updates):
        t0 = time.perf_counter()
        missing = [r for r in request_ids if r not in self.rows]
        if missing:
            raise KeyError(f"unknown request ids: {missing}")
        rows = [self.rows[r] for r in request_ids]
        todo = [self._catch_up(rid, row, updates.get(rid, [])) for rid, row in zip(request_ids, rows)]
        live = [i for i, t in enumerate(todo) if t]  # rows with no entry yet (a one-token prompt) draft nothing
        # All blocks up front: the true entries plus k - 1 drafted ones (NoRoom changes nothing more).
        self.cache.copy_blocks(self.blocks.reserve(
            {rows[i].seq: todo[i][-1] + k for i in live}))
        for row in rows:
            if not row.params.greedy:
                row.generator.manual_seed(step_seed(row.seed, DRAFT_STREAM, len(row.tokens)))
        drafted = torch.zeros(len(rows), k, dtype=torch.int64)
        conf = torch.zeros(len(rows), k)
        top = torch.zeros(len(rows), k)
        probs = None
        sampled = [i for i, r in enumerate(rows) if reads_q(r.params)]  # the rows whose verify reads q
        if live:
            lrows = [rows[i] for i in live]
            tokens = [[rows[i].tokens[j + 1] for j in todo[i]] for i in live]
            got = [rows[i].feature_rows(todo[i][0], todo[i][-1] + 1, self.hidden) for i in live]
            feats = torch.cat([f for f, _ in got])
            self.missing_features += sum(n for _, n in got)
            params = [r.params for r in lrows]
            gens = [r.generator for r in lrows]
            lsampled = [n for n, r in enumerate(lrows) if reads_q(r.params)]
            coupled = [(n, r.generator, r.seed, len(r.tokens)) for n, r in enumerate(lrows) if is_coupled(r.params)]
            draw_params = drawn_elsewhere(params)
            sampling = [not p.greedy for p in params]
            with_q = host_tensor(sampling, torch.bool, self.device) if any(sampling) else None
            hidden, logits = self._run(lrows, tokens, feats, [len(t) for t in tokens])
            for row, t in zip(lrows, [todo[i] for i in live]):
                row.true_entries = t[-1] + 1
                row.forget_features_below(t[-1])  # the last true entry is recomputed if nothing new comes
            steps, beliefs, qs = [], [], []
            chain = ChainSteps([self.blocks.lengths[r.seq] for r in lrows], [self.blocks.tables[r.seq] for r in lrows],
                               self.blocks.block_size, k - 1, self.device)
            for step in range(k):
                if step:  # the drafted token with the head's own predicted feature
                    hidden, logits = self._step(lrows, chain, step - 1, steps[-1], hidden)
                q = probs_from_logits(logits, params)
                chosen = sample_tensor(q, draw_params, gens)
                redraw_coupled(chosen, q, coupled, step, self.head.draft_ids if self.head.reduced else None,
                               self.head.cfg.vocab_size)
                beliefs.append(draft_confidence(logits, q, chosen, with_q))
                steps.append(self.head.to_target(chosen))  # a reduced vocabulary's index -> target id
                if lsampled:
                    qs.append(self.head.full_q(q[lsampled]))  # zeros outside the draft vocabulary
            tok_host, conf_host, top_host = proposal_to_host(steps, beliefs)
            at = torch.tensor(live)
            drafted[at], conf[at], top[at] = tok_host, conf_host, top_host
            if lsampled:
                probs = torch.stack(qs, dim=1)
                if len(lsampled) < len(sampled):  # a sampled row that drafts nothing: a one-hot q, never read
                    full = torch.zeros(len(sampled), k, probs.shape[-1])
                    pos = [sampled.index(live[n]) for n in lsampled]
                    full[pos] = probs
                    for n in range(len(sampled)):
                        if n not in pos:
                            full[n, :, 0] = 1.0
                    probs = full
        elif sampled:
            probs = torch.zeros(len(sampled), k, self.head.cfg.vocab_size)
            probs[..., 0] = 1.0
        lengths = [k if i in set(live) else 0 for i in range(len(rows))]
        nbytes = drafted.nbytes + (probs.nbytes if probs is not None else 0)
        return Proposal(list(request_ids), k, drafted, probs, confidence=conf, top_prob=top,
                        lengths=None if len(live) == len(rows) else lengths, methods=["eagle"] * len(rows),
                        compute_s=time.perf_counter() - t0, channel_bytes=nbytes)

