"""The GPU check's step-time script and report, dry-run on CPU with tiny shapes (--cpu-smoke): the
JSON they write has issue 14's shape, and the report keeps only what was measured."""

import json

from minedraft.bench import gpu_report, step_times


def test_cpu_smoke_writes_the_contract(tmp_path):
    steps = tmp_path / "steps.json"
    assert step_times.main(["--cpu-smoke", "--json", str(steps), "--batches", "1,3", "--iters", "1",
                            "--context", "10", "-k", "3"]) == 0
    data = json.loads(steps.read_text())
    assert data["machine"]["cpu_smoke"] is True and data["machine"]["gpu"] is None
    rows = data["step_times"]
    # target: decode (q=1) and verify (q=k+1); draft: one-token steps; each with graphs off and on
    want = {("qwen3-8b-shape", "target", b, q, g) for b in (1, 3) for q in (1, 4) for g in (False, True)}
    want |= {("qwen3-0.6b-shape", "draft", b, 1, g) for b in (1, 3) for g in (False, True)}
    assert {(r["model"], r["role"], r["batch"], r["q"], r["cuda_graphs"]) for r in rows} == want
    for r in rows:
        assert r["ms"] > 0 and r["hf_ms"] > 0 and r["roofline_ms"] > 0 and r["context"] == 10
        assert r["graphs_captured"] is False  # CPU: the static path runs, nothing is captured

    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"runs": [{"mode": "psd", "throughput_tok_s": 10.0}], "machine": {"device": "cpu"},
                                 "ratios": {"psd_over_sd_throughput": 1.2, "paper_psd_over_sd_throughput": 1.7}}))
    out = tmp_path / "bench_gpu.json"
    assert gpu_report.main(["--steps", str(steps), "--bench", str(bench), "--json", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert merged["machine"]["gpu"] is None and merged["machine"]["bench"] == {"device": "cpu"}
    assert merged["step_times"] == rows
    assert merged["ratios"] == {"psd_over_sd_throughput": 1.2, "paper_psd_over_sd_throughput": 1.7}
    assert {(s["model"], s["batch"], s["q"]) for s in merged["graph_speedups"]} == \
        {(m, b, q) for m, _, b, q, _ in want}
    assert "notes" not in merged


def test_report_records_a_missing_bench_instead_of_numbers(tmp_path):
    steps = tmp_path / "steps.json"
    steps.write_text(json.dumps({"machine": {"gpu": "X"}, "step_times": []}))
    out = tmp_path / "out.json"
    gpu_report.main(["--steps", str(steps), "--bench", str(tmp_path / "absent.json"), "--json", str(out)])
    merged = json.loads(out.read_text())
    assert merged["ratios"] == {} and merged["runs"] == []
    assert "FileNotFoundError" in merged["notes"]["bench"]
