"""The static-shape path behind CUDA graphs, run on CPU (replay is a plain call over the same static
buffers): bucketing, padding rows and widths, static buffers reused across steps of different
batch sizes, and logits equal to the eager path and to transformers. The capture itself needs a
GPU (tests/test_gpu_graphs.py)."""

import pytest
import torch

from minedraft import Engine, SamplingParams
from minedraft.config.flags import memory_argv
from minedraft.runner.cuda_graphs import GraphRunner, bucket_for, width_bucket
from minedraft.runner.hf_adapter import greedy_generate, save_random_model
from minedraft.runner.model_runner import ModelRunner

from model_factory import family_config

TOL = 1e-5  # static vs eager: same math, fp32 GEMMs of other shapes may round differently


def test_buckets_and_widths():
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]
    assert width_bucket(1, 100, 16) == 16
    assert width_bucket(17, 100, 16) == 32
    assert width_bucket(65, 100, 16) == 100  # never wider than a row can be
    assert width_bucket(3, 8, 16) == 8


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3")
    ref = save_random_model(family_config("qwen3"), path, seed=5)
    return str(path), ref


def _runner(path, graphs):
    return ModelRunner(path, max_num_seqs=8, lookahead=8, block_size=4, cuda_graphs=graphs)


def _script(runner, seqs):
    """Ragged prefill, decode, verify, rollback by different amounts, steps over fewer rows (the
    padding rows of a bucket must not keep an earlier step's block tables: row 3 is rolled back and
    rewritten, then is padding in a step of bucket 4), a long row that widens the block table, and
    device-tensor tokens (a draft step's feedback)."""
    rows = [runner.allocate() for _ in seqs]
    prompts = [s[:-8] for s in seqs]
    out = [runner.forward(rows, prompts, all_positions=True)]
    at = [len(p) for p in prompts]
    out.append(runner.forward(rows, [[s[a]] for s, a in zip(seqs, at)]))
    out.append(runner.forward(rows, [s[a + 1:a + 5] for s, a in zip(seqs, at)], all_positions=True))
    for i, (row, a) in enumerate(zip(rows, at)):
        runner.rollback(row, a + 1 + i if i < 3 else a)
    out.append(runner.forward(rows[3:], [[7]]))  # bucket 1: row 3's position `a` now holds token 7
    out.append(runner.forward(rows[:3], torch.tensor([[11], [12], [13]])))  # bucket 4, row 3 is padding
    out.append(runner.forward(rows[1:3], [[8, 9, 10]] * 2, all_positions=True))  # bucket 2
    out.append(runner.forward(rows, [[20], [21, 22], [23], [24, 25]]))  # ragged: short rows get fillers
    out.append(runner.forward(rows[2:3], [list(range(3, 63))]))  # eager: a 60-token chunk of row 2
    out.append(runner.forward(rows, [[14], [15], [16], [17]]))  # row 2 now needs a wider table
    return rows, out


def test_static_path_matches_eager_and_transformers(qwen3):
    path, ref = qwen3
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 101, (n,), generator=g).tolist() for n in (30, 11, 19, 14)]
    eager = _runner(path, False)
    static = _runner(path, True)
    _, expected = _script(eager, seqs)
    rows, got = _script(static, seqs)
    assert static.graphs is not None and eager.graphs is None
    for e, s in zip(expected, got):
        assert e.shape == s.shape
        torch.testing.assert_close(s, e, atol=TOL, rtol=0)
    # the uniform and ragged steps went through the static buffers, the prefill and the 60-token chunk did not
    assert static.graphs.replays == 7
    assert {(b, q) for b, q, _ in static.graphs.entries} == {(4, 1), (4, 4), (1, 1), (2, 3), (4, 2)}
    # the long row widened the table: to the next power of two, capped at the longest possible row
    assert 16 < static.graphs.max_blocks < 32
    assert {w for *_, w in static.graphs.entries} == {16, static.graphs.max_blocks}
    # and the static path agrees with transformers on the whole history of the long row
    history = seqs[2][:14] + [13] + [8, 9, 10] + [23] + list(range(3, 63)) + [16]
    with torch.no_grad():
        want = ref(torch.tensor([history])).logits[0, -1]
    assert (got[-1][2] - want).abs().max() < 1e-4


def test_shape_selection():
    runner = GraphRunner(model=None, cache=None, block_size=16, max_blocks=64, device=torch.device("cpu"),
                         max_q=6, max_tokens=512, max_key_slots=64 * 1024)
    assert runner.shape_for(3, 1, 40) == (4, 1, 16)
    assert runner.shape_for(3, 5, 300) == (4, 5, 32)
    assert runner.shape_for(65, 1, 10) is None  # above the largest bucket
    assert runner.shape_for(8, 7, 10) is None  # more tokens per row than any verify
    assert runner.shape_for(64, 5, 2000) is None  # too many key slots for one graph
    assert runner.shape_for(1, 1, 1000) == (1, 1, 64)


def test_flag_round_trips_to_worker_argv():
    from minedraft.cli import build_parser

    assert "--no-cuda-graphs" in memory_argv(build_parser().parse_args(["up", "--no-cuda-graphs"]))
    assert "--cuda-graphs" in memory_argv(build_parser().parse_args(["up", "--cuda-graphs"]))
    assert not any("graphs" in a for a in memory_argv(build_parser().parse_args(["up"])))


def test_engine_with_static_steps_is_lossless(llama_pair):
    """Greedy PSD over static buffers (draft and target) equals transformers' target-only output;
    seeded sampling gives the same tokens run after run."""
    target, draft, ref = llama_pair
    prompts = [[1] + [(7 * i + 3 * j) % 97 + 3 for j in range(2 + 3 * i)] for i in range(5)]
    engine = Engine(target, draft, mode="psd", num_speculative_tokens=3, cuda_graphs=True)
    assert engine.target_runner.graphs is not None and engine.draft_runner.graphs is not None
    results = engine.generate(prompts, SamplingParams(max_tokens=12, ignore_eos=True))
    assert [r.token_ids for r in results] == [greedy_generate(ref, p, 12) for p in prompts]
    assert engine.target_runner.graphs.replays > 0 and engine.draft_runner.graphs.replays > 0
    sampled = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=12, seed=7, ignore_eos=True)
    first = [r.token_ids for r in engine.generate(prompts, sampled)]
    assert [r.token_ids for r in engine.generate(prompts, sampled)] == first
