"""How draft nodes join and leave a DraftPool (a mixin of gateway/draft_pool.py's DraftPool).

`refresh()` re-resolves the endpoints and connects nodes that are new or came back: each is checked
against the target (vocabulary, tokenizer, --max-k), handshakes its token channel, which the target
opens, and an EAGLE node also its feature channel. One process is one node, whatever addresses reach
it. A node that fails a call is dropped (its requests lose their home and are re-homed by the pool);
a target that restarted drops every node, and they join again with fresh channels (`rebind`).
"""

from __future__ import annotations

import logging
import socket
import time

import grpc

from minedraft.rpc.remote_workers import RemoteDraftWorker, RemoteTargetWorker
from minedraft.spec.compat import check_draft_fits_target

log = logging.getLogger("minedraft.gateway")


def resolve_endpoints(endpoints: list[str]) -> list[str]:
    """host:port entries -> one ip:port per address (literal IPs pass through)."""
    out: list[str] = []
    for ep in endpoints:
        host, _, port = ep.rpartition(":")
        try:  # IPv4 first: "localhost" would otherwise name one process twice (127.0.0.1 and ::1)
            infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
        except socket.gaierror:
            try:
                infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except socket.gaierror:
                continue
        except ValueError:
            continue
        addrs = sorted({info[4][0] for info in infos})
        # Always pin a node to an address, even when the name has one: a gRPC channel to a name
        # follows DNS, so when that replica dies it silently reconnects to another one, whose token
        # channel the target never opened under this id (StaleBlockError after killing one of two
        # compose drafts, tests/test_compose_stack.py).
        out.extend(f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addrs)
    return list(dict.fromkeys(out))


def call_status(exc: BaseException) -> str:
    """A failed call's gRPC status name (UNAVAILABLE...), else what the exception says."""
    return exc.code().name if isinstance(exc, grpc.Call) else str(exc) or type(exc).__name__


