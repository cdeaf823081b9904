"""Real sizes on CPU: a checkpoint with Qwen3-0.6B's shapes served on DEFAULT settings (paged KV
cache under the default budget, ragged chunked prefill), through Engine and through the services;
preemption under a tiny budget; drafts whose vocabulary is a prefix of the target's."""

import resource
import sys
import threading

import pytest
import torch

from minedraft import Engine, SamplingParams
from minedraft.runner.memory_budget import GIB

from real_scale_models import QWEN3_0_6B, draft_small, target_0_6b

LONG, SHORT, NUM_SHORT, MAX_TOKENS = 2000, 40, 6, 4


@pytest.fixture(scope="session")
def real_scale(tmp_path_factory):
    """The 0.6B-shaped target, a small same-vocabulary draft, a mixed batch of prompts and
    transformers' greedy continuations of each (computed once, then the reference is freed)."""
    from minedraft.runner.hf_adapter import reference_model

    root = tmp_path_factory.mktemp("real_scale")
    target, draft = target_0_6b(root), draft_small(root)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 150_000, (LONG,), generator=g).tolist()]
    prompts += [torch.randint(10, 150_000, (SHORT,), generator=g).tolist() for _ in range(NUM_SHORT)]
    ref = reference_model(target)
    with torch.no_grad():
        expected = [ref.generate(torch.tensor([p]), max_new_tokens=MAX_TOKENS, do_sample=False,
                                 attention_mask=torch.ones(1, len(p), dtype=torch.long))[0, len(p):].tolist()
                    for p in prompts]
    del ref
    return target, draft, prompts, expected


def test_default_engine_serves_a_real_shape_within_its_budget(real_scale):
    target, draft, prompts, expected = real_scale
    engine = Engine(target=target, draft=draft)  # every memory setting on its default
    runner = engine.target_runner
    kv_per_token = 2 * QWEN3_0_6B["num_hidden_layers"] * 8 * 128 * 4  # fp32 on CPU
    assert runner.cache.nbytes == runner.plan.num_blocks * 16 * kv_per_token
    assert runner.cache.nbytes <= 0.25 * 24 * GIB  # a quarter of the available memory at most
    assert runner.context_len >= LONG + MAX_TOKENS
    results = engine.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    assert [r.token_ids for r in results] == expected
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    print(f"peak RSS {peak_gb:.2f} GiB; target cache {runner.plan.summary('target', 6)}")
    assert peak_gb < 12


def test_services_serve_a_real_shape_on_defaults(real_scale, tmp_path):
    from minedraft.client import MineDraftClient
    from minedraft.launcher import LocalCluster

    from cluster import free_port

    target, draft, prompts, expected = real_scale
    port = {name: free_port() for name in ("target", "draft", "gateway")}
    py = [sys.executable, "-m"]
    cluster = LocalCluster({
        "target": py + ["target_service", "--model", target, "--port", str(port["target"])],
        "draft": py + ["draft_service", "--model", draft, "--port", str(port["draft"])],
        "gateway": py + ["gateway", "--target", f"127.0.0.1:{port['target']}", "--draft",
                         f"127.0.0.1:{port['draft']}", "--port", str(port["gateway"])],
    }, log_dir=str(tmp_path))
    cluster.start()
    try:
        addresses = {name: f"127.0.0.1:{p}" for name, p in port.items()}
        cluster.wait_healthy(addresses, timeout=300, progress=lambda m: None)
        got = [None] * len(prompts)

        def run(i):
            with MineDraftClient(addresses["gateway"]) as client:
                got[i] = client.generate_ids(prompts[i], max_tokens=MAX_TOKENS, ignore_eos=True, timeout=600)[0]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=700)
        assert got == expected
        from minedraft.rpc.grpc_common import insecure_channel
        from minedraft.v1 import worker_pb2, worker_pb2_grpc

        with insecure_channel(addresses["target"]) as channel:
            info = worker_pb2_grpc.TargetWorkerStub(channel).Info(worker_pb2.InfoRequest(), timeout=10)
        assert info.num_kv_blocks > 0 and info.kv_block_size == 16 and info.num_free_kv_blocks == info.num_kv_blocks
        assert info.context_len >= LONG + MAX_TOKENS
    finally:
        cluster.stop()


