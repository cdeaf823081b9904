"""DraftWorker / TargetWorker implemented as gRPC clients of draft_service / target_service.

The scheduler cannot tell them from the in-process workers. Proposals do not pass through here:
the draft writes them into the token channel and only the BlockRef comes back, which Verify hands
to the target.

Releases: `release_later` keeps the ids and the next Add/Propose/Verify/Decode carries them
(`release_ids`, applied by the service first, under the lock that call takes anyway). A Release RPC
sent while a Verify or Propose runs would wait for that call's lock: with requests finishing in most
steps, every such step would wait a whole verify before its tokens go out. `release` and
`flush_releases` send a Release with everything held."""

from __future__ import annotations

import functools
import time

import grpc
import torch

from minedraft.config import TimeoutConfig
from minedraft.rpc.channel_keeper import ChannelKeeper
from minedraft.rpc.grpc_common import insecure_channel, params_to_proto, request_fault
from minedraft.spec.workers import DraftWorker, NewRequest, NoRoom, Proposal, RequestFault, TargetWorker, Verdict
from minedraft.v1 import common_pb2, worker_pb2, worker_pb2_grpc


def _new_requests_proto(requests: list[NewRequest]) -> worker_pb2.AddRequest:
    """One message per request, so that a value the wire cannot carry fails its request alone."""
    out = []
    for r in requests:
        try:
            out.append(worker_pb2.NewRequest(request_id=r.request_id, prompt_ids=r.prompt_ids,
                                             params=params_to_proto(r.params), seed=r.seed, resume=r.resume))
        except (ValueError, TypeError) as exc:
            raise RequestFault([r.request_id], f"request {r.request_id!r} cannot be sent: {exc}") from None
    return worker_pb2.AddRequest(requests=out)


def _raise_no_room(exc: grpc.RpcError) -> None:
    """A worker out of KV blocks answers RESOURCE_EXHAUSTED "no room: ..."; give the scheduler the
    same NoRoom an in-process worker raises. A worker that refused some requests (INVALID_ARGUMENT
    naming them): the same RequestFault."""
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and (exc.details() or "").startswith("no room"):
        raise NoRoom(message=exc.details()) from exc
    fault = request_fault(exc)
    if fault is not None:
        raise fault from exc


