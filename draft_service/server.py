"""DraftWorker over gRPC: prefill, propose k tokens (and q) per request into the token channel
negotiated at Handshake; the tokens the target committed arrive with the next Propose.

--method model (default): a draft language model. ngram / suffix: a model-free proposer
(minedraft/drafting/), no model loaded, no KV cache: 0..k tokens per row, one-hot q. eagle: an EAGLE
head (draft_service/eagle.py); Add and Propose then carry feature blocks of the target's feature
channel (OpenFeatures), read into the head's FeatureStore before the call's own work."""

from __future__ import annotations

import argparse
import time

from minedraft.config import MAX_SPECULATIVE_TOKENS, DraftConfig
from minedraft.config.flags import parse, service_parser
from minedraft.drafting.worker import ModelFreeDraftWorker, make_proposer
from minedraft.rpc.channels import StaleBlockError, choose_transport, host_id, make_writer
from minedraft.rpc.channels.features import FeatureReader
from minedraft.rpc.grpc_common import (
    feature_block_from_proto,
    log,
    ref_to_proto,
    spec_from_proto,
    spec_to_proto,
)
from minedraft.rpc.worker_service import WorkerServicerBase, load_runner, prepare_service, serve
from minedraft.spec.local_workers import Q_DTYPES, LocalDraftWorker
from minedraft.v1 import worker_pb2, worker_pb2_grpc

SERVICE = "minedraft.v1.DraftWorker"


class DraftServicer(WorkerServicerBase, worker_pb2_grpc.DraftWorkerServicer):
    role = "draft"

    def __init__(self, runner, model_path, max_k: int, max_num_seqs: int, full_q: bool = True,
                 q_dtype: str = "float32", transport: str = "auto", worker=None, facts: dict | None = None):
        """worker: a model-free draft or an EAGLE head (runner None; facts: an EAGLE head's Info facts);
        else a LocalDraftWorker over runner."""
        if worker is None:
            worker = LocalDraftWorker(runner, full_q=full_q, q_dtype=q_dtype)
        method = getattr(worker, "method", "model")
        super().__init__(runner, model_path, worker, max_num_seqs, max_k=max_k, method=method, facts=facts)
        self.forced_transport = None if transport in ("", "auto") else transport
        self.writer = None
        self.features: FeatureReader | None = None  # an EAGLE node: the target's feature channel
        # The ring holds the largest block this draft can write: every row sampling, at max_k
        # (a model-free draft writes tokens only: its Info's vocabulary is 0, no q).
        self.capacity = dict(max_batch=max_num_seqs, max_k=max_k, vocab=self.info.vocab_size,
                             probs_dtype=getattr(worker, "q_dtype", None) or Q_DTYPES["float32"])

    def Handshake(self, request, context):
        def run():
            forced = request.forced_transport if request.forced_transport not in ("", "auto") else None
            forced = forced or self.forced_transport  # the gateway's choice wins over the draft's own
            transport = choose_transport(list(self.info.transports), list(request.reader_transports),
                                         same_host=request.reader_hostname == host_id(), forced=forced)
            if self.writer is not None:  # a new gateway (or a restarted one): start a fresh ring
                self.writer.close()
            self.writer = make_writer(transport, self.info.device, **self.capacity)
            log.info("draft: token channel %r uses transport %s (draft offers %s, target offers %s)",
                     request.channel_id, transport, ",".join(self.info.transports),
                     ",".join(request.reader_transports))
            return worker_pb2.HandshakeReply(spec=spec_to_proto(self.writer.spec()), transport=transport)

        return self.guarded(context, run)

    def OpenFeatures(self, request, context):
        def run():
            if getattr(self.worker, "store", None) is None:
                raise ValueError(f"method: a {self.info.method} draft reads no target features (only eagle)")
            spec = spec_from_proto(request.spec)
            if self.features is not None:  # a restarted target (or gateway): its new channel
                self.features.close()
            self.features = FeatureReader(spec)
            log.info("draft: opened the target's %s feature channel (pid %s)", spec.transport, spec.pid)
            return worker_pb2.OpenChannelReply(transport=spec.transport)

        return self.guarded(context, run)

    def _take_features(self, request) -> None:
        """Feature blocks the gateway relayed into the head's store. A ring slot overwritten before this
        read (a batch that decoded target-only for many steps) leaves its positions missing: read as
        zeros (counted in Info.missing_features), which only lowers acceptance."""
        if not request.features:
            return
        if self.features is None:
            raise KeyError("no feature channel: call OpenFeatures first")
        device = str(self.worker.device)
        for msg in request.features:
            _channel, ref, spans = feature_block_from_proto(msg)
            try:
                rows = self.features.read(ref, spans, device)
            except StaleBlockError as exc:
                log.info("draft: a feature block was overwritten before it was read (%s); those positions "
                         "draft from zeros", exc)
                continue
            for rid, start, f in rows:
                if rid in self.worker.rows:
                    self.worker.store.put(rid, start, f)

    def Add(self, request, context):
        def run():
            t0 = time.perf_counter()
            # ride: a staged chunk, carried by the next forward (LocalDraftWorker.ride)
            admitted = self.ride(request) if request.ride else self.worker.add(self._new_requests(request))
            self._take_features(request)  # after add: features of requests it holds
            return worker_pb2.AddReply(num_admitted=admitted, compute_s=time.perf_counter() - t0)

        return self.guarded(context, run, request)

    def Propose(self, request, context):
        def run():
            t0 = time.perf_counter()
            if self.writer is None:
                raise KeyError("no token channel: call Handshake first")
            if not 1 <= request.k <= self.capacity["max_k"]:
                raise ValueError(f"k: must be in [1, {self.capacity['max_k']}] for this draft service")
            self._take_features(request)
            updates = {rid: list(tl.tokens) for rid, tl in request.updates.items()}
            proposal = self.worker.propose(list(request.request_ids), request.k, updates)
            ref = self.writer.write(proposal.tokens, proposal.probs)
            return worker_pb2.ProposeReply(block=ref_to_proto(ref), compute_s=proposal.compute_s,
                                           confidence=_flat(proposal.confidence), top_prob=_flat(proposal.top_prob),
                                           lengths=proposal.lengths or [], service_s=time.perf_counter() - t0)

        return self.guarded(context, run, request)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        if self.features is not None:
            self.features.close()