# -- preemption ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["ar", "sd", "psd"])
def test_tiny_budget_preempts_and_output_is_unchanged(llama_pair, mode):
    target, draft, _ = llama_pair
    prompts = [[1, 5 + i, 9, 13, 17 + i, 4] for i in range(6)]
    greedy = SamplingParams(max_tokens=30, ignore_eos=True)
    seeded = SamplingParams(temperature=0.9, top_p=0.95, max_tokens=30, seed=77, ignore_eos=True)
    roomy = Engine(target, draft, mode=mode, num_speculative_tokens=3, block_size=4)
    tight = Engine(target, draft, mode=mode, num_speculative_tokens=3, block_size=4, num_kv_blocks=24)
    for params in (greedy, seeded):
        expected = [r.token_ids for r in roomy.generate(prompts, params)]
        before = tight.metrics.num_preemptions
        got = [r.token_ids for r in tight.generate(prompts, params)]
        assert got == expected
        assert tight.metrics.num_preemptions > before, "the budget was meant to force preemption"
    for runner in (tight.target_runner, tight.draft_runner):
        if runner is not None:  # everything given back
            assert runner.blocks.num_free == runner.blocks.num_usable


def test_budget_too_small_for_the_asked_length_is_refused(llama_pair):
    target, _, _ = llama_pair
    with pytest.raises(ValueError, match="max_model_len.*--kv-cache-memory"):
        Engine(target, mode="ar", max_model_len=90, num_kv_blocks=3, block_size=4)
    # default length: lowered to fit; the KV room reserved per sequence is k + 2 (auto: max_k + 2)
    engine = Engine(target, mode="ar", num_speculative_tokens=4, num_kv_blocks=12, block_size=4)
    assert engine.context_len == 11 * 4 - 6
    engine = Engine(target, mode="ar", num_kv_blocks=12, block_size=4)
    assert engine.context_len == 11 * 4 - (8 + 2)


# -- drafts with a smaller vocabulary ---------------------------------------------------------------------

def _truncated_vocab_draft(ref_target, folder, vocab: int, noise: float = 0.02):
    """A draft that is the target with noise and only the first `vocab` ids."""
    from minedraft.runner.hf_adapter import save_random_model

    from model_factory import family_config

    cfg = family_config("llama")
    cfg.vocab_size = vocab
    draft = save_random_model(cfg, folder, seed=5)
    with torch.no_grad():
        for (_, p), (_, q) in zip(ref_target.named_parameters(), draft.named_parameters()):
            src = p[:vocab] if p.shape != q.shape else p
            q.copy_(src + noise * torch.randn_like(src) * (src.std() if src.numel() > 1 else 0))
    draft.save_pretrained(str(folder))
    return str(folder)


@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_draft_with_a_smaller_vocabulary_is_lossless(llama_pair, tmp_path, mode):
    target, _, ref = llama_pair
    draft = _truncated_vocab_draft(ref, tmp_path / "small_vocab", vocab=90)
    engine = Engine(target, draft, mode=mode, num_speculative_tokens=3)
    prompts = [[1, 5, 9, 13], [1, 7, 7, 8, 30, 2], [1, 60]]
    got = engine.generate(prompts, SamplingParams(max_tokens=20))  # stops at EOS, as transformers does
    with torch.no_grad():
        for p, r in zip(prompts, got):
            out = ref.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False,
                               attention_mask=torch.ones(1, len(p), dtype=torch.long))
            assert r.token_ids == out[0, len(p):].tolist()
    assert engine.metrics.spec_decode_num_accepted_tokens > 0
    sampled = engine.generate(prompts, SamplingParams(temperature=1.0, max_tokens=10, seed=3, ignore_eos=True))
    assert all(len(r.token_ids) == 10 and all(0 <= t < 101 for t in r.token_ids) for r in sampled)


