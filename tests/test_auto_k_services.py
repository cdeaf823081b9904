"""k = auto through real processes: `serve gateway -k auto` gives target-only greedy output, Configure
switches between auto and a fixed k over gRPC, and GetStats reports the k the controller chose."""

from __future__ import annotations

import pytest
from test_services import prompts

from minedraft.client import MineDraftClient
from minedraft.runner.hf_adapter import greedy_generate

from cluster import run_concurrently, start_cluster

MAX_TOKENS = 20


@pytest.fixture(scope="module")
def cluster(llama_pair, tmp_path_factory):
    target, draft, _ = llama_pair
    c = start_cluster(target, draft, k="auto", extra_gateway=["--max-k", "5"],
                      log_dir=str(tmp_path_factory.mktemp("logs")))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def expected(llama_pair):
    return [greedy_generate(llama_pair[2], p, MAX_TOKENS) for p in prompts()]


@pytest.mark.parametrize("mode", ["psd", "sd"])
def test_auto_streams_equal_target_only_greedy(cluster, expected, mode):
    address = cluster.addresses["gateway"]
    with MineDraftClient(address) as client:
        info = client.configure(mode=mode)
        assert info.auto_k and info.num_speculative_tokens == 0 and info.max_k == 5  # --max-k 5 bounds it
        client.stats(reset=True)
    results = run_concurrently(address, prompts(), max_tokens=MAX_TOKENS, ignore_eos=True)
    assert [ids for ids, _ in results] == expected
    with MineDraftClient(address) as client:
        stats = client.stats()
    ks = stats.k_steps[mode]
    assert sum(ks.steps_at_k) > 0 and len(ks.steps_at_k) <= 6 and 0.0 <= ks.share_k0 <= 1.0
    assert ks.share_k0 == pytest.approx(ks.steps_at_k[0] / sum(ks.steps_at_k))


def test_configure_switches_between_auto_and_a_fixed_k(cluster, expected):
    address = cluster.addresses["gateway"]
    with MineDraftClient(address) as client:
        info = client.configure(mode="sd", num_speculative_tokens=3)
        assert not info.auto_k and info.num_speculative_tokens == 3 and info.max_k == 3
        client.stats(reset=True)
        ids, _ = client.generate_ids(prompts()[2], max_tokens=MAX_TOKENS, ignore_eos=True)
        assert ids == expected[2]
        assert list(client.stats().k_steps["sd"].steps_at_k) == [0, 0, 0, client.stats().steps.num_steps]
        info = client.configure(num_speculative_tokens="auto")
        assert info.auto_k and info.mode == "sd"
        assert client.model_info().auto_k
