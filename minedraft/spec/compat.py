"""The one rule for which drafts fit a target: `Engine` and the gateway's draft pool both apply it.

Only two facts travel over gRPC (`WorkerInfo.vocab_size` and `.tokenizer_fingerprint`), so the rule
is written on them, and the in-process engine computes the same two facts from its checkpoints:
- the draft's model vocabulary is the target's or a prefix of it (Qwen2.5-0.5B's 151,936 ids against
  Qwen2.5-7B's 152,064: the same tokenizer, embeddings padded differently);
- the two tokenizers are the same: equal digests of their own (token, id) pairs, which do not depend on
  the embedding size. A draft that ships no tokenizer is taken to use the target's: it never tokenizes,
  it only reads the target's ids.
"""

from __future__ import annotations

import hashlib

from minedraft.runner import hf_adapter

NO_TOKENIZER = ""


def tokenizer_digest(tokenizer) -> str:
    """What a worker reports as its tokenizer_fingerprint: a hash of the (token, id) pairs."""
    fingerprint = hf_adapter.tokenizer_fingerprint(tokenizer)
    return hashlib.sha1(repr(fingerprint).encode()).hexdigest() if fingerprint else NO_TOKENIZER


def check_draft_fits_target(draft_vocab: int, target_vocab: int, draft_digest: str, target_digest: str) -> None:
    """Raise ValueError (naming the field `draft`) when the draft's token ids would not mean the target's."""
    if draft_vocab > target_vocab:
        raise ValueError(f"draft: vocabulary size {draft_vocab} is larger than the target's {target_vocab}; "
                         "a draft must use the target's vocabulary or a prefix of it")
    if draft_digest != NO_TOKENIZER and draft_digest != target_digest:
        raise ValueError("draft: its tokenizer differs from the target's (token ids would not mean the same)")
