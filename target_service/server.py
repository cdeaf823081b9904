"""TargetWorker over gRPC: prefill, verify k+1 positions (draft tokens read from the token channel),
accept/reject, KV rollback; plain decode for AR mode.

With an EAGLE node attached (ExportFeatures), each Add/Verify/Decode that asks for it (export_features: the
gateway asks while an EAGLE node is attached and its mode drafts) also writes the features of the positions
it committed (the node's feature_layers: empty, the final-normed hidden state, EAGLE-1's; or EAGLE-3's
residual states entering those layers, concatenated, 3H wide) into the feature channel(s) and returns their
block refs; the gateway hands them to the node with its next call. While calls ask, its prefix cache is off
for new sequences: a cached block is never forwarded, so it would have no feature (and the gateway turns
staged prefill off for the same reason). When they stop asking (the last EAGLE node left, or mode ar)
nothing is computed or written and prefix caching is back on; both changes are logged. A node that joins
again gets the features of its requests' whole context (the gateway's take-over, `Features`)."""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from minedraft.config import MAX_SPECULATIVE_TOKENS, TargetConfig
from minedraft.config.flags import parse, service_parser
from minedraft.drafting.features import FeatureStore
from minedraft.rpc.channels import choose_transport, host_id, open_reader
from minedraft.rpc.channels.features import FeatureWriter, rows_per_slot
from minedraft.rpc.grpc_common import feature_block_to_proto, log, ref_from_proto, spec_from_proto, spec_to_proto
from minedraft.rpc.worker_service import WorkerServicerBase, load_runner, serve
from minedraft.runner.model import check_feature_layers
from minedraft.spec.coupled_sampling import reads_q
from minedraft.spec.local_workers import LocalTargetWorker
from minedraft.spec.verification import check_lengths
from minedraft.spec.workers import Proposal
from minedraft.v1 import common_pb2, worker_pb2, worker_pb2_grpc

SERVICE = "minedraft.v1.TargetWorker"


