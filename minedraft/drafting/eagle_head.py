"""An EAGLE-1 draft head (Li et al., 2024; SafeAILab/EAGLE, eagle/model/cnets.py).

    feature f_t: the target's final-normed hidden state at position t (what its LM head reads)
    x = fc(concat(embed(token_{t+1}), f_t))        fc: [H, 2H], with or without bias
    h = one decoder layer of the target's architecture, without its input norm (layer 0 in EAGLE)
    h predicts f_{t+1}; logits = target's lm_head(h), no final norm

The embeddings and LM head are the target's, frozen (loaded from its checkpoint: nothing else of it).
With a reduced draft vocabulary (EAGLE-3's d2t), the LM head is the head's own [draft_vocab, H]
(initialised from the target's rows for those tokens): logits cover draft indices, which `to_target`
maps to target ids, and `full_q` spreads a q over the draft vocabulary onto the target's, zeros
elsewhere, so rejection sampling against the target stays exact.
`forward_paged` runs over the project's paged KV cache (drafting); `forward_dense` is the same math
with a plain causal mask over whole sequences (training). A drafting worker folds fc's embedding half
into the embedding table once (`fold_embeddings`): a pass then runs one [H, H] product on the feature
instead of a concat and a [2H, H] product."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minedraft.drafting.head_common import HeadVocabAndRope
from minedraft.runner.attention import ForwardBatch
from minedraft.runner.hf_adapter import ModelConfig
from minedraft.runner.kv_cache import PagedKVCache
from minedraft.runner.model import DecoderLayer, rope_inv_freq


class EagleHead(HeadVocabAndRope, nn.Module):
    def __init__(self, cfg: ModelConfig, fc_bias: bool = True, draft_ids: torch.Tensor | None = None):
        """draft_ids: the target ids of the draft vocabulary, ascending (None: the full vocabulary)."""
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=fc_bias)
        self.layer = DecoderLayer(cfg, 0)
        self.layer.input_layernorm = nn.Identity()  # EAGLE's layer 0: fc's output enters attention as is
        # Frozen, the target's: filled by eagle_format.load_head (not part of the head's own weights).
        self.embed_tokens = nn.Embedding(cfg.vocab_size, h)
        self.reduced = draft_ids is not None
        self.lm_head = nn.Linear(h, len(draft_ids) if self.reduced else cfg.vocab_size, bias=False)
        self.embed_tokens.requires_grad_(False)
        self.lm_head.requires_grad_(self.reduced)  # reduced: the head's own, trained
        self.register_buffer("draft_ids", draft_ids.long() if self.reduced else torch.zeros(0, dtype=torch.long))
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.folded = False

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @torch.no_grad()
    def fold_embeddings(self) -> None:
        """For drafting only: fc(concat(embed(t), f)) = E'[t] + W_f f, with E' = embed @ W_e^T + bias.
        E' replaces the embedding table in place (same size: the head reads embeddings only through
        fc) and W_f replaces fc. A folded head can draft, not train or be saved."""
        if self.folded:
            return
        h, w = self.cfg.hidden_size, self.fc.weight
        table = self.embed_tokens.weight.float() @ w[:, :h].float().T
        if self.fc.bias is not None:
            table += self.fc.bias.float()
        self.embed_tokens.weight.copy_(table.to(w.dtype))
        feature_fc = nn.Linear(h, h, bias=False, device=w.device, dtype=w.dtype)
        feature_fc.weight.copy_(w[:, h:])
        self.fc = feature_fc
        self.folded = True

    def _check_unfolded(self, what: str) -> None:
        if self.folded:
            raise RuntimeError(f"EagleHead: {what} needs the head's own fc; this one was folded for drafting")

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's trained weights under the EAGLE-1 key names (fc.*, layers.0.*)."""
        self._check_unfolded("saving")
        out = {}
        for name, value in self.state_dict().items():
            if name.startswith("fc."):
                out[name] = value
            elif name.startswith("layer."):
                out["layers.0." + name[len("layer."):]] = value
        if self.reduced:  # EAGLE-3's names and encoding: d2t offsets (target = index + d2t), t2d mask
            out["lm_head.weight"] = self.lm_head.weight
            out["d2t"] = self.draft_ids - torch.arange(len(self.draft_ids), device=self.draft_ids.device)
            t2d = torch.zeros(self.cfg.vocab_size, dtype=torch.bool, device=self.draft_ids.device)
            out["t2d"] = t2d.index_fill_(0, self.draft_ids, True)
        return out

    variant = "eagle1"
    feature_layers: tuple[int, ...] = ()  # the target's final-normed state (not EAGLE-3's auxiliary layers)

    @property
    def feature_width(self) -> int:
        """Width of the target's feature this head reads (H)."""
        return self.cfg.hidden_size

    def fuse(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if self.folded:
            return torch.addmm(self.embed_tokens(tokens), features.to(self.dtype), self.fc.weight.T)
        return self.fc(torch.cat((self.embed_tokens(tokens), features.to(self.fc.weight.dtype)), dim=-1))

    @torch.inference_mode()
    def forward_paged(self, batch: ForwardBatch, features: torch.Tensor, cache: PagedKVCache):
        """batch's packed tokens [N] with their features [N, H] -> (hidden [M, H], logits [M, V] fp32)
        at batch.logits_index; the layer's K/V are written to `cache` (layer 0)."""
        x = self.fuse(batch.input_ids, features)
        cos, sin = self._rope(batch.positions, x.dtype)
        h = self.layer(x, cos, sin, batch, cache)[batch.logits_index]
        return h, self.lm_head(h).float()

    def forward_dense(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """tokens [B, T], features [B, T, H] (entry t: token_{t+1} and f_t) -> predicted features [B, T, H]."""
        self._check_unfolded("training")
        b, t = tokens.shape
        x = self.fuse(tokens, features)
        attn = self.layer.self_attn
        cos, sin = self._rope(torch.arange(t, device=x.device), x.dtype)  # [T, 1, D]

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
        x = x + attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        return x + self.layer.mlp(self.layer.post_attention_layernorm(x))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
