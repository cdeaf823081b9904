"""Paths to the tiny target/draft pair and held-out prompts bundled in ``minedraft/assets``.

The pair is rebuilt by ``minedraft train-tiny`` (see ``minedraft/train_tiny.py``); these helpers let
tests, benchmarks and the CLI find it without hard-coding paths.
"""

from __future__ import annotations

import json
from pathlib import Path


def assets_dir() -> Path:
    return Path(__file__).resolve().parent / "assets"


def default_target_path() -> str:
    return str(assets_dir() / "tiny-target")


def default_draft_path() -> str:
    return str(assets_dir() / "tiny-draft")


def default_eagle_path() -> str:
    """The EAGLE-1 head trained for tiny-target (`minedraft train-eagle`)."""
    return str(assets_dir() / "tiny-eagle")


def heldout_prompts_path() -> str:
    return str(assets_dir() / "heldout_prompts.jsonl")


def load_heldout_prompts(n: int | None = None) -> list[str]:
    """The first ``n`` held-out code prompts (all of them when ``n`` is None), in file order."""
    prompts = []
    with open(heldout_prompts_path(), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                prompts.append(json.loads(line)["prompt"])
    return prompts if n is None else prompts[:n]
