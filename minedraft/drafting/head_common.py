"""What the EAGLE-1 (eagle_head.py) and EAGLE-3 (eagle3_head.py) heads share: the reduced draft
vocabulary (EAGLE-3's d2t: the head's LM head covers `draft_ids` of the target's vocabulary) and the
rotary embedding of their one decoder layer. A mixin over nn.Module; the head provides `lm_head`,
`draft_ids`, `reduced`, `cfg` (the target's ModelConfig) and the `inv_freq` buffer."""

from __future__ import annotations

import torch


class HeadVocabAndRope:
    @property
    def draft_vocab_size(self) -> int:
        return self.lm_head.out_features

    def to_target(self, index: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary indices -> target token ids."""
        return self.draft_ids[index] if self.reduced else index

    def full_q(self, q: torch.Tensor) -> torch.Tensor:
        """q [..., draft_vocab] -> [..., target vocab] with zeros outside the draft vocabulary."""
        if not self.reduced:
            return q
        out = q.new_zeros(*q.shape[:-1], self.cfg.vocab_size)
        return out.index_copy_(-1, self.draft_ids, q)

    def _rope(self, positions: torch.Tensor, dtype):
        freqs = positions[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)[..., None, :]  # broadcast over heads
        return emb.cos().to(dtype), emb.sin().to(dtype)
