"""GPU checks (skipped without CUDA): the services on the GPU with the cuda_ipc token channel give
target-only greedy output; the runner matches transformers on the GPU."""

from __future__ import annotations

import sys
import threading

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from minedraft import Engine, SamplingParams  # noqa: E402
from minedraft.client import MineDraftClient  # noqa: E402
from minedraft.launcher import LocalCluster  # noqa: E402

from cluster import free_port  # noqa: E402


def _cupy_ok() -> bool:
    try:
        import cupy  # noqa: F401

        return True
    except ImportError:
        return False


@pytest.mark.parametrize("transport,graphs", [("cuda_ipc", False), ("shm", False), ("cuda_ipc", True)])
def test_services_on_gpu_are_lossless(llama_pair, tmp_path, transport, graphs):
    if transport == "cuda_ipc" and not _cupy_ok():
        pytest.skip("CuPy not installed")
    target, draft, _ = llama_pair
    draft_device = "cuda:1" if torch.cuda.device_count() > 1 else "cuda:0"
    prompts = [[1] + [(5 * i + j) % 97 + 3 for j in range(2 + 2 * i)] for i in range(8)]
    engine = Engine(target, None, mode="ar", device="cuda:0", dtype="float32")
    expected = [r.token_ids for r in engine.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True))]
    p = {n: free_port() for n in ("target", "draft", "gateway")}
    flag = ["--cuda-graphs" if graphs else "--no-cuda-graphs"]
    cluster = LocalCluster({
        "target": [sys.executable, "-m", "target_service", "--model", target, "--port", str(p["target"]),
                   "--device", "cuda:0", "--dtype", "float32"] + flag,
        "draft": [sys.executable, "-m", "draft_service", "--model", draft, "--port", str(p["draft"]),
                  "--device", draft_device, "--dtype", "float32"] + flag,
        "gateway": [sys.executable, "-m", "gateway", "--target", f"127.0.0.1:{p['target']}",
                    "--draft", f"127.0.0.1:{p['draft']}", "--port", str(p["gateway"]), "--transport", transport],
    }, log_dir=str(tmp_path))
    cluster.start()
    try:
        cluster.wait_healthy({n: f"127.0.0.1:{port}" for n, port in p.items()}, timeout=180,
                             progress=lambda m: None)
        results = [None] * len(prompts)

        def one(i):
            with MineDraftClient(f"127.0.0.1:{p['gateway']}") as c:
                results[i] = c.generate_ids(prompts[i], max_tokens=16, ignore_eos=True)[0]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        with MineDraftClient(f"127.0.0.1:{p['gateway']}") as c:
            info = c.model_info()
        print(f"transport={info.transport} target=cuda:0 draft={draft_device}")
        assert info.transport == transport
        assert results == expected
    finally:
        cluster.stop()


def test_runner_matches_transformers_on_gpu(tmp_path):
    from minedraft.runner.hf_adapter import save_random_model
    from minedraft.runner.model_runner import ModelRunner

    from model_factory import family_config

    ref = save_random_model(family_config("qwen3"), tmp_path, seed=5).to("cuda:0")
    runner = ModelRunner(str(tmp_path), device="cuda:0", dtype="float32", max_num_seqs=2)
    ids = list(range(3, 40))
    logits = runner.forward([runner.allocate()], [ids], all_positions=True)[0]
    with torch.no_grad():
        expected = ref(torch.tensor([ids], device="cuda:0")).logits[0]
    assert (logits - expected).abs().max().item() < 1e-3
