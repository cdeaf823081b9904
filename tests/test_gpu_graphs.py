"""GPU checks of issue 14 (skipped without CUDA): captured CUDA graphs give the eager logits and
lossless engine output, and a speculative step synchronises the host only where it reads tokens."""

from __future__ import annotations

import warnings

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from minedraft import Engine, SamplingParams  # noqa: E402
from minedraft.runner.hf_adapter import greedy_generate, save_random_model  # noqa: E402
from minedraft.runner.model_runner import ModelRunner  # noqa: E402

from model_factory import family_config  # noqa: E402

PROMPTS = [[1] + [(7 * i + 3 * j) % 97 + 3 for j in range(2 + 3 * i)] for i in range(6)]


def test_captured_graphs_match_eager_logits(tmp_path):
    save_random_model(family_config("qwen3"), tmp_path, seed=5)
    runs = {}
    for graphs in (False, True):
        runner = ModelRunner(str(tmp_path), device="cuda:0", dtype="float32", max_num_seqs=4, lookahead=6,
                             block_size=4, cuda_graphs=graphs)
        rows = [runner.allocate() for _ in range(3)]
        out = [runner.forward(rows, [list(range(3, 3 + n)) for n in (20, 9, 14)])]
        for step in range(4):  # decode, verify, rollback, decode of fewer rows (padding of a bucket)
            out.append(runner.forward(rows, [[5 + step]] * 3))
            out.append(runner.forward(rows, [[6, 7, 8, 9, 10]] * 3, all_positions=True))
            for i, r in enumerate(rows):
                runner.rollback(r, runner.length(r) - 4 + i)
            out.append(runner.forward(rows[:2], [[11], [12]]))
        runs[graphs] = out
        if graphs:
            captured = [e for e in runner.graphs.entries.values() if e.graph is not None]
            assert len(captured) == len(runner.graphs.entries) >= 3
    for eager, graphed in zip(runs[False], runs[True]):
        torch.testing.assert_close(graphed, eager, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["ar", "psd"])
def test_engine_with_graphs_is_lossless_on_gpu(llama_pair, mode):
    target, draft, ref = llama_pair
    engine = Engine(target, draft, mode=mode, num_speculative_tokens=3, device="cuda:0", dtype="float32",
                    cuda_graphs=True)
    results = engine.generate(PROMPTS, SamplingParams(max_tokens=16, ignore_eos=True))
    assert [r.token_ids for r in results] == [greedy_generate(ref, p, 16) for p in PROMPTS]
    sampled = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=16, seed=3, ignore_eos=True)
    first = [r.token_ids for r in engine.generate(PROMPTS, sampled)]
    assert [r.token_ids for r in engine.generate(PROMPTS, sampled)] == first
    assert engine.target_runner.graphs.replays > 0


def test_speculative_step_syncs_only_to_read_tokens(llama_pair):
    """torch's sync debug mode warns at every synchronising call: a greedy SD step may read the
    drafted tokens once and the verdict once, nothing else."""
    target, draft, _ = llama_pair
    engine = Engine(target, draft, mode="sd", num_speculative_tokens=3, device="cuda:0", dtype="float32",
                    cuda_graphs=True)
    for p in PROMPTS:
        engine.add_request(p, SamplingParams(max_tokens=40, ignore_eos=True))  # one bucket throughout
    for _ in range(3):  # admission, prefill and capture happen here
        engine.step()
    counts = []
    for _ in range(3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                engine.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        # Only torch's per-call warning counts; its one-off "sync debug mode is a prototype" notice does not.
        syncs = [str(w.message) for w in caught if "called a synchronizing" in str(w.message).lower()]
        counts.append(len(syncs))
        assert len(syncs) <= 2, syncs
    print("host syncs per SD step:", counts)
