"""Several draft nodes behind one DraftWorker: the scheduler sees a single draft.

- Endpoints are `host:port` entries; a DNS name that resolves to several addresses (compose's
  `--scale draft=N`) counts as several nodes. `refresh()` re-resolves and connects new or restarted
  nodes: each gets its own token channel (handshake with the draft, OpenChannel on the target).
- Each request lives on one node (its KV cache is there); new requests go to the least-loaded node,
  so a batch is split over the nodes, which draft their shares in parallel.
- Nodes of different kinds (`Info.method`: a draft model, ngram, suffix) may share the pool: which
  kind drafts each request is gateway/draft_policy.py's call (measured tokens per verify); within a
  kind, the least-loaded node.
- EAGLE nodes (`Info.method` eagle) also read the target's hidden states through a feature channel
  (gateway/feature_path.py).
- A node that fails a call is dropped; its requests are re-homed on the survivors by prefilling them
  with every token committed so far (the scheduler's record, `attach`), and the call is retried. With no
  node left, `propose` raises NoDraftAvailable and the scheduler decodes target-only until a node is
  back. Output stays lossless throughout: drafts only ever change speed.
How nodes join and leave (refresh, drop, rebind) is gateway/draft_membership.py.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch

from gateway.draft_membership import PoolMembership
from gateway.draft_policy import KindPolicy
from gateway.feature_path import FeaturePath
from minedraft.rpc.remote_workers import RemoteDraftWorker, RemoteTargetWorker
from minedraft.spec.workers import DraftWorker, NewRequest, NoDraftAvailable, NoRoom, Proposal

log = logging.getLogger("minedraft.gateway")


@dataclasses.dataclass
class _Home:
    node: str | None = None  # address of the node holding it
    # Committed tokens its node lacks (the last ones of the scheduler's record): handed to the pool but
    # not sent, when a proposal stopped at NoRoom while homing another request.
    unsent: int = 0


class DraftPool(PoolMembership, DraftWorker):
    def __init__(self, endpoints: list[str], target: RemoteTargetWorker, target_info, transport: str | None):
        self.endpoints = endpoints
        self.target, self.target_info, self.forced = target, target_info, transport
        self.nodes: dict[str, RemoteDraftWorker] = {}
        self.transports: dict[str, str] = {}
        self.identities: dict[str, tuple] = {}  # address -> (host id, pid, instance): one process, one node
        self.context_lens: dict[str, int] = {}  # address -> longest sequence its KV budget holds
        self.kinds: dict[str, str] = {}  # address -> its Info.method
        self.features = FeaturePath()  # the EAGLE nodes' feature channels
        self.policy = KindPolicy()
        self.wanted: dict[str, str] = {}  # request -> the kind it is moving to
        self.homes: dict[str, _Home] = {}
        self.committed = None  # the scheduler's record (attach): request id -> resume NewRequest
        self.lock = threading.RLock()
        self._calls = ThreadPoolExecutor(max_workers=8, thread_name_prefix="minedraft-draft-call")
        self._last_refresh = 0.0
        self.join_failures: dict[str, str] = {}  # address -> the status of its last failed join

    # -- placement -----------------------------------------------------------------------------------
    def _home(self, request_ids: list[str], resume, taken_over: bool = True, ride: bool = False) -> None:
        """Give every request a live node, prefilling the ones that have none (new or orphaned) with
        `resume(request_id)`: every committed token, the last one pending. taken_over: they ran
        elsewhere before (orphaned, or moving between kinds): an EAGLE node gets their features anew
        (new requests' come from their target prefill). ride: as riders (DraftWorker.ride)."""
        homeless = [rid for rid in request_ids if self.homes[rid].node not in self.nodes]
        if not homeless:
            return
        if not self.nodes and time.monotonic() - self._last_refresh > 1.0:
            self.refresh()
        while homeless:
            if not self.nodes:
                raise NoDraftAvailable("no draft node is reachable")
            load = {a: 0 for a in self.nodes}
            for h in self.homes.values():
                if h.node in load:
                    load[h.node] += 1
            groups: dict[str, list[str]] = {}
            for rid in homeless:
                address = self._pick_node(rid, load)
                load[address] += 1
                groups.setdefault(address, []).append(rid)
            results, failed = self._parallel({a: (self._prefill, a, [resume(rid) for rid in ids], taken_over, ride)
                                              for a, ids in groups.items()})
            homeless = [rid for a in failed for rid in groups[a]]
            no_room = [rid for left in results.values() for rid in left]
            if no_room:  # those nodes' caches are full: the scheduler preempts (or admits fewer)
                raise NoRoom(message=f"no room: draft nodes could not take {len(no_room)} request(s)")

    def kind(self, address: str) -> str:
        """A node's draft method (what its Info said when it joined; "model" until then)."""
        return self.kinds.get(address, "model")

    def _pick_node(self, rid: str, load: dict[str, int]) -> str:
        """The least-loaded node of the kind the policy wants for rid (any kind when none is live)."""
        kinds = sorted(set(self.kind(a) for a in load))
        if len(kinds) > 1:
            by_kind = {k: sum(n for a, n in load.items() if self.kind(a) == k) for k in kinds}
            kind = self.wanted.pop(rid, None)
            if kind not in kinds:
                kind = self.policy.place(kinds, by_kind)
            load = {a: n for a, n in load.items() if self.kind(a) == kind}
        return min(load, key=load.get)

    def _switch_kinds(self, request_ids: list[str], updates) -> None:
        """Account what each request's last verify committed, and move those that would draft better
        on another kind: released on their node (with its next call), re-prefilled by _home."""
        kinds = sorted(set(self.kinds.values()))
        for rid in request_ids:
            self.policy.committed(rid, len(updates.get(rid, [])))
            home = self.homes[rid]
            if len(kinds) < 2 or home.node not in self.nodes:
                continue
            current = self.kind(home.node)
            wanted = self.policy.choose(rid, current, kinds)
            if wanted != current:
                log.debug("gateway: request %s moves from a %s draft to a %s one", rid, current, wanted)
                self.nodes[home.node].release_later([rid])
                home.node, home.unsent, self.wanted[rid] = None, 0, wanted

    def _prefill(self, address: str, reqs: list[NewRequest], taken_over: bool = False,
                 ride: bool = False) -> list[str]:
        """Prefill reqs on a node (as riders: in its next forward; not on an EAGLE node, which reads
        features at its prefill); return the ids of those it had no room for."""
        if taken_over:
            self.features.take_over(self.target, address, reqs)
        node = self.nodes[address]
        if ride and self.kind(address) != "eagle":
            admitted = node.ride(reqs)
        else:
            admitted = node.add(reqs, self.features.for_node(address, [r.request_id for r in reqs]))
        for r in reqs[:admitted]:
            home = self.homes[r.request_id]
            home.node, home.unsent = address, 0
        return [r.request_id for r in reqs[admitted:]]

    def _parallel(self, calls: dict) -> tuple[dict, dict]:
        """Run {address: (fn, *args)} on the nodes concurrently; drop the nodes whose call failed.
        Returns ({address: result}, {address: error})."""
        futures = {a: self._calls.submit(fn, *args) for a, (fn, *args) in calls.items()}
        results, failed, other = {}, {}, None
        for address, fut in futures.items():
            try:
                results[address] = fut.result()
            except grpc.RpcError as exc:
                self._drop(address, exc)
                failed[address] = exc
            except Exception as exc:  # noqa: BLE001 - NoRoom and the like: raised once all calls are done
                other = other or exc
        if other is not None:
            raise other
        return results, failed

    # -- DraftWorker -----------------------------------------------------------------------------------
    def attach(self, committed) -> None:
        self.committed = committed

    def set_mode(self, mode: str) -> None:
        self.features.mode = mode  # ar: the target exports no features

    def add(self, requests: list[NewRequest]) -> int:
        """Admit the longest prefix of requests that the nodes have room for."""
        return self._admit(requests, ride=False)

    def ride(self, requests: list[NewRequest]) -> int:
        return self._admit(requests, ride=True)

    @property
    def riding(self) -> bool:
        with self.lock:
            return any(node.riding for node in self.nodes.values())

    def settle_riders(self) -> None:
        with self.lock:
            self._parallel({a: (node.settle_riders,) for a, node in self.nodes.items() if node.riding})

    def _admit(self, requests: list[NewRequest], ride: bool) -> int:
        with self.lock:
            # Not running yet, so not in the scheduler's record: prefilled from what they came with.
            # resume=True: the node gets every token, the last one pending (draft add does so anyway).
            given = {r.request_id: dataclasses.replace(r, resume=True) for r in requests}
            for r in requests:
                self.homes[r.request_id] = _Home()
            try:
                self._home([r.request_id for r in requests], given.__getitem__, taken_over=False, ride=ride)
            except NoDraftAvailable:
                pass  # they get a node when one is back
            except NoRoom:
                homed = [self.homes[r.request_id].node in self.nodes for r in requests]
                admitted = homed.index(False)
                self.release([r.request_id for r in requests[admitted:]])
                return admitted
            return len(requests)

    def propose(self, request_ids, k, updates):
        return self.start_propose(request_ids, k, updates).result()

    def start_propose(self, request_ids, k, updates, pool=None) -> "_PendingPoolProposal":
        """Send each node its share now (on each node's own caller thread); collect with .result()."""
        with self.lock:
            for rid, tokens in updates.items():
                self.homes[rid].unsent += len(tokens)
            self._switch_kinds(request_ids, updates)
            self._home(request_ids, self.committed)  # a prefill holds every unsent token
            groups: dict[str, list[str]] = {}
            for rid in request_ids:
                groups.setdefault(self.homes[rid].node, []).append(rid)
            calls = {}
            for address, ids in groups.items():
                node = self.nodes[address]
                calls[address] = (node, ids, node.start_propose(ids, k, {rid: self._unsent(rid, updates)
                                                                         for rid in ids},
                                                                   features=self.features.for_node(address, ids)))
                # Sent: a node absorbs them even when it answers NoRoom, and a failed node's requests
                # are re-homed from every committed token.
                for rid in ids:
                    self.homes[rid].unsent = 0
                    self.policy.proposed(rid, self.kind(address))
        return _PendingPoolProposal(self, list(request_ids), k, calls)

    def _still_running(self, rid: str) -> bool:
        """Whether the scheduler still runs rid (a homed request does; one admitted while target-only
        may not be homed yet)."""
        if rid in self.homes:
            return True
        try:
            self.committed(rid)
        except (KeyError, TypeError):  # TypeError: no record attached
            return False
        return True

    def _unsent(self, rid: str, updates) -> list[int]:
        """The committed tokens rid's node lacks: this call's updates, or (after a NoRoom) more of the
        last ones, read from the scheduler's record."""
        n, update = self.homes[rid].unsent, updates.get(rid, [])
        if n == len(update):
            return update
        return self.committed(rid).prompt_ids[-n:] if n else []

    def release(self, request_ids) -> None:
        with self.lock:
            groups: dict[str, list[str]] = {}
            self.features.drop(request_ids)
            for rid in request_ids:
                home = self.homes.pop(rid, None)
                self.policy.forget(rid)
                self.wanted.pop(rid, None)
                if home is not None and home.node in self.nodes:
                    groups.setdefault(home.node, []).append(rid)
            self._parallel({a: (self.nodes[a].release, ids) for a, ids in groups.items()})

    def release_later(self, request_ids) -> None:
        """Each node keeps its share and sends it with its next Add or Propose (or flush_releases).
        Also forgets the feature spans of any request that no longer runs (a reply in flight when it
        was released put them there after its drop)."""
        with self.lock:
            self.features.drop(request_ids)
            if len(self.features.relay):
                self.features.relay.keep(self._still_running)
            for rid in request_ids:
                home = self.homes.pop(rid, None)
                self.policy.forget(rid)
                self.wanted.pop(rid, None)
                if home is not None and home.node in self.nodes:
                    self.nodes[home.node].release_later([rid])

    def flush_releases(self) -> None:
        with self.lock:
            self._parallel({a: (node.flush_releases,) for a, node in self.nodes.items() if node.held})

    def close(self) -> None:
        for node in list(self.nodes.values()):
            node.close()
        self._calls.shutdown(wait=False)


class _PendingPoolProposal:
    """The nodes' Propose calls in flight. result() merges their parts; a node that failed (or was
    replaced meanwhile by refresh) is dropped and the whole batch is drafted again on the survivors."""

    def __init__(self, pool: DraftPool, request_ids: list[str], k: int, calls: dict):
        self.pool, self.request_ids, self.k, self.calls = pool, request_ids, k, calls

    def result(self) -> Proposal:
        pool, results, failed, other = self.pool, {}, False, None
        for address, (node, _ids, pending) in self.calls.items():
            try:
                results[address] = pending.result()
            except grpc.RpcError as exc:
                with pool.lock:
                    if pool.nodes.get(address) is node:
                        pool._drop(address, exc)
                failed = True
            except Exception as exc:  # noqa: BLE001 - NoRoom and the like: raised once all calls are done
                other = other or exc
        if other is not None:
            raise other
        with pool.lock:
            failed = failed or any(pool.nodes.get(a) is not node for a, (node, _, _) in self.calls.items())
        if failed:
            return pool.propose(self.request_ids, self.k, {})
        ordered, parts, compute, service, nbytes, done_at = [], [], 0.0, 0.0, 0, 0.0
        confidence, top_prob, lengths, methods = [], [], [], []
        for address, (_node, ids, _pending) in self.calls.items():
            proposal = results[address]
            ordered.extend(ids)
            lengths.extend(proposal.verify_lengths())
            with pool.lock:
                for rid, length in zip(ids, proposal.verify_lengths()):
                    pool.policy.drafted(rid, length)
            methods.extend([pool.kind(address)] * len(ids))
            confidence.append(proposal.confidence)
            top_prob.append(proposal.top_prob)
            parts.extend(proposal.parts)
            compute = max(compute, proposal.compute_s)  # the nodes ran in parallel
            service = max(service, proposal.service_s)
            nbytes += proposal.channel_bytes
            done_at = max(done_at, proposal.done_at)
        return Proposal(ordered, self.k, parts=parts, confidence=_rows_in_order(confidence),
                        top_prob=_rows_in_order(top_prob), compute_s=compute, service_s=service,
                        # a model-free node's rows have their own lengths; a model node's all have k
                        lengths=lengths if any(results[a].lengths is not None for a in results) else None,
                        methods=methods,
                        channel_bytes=nbytes, done_at=done_at)


def _rows_in_order(parts: list) -> torch.Tensor | None:
    """The nodes' [B_i, k] rows stacked in batch order; None when a node sent none (nothing to rank)."""
    if not parts or any(p is None for p in parts):
        return None
    return parts[0] if len(parts) == 1 else torch.cat(parts)
