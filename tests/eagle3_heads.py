"""Random EAGLE-3 heads written in the published layout (yuhuili/EAGLE3-*, the EAGLE-3 Qwen heads: a
LlamaForCausalLMEagle3 config.json with draft_vocab_size, weights fc / midlayer.* / norm / lm_head /
d2t / t2d), and a straightforward dense reference of the published formula (vLLM's llama_eagle3.py),
written here from scratch: no minedraft module is used, so the head's own code is checked against it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

HEAD_INTERMEDIATE = 96  # not the target's: the head's own config says it
EPS = 1e-6
THETA = 10000.0


def write_head(folder, target_config, draft_ids=None, seed=0, layers=None, bin_file=False, scale=0.08,
               extra_config=None) -> dict[str, torch.Tensor]:
    """A random EAGLE-3 head for a target (its transformers config); returns its tensors (fp32)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h, v = target_config.hidden_size, target_config.vocab_size
    nh, nkv = target_config.num_attention_heads, target_config.num_key_value_heads
    hd = h // nh  # a Llama midlayer: head_dim from the head's config (not a Qwen3 target's head_dim)
    d = v if draft_ids is None else len(draft_ids)
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * scale

    def norm_weight():
        return 1.0 + 0.1 * torch.randn(h, generator=gen)

    state = {
        "fc.weight": rand(h, 3 * h),
        "midlayer.input_layernorm.weight": norm_weight(),
        "midlayer.hidden_norm.weight": norm_weight(),
        "midlayer.self_attn.q_proj.weight": rand(nh * hd, 2 * h),
        "midlayer.self_attn.k_proj.weight": rand(nkv * hd, 2 * h),
        "midlayer.self_attn.v_proj.weight": rand(nkv * hd, 2 * h),
        "midlayer.self_attn.o_proj.weight": rand(h, nh * hd),
        "midlayer.post_attention_layernorm.weight": norm_weight(),
        "midlayer.mlp.gate_proj.weight": rand(HEAD_INTERMEDIATE, h),
        "midlayer.mlp.up_proj.weight": rand(HEAD_INTERMEDIATE, h),
        "midlayer.mlp.down_proj.weight": rand(h, HEAD_INTERMEDIATE),
        "norm.weight": norm_weight(),
        "lm_head.weight": rand(d, h) * 4,  # peaked enough that the draft's choices matter
    }
    if draft_ids is not None:
        ids = torch.as_tensor(draft_ids).long()
        state["d2t"] = ids - torch.arange(len(ids))
        state["t2d"] = torch.zeros(v, dtype=torch.bool).index_fill_(0, ids, True)
    config = {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "bias": False,
        "hidden_size": h, "intermediate_size": HEAD_INTERMEDIATE, "num_attention_heads": nh,
        "num_key_value_heads": nkv, "num_hidden_layers": 1, "rms_norm_eps": EPS, "rope_theta": THETA,
        "max_position_embeddings": target_config.max_position_embeddings, "vocab_size": v,
        "draft_vocab_size": d, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": target_config.bos_token_id, "eos_token_id": target_config.eos_token_id,
    }
    if layers is not None:
        config["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(layers), "use_aux_hidden_state": True}
    config.update(extra_config or {})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if bin_file:  # yuhuili/EAGLE3-LLaMA3.1-Instruct-8B ships pytorch_model.bin
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file(state, str(folder / "model.safetensors"))
    return state


def _rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def _rope(x, positions):
    hd = x.shape[-1]
    inv = 1.0 / (THETA ** (torch.arange(0, hd, 2).double() / hd))
    ang = positions.double()[:, None] * inv[None]  # [T, hd/2]
    cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None], torch.cat([ang.sin()] * 2, -1)[:, None]
    x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def reference(state, embed, tokens, hidden, nh, nkv):
    """The published EAGLE-3 step over a whole sequence of entries, in float64: entry j reads target
    token tokens[j] and hidden[j], either the target's three states [3H] (through fc) or the head's own
    previous pre-norm output [H] (as is). Returns (pre-norm outputs [T, H], logits [T, D])."""
    W = {k: v.double() for k, v in state.items() if v.is_floating_point()}
    h_size = W["norm.weight"].shape[0]
    hs = torch.stack([x.double() @ W["fc.weight"].T if x.shape[-1] == 3 * h_size else x.double() for x in hidden])
    t = hs.shape[0]
    e = _rms(embed.double()[torch.as_tensor(tokens)], W["midlayer.input_layernorm.weight"])
    x = torch.cat([e, _rms(hs, W["midlayer.hidden_norm.weight"])], -1)  # [T, 2H]
    hd = W["midlayer.self_attn.q_proj.weight"].shape[0] // nh
    q = (x @ W["midlayer.self_attn.q_proj.weight"].T).view(t, nh, hd)
    k = (x @ W["midlayer.self_attn.k_proj.weight"].T).view(t, nkv, hd)
    v = (x @ W["midlayer.self_attn.v_proj.weight"].T).view(t, nkv, hd)
    pos = torch.arange(t)
    q, k = _rope(q, pos), _rope(k, pos)
    k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / hd ** 0.5
    scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(t, nh * hd)
    r = hs + attn @ W["midlayer.self_attn.o_proj.weight"].T  # residual: the hidden before hidden_norm
    m = _rms(r, W["midlayer.post_attention_layernorm.weight"])
    mlp = torch.nn.functional.silu(m @ W["midlayer.mlp.gate_proj.weight"].T) * (m @ W["midlayer.mlp.up_proj.weight"].T)
    out = r + mlp @ W["midlayer.mlp.down_proj.weight"].T
    return out, _rms(out, W["norm.weight"]) @ W["lm_head.weight"].T
