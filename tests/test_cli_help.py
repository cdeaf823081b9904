"""The faces a newcomer touches first: every --help answers at once (before torch is imported), shows
its defaults, and `minedraft --version` prints the version."""

from __future__ import annotations

import subprocess
import sys

import pytest

import minedraft

# Runs the CLI in a fresh interpreter and reports whether torch got imported on the way.
PROBE = ("import sys\nfrom minedraft.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
         "except SystemExit as exc:\n    code = exc.code\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
         "sys.exit(code or 0)\n")


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv, shows", [
    (["--help"], ["up", "serve", "generate", "bench"]),
    (["up", "--help"], ["--mode {ar,sd,psd}", "(default: psd)", "(default: auto)", "(default: 50052)"]),
    (["serve", "--help"], ["target", "draft", "gateway"]),
    (["serve", "target", "--help"], ["--max-num-seqs", "(default: 64)", "(default: 50052)"]),
    (["serve", "draft", "--help"], ["--max-k", "(default: 8)", "(default: 50053)"]),
    (["serve", "gateway", "--help"], ["(default: 50051)", "(default: 64)", "(default: 1024)"]),
])
def test_help_answers_before_torch_and_shows_defaults(argv, shows):
    out = run(*argv)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for s in shows:
        assert s in text, s
    assert out.stdout.rstrip().endswith("NO-TORCH")


def test_a_bad_value_is_refused_before_torch_naming_the_field():
    out = run("serve", "draft", "--max-k", "0")
    assert out.returncode == 2 and "max_k:" in out.stderr, out.stderr
    assert out.stdout.rstrip().endswith("NO-TORCH")


def test_version():
    out = subprocess.run([sys.executable, "-m", "minedraft", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"minedraft {minedraft.__version__}"


def test_help_texts_describe_the_project_not_its_history():
    out = subprocess.run([sys.executable, "-m", "minedraft", "train-tiny", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "issue" not in out.stdout.lower()
