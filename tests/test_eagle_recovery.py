"""A target killed and restarted mid-stream with an EAGLE node attached (real processes): the gateway
re-prefills every running request on the new target, which exports the features of all their
committed positions again; the streams continue with exactly target-only greedy output, and the
head never drafted from a missing feature."""

import re
import signal
import time

import grpc

from minedraft import Engine, SamplingParams
from minedraft.v1 import worker_pb2, worker_pb2_grpc

from test_recovery import PROMPTS, Stack, Streams

GREEDY = SamplingParams(max_tokens=64, ignore_eos=True)


def test_target_restart_with_an_eagle_node_resends_features(tmp_path):
    with Engine(mode="ar", max_num_seqs=8) as engine:
        expected = [r.token_ids for r in engine.generate(PROMPTS, GREEDY)]
    stack = Stack(tmp_path, draft_flags=("--method", "eagle"), gateway_flags=("--transport", "shm"))
    try:
        streams = Streams(stack.addr["gateway"], GREEDY)
        streams.wait_some_tokens()
        stack.signal("target", signal.SIGKILL)
        time.sleep(0.5)
        stack.start("target")
        streams.join()
        assert streams.errors == [None] * len(PROMPTS)
        assert streams.tokens == expected
        assert re.search(r"target \S+ \(restarted\); [1-9]\d* running request\(s\) resume", stack.log("gateway"))
        # both target processes exported features to the node, over shm
        assert len(re.findall(r"feature channel .* uses transport shm", stack.log("target"))) == 2
        with grpc.insecure_channel(stack.addr["draft"]) as ch:
            info = worker_pb2_grpc.DraftWorkerStub(ch).Info(worker_pb2.InfoRequest(), timeout=5)
        assert info.method == "eagle" and info.missing_features == 0
    finally:
        stack.stop()
