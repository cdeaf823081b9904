"""EAGLE-3 over the services, real processes: a random EAGLE-3 head in the published layout on
`draft_service --method eagle` for a random 8-layer target, behind gateways that force the feature
channel to inline or shm. The node reports the target layers it reads (WorkerInfo.feature_layers), the
negotiation makes the target export the states entering them (3H wide), greedy SD and PSD equal
target-only greedy, every committed position's feature arrives; a node asking the same target for
another feature layout is refused naming the field."""

from __future__ import annotations

import grpc
import pytest

from minedraft.client import MineDraftClient
from minedraft.runner.hf_adapter import greedy_generate, save_random_model
from minedraft.v1 import worker_pb2, worker_pb2_grpc
from tests.eagle3_heads import write_head
from tests.model_factory import family_config

from eagle_system import TRANSPORTS, node_info, start_eagle_system
from eagle_system import generate_all as generate_prompts

MAX_TOKENS = 20
PROMPTS = [[1] + [(7 * i + 3 * j) % 97 + 3 for j in range(1 + 5 * i)] for i in range(5)]


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eagle3_services")
    cfg = family_config("llama", 8)
    ref = save_random_model(cfg, folder / "target", seed=1)
    write_head(folder / "head", cfg, list(range(0, cfg.vocab_size, 2)), seed=5)
    cluster = start_eagle_system(str(tmp_path_factory.mktemp("eagle3_logs")), str(folder / "target"),
                                 str(folder / "head"))
    cluster.expected = [greedy_generate(ref, p, MAX_TOKENS) for p in PROMPTS]
    yield cluster
    cluster.stop()


def generate_all(address) -> list[list[int]]:
    return generate_prompts(address, PROMPTS, MAX_TOKENS)


def test_node_reports_the_target_layers_it_reads(system):
    info = node_info(system, "inline")
    assert (info.method, list(info.feature_layers)) == ("eagle", [2, 4, 5])


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_greedy_equals_target_only_and_aux_features_arrive(system, transport, mode):
    address = f"127.0.0.1:{system.ports['gw_' + transport]}"
    with MineDraftClient(address) as client:
        assert client.model_info().transport == transport
        client.configure(mode=mode)
        client.stats(reset=True)
    assert generate_all(address) == system.expected
    with MineDraftClient(address) as client:
        stats = client.stats()
    drafted, accepted = stats.spec_decode_num_draft_tokens, stats.spec_decode_num_accepted_tokens
    steps = max(1, stats.steps.num_steps)
    print(f"eagle3 {mode} over {transport}: accepted {accepted}/{drafted}, feature bytes/step "
          f"{stats.steps.feature_bytes / steps:.0f}")
    assert drafted > 0 and stats.steps.feature_bytes > 0
    assert node_info(system, transport).missing_features == 0  # every committed position's 3H feature came


def test_another_feature_layout_on_the_same_target_is_refused(system):
    request = dict(reader_transports=["inline"], reader_hostname="elsewhere", channel_id="probe#features")
    with grpc.insecure_channel(f"127.0.0.1:{system.ports['target']}") as ch:
        stub = worker_pb2_grpc.TargetWorkerStub(ch)
        same = stub.ExportFeatures(worker_pb2.HandshakeRequest(feature_layers=[2, 4, 5], **request), timeout=10)
        assert same.transport == "inline"
        with pytest.raises(grpc.RpcError) as err:  # an EAGLE-1 node: the final-normed state
            stub.ExportFeatures(worker_pb2.HandshakeRequest(**request), timeout=10)
        assert "feature_layers" in err.value.details() and "[2, 4, 5]" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.ExportFeatures(worker_pb2.HandshakeRequest(feature_layers=[2, 4, 8], **request), timeout=10)
        assert "feature_layers: [8] outside the target's layers [0, 8)" in err.value.details()


def test_the_gateway_rejects_a_node_of_another_layout_naming_why(system):
    """The pool's join path (FeaturePath.open): the target's refusal becomes a ValueError, which the pool
    logs and records as the node's rejection, instead of a silent retry."""
    import types

    from gateway.feature_path import FeaturePath
    from minedraft.rpc.remote_workers import RemoteTargetWorker

    target = RemoteTargetWorker(f"127.0.0.1:{system.ports['target']}")
    node = types.SimpleNamespace(channel_id="eagle1-node", open_features=lambda spec: None)
    eagle1 = worker_pb2.WorkerInfo(transports=["inline"], hostname="elsewhere", method="eagle")
    try:
        with pytest.raises(ValueError, match=r"the target refuses its features: feature_layers: .*\[2, 4, 5\]"):
            FeaturePath().open(target, node, eagle1, None)
    finally:
        target.close()
