"""`minedraft bench --long-prompt`: one tiny run of the scenario, both ways of counting a gap reported."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_long_prompt_bench_reports_both_gap_measures(tmp_path):
    out = tmp_path / "long.json"
    cmd = [sys.executable, "-m", "minedraft", "bench", "--long-prompt", "--long-rounds", "1", "--long-streams", "3",
           "--long-stream-tokens", "320", "--long-prompt-tokens", "160", "--long-chunk", "32", "--no-progress",
           "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    report = json.loads(out.read_text())["long_prompt"]
    assert report["settings"]["long_prompt_tokens"] == 160 and report["settings"]["streams"] == 3
    assert set(report["runs"]) == {"whole", "staged-32"}
    for run in report["runs"].values():
        for key in ("itl_p50_s", "itl_p99_outside_s", "chunk_gap_p50_s", "long_ttft_s"):
            assert run[key] > 0, key
        assert run["itl_p99_outside_over_p50"] > 0
        assert run["itl_max_during_s"] >= run["itl_p99_during_s"]
    staged = report["runs"]["staged-32"]  # five chunks, while the streams (320 tokens each) still run
    assert staged["itl_p99_during_s"] > 0 and staged["chunk_gap_p99_during_over_p50"] > 0
    assert "floor/p50" in proc.stdout and "staged-32" in proc.stdout
