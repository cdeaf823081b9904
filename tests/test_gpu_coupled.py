"""GPU checks of the coupling (spec/coupled_sampling.py), skipped without CUDA: on the device, seeded
sampled output in sd and psd equals target-only decoding's (CUDA graphs on, the default), the draft's
noise is the target's (it matches often), and verifying seeded rows reads nothing back to the host."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from minedraft import Engine, SamplingParams  # noqa: E402
from minedraft.spec.coupled_sampling import verify_coupled_row  # noqa: E402
from minedraft.spec.logits_processing import make_generator  # noqa: E402

PROMPTS = [[1] + [(7 * i + 3 * j) % 97 + 3 for j in range(2 + 3 * i)] for i in range(6)]
SEEDED = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=24, seed=3, ignore_eos=True)


@pytest.fixture(scope="module")
def target_only(llama_pair):
    target, draft, _ = llama_pair
    engine = Engine(target, draft, mode="ar", device="cuda:0", dtype="float32")
    return [r.token_ids for r in engine.generate(PROMPTS, SEEDED)]


@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_seeded_output_equals_target_only_on_gpu(llama_pair, target_only, mode):
    target, draft, _ = llama_pair
    engine = Engine(target, draft, mode=mode, num_speculative_tokens=3, device="cuda:0", dtype="float32")
    assert [r.token_ids for r in engine.generate(PROMPTS, SEEDED)] == target_only
    assert engine.metrics.acceptance_rate > 0.3


def test_coupled_verify_does_not_sync():
    p = torch.softmax(torch.randn(5, 4096, device="cuda:0"), -1)
    drafts = torch.randint(0, 4096, (4,), device="cuda:0")
    gen = make_generator(0, "cuda:0")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        n, token = verify_coupled_row(p, drafts, gen, 11, 40)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert 0 <= int(n) <= 4 and 0 <= int(token) < 4096
