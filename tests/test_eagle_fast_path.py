"""The EAGLE head's drafting fast path computes what the plain path does: a folded head's fc (the
embedding half folded into the table) and a chain's one-token batches from ChainSteps give the same
logits as fc(concat(...)) over ForwardBatches; a folded head refuses to train or be saved."""

import pytest
import torch

from minedraft.assets import default_eagle_path, default_target_path
from minedraft.drafting.eagle_format import load_head
from minedraft.runner.attention import ForwardBatch, SeqSlice
from minedraft.runner.chain_batch import ChainSteps
from minedraft.runner.kv_cache import PagedKVCache

BLOCK = 16


def _cache(head, blocks):
    cfg = head.cfg
    cache = PagedKVCache(1, blocks, BLOCK, cfg.num_kv_heads, cfg.head_dim, torch.float32, "cpu")
    gen = torch.Generator().manual_seed(0)
    for t in cache.k + cache.v:
        t[BLOCK:].normal_(generator=gen)  # every slot but the null block holds some earlier K/V
    return cache


@pytest.mark.parametrize("starts", [[40, 17, 63, 5], [300, 20, 22, 25]])  # uniform; mostly padding
def test_chain_batches_and_folded_fc_match_the_plain_path(starts):
    plain, fast = (load_head(default_eagle_path(), default_target_path()) for _ in range(2))
    fast.fold_embeddings()
    steps, b = 3, len(starts)
    per_row = -(-(max(starts) + steps) // BLOCK)
    tables = [[1 + i * per_row + j for j in range(per_row)] for i in range(b)]
    caches = [_cache(plain, 1 + b * per_row) for _ in range(2)]
    chain = ChainSteps(starts, tables, BLOCK, steps, torch.device("cpu"))
    assert chain.usable == (starts[0] < 256)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        tokens = torch.randint(0, plain.cfg.vocab_size, (b,), generator=gen)
        feats = torch.randn(b, plain.cfg.hidden_size, generator=gen)
        slices = [SeqSlice(i, s + step, 1, tokens[i:i + 1]) for i, s in enumerate(starts)]
        batch = ForwardBatch(slices, tokens, tables, BLOCK, list(range(b)), torch.device("cpu"))
        want_h, want = plain.forward_paged(batch, feats, caches[0])
        fast_batch = chain.batch(step, tokens) if chain.usable else batch
        got_h, got = fast.forward_paged(fast_batch, feats, caches[1])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got_h, want_h, atol=1e-4, rtol=1e-4)
        assert torch.equal(caches[0].k[0], caches[1].k[0]) or torch.allclose(caches[0].k[0], caches[1].k[0],
                                                                              atol=1e-4)


def test_a_folded_head_refuses_training_and_saving():
    head = load_head(default_eagle_path(), default_target_path())
    head.fold_embeddings()
    with pytest.raises(RuntimeError, match="folded"):
        head.forward_dense(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, head.cfg.hidden_size))
    with pytest.raises(RuntimeError, match="folded"):
        head.own_state_dict()
