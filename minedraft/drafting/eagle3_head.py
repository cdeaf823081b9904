"""An EAGLE-3 draft head (Li et al., 2025; SafeAILab/EAGLE, eagle/model/cnets.py; vLLM's llama_eagle3.py).

    feature g_t: the concat of the target's residual-stream states entering its layers (a, b, c) at
        position t (default (2, L // 2, L - 3) for a target of L layers, or the config's
        eagle_config.eagle_aux_hidden_state_layer_ids, taken in ascending order as vLLM collects them),
        width 3H
    h_t = fc(g_t)                                   fc: [H, 3H], no bias; the first step only
    e = input_layernorm(embed(token_{t+1}))
    r = h_t                                         (config norm_before_residual: r = hidden_norm(h_t))
    a = self_attn(concat(e, hidden_norm(h_t)))      q/k/v: [., 2H], o: [H, .]
    r = r + a
    out = r + mlp(post_attention_layernorm(r))      the "pre-norm" hidden
    logits = lm_head(norm(out))                     lm_head: the head's own [D, H] over its draft vocabulary
    next step: h = out (fed back as is, no fc), with the drafted token

The midlayer is Llama-style whatever the target's family (no q/k norm unless the weights carry one),
as vLLM runs the published Llama 3 and Qwen EAGLE-3 heads. Embeddings are the target's, frozen. The
draft vocabulary maps to target ids through d2t (`to_target`), and `full_q` spreads a q over it onto
the target's vocabulary with zeros elsewhere, so rejection sampling against the target stays exact.
The worker-facing interface is EagleHead's (forward_paged, to_target, full_q, draft_vocab_size,
feature_width, feature_layers); `forward_dense` is the same math over whole sequences (tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minedraft.drafting.head_common import HeadVocabAndRope
from minedraft.runner.attention import ForwardBatch
from minedraft.runner.hf_adapter import ModelConfig
from minedraft.runner.kv_cache import PagedKVCache
from minedraft.runner.model import MLP, Attention, RMSNorm, rope_inv_freq


def default_aux_layers(num_target_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's auxiliary layers (vLLM's get_eagle3_aux_hidden_state_layers)."""
    return 2, num_target_layers // 2, num_target_layers - 3


class MidLayer(nn.Module):
    """EAGLE-3's one decoder layer: attention over concat(embeds, hidden) [2H], names as published."""

    def __init__(self, cfg: ModelConfig, qk_norm: bool = False):
        super().__init__()
        h = cfg.hidden_size
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.hidden_norm = RMSNorm(h, cfg.rms_norm_eps)
        attn = Attention(cfg, 0)
        for name in ("q_proj", "k_proj", "v_proj"):
            old = getattr(attn, name)
            setattr(attn, name, nn.Linear(2 * h, old.out_features, bias=old.bias is not None))
        if not qk_norm:
            attn.q_norm = attn.k_norm = None
        self.self_attn = attn
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)


