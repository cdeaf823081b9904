"""`minedraft bench --draft-method`: sd/psd draft with an EAGLE head (or a model-free proposer), in process
and over the services, beside ar, in one run."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("method", ["eagle", "ngram"])
def test_bench_runs_sd_and_psd_with_another_draft_method(tmp_path, method):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "minedraft", "bench", "--draft-method", method, "--modes", "ar,sd-inproc,psd",
           "--rounds", "1", "--matrix", "off", "--num-requests", "2", "--max-tokens", "8", "--no-progress",
           "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    report = json.loads(out.read_text())
    assert report["config"]["draft_method"] == method
    assert (report["config"]["draft"] or "").endswith("tiny-eagle") == (method == "eagle")
    runs = {r["mode"]: r for r in report["runs"]}
    assert set(runs) == {"ar", "sd-inproc", "psd"}
    for mode in ("sd-inproc", "psd"):
        assert runs[mode]["tokens_per_round"] == 2 * 8
        if method == "eagle":  # a model-free proposer may find nothing to copy in these prompts
            assert runs[mode]["counters"]["spec_decode_num_draft_tokens"] > 0
    assert f"({method})" in proc.stdout
