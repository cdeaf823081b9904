"""`minedraft bench --mixed-pool`: one tiny run of the three stacks (model, ngram, mixed) in fresh
processes, and what its report holds."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mixed_pool_bench_runs_the_three_pools(tmp_path):
    out = tmp_path / "mixed.json"
    cmd = [sys.executable, "-m", "minedraft", "bench", "--mixed-pool", "--rounds", "1", "--num-requests", "4",
           "--max-tokens", "12", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    report = json.loads(out.read_text())["mixed_pool"]
    runs = {r["pool"]: r for r in report["runs"]}
    assert list(runs) == ["model", "ngram", "mixed"]
    for name, r in runs.items():
        assert r["best_tok_s"] > 0 and r["services_cpu_ms_per_token"] > 0
        drafted = {m for m, counts in r["by_method_rounds"][0].items() if counts[0] > 0}
        assert drafted <= set(r["kinds"]), (name, r["by_method_rounds"])  # each pool drafts with its kinds only
    assert "model" in {m for m, c in runs["model"]["by_method_rounds"][0].items() if c[0] > 0}  # ngram may
    # find nothing to copy in 12 tokens, and the mixed pool may route a request there
    assert report["best_single"] in ("model", "ngram") and report["mixed_over_best_single"] > 0
    assert "mixed / best single" in proc.stdout
