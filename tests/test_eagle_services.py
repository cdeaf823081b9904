"""EAGLE over the services, real processes: `draft_service --method eagle` (the bundled head) behind a
gateway, the target's hidden states crossing a feature channel forced to inline or shm. Greedy SD and
PSD output equals target-only; every committed position's feature reached the head (Info's
missing_features stays 0) and the step breakdown counts the feature bytes; a seeded sampled request
gives the same tokens over both transports; a head for another target is refused naming the field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from minedraft import Engine, SamplingParams
from minedraft.assets import default_eagle_path, load_heldout_prompts
from minedraft.client import MineDraftClient
from minedraft.config import UpConfig
from minedraft.config.flags import to_argv

from cluster import free_port
from eagle_system import TRANSPORTS, node_info, start_eagle_system
from eagle_system import generate_all as generate_prompts

MAX_TOKENS = 24
PROMPTS = load_heldout_prompts(6)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """One target; per transport an EAGLE node and a gateway that forces that transport."""
    cluster = start_eagle_system(str(tmp_path_factory.mktemp("eagle_logs")))
    with Engine(mode="ar", max_num_seqs=8) as engine:
        cluster.expected = [r.token_ids for r in engine.generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS,
                                                                                         ignore_eos=True))]
    yield cluster
    cluster.stop()


def generate_all(address, **kwargs) -> list[list[int]]:
    return generate_prompts(address, PROMPTS, MAX_TOKENS, **kwargs)


def test_node_reports_eagle_with_the_targets_vocabulary(system):
    info = node_info(system, "inline")
    assert (info.role, info.method, info.vocab_size) == ("draft", "eagle", 4096)
    assert info.model == default_eagle_path()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_greedy_equals_target_only_and_features_arrive(system, transport, mode):
    address = f"127.0.0.1:{system.ports['gw_' + transport]}"
    with MineDraftClient(address) as client:
        assert client.model_info().transport == transport
        client.configure(mode=mode)
        client.stats(reset=True)
    assert generate_all(address) == system.expected
    with MineDraftClient(address) as client:
        stats = client.stats()
    drafted, accepted = stats.spec_decode_num_draft_tokens, stats.spec_decode_num_accepted_tokens
    print(f"eagle {mode} over {transport}: accepted {accepted}/{drafted}, {stats.steps.num_steps} steps, "
          f"feature bytes/step {stats.steps.feature_bytes / max(1, stats.steps.num_steps):.0f}, token channel "
          f"bytes/step {stats.steps.channel_bytes / max(1, stats.steps.num_steps):.0f}")
    assert drafted > 0 and accepted > 0.2 * drafted  # the trained head, fed true features
    assert stats.steps.feature_bytes > 0 and stats.steps.channel_bytes > 0
    assert node_info(system, transport).missing_features == 0  # every committed position's feature came


def test_seeded_sampling_is_the_same_over_inline_and_shm(system):
    seeded = dict(temperature=0.9, top_p=0.95, seed=7)
    outputs = []
    for transport in TRANSPORTS:
        address = f"127.0.0.1:{system.ports['gw_' + transport]}"
        with MineDraftClient(address) as client:
            client.configure(mode="psd")
        outputs.append(generate_all(address, **seeded))
    assert outputs[0] == outputs[1]
    assert all(len(o) == MAX_TOKENS for o in outputs[0])
    assert outputs[0] != system.expected  # it did sample


def test_head_for_another_target_is_refused_naming_the_field(llama_pair):
    target, _, _ = llama_pair  # hidden 64: the bundled head is for hidden 256
    proc = subprocess.run([sys.executable, "-m", "draft_service", "--method", "eagle", "--model", default_eagle_path(),
                           "--target-model", target, "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "hidden_size 256" in proc.stderr and "hidden_size 64" in proc.stderr


def test_up_with_an_eagle_draft_wires_the_head_to_its_target():
    up = UpConfig(target="/models/t", draft="/models/head", draft_method="eagle")
    argv = to_argv(up.draft_config())
    assert argv[argv.index("--method") + 1] == "eagle" and argv[argv.index("--model") + 1] == "/models/head"
    assert argv[argv.index("--target-model") + 1] == "/models/t"
    assert up.gateway_config().speculation.prefill_chunk_tokens == 0  # staged prefill is off with EAGLE
    assert "--target-model" not in to_argv(UpConfig(target="/models/t").draft_config())
