"""The pool's EAGLE side: which node reads which of the target's feature channels, and the relay of
feature blocks from the target's replies to the nodes' next calls (minedraft/rpc/feature_relay.py).

At join the target exports a feature channel (the target writes, the node reads: same transports as
the token channel) that the node opens. The target computes and sends features only on the calls that
ask (`exporting`: an EAGLE node is attached and the mode drafts, so not in ar mode nor once the last
EAGLE node left), and keeps its prefix cache on otherwise. A node that joins (again) gets its requests
with the features of their whole context: they were homeless or on another node, so they are taken
over (below). Each Add/Propose to an EAGLE
node carries the blocks of its requests that the target named since; a request an EAGLE node takes
over (draft failover, a move from a node of another kind) first gets the features of its whole
committed context, which the target forwards again (TargetWorker.Features)."""

from __future__ import annotations

import logging

import grpc

from minedraft.rpc.feature_relay import FeatureRelay

log = logging.getLogger("minedraft.gateway")


class FeaturePath:
    def __init__(self):
        self.channels: dict[str, str] = {}  # EAGLE node address -> its feature channel's transport
        self.relay = FeatureRelay()
        self.on_first = None  # called when an EAGLE node joins (the gateway turns staged prefill off)
        self.mode = "psd"  # the scheduler's (DraftPool.set_mode): ar drafts with no node
        self._was_exporting = False

    def exporting(self) -> bool:
        """Whether the target's calls ask for features now (RemoteTargetWorker.wants_features)."""
        on = bool(self.channels) and self.mode != "ar"
        if on != self._was_exporting:
            self._was_exporting = on
            log.info("gateway: the target %s features (%s)", "exports" if on else "stops exporting",
                     "an EAGLE node drafts" if on else "mode ar" if self.channels else "no EAGLE node attached")
            if not on:
                self.relay.clear()  # nobody will read them: a node that joins takes its requests over
        return on

    def open(self, target, node, info, forced: str | None) -> str:
        """The target exports a feature channel that the node opens; returns its transport. A target
        that refuses the node's features (another feature layout than its other EAGLE nodes') rejects
        the node: ValueError, which the pool logs and records."""
        try:
            reply = target.export_features(info, forced, node.channel_id + "#features")
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise ValueError(f"the target refuses its features: {exc.details()}") from None
            raise
        node.open_features(reply.spec)
        target.relay = self.relay
        target.wants_features = self.exporting
        return reply.transport

    def joined(self, address: str, transport: str) -> None:
        self.channels[address] = transport
        if self.on_first is not None:
            self.on_first()

    def forget(self, address: str) -> None:
        self.channels.pop(address, None)

    def clear(self) -> None:
        """A new target (or a reconnect): every node joins again, the old blocks are gone."""
        self.channels.clear()
        self.relay.clear()

    def drop(self, request_ids) -> None:
        self.relay.drop(request_ids)

    def for_node(self, address: str, request_ids: list[str]) -> list:
        """The feature blocks the node at address needs for these requests (none for a non-EAGLE node,
        whose requests' spans are dropped)."""
        channel = self.channels.get(address)
        if channel is None:
            if len(self.relay):  # nothing to drop without an EAGLE node: the common case, every step
                self.relay.drop(request_ids)
            return []
        return self.relay.take(request_ids, channel)

    def take_over(self, target, address: str, reqs) -> None:
        """reqs move onto the node at address: an EAGLE node gets their whole context's features (the
        target forwards them again, into the relay). A target that fails here fails the next verify too
        (recovery re-prefills them all); meanwhile the node drafts from zeros, which only costs acceptance."""
        if address not in self.channels:
            return
        try:
            target.features(reqs)
        except grpc.RpcError as exc:
            log.warning("gateway: the target could not resend features of %d request(s): %s", len(reqs),
                        exc.code().name)
