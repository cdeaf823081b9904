"""Native PyTorch implementation of the Llama / Mistral / Qwen2 / Qwen3 decoder family.

Module and parameter names follow the Hugging Face checkpoints so that safetensors load as they are.
Every forward runs a packed stream of new tokens of several sequences at their own positions (see
attention.py), which covers ragged prefill, one-token decode, draft steps and (k+1)-token
verification alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minedraft.runner.attention import ForwardBatch
from minedraft.runner.hf_adapter import ModelConfig
from minedraft.runner.kv_cache import PagedKVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()  # the variance in fp32, as the reference does
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    raise ValueError(f"model: rope scaling {kind!r} is not supported (default, linear, llama3)")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.window = cfg.sliding_windows[layer]
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, batch: ForwardBatch, cache: PagedKVCache):
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = (q * cos) + (rotate_half(q) * sin)
        k = (k * cos) + (rotate_half(k) * sin)
        cache.write(self.layer, batch.write_slots, k, v)
        return self.o_proj(batch.attend(self.layer, q, k, v, cache, self.window))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, batch, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, batch, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Model(nn.Module):
    """The causal LM. `model.*` and `lm_head` match the Hugging Face parameter names."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def _rope(self, positions: torch.Tensor, dtype):
        freqs = positions[:, None].float() * self.inv_freq.float()  # [N, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [N, 1, D]: broadcast over heads
        return emb.cos().to(dtype), emb.sin().to(dtype)

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, cache: PagedKVCache, with_features: bool = False,
                feature_layers: tuple[int, ...] | None = None):
        """The packed tokens of `batch` -> logits [M, V] (fp32) at batch.logits_index [M].
        with_features: also every token's feature [N, width], only computed when an EAGLE draft asks:
        feature_layers None: the final-normed hidden state, the state the LM head reads (EAGLE-1, width H);
        else the residual-stream states entering those layers, concatenated in that order (EAGLE-3's
        auxiliary states, width len * H; transformers' hidden_states[i] for i in feature_layers)."""
        x = self.model.embed_tokens(batch.input_ids)  # [N, hidden]
        cos, sin = self._rope(batch.positions, x.dtype)
        aux = {}
        for i, layer in enumerate(self.model.layers):
            if with_features and feature_layers and i in feature_layers:
                aux[i] = x
            x = layer(x, cos, sin, batch, cache)
        if with_features:
            normed = self.model.norm(x)
            logits = self.lm_head(normed[batch.logits_index]).float()
            if feature_layers:
                return logits, torch.cat([aux[i] for i in feature_layers], dim=-1)
            return logits, normed
        x = self.model.norm(x[batch.logits_index])  # per-token norm: only the rows whose logits we need
        return self.lm_head(x).float()


def check_feature_layers(layers, num_layers: int) -> tuple[int, ...] | None:
    """EAGLE-3's auxiliary layer ids, checked against the target's depth (None or empty: EAGLE-1's
    final-normed state)."""
    if not layers:
        return None
    layers = tuple(int(i) for i in layers)
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"feature_layers: {bad} outside the target's layers [0, {num_layers}) (the state "
                         f"entering layer i is exported)")
    return layers
