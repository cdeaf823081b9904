"""Small random checkpoints for tests, one per supported family, plus a correlated draft."""

from __future__ import annotations

import torch

from minedraft.runner.hf_adapter import save_random_model

COMMON = dict(vocab_size=101, hidden_size=64, intermediate_size=128, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=96, bos_token_id=1, eos_token_id=2)


def family_config(family: str, num_layers: int = 2):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    if family == "llama":
        return LlamaConfig(num_hidden_layers=num_layers, architectures=["LlamaForCausalLM"],
                           rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                           **COMMON)
    if family == "qwen2":
        return Qwen2Config(num_hidden_layers=num_layers, architectures=["Qwen2ForCausalLM"],
                           tie_word_embeddings=True, **COMMON)
    if family == "qwen3":
        return Qwen3Config(num_hidden_layers=num_layers, architectures=["Qwen3ForCausalLM"], head_dim=24,
                           **COMMON)
    if family == "mistral":
        return MistralConfig(num_hidden_layers=num_layers, architectures=["MistralForCausalLM"],
                             sliding_window=24, **COMMON)
    raise ValueError(family)


FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


def save_pair(folder, family: str = "llama", noise: float = 0.02, seed: int = 0):
    """A target and a draft that is the target plus noise: they agree often but not always, so that
    both acceptance and rejection paths run. Returns (target_dir, draft_dir, reference_model)."""
    target_dir, draft_dir = folder / "target", folder / "draft"
    ref = save_random_model(family_config(family), target_dir, seed=seed)
    torch.manual_seed(seed + 1)
    draft = save_random_model(family_config(family), draft_dir, seed=seed)
    with torch.no_grad():
        for (_name, p), (_, q) in zip(ref.named_parameters(), draft.named_parameters()):
            q.copy_(p + noise * torch.randn_like(p) * (p.std() if p.numel() > 1 else 0))
    draft.save_pretrained(str(draft_dir))
    return str(target_dir), str(draft_dir), ref