class Eagle3Head(HeadVocabAndRope, nn.Module):
    variant = "eagle3"

    def __init__(self, cfg: ModelConfig, aux_layers: tuple[int, ...], draft_ids: torch.Tensor | None = None,
                 norm_before_residual: bool = False, qk_norm: bool = False, fc_bias: bool = False):
        """cfg: the head's config (Llama-style, one layer); aux_layers: the target layers whose entering
        states form the feature; draft_ids: the target ids of the draft vocabulary, ascending (None: the
        full vocabulary)."""
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.feature_layers = tuple(aux_layers)
        self.norm_before_residual = norm_before_residual
        self.fc = nn.Linear(len(self.feature_layers) * h, h, bias=fc_bias)
        self.midlayer = MidLayer(cfg, qk_norm)
        self.norm = RMSNorm(h, cfg.rms_norm_eps)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, h)  # the target's, frozen (eagle_format fills it)
        self.embed_tokens.requires_grad_(False)
        self.reduced = draft_ids is not None
        self.lm_head = nn.Linear(h, len(draft_ids) if self.reduced else cfg.vocab_size, bias=False)
        self.register_buffer("draft_ids", draft_ids.long() if self.reduced else torch.zeros(0, dtype=torch.long))
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.config_json: dict | None = None  # the folder's config.json, when loaded from one

    # -- the worker's interface (as EagleHead's) --------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def fold_embeddings(self) -> None:
        """Nothing to fold: EAGLE-3's embeddings pass through input_layernorm, not through fc."""

    @property
    def feature_width(self) -> int:
        """Width of the target's feature this head reads (3H); its own fed-back hidden is H wide."""
        return self.fc.in_features

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's weights under the published EAGLE-3 names (fc, midlayer.*, norm, lm_head, d2t, t2d)."""
        out = {k: v for k, v in self.state_dict().items()
               if k.startswith(("fc.", "midlayer.", "norm.", "lm_head."))}
        if self.reduced:
            out["d2t"] = self.draft_ids - torch.arange(len(self.draft_ids), device=self.draft_ids.device)
            t2d = torch.zeros(self.cfg.vocab_size, dtype=torch.bool, device=self.draft_ids.device)
            out["t2d"] = t2d.index_fill_(0, self.draft_ids, True)
        return out

    # -- the math ---------------------------------------------------------------------------------------
    def _inputs(self, tokens: torch.Tensor, features: torch.Tensor):
        """-> (attention input [.., 2H], residual [.., H]). features: the target's [.., 3H] (through fc)
        or the head's own previous output [.., H] (as is)."""
        dtype = self.fc.weight.dtype
        h = features.to(dtype)
        if h.shape[-1] == self.feature_width:
            h = self.fc(h)
        elif h.shape[-1] != self.cfg.hidden_size:
            raise ValueError(f"features: width {h.shape[-1]}, an EAGLE-3 head reads {self.feature_width} (the "
                             f"target's states entering layers {list(self.feature_layers)}) or {self.cfg.hidden_size}")
        mid = self.midlayer
        normed = mid.hidden_norm(h)
        residual = normed if self.norm_before_residual else h
        x = torch.cat((mid.input_layernorm(self.embed_tokens(tokens)), normed), dim=-1)
        return x, residual

    def _finish(self, residual: torch.Tensor, attn_out: torch.Tensor):
        mid = self.midlayer
        r = residual + attn_out
        out = r + mid.mlp(mid.post_attention_layernorm(r))
        return out, self.lm_head(self.norm(out))

    @torch.inference_mode()
    def forward_paged(self, batch: ForwardBatch, features: torch.Tensor, cache: PagedKVCache):
        """batch's packed tokens [N] with their features [N, 3H] (or the head's own [N, H]) ->
        (pre-norm hidden [M, H], logits [M, D] fp32) at batch.logits_index; K/V written to `cache`."""
        x, residual = self._inputs(batch.input_ids, features)
        cos, sin = self._rope(batch.positions, x.dtype)
        attn = self.midlayer.self_attn(x, cos, sin, batch, cache)
        idx = batch.logits_index  # the K/V of every row is written; the MLP runs only where logits are read
        out, logits = self._finish(residual[idx], attn[idx])
        return out, logits.float()

    def forward_dense(self, tokens: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, T], features [B, T, 3H or H] (entry t: token_{t+1} and g_t) -> (pre-norm hidden
        [B, T, H], logits [B, T, D]) with a plain causal mask."""
        b, t = tokens.shape
        x, residual = self._inputs(tokens, features)
        attn = self.midlayer.self_attn
        cos, sin = self._rope(torch.arange(t, device=x.device), x.dtype)

        def heads(proj, n):
            return proj(x).view(b, t, n, attn.head_dim)

        q, k, v = heads(attn.q_proj, attn.num_heads), heads(attn.k_proj, attn.num_kv_heads), heads(
            attn.v_proj, attn.num_kv_heads)
        if attn.q_norm is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=True, enable_gqa=attn.num_heads != attn.num_kv_heads)
        return self._finish(residual, attn.o_proj(out.transpose(1, 2).reshape(b, t, -1)))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
