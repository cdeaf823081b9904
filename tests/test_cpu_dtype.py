"""`--dtype auto` on a CPU: a bfloat16 checkpoint keeps bfloat16 where the CPU computes it natively
(AMX-BF16 / AVX512-BF16), as transformers does; anything else runs in float32. The bundled pair cast to
bfloat16 then runs in bfloat16 and speculation stays lossless against target-only decoding in it."""

import json
import pathlib
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from minedraft import Engine, SamplingParams
from minedraft.assets import default_draft_path, default_target_path
from minedraft.runner import model_runner
from minedraft.runner.checkpoint import checkpoint_dtype
from minedraft.runner.model_runner import ModelRunner, cpu_computes_bf16, resolve_dtype


def bf16_copy(src: str, dst: pathlib.Path) -> str:
    """The checkpoint with its weights and config in bfloat16 (as Qwen3 and Llama are published)."""
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}, str(weights))
    cfg = json.loads((dst / "config.json").read_text())
    cfg["dtype"] = "bfloat16"
    (dst / "config.json").write_text(json.dumps(cfg))
    return str(dst)


def test_auto_keeps_a_bf16_checkpoint_only_on_a_cpu_that_computes_bf16(monkeypatch, tmp_path):
    assert checkpoint_dtype(default_target_path()) == "float32"
    cfg = json.loads((pathlib.Path(default_target_path()) / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**{k: v for k, v in cfg.items() if k != "dtype"},
                                                     "torch_dtype": "bfloat16"}))  # before transformers 5
    assert checkpoint_dtype(str(tmp_path)) == "bfloat16"
    assert checkpoint_dtype(str(tmp_path / "nowhere")) is None
    for native in (True, False):
        monkeypatch.setattr(model_runner, "cpu_computes_bf16", lambda native=native: native)
        assert resolve_dtype("auto", "cpu", "bfloat16") == (torch.bfloat16 if native else torch.float32)
        assert resolve_dtype(None, "cpu", "float32") == torch.float32
        assert resolve_dtype("auto", "cpu", None) == torch.float32
        assert resolve_dtype("float32", "cpu", "bfloat16") == torch.float32  # an explicit dtype wins
        assert resolve_dtype("auto", "cuda:0", "float32") == torch.bfloat16


@pytest.mark.skipif(not cpu_computes_bf16(), reason="this CPU has no AMX-BF16 / AVX512-BF16")
@pytest.mark.parametrize("mode", ["sd", "psd"])
def test_a_bf16_pair_runs_in_bf16_and_speculation_is_lossless_in_it(tmp_path, mode):
    target = bf16_copy(default_target_path(), tmp_path / "target")
    draft = bf16_copy(default_draft_path(), tmp_path / "draft")
    runner = ModelRunner(target, max_model_len=128, num_kv_blocks=16)
    assert runner.dtype == torch.bfloat16
    prompts = [[1] + [(7 * i + 13 * j) % 300 + 5 for j in range(6 + 3 * i)] for i in range(6)]
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    ar = Engine(target, draft, mode="ar")
    assert ar.target_runner.dtype == torch.bfloat16
    want = [r.token_ids for r in ar.generate(prompts, params)]
    spec = Engine(target, draft, mode=mode, num_speculative_tokens=3)
    assert spec.draft_runner.dtype == torch.bfloat16
    assert [r.token_ids for r in spec.generate(prompts, params)] == want


@pytest.mark.skipif(not cpu_computes_bf16(), reason="this CPU has no AMX-BF16 / AVX512-BF16")
def test_a_bf16_pair_over_the_services_streams_target_only_tokens(tmp_path):
    """The same pair as three processes on their defaults (both workers in bf16, the token channel
    carrying the draft's rows): every stream equals the in-process target-only run in bf16."""
    import sys

    from test_prefix_cache_services import join, stream_all
    from test_recovery import Stack

    target = bf16_copy(default_target_path(), tmp_path / "target")
    draft = bf16_copy(default_draft_path(), tmp_path / "draft")
    prompts = [[1] + [(5 * i + 11 * j) % 300 + 5 for j in range(4 + 5 * i)] for i in range(5)]
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    want = [r.token_ids for r in Engine(target, draft, mode="ar").generate(prompts, params)]
    stack = Stack(tmp_path, target_program=[sys.executable, "-m", "target_service", "--model", target],
                  draft_flags=("--model", draft))
    try:
        tokens, errors, threads = stream_all(stack.addr["gateway"], params, prompts)
        join(threads)
        assert errors == [None] * len(prompts)
        assert tokens == want
        for name in ("target", "draft"):
            assert "dtype auto -> bfloat16 (checkpoint: bfloat16)" in (tmp_path / f"{name}.log").read_text()
    finally:
        stack.stop()