def _no_room_as_exception(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as exc:
            _raise_no_room(exc)
            raise
    return call


class _CallInFlight:
    """A unary call sent from the calling thread with grpc's future API: the request is on the wire
    before the caller goes on (no hand-off to another thread, which on a busy machine waits for a
    core and for the GIL). result() converts the reply; "no room" becomes NoRoom."""

    def __init__(self, call, convert, on_failure=None):
        self.call, self.convert, self.on_failure = call, convert, on_failure
        self.done_at = 0.0
        call.add_done_callback(self._mark_done)

    def _mark_done(self, _call) -> None:
        self.done_at = time.perf_counter()

    def result(self):
        try:
            reply = self.call.result()
        except grpc.RpcError as exc:
            if self.on_failure is not None:
                self.on_failure()
            _raise_no_room(exc)
            raise
        return self.convert(reply, self.done_at or time.perf_counter())


def _rows(values, b: int, k: int, name: str) -> torch.Tensor | None:
    """A row-major repeated float as [B, k] float32 (None when empty: the draft ranks nothing)."""
    if not values:
        return None
    if len(values) != b * k:
        raise ValueError(f"{name}: {len(values)} values for {b} rows of {k}")
    return torch.tensor(values, dtype=torch.float32).view(b, k)


def _lengths(values, b: int, k: int) -> list[int] | None:
    """A model-free draft's per-row lengths (None when empty: every row has k)."""
    if not values:
        return None
    if len(values) != b or any(not 0 <= n <= k for n in values):
        raise ValueError(f"lengths: {list(values)} for {b} rows of at most {k}")
    return list(values)


def _proposal(reply: worker_pb2.ProposeReply, request_ids: list[str], k: int, channel_id: str,
              done_at: float) -> Proposal:
    b = len(request_ids)
    return Proposal(request_ids, k, parts=[(channel_id, reply.block, b)],
                    confidence=_rows(reply.confidence, b, k, "confidence"),
                    top_prob=_rows(reply.top_prob, b, k, "top_prob"), lengths=_lengths(reply.lengths, b, k),
                    compute_s=reply.compute_s,
                    service_s=reply.service_s, channel_bytes=reply.block.nbytes, done_at=done_at)


def _propose_request(request_ids, k: int, updates, release_ids: list[str]) -> worker_pb2.ProposeRequest:
    return worker_pb2.ProposeRequest(request_ids=request_ids, k=k,
                                     updates={rid: common_pb2.TokenList(tokens=t) for rid, t in updates.items()},
                                     release_ids=release_ids)


def _handshake_request(reader: worker_pb2.WorkerInfo, forced: str | None, channel_id: str):
    """A channel's negotiation, as its reader (`reader`'s Info) offers it."""
    return worker_pb2.HandshakeRequest(reader_transports=list(reader.transports), reader_hostname=reader.hostname,
                                       reader_device=reader.device, forced_transport=forced or "",
                                       channel_id=channel_id, feature_layers=list(reader.feature_layers))


DEFAULT_TIMEOUTS = TimeoutConfig()  # frozen: one instance serves every default


class _Remote:
    """timeouts: deadlines of the calls (the gateway's --worker-timeout-s / --prefill-timeout-s); a
    worker that does not answer in time (hung, SIGSTOPped, its host gone) is treated as dead."""

    def __init__(self, address: str, stub_cls, timeouts: TimeoutConfig):
        self.address, self.timeouts = address, timeouts
        self.step_s, self.prefill_s = timeouts.worker_timeout_s, timeouts.prefill_timeout_s
        self.channel = insecure_channel(address)
        self.stub = stub_cls(self.channel)
        self.keeper = ChannelKeeper(self.channel, address)  # the channel's polling thread stays up
        self.held: list[str] = []  # released later: sent with the next call
        self._riders_sent = False  # riders the service holds for its next forward (no step call since)

    def info(self, timeout: float = 5.0) -> worker_pb2.WorkerInfo:
        return self.stub.Info(worker_pb2.InfoRequest(), timeout=timeout)

    def release(self, request_ids):
        ids = list(dict.fromkeys(self._take_held() + list(request_ids)))
        try:
            self.stub.Release(worker_pb2.ReleaseRequest(request_ids=ids), timeout=self.step_s)
        except grpc.RpcError:
            self._hold_again(ids)
            raise

    def release_later(self, request_ids):
        self.held.extend(r for r in request_ids if r not in self.held)

    def flush_releases(self):
        if self.held:
            self.release([])

    def _take_held(self) -> list[str]:
        """The ids the call about to go out carries (released by the service before its own work)."""
        ids, self.held = self.held, []
        return ids

    def _hold_again(self, ids: list[str]) -> None:
        """The call that carried ids failed: perhaps they were never released. Releasing twice is
        harmless (unknown ids are ignored), and only finished requests are held, never added again
        under their id before an Add carries them."""
        self.held.extend(r for r in ids if r not in self.held)

    def _ride(self, message: worker_pb2.AddRequest) -> worker_pb2.AddReply:
        """An Add with `ride`: the service admits the requests and reserves their blocks now, and its next
        forward (a Verify's, Decode's or Propose's) prefills them beside its own rows."""
        message.ride = True
        held = self._take_held()
        message.release_ids.extend(held)
        reply = self._send(self.stub.Add, message, self.prefill_s, held)
        self._riders_sent = self._riders_sent or reply.num_admitted > 0
        return reply

    @property
    def riding(self) -> bool:
        return self._riders_sent

    def settle_riders(self) -> None:
        """No step call went out since a ride: an Add with `ride` and no requests prefills them."""
        if self._riders_sent:
            held = self._take_held()
            self._send(self.stub.Add, worker_pb2.AddRequest(ride=True, release_ids=held), self.prefill_s, held)
            self._riders_sent = False

    def _send(self, method, request, timeout: float, release_ids: list[str]):
        """A blocking call that carries release_ids (held again if it fails)."""
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            self._hold_again(release_ids)
            fault = request_fault(exc)
            if fault is not None:
                raise fault from exc
            raise

    def close(self):
        self.keeper.close()
        self.channel.close()


class RemoteDraftWorker(_Remote, DraftWorker):
    def __init__(self, address: str, timeouts: TimeoutConfig = DEFAULT_TIMEOUTS):
        super().__init__(address, worker_pb2_grpc.DraftWorkerStub, timeouts)
        self.channel_id = address
        self.max_k = 0  # from its Info when it joins a pool (0: unknown, an older node)

    def handshake(self, target_info: worker_pb2.WorkerInfo, forced: str | None) -> worker_pb2.HandshakeReply:
        return self.stub.Handshake(_handshake_request(target_info, forced, self.channel_id), timeout=30.0)

    def open_features(self, spec) -> str:
        """An EAGLE node opens the target's feature channel (see RemoteTargetWorker.export_features)."""
        return self.stub.OpenFeatures(worker_pb2.OpenFeaturesRequest(spec=spec), timeout=30.0).transport

    def add(self, requests, features=()):
        """features: FeatureBlocks for an EAGLE node (the relay's, for these requests)."""
        message = _new_requests_proto(requests)  # may raise RequestFault: nothing taken yet
        message.features.extend(features)
        held = self._take_held()
        message.release_ids.extend(held)
        return self._send(self.stub.Add, message, self.prefill_s, held).num_admitted

    def ride(self, requests):
        return self._ride(_new_requests_proto(requests)).num_admitted

    def propose(self, request_ids, k, updates):
        return self.start_propose(request_ids, k, updates).result()

    def start_propose(self, request_ids, k, updates, pool=None, features=()) -> _CallInFlight:
        ids, held = list(request_ids), self._take_held()
        message = _propose_request(ids, k, updates, held)
        message.features.extend(features)
        call = self.stub.Propose.future(message, timeout=self.step_s)
        self._riders_sent = False  # its first forward carries them
        return _CallInFlight(call, lambda reply, done_at: _proposal(reply, ids, k, self.channel_id, done_at),
                             on_failure=lambda: self._hold_again(held))



class RemoteTargetWorker(_Remote, TargetWorker):
    verifies_on_caller = False  # start_verify sends the call and returns

    def __init__(self, address: str, info: worker_pb2.WorkerInfo | None = None,
                 timeouts: TimeoutConfig = DEFAULT_TIMEOUTS):
        super().__init__(address, worker_pb2_grpc.TargetWorkerStub, timeouts)
        self.adopt(info or self.info())
        self.relay = None  # a FeatureRelay once an EAGLE node is attached (the gateway's DraftPool sets it)
        # whether a call asks the target for its features (gateway/feature_path.py sets it)
        self.wants_features = lambda: False
        self.last_decode_feature_bytes = 0

    def adopt(self, info: worker_pb2.WorkerInfo) -> None:
        """The target's facts the scheduler reads, from its Info (at start, and again after a restart)."""
        self.context_len, self.vocab_size = info.context_len, info.vocab_size
        self.max_num_batched_tokens = info.max_num_batched_tokens or None  # 0: an older target
        self.block_size = info.kv_block_size or TargetWorker.block_size

    def export_features(self, node_info: worker_pb2.WorkerInfo, forced: str | None, channel_id: str):
        """From now on the target exports its features; returns the HandshakeReply (spec, transport)
        of the feature channel the node at node_info reads."""
        return self.stub.ExportFeatures(_handshake_request(node_info, forced, channel_id), timeout=30.0)

    def _relay(self, reply) -> int:
        """Hand the reply's feature blocks to the relay; their bytes."""
        if self.relay is None or not reply.features:
            return 0
        return self.relay.put(reply.features)

    def features(self, requests: list[NewRequest]) -> int:
        """The target forwards these running requests' committed tokens again for their features (into
        the relay); returns their bytes."""
        reply = self.stub.Features(_new_requests_proto(requests), timeout=self.prefill_s)
        return self._relay(reply)

    def open_channel(self, channel_id: str, spec) -> str:
        reply = self.stub.OpenChannel(worker_pb2.OpenChannelRequest(channel_id=channel_id, spec=spec),
                                      timeout=30.0)
        return reply.transport

    def add(self, requests):
        message = _new_requests_proto(requests)  # may raise RequestFault: nothing taken yet
        message.export_features = self.wants_features()
        held = self._take_held()
        message.release_ids.extend(held)
        reply = self._send(self.stub.Add, message, self.prefill_s, held)
        self._relay(reply)
        return [None if t < 0 else t for t in reply.first_tokens[:reply.num_admitted]]

    def ride(self, requests):
        message = _new_requests_proto(requests)
        message.export_features = self.wants_features()
        reply = self._ride(message)
        self._relay(reply)
        return reply.num_admitted

    def verify(self, proposal: Proposal) -> Verdict:
        return self.start_verify(proposal).result()

    def start_verify(self, proposal: Proposal) -> _CallInFlight:
        parts = [worker_pb2.ProposalPart(channel_id=cid, block=ref, num_requests=n) for cid, ref, n in proposal.parts]
        held = self._take_held()
        request = worker_pb2.VerifyRequest(request_ids=proposal.request_ids, k=proposal.k, parts=parts,
                                           lengths=proposal.lengths or [],  # empty: every row verifies k
                                           export_features=self.wants_features(), release_ids=held)
        call = self.stub.Verify.future(request, timeout=self.step_s)
        self._riders_sent = False  # its forward carries them
        ids = list(proposal.request_ids)
        return _CallInFlight(call, lambda reply, done_at: Verdict(
            ids, [list(t.tokens) for t in reply.tokens], list(reply.num_accepted), compute_s=reply.compute_s,
            service_s=reply.service_s, feature_bytes=self._relay(reply), done_at=done_at),
            on_failure=lambda: self._hold_again(held))

    @_no_room_as_exception
    def decode(self, request_ids):
        held = self._take_held()
        self._riders_sent = False  # its forward carries them
        reply = self._send(self.stub.Decode, worker_pb2.DecodeRequest(
            request_ids=list(request_ids), release_ids=held, export_features=self.wants_features()), self.step_s, held)
        self.last_decode_compute_s = reply.compute_s
        self.last_decode_feature_bytes = self._relay(reply)
        return list(reply.tokens)

