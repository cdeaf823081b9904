"""The gateway's hand-off of the target's feature blocks to the EAGLE nodes.

The target's Add/Verify/Decode replies name feature blocks (FeatureBlock: a feature channel's BlockRef
and which rows are whose); the relay keeps each request's spans until its node's next Add or Propose,
which carries them (the node reads the rows itself, so only refs pass through here). What the
relay holds is keyed by request, like the FeatureStore it feeds on the node: a request's spans go
to whichever node holds it when it is next drafted. A request's spans are dropped when it leaves the
pool (finished, aborted, preempted, released); a reply that lands after that (its call was in flight
when it left) is swept at the pool's next release (DraftPool.release_later: what the relay holds for
a request that no longer runs)."""

from __future__ import annotations

import threading

from minedraft.v1 import worker_pb2


class FeatureRelay:
    def __init__(self):
        self._lock = threading.Lock()  # PSD: a verify reply lands while the other batch is proposed
        # request id -> [(channel, block, span)], oldest first
        self._pending: dict[str, list[tuple[str, worker_pb2.BlockRef, worker_pb2.FeatureSpan]]] = {}
        self.bytes_total = 0  # bytes of every feature block the target reported (the step breakdown's)

    def put(self, blocks) -> int:
        """The FeatureBlocks of one target reply; returns their bytes."""
        nbytes = 0
        with self._lock:
            for b in blocks:
                nbytes += b.block.nbytes
                for span in b.spans:
                    self._pending.setdefault(span.request_id, []).append((b.channel, b.block, span))
            self.bytes_total += nbytes
        return nbytes

    def take(self, request_ids, channel: str) -> list[worker_pb2.FeatureBlock]:
        """The blocks of channel holding these requests' spans (only theirs), and forget every span they
        had: a request lives on one node, which reads one channel."""
        grouped: dict[int, worker_pb2.FeatureBlock] = {}
        with self._lock:
            for rid in request_ids:
                for ch, block, span in self._pending.pop(rid, ()):
                    if ch != channel:
                        continue
                    out = grouped.get(id(block))
                    if out is None:
                        out = grouped[id(block)] = worker_pb2.FeatureBlock(channel=ch, block=block)
                    out.spans.append(span)
        return list(grouped.values())

    def drop(self, request_ids) -> None:
        with self._lock:
            for rid in request_ids:
                self._pending.pop(rid, None)

    def keep(self, wanted) -> int:
        """Forget the spans of every request for which wanted(request_id) is false; how many requests."""
        with self._lock:
            gone = [rid for rid in self._pending if not wanted(rid)]
            for rid in gone:
                del self._pending[rid]
        return len(gone)

    def clear(self) -> None:
        """A new target (or a reconnect): its old blocks are gone."""
        with self._lock:
            self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)
