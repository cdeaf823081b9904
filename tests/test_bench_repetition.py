"""`minedraft bench --repetition`: the bundled copy-task prompts and one tiny run of the scenario."""

import json
import os
import subprocess
import sys
import sysconfig

import pytest

from minedraft.bench import repetition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bundled_prompts_are_copy_tasks_that_fit():
    from minedraft.assets import default_target_path
    from minedraft.runner import hf_adapter

    items = repetition.load_prompts()
    assert len(items) >= 16 and {it["task"] for it in items} == {"rename", "typo"}
    tok = hf_adapter.load_tokenizer(default_target_path())
    for it in items:
        assert len(tok.encode(it["prompt"])) <= repetition.MAX_PROMPT_TOKENS
        if it["task"] == "rename":  # the answer is the prompt's function, renamed
            assert "_v2" in it["expected"] or it["expected"].strip()
        else:  # the answer is the docstring the prompt quotes, one letter swap undone
            quoted = it["prompt"].split('"""')[1]
            assert quoted != it["expected"][:-3] and len(quoted) == len(it["expected"]) - 3


def test_prompt_set_rebuilds_from_the_heldout_corpus(tmp_path):
    with open(os.path.join(ROOT, "minedraft", "assets", "tiny-corpus.json"), encoding="utf-8") as f:
        corpus = json.load(f)
    root = sysconfig.get_paths()["stdlib"]
    if not all(os.path.isfile(os.path.join(root, rel)) for rel in corpus["heldout_file_list"]):
        pytest.skip("this Python's stdlib is not the corpus's")
    out = tmp_path / "p.jsonl"
    assert repetition.main(["--build", "--out", str(out)]) == 0
    assert out.read_text() == open(repetition.prompts_path(), encoding="utf-8").read()


def test_repetition_bench_runs_every_kind(tmp_path):
    out = tmp_path / "rep.json"
    modes = "ar,sd-ngram,psd-suffix,sd-model,hf-target,hf-prompt-lookup"
    cmd = [sys.executable, "-m", "minedraft", "bench", "--repetition", "--quick", "--rounds", "1",
           "--num-requests", "2", "--max-tokens", "12", "--repetition-modes", modes, "--cost-rows", "4",
           "--no-progress", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    report = json.loads(out.read_text())
    runs = {r["mode"]: r for r in report["runs"]}
    assert list(runs) == modes.split(",")
    for r in runs.values():
        assert r["tokens_per_round"] == 2 * 12 and r["throughput_tok_s"] > 0 and r["concurrency"] == 1
    assert runs["ar"]["acceptance_rate"] is None
    for mode in ("sd-ngram", "psd-suffix", "sd-model"):
        assert runs[mode]["counters"]["spec_decode_num_draft_tokens"] > 0
    assert runs["hf-prompt-lookup"]["acceptance_estimated"]
    assert {"sd-ngram_over_ar_throughput", "hf_prompt_lookup_over_hf_target_throughput",
            "sd-ngram_over_hf_prompt_lookup_throughput"} <= set(report["ratios"])
    cost = report["proposer_cost"]
    assert cost["rows"] == 4 and cost["ngram_s"] > 0 and cost["target_verify_s"] > 0
    assert "proposer cost at 4 rows" in proc.stdout