def test_draft_with_a_larger_vocabulary_is_refused(llama_pair, tmp_path):
    from minedraft.runner.hf_adapter import save_random_model

    from model_factory import family_config

    target, _, _ = llama_pair
    cfg = family_config("llama")
    cfg.vocab_size = 120
    save_random_model(cfg, tmp_path / "big_vocab")
    with pytest.raises(ValueError, match="larger than the target's"):
        Engine(target, str(tmp_path / "big_vocab"), mode="sd")


@pytest.mark.parametrize("one_hot_q", [False, True], ids=["full_q", "one_hot_q"])
def test_smaller_draft_vocabulary_sampling_follows_target(one_hot_q):
    """Chi-square: with q over only the first V - 3 ids (q = 0 for the rest), emitted tokens still
    follow p, including the ids the draft cannot propose."""
    from test_sampling_exact import SIGNIFICANCE, K, V, chi_square_p, emitted_first_two, random_dists

    g = torch.Generator().manual_seed(4)
    torch.manual_seed(14)
    p = random_dists(g, K + 2)
    q = torch.distributions.Dirichlet(torch.full((V - 3,), 0.7)).sample((K + 2,))
    firsts, seconds = emitted_first_two(p, q, one_hot_q, seed=19)
    p1, p2 = chi_square_p(firsts, p[0]), chi_square_p(seconds, p[1])
    print(f"smaller draft vocabulary, one_hot_q={one_hot_q}: chi-square p-values first={p1:.3f} second={p2:.3f}")
    assert p1 > SIGNIFICANCE and p2 > SIGNIFICANCE
    assert (firsts >= V - 3).any()  # ids outside the draft's vocabulary are emitted too


@pytest.mark.parametrize("rounding", ["bfloat16"])
def test_bf16_q_sampled_from_is_exact(rounding):
    """The compact q: the draft samples from q rounded to bfloat16 and sends that; verification
    normalises it. Emitted tokens still follow p (chi-square)."""
    from test_sampling_exact import SIGNIFICANCE, K, chi_square_p, emitted_first_two, random_dists

    from minedraft.spec.draft_beliefs import normalised_q

    g = torch.Generator().manual_seed(6)
    torch.manual_seed(16)
    p = random_dists(g, K + 2)
    q = random_dists(g, K + 2).to(getattr(torch, rounding)).float()  # sums to 1 only roughly
    firsts, seconds = emitted_first_two(p, normalised_q(q), False, seed=23)
    p1, p2 = chi_square_p(firsts, p[0]), chi_square_p(seconds, p[1])
    print(f"bf16 q: chi-square p-values first={p1:.3f} second={p2:.3f}")
    assert p1 > SIGNIFICANCE and p2 > SIGNIFICANCE


def test_bf16_q_through_the_engine_halves_what_crosses_the_channel(llama_pair):
    target, draft, _ = llama_pair
    # no seed: a seeded row is verified by the coupling, which sends no q at all
    params = SamplingParams(temperature=0.8, max_tokens=12, ignore_eos=True)
    prompts = [[1, 5, 9], [1, 7, 7, 8]]
    full = Engine(target, draft, mode="sd", num_speculative_tokens=3)
    half = Engine(target, draft, mode="sd", num_speculative_tokens=3, q_dtype="bfloat16")
    for e in (full, half):
        assert all(len(r.token_ids) == 12 for r in e.generate(prompts, params))
    bytes_full = sum(s.channel_bytes for s in full.metrics.steps) / len(full.metrics.steps)
    bytes_half = sum(s.channel_bytes for s in half.metrics.steps) / len(half.metrics.steps)
    assert bytes_half < 0.6 * bytes_full