class TargetServicer(WorkerServicerBase, worker_pb2_grpc.TargetWorkerServicer):
    role = "target"

    def __init__(self, runner, model_path, max_num_seqs: int):
        super().__init__(runner, model_path, LocalTargetWorker(runner), max_num_seqs)
        self.readers = {}  # channel id -> reader, opened once and cached
        self.feature_writers: dict[str, FeatureWriter] = {}  # transport -> the feature channel using it
        self.feature_store: FeatureStore | None = None  # set at the first ExportFeatures
        self.caching = runner.blocks.caching  # --enable-prefix-caching: what applies while none exports
        self.exporting = False

    def ExportFeatures(self, request, context):
        def run():
            forced = request.forced_transport if request.forced_transport not in ("", "auto") else None
            transport = choose_transport(list(self.info.transports), list(request.reader_transports),
                                         same_host=request.reader_hostname == host_id(), forced=forced)
            layers = check_feature_layers(request.feature_layers, self.runner.cfg.num_layers)
            if self.feature_store is not None and self.feature_store.layers != layers:
                now = _feature_kind(self.feature_store.layers)
                raise ValueError(f"feature_layers: this target already exports {now} to an EAGLE node; a node "
                                 f"reading {_feature_kind(layers)} cannot join it (one feature layout per target)")
            if self.feature_store is None:
                self.feature_store = FeatureStore(layers)
            writer = self.feature_writers.get(transport)
            if writer is None:
                cfg = self.runner.cfg
                width = cfg.hidden_size * (len(layers) if layers else 1)  # EAGLE-3: the three states side by side
                writer = self.feature_writers[transport] = FeatureWriter(
                    transport, str(self.runner.device), width, self.runner.dtype,
                    rows_per_slot(self.info.max_num_seqs, MAX_SPECULATIVE_TOKENS))
            log.info("target: feature channel %r uses transport %s, features: %s", request.channel_id, transport,
                     _feature_kind(layers))
            return worker_pb2.HandshakeReply(spec=spec_to_proto(writer.spec()), transport=transport)

        return self.guarded(context, run)

    def Features(self, request, context):
        def run():
            t0 = time.perf_counter()
            if self.feature_store is None:
                raise ValueError("features: no EAGLE node is attached (call ExportFeatures first)")
            rows = self.worker.features_of(self._new_requests(request), self.feature_store.layers)
            return worker_pb2.AddReply(compute_s=time.perf_counter() - t0, features=self._write_features(rows))

        return self.guarded(context, run, request)

    def _export_or_not(self, request) -> None:
        """Before a call's work: whether it computes and exports features (the gateway's export_features),
        and with it whether new sequences may use the prefix cache."""
        on = bool(request.export_features) and self.feature_store is not None
        if on != self.exporting:
            self.exporting = on
            if on:
                log.info("target: an EAGLE node drafts: exporting features%s", ", prefix caching off (every "
                         "committed position is forwarded for its feature)" if self.caching else "")
            else:
                self.feature_store.clear()
                log.info("target: no EAGLE node drafts: features no longer exported%s",
                         ", prefix caching on again" if self.caching else "")
        self.worker.features = self.feature_store if on else None
        self.runner.blocks.caching = self.caching and not on

    def _export(self, request_ids, verified=()) -> list:
        """The features this call committed, one block per feature channel (none without an EAGLE node).
        verified: the requests this call verified, whose earlier blocks their node has read (see
        minedraft/rpc/channels/features.py: when a ring slot may be written again)."""
        store = self.worker.features
        if store is None:
            return []
        return self._write_features([(rid, start, f) for rid in request_ids for start, f in store.take(rid)],
                                    verified)

    def _write_features(self, rows, verified=()) -> list:
        blocks = []
        for transport, writer in self.feature_writers.items():
            writer.done_with(verified, alive=self.worker.book.states)
            written = writer.write(rows)
            if written is not None:
                blocks.append(feature_block_to_proto(transport, *written))
        return blocks

    def OpenChannel(self, request, context):
        def run():
            spec = spec_from_proto(request.spec)
            old = self.readers.pop(request.channel_id, None)
            if old is not None:
                old.close()
            self.readers[request.channel_id] = open_reader(spec)
            log.info("target: opened %s channel %r from pid %s", spec.transport, request.channel_id, spec.pid)
            return worker_pb2.OpenChannelReply(transport=spec.transport)

        return self.guarded(context, run)

    def Add(self, request, context):
        def run():
            t0 = time.perf_counter()
            self._export_or_not(request)
            if request.ride:  # a staged chunk: carried by the next forward (LocalTargetWorker.ride)
                return worker_pb2.AddReply(num_admitted=self.ride(request), compute_s=time.perf_counter() - t0,
                                           features=self._export([r.request_id for r in request.requests]))
            first = self.worker.add(self._new_requests(request))
            return worker_pb2.AddReply(first_tokens=[-1 if t is None else t for t in first], num_admitted=len(first),
                                       compute_s=time.perf_counter() - t0,
                                       features=self._export([r.request_id for r in request.requests]))

        return self.guarded(context, run, request)

    def Verify(self, request, context):
        def run():
            t0 = time.perf_counter()
            self._export_or_not(request)
            tokens, probs = self._read_parts(request)
            lengths = check_lengths(list(request.lengths) or None, len(request.request_ids), request.k)
            proposal = Proposal(list(request.request_ids), request.k, tokens, probs, lengths=lengths)
            verdict = self.worker.verify(proposal)
            return worker_pb2.VerifyReply(tokens=[common_pb2.TokenList(tokens=t) for t in verdict.tokens],
                                          num_accepted=verdict.num_accepted, compute_s=verdict.compute_s,
                                          features=self._export(request.request_ids, request.request_ids),
                                          service_s=time.perf_counter() - t0)

        return self.guarded(context, run, request)

    def _read_parts(self, request):
        """Concatenate the parts (one per draft node) into tokens [B, k] and the q of the sampled
        rows [S, k, V] in batch order (None: every part drafted one-hot or no row samples)."""
        device = str(self.runner.device)
        vocab = self.runner.vocab_size
        states = self.worker.book.states
        tokens, parts, at = [], [], 0
        for part in request.parts:
            reader = self.readers.get(part.channel_id)
            if reader is None:
                raise KeyError(f"no channel {part.channel_id!r}: call OpenChannel first")
            t, p = reader.read(ref_from_proto(part.block), device)
            if t.shape[0] != part.num_requests:
                raise ValueError(f"parts: block holds {t.shape[0]} rows, expected {part.num_requests}")
            ids = request.request_ids[at:at + part.num_requests]
            at += part.num_requests
            t = t.long()
            tokens.append(t)
            parts.append((t, p, ids))
        if at != len(request.request_ids):
            raise ValueError("parts: do not cover request_ids")
        tokens = tokens[0] if len(tokens) == 1 else torch.cat(tokens)
        if all(p is None for _, p, _ in parts):
            return tokens, None  # one-hot drafts (or no sampled row): verification needs no q
        probs = []
        for t, p, ids in parts:
            sampled = [] if p is not None else [
                i for i, rid in enumerate(ids) if rid in states and reads_q(states[rid].params)]
            if sampled:  # a one-hot draft node beside others: its q is a one-hot
                p = F.one_hot(t[sampled], vocab)
            if p is not None:  # a smaller draft vocabulary is padded with q = 0 (see verification.py)
                p = p.float()
                probs.append(F.pad(p, (0, vocab - p.shape[-1])) if p.shape[-1] < vocab else p)
        return tokens, probs[0] if len(probs) == 1 else torch.cat(probs)

    def Decode(self, request, context):
        def run():
            t0 = time.perf_counter()
            self._export_or_not(request)
            tokens = self.worker.decode(list(request.request_ids))
            return worker_pb2.DecodeReply(tokens=tokens, compute_s=time.perf_counter() - t0,
                                          features=self._export(request.request_ids))

        return self.guarded(context, run, request)

    def close(self):
        for reader in self.readers.values():
            reader.close()
        for writer in self.feature_writers.values():
            writer.close()


def _feature_kind(layers) -> str:
    return f"the states entering layers {list(layers)} (EAGLE-3)" if layers else "the final-normed state (EAGLE-1)"


def build_parser() -> argparse.ArgumentParser:
    return service_parser("target")


def main(argv=None) -> int:
    config, args = parse(build_parser(), TargetConfig, argv)
    runner, path = load_runner(config, "target", lookahead=MAX_SPECULATIVE_TOKENS + 2)
    servicer = TargetServicer(runner, path, config.model.cache.max_num_seqs)
    serve(servicer, worker_pb2_grpc.add_TargetWorkerServicer_to_server, SERVICE, args)
    return 0