def _flat(rows) -> list[float]:
    """[B, k] host floats, row-major, for a repeated float field (empty: none)."""
    return [] if rows is None else rows.reshape(-1).tolist()


def build_parser() -> argparse.ArgumentParser:
    return service_parser("draft")


def main(argv=None) -> int:
    config, args = parse(build_parser(), DraftConfig, argv)
    d = config.drafting
    if d.method == "model":
        runner, path = load_runner(config, "draft", lookahead=MAX_SPECULATIVE_TOKENS + 2)
        servicer = DraftServicer(runner, path, d.max_k, config.model.cache.max_num_seqs, full_q=not d.one_hot_q,
                                 q_dtype=d.q_dtype, transport=d.transport)
    elif d.method == "eagle":
        prepare_service(config, "draft")
        from draft_service.eagle import load_eagle_worker

        try:
            worker, path, facts = load_eagle_worker(config)
        except (ValueError, OSError) as exc:
            raise SystemExit(str(exc)) from None
        servicer = DraftServicer(None, path, d.max_k, config.model.cache.max_num_seqs, transport=d.transport,
                                 worker=worker, facts=facts)
    else:
        prepare_service(config, "draft")
        log.info("draft: model-free (%s), no model loaded", d.method)
        servicer = DraftServicer(None, d.method, d.max_k, config.model.cache.max_num_seqs, transport=d.transport,
                                 worker=ModelFreeDraftWorker(make_proposer(d), config.model.cache.max_num_seqs))
    serve(servicer, worker_pb2_grpc.add_DraftWorkerServicer_to_server, SERVICE, args)
    return 0
