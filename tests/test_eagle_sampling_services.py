"""Sampled decoding through real processes with an EAGLE node follows the target's distribution: a
target, `draft_service --method eagle` (the bundled head) and a gateway at a fixed k; many sampled
requests (temperature 1, top_k 3, two tokens: the second comes out of verification against the head's
q, which crossed the token channel) from one prompt; the joint law of the two tokens is compared by a
chi-square test with the target's exact one, computed with transformers from the target checkpoint.
Seeds are fixed per request, so the test's outcome is fixed too (p = 0.85 here, threshold 1e-3; about
55 s on 2 shared cores). Its power: with the target's rejection step resampling p instead of the
residual max(0, p - q) (a classic bug, checked by hand on a patched copy) the same run gives p = 3e-5;
and the unit-level test below rejects a sampler slightly biased towards the likeliest pair."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from minedraft.assets import default_target_path, load_heldout_prompts
from minedraft.client import MineDraftClient

from cluster import free_port, start_healthy

N, TOP_K, TOKENS, THREADS = 2000, 3, 2, 12
EXACT = 1e-3  # p-value threshold


def target_joint(prompt_ids: list[int]) -> dict[tuple[int, int], float]:
    """{(t1, t2): probability} under the target at temperature 1, top_k TOP_K (transformers)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(default_target_path(), dtype=torch.float32).eval()

    def top_k_probs(ids) -> dict[int, float]:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        top = logits.topk(TOP_K)
        return dict(zip(top.indices.tolist(), torch.softmax(top.values, 0).tolist()))

    joint = {}
    for t1, p1 in top_k_probs(prompt_ids).items():
        for t2, p2 in top_k_probs(prompt_ids + [t1]).items():
            joint[(t1, t2)] = p1 * p2
    return joint


def chi_square_p(samples: list[tuple[int, int]], joint: dict) -> float:
    """p-value of the samples under joint; a sample outside its support fails at once."""
    cells = sorted(joint)
    index = {c: i for i, c in enumerate(cells)}
    counts = np.zeros(len(cells))
    for s in samples:
        assert s in index, f"emitted {s}, which the target gives probability 0"
        counts[index[s]] += 1
    expected = np.array([joint[c] for c in cells])
    return chisquare(counts, expected / expected.sum() * len(samples)).pvalue


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    py = [sys.executable, "-m"]
    ports = {name: free_port() for name in ("target", "eagle", "gateway")}
    addr = {n: f"127.0.0.1:{p}" for n, p in ports.items()}
    commands = {"target": py + ["target_service", "--port", str(ports["target"]), "--threads", "1"],
                "eagle": py + ["draft_service", "--method", "eagle", "--port", str(ports["eagle"]), "--threads", "1"],
                "gateway": py + ["gateway", "--target", addr["target"], "--draft", addr["eagle"], "--port",
                                 str(ports["gateway"]), "--http-port", "0", "--mode", "sd", "-k", "3",
                                 "--max-num-seqs", "64"]}
    cluster = start_healthy(commands, addr, str(tmp_path_factory.mktemp("chi_logs")))
    cluster.address = addr["gateway"]
    yield cluster
    cluster.stop()


def sample_through_the_gateway(address: str, prompt_ids: list[int]) -> list[tuple[int, ...]]:
    out: list = [None] * N

    def worker(w):
        with MineDraftClient(address) as client:
            for i in range(w, N, THREADS):
                ids, _ = client.generate_ids(prompt_ids, temperature=1.0, top_k=TOP_K, max_tokens=TOKENS,
                                             ignore_eos=True, seed=1000 + i)
                out[i] = tuple(ids)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return out


def test_sampled_output_through_the_services_follows_the_target(system):
    from transformers import AutoTokenizer

    prompt_ids = AutoTokenizer.from_pretrained(default_target_path()).encode(load_heldout_prompts(1)[0][-60:])
    with MineDraftClient(system.address) as client:
        client.stats(reset=True)
    samples = sample_through_the_gateway(system.address, prompt_ids)
    with MineDraftClient(system.address) as client:
        stats = client.stats()
    drafted, accepted = stats.spec_decode_num_draft_tokens, stats.spec_decode_num_accepted_tokens
    assert 0 < accepted < drafted  # both verification paths ran (accepted drafts, residual samples)
    assert all(s is not None and len(s) == TOKENS for s in samples)
    joint = target_joint(prompt_ids)
    pvalue = chi_square_p(samples, joint)
    print(f"eagle over the services: {len(joint)} cells, accepted {accepted}/{drafted}, chi-square p = {pvalue:.3g}")
    assert pvalue > EXACT
    assert len({s[0] for s in samples}) == TOP_K and len(set(samples)) > TOP_K


def test_the_same_test_rejects_a_slightly_biased_sampler():
    """Power at this N: a sampler that, 10% of the time, emits the likeliest pair instead of sampling
    (as one that accepted a greedy draft without its ratio would) gives p far below the threshold."""
    from transformers import AutoTokenizer

    prompt_ids = AutoTokenizer.from_pretrained(default_target_path()).encode(load_heldout_prompts(1)[0][-60:])
    joint = target_joint(prompt_ids)
    cells = sorted(joint)
    probs = torch.tensor([joint[c] for c in cells])
    g = torch.Generator().manual_seed(0)
    exact = [cells[i] for i in torch.multinomial(probs, N, replacement=True, generator=g).tolist()]
    assert chi_square_p(exact, joint) > EXACT  # the exact sampler passes
    likeliest = cells[int(probs.argmax())]
    greedy = torch.rand(N, generator=g) < 0.1
    biased = [likeliest if b else s for s, b in zip(exact, greedy.tolist())]
    assert chi_square_p(biased, joint) < EXACT