class PoolMembership:
    """The node set of a DraftPool: its `nodes`, their channels and what each said when it joined."""

    required_k = 0  # the gateway's k: a node whose --max-k is below it cannot join (require_k sets it)
    rejected: dict = {}  # address -> why the last refresh turned that node away

    def require_k(self, k: int) -> None:
        """The gateway's k, at start and on Configure: every live node must be able to draft it."""
        with self.lock:
            for address, node in self.nodes.items():
                if node.max_k and k > node.max_k:
                    raise ValueError(f"num_speculative_tokens: {k} is above max_k {node.max_k} of draft node "
                                     f"{address} (start it with --max-k {k} or more)")
            self.required_k = k

    def capacity_k(self) -> int | None:
        """The largest k every live node can draft (auto's k stays within it); None: none reported."""
        with self.lock:
            known = [node.max_k for node in self.nodes.values() if node.max_k]
        return min(known) if known else None

    def refresh(self) -> None:
        """Connect nodes that are new or back. Cheap when nothing changed."""
        self._last_refresh = time.monotonic()
        self.rejected = {}
        for address in resolve_endpoints(self.endpoints):
            with self.lock:
                known = address in self.nodes
            # Info outside the lock: the engine loop takes it to send each step's Propose
            if known and self._same_process(address):
                continue
            if known:
                self._drop(address, RuntimeError("restarted"))  # joined again below, new channel
            node = RemoteDraftWorker(address, self.target.timeouts)
            try:
                info = node.info(timeout=2.0)
                identity = (info.hostname, info.pid, info.instance_id)
                with self.lock:
                    if identity in self.identities.values():
                        node.close()
                        continue
                check_draft_fits_target(info.vocab_size, self.target_info.vocab_size, info.tokenizer_fingerprint,
                                        self.target_info.tokenizer_fingerprint)
                if info.max_k and self.required_k > info.max_k:  # its Propose would refuse every step
                    raise ValueError(f"its --max-k {info.max_k} is below the gateway's -k {self.required_k}; "
                                     f"start the draft with --max-k {self.required_k} or more")
                node.max_k = info.max_k
                reply = node.handshake(self.target_info, self.forced)
                transport = self.target.open_channel(node.channel_id, reply.spec)
                features = None if info.method != "eagle" else self.features.open(self.target, node, info,
                                                                                  self.forced)
            except (grpc.RpcError, ValueError) as exc:
                node.close()
                if isinstance(exc, ValueError):
                    log.error("gateway: draft %s rejected: %s", address, exc)
                    self.rejected[address] = str(exc)
                else:
                    self._note_join_failure(address, exc)
                continue
            self.join_failures.pop(address, None)
            with self.lock:
                self.nodes[address] = node
                self.transports[address] = transport
                self.identities[address] = identity
                self.context_lens[address] = info.context_len
                self.kinds[address] = info.method or "model"
                if features is not None:  # before any request is homed there
                    self.features.joined(address, features)
            log.info("gateway: draft node %s (%s) joined (token channel %s%s); %d node(s) live",
                     address, info.method or "model", transport,
                     f", feature channel {features}" if features else "", len(self.nodes))

    def _note_join_failure(self, address: str, exc: grpc.RpcError) -> None:
        """A node that could not join: logged once per address and status, since a node that is down
        is tried again at every refresh; `join_failures` keeps the last status until it joins."""
        code = call_status(exc)
        if self.join_failures.get(address) != code:
            details = exc.details() if isinstance(exc, grpc.Call) else ""
            log.warning("gateway: draft %s could not join (%s: %s); trying again at each refresh", address,
                        code, details)
        self.join_failures[address] = code

    def _same_process(self, address: str) -> bool:
        """Whether the node at address is still the process we joined (a restart between requests
        would otherwise keep a token channel nobody writes anymore)."""
        with self.lock:
            node, identity = self.nodes.get(address), self.identities.get(address)
        if node is None:
            return False  # dropped meanwhile: join it again
        try:
            info = node.info(timeout=2.0)
        except grpc.RpcError:
            return True  # unreachable: a failed call drops it; nothing to re-handshake yet
        return (info.hostname, info.pid, info.instance_id) == identity

    def _drop(self, address: str, exc: BaseException) -> None:
        with self.lock:
            node = self.nodes.pop(address, None)
            self.transports.pop(address, None)
            self.identities.pop(address, None)
            self.context_lens.pop(address, None)
            self.kinds.pop(address, None)
            self.features.forget(address)
            for home in self.homes.values():
                if home.node == address:
                    home.node = None
        if node is not None:
            node.close()
            log.warning("gateway: draft node %s dropped (%s); %d node(s) live", address,
                        call_status(exc), len(self.nodes))

    def rebind(self, target: RemoteTargetWorker, target_info) -> None:
        """The target restarted (or was reconnected): forget every request (the scheduler re-adds
        them all), drop every node and join them again, each with a fresh token channel that the new
        target opens."""
        with self.lock:
            for address, node in list(self.nodes.items()):
                ids = [rid for rid, h in self.homes.items() if h.node == address]
                try:
                    if ids:
                        node.release(ids)
                except grpc.RpcError:
                    pass  # a node that is gone has nothing to free
                node.close()
            self.nodes.clear()
            self.transports.clear()
            self.identities.clear()
            self.context_lens.clear()
            self.kinds.clear()
            self.features.clear()
            self.homes.clear()
            self.target, self.target_info = target, target_info
        self.refresh()

    @property
    def context_len(self) -> int | None:
        """The shortest context of the live nodes (a draft's memory budget may allow less than the
        target's): longer requests could not be drafted."""
        with self.lock:
            lens = [self.context_lens[a] for a in self.nodes if a in self.context_lens]
        return min(lens) if lens else None

    @property
    def live(self) -> list[str]:
        with self.lock:
            return list(self.nodes)

    @property
    def transport(self) -> str:
        return ",".join(sorted(set(self.transports.values()))) or "none"
