"""Checkpoints with real shapes (random weights) for the real-scale tests and the figures script.

`qwen3_0_6b_shape`: Qwen3-0.6B's shapes (28 layers, hidden 1024, 16 heads, 8 KV heads of 128,
vocabulary 151,936, max_position_embeddings 40,960). Drafts: a small same-vocabulary Qwen3, one
with a vocabulary that is a prefix of the target's (the Qwen2.5-0.5B/7B situation), one larger.
Random weights at transformers' default scale; nothing is downloaded."""

from __future__ import annotations

import pathlib

QWEN3_0_6B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                  rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6, bos_token_id=151643,
                  eos_token_id=151645)
SMALL_DRAFT = dict(QWEN3_0_6B, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=64)


def save_qwen3(folder: pathlib.Path, seed: int = 0, **overrides) -> str:
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    if (folder / "config.json").is_file():
        return str(folder)
    torch.manual_seed(seed)
    cfg = Qwen3Config(architectures=["Qwen3ForCausalLM"], **{**QWEN3_0_6B, **overrides})
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(str(folder))
    del model
    return str(folder)


def target_0_6b(root: pathlib.Path) -> str:
    return save_qwen3(root / "qwen3-0.6b-shape", seed=0)


def draft_small(root: pathlib.Path, vocab_size: int = QWEN3_0_6B["vocab_size"]) -> str:
    return save_qwen3(root / f"qwen3-draft-v{vocab_size}", seed=1, **{**SMALL_DRAFT, "vocab_size": vocab_size})
