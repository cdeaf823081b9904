"""The native runner's logits equal transformers' on the same weights, for every supported family."""

import pytest
import torch

from minedraft.runner.hf_adapter import save_random_model
from minedraft.runner.model_runner import ModelRunner

from model_factory import FAMILIES, family_config

TOL = 1e-4


def reference_logits(ref, ids):
    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("family,block_size,chunk", [(f, 16, None) for f in FAMILIES]
                         + [("llama", 4, 7), ("mistral", 5, 16)])
def test_logits_match_transformers(tmp_path, family, block_size, chunk):
    """Ragged prefill (packed, and in chunks of `chunk` tokens when set), decode, verify and
    rollback over paged blocks of `block_size` tokens."""
    ref = save_random_model(family_config(family), tmp_path, seed=3)
    runner = ModelRunner(str(tmp_path), max_num_seqs=4, lookahead=8, block_size=block_size,
                         max_num_batched_tokens=chunk)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 101, (n,), generator=g).tolist() for n in (30, 11, 19)]  # ragged rows
    rows = [runner.allocate() for _ in seqs]
    worst = 0.0

    def check(row_logits, ids, positions):
        nonlocal worst
        expected = reference_logits(ref, ids)[positions]
        worst = max(worst, (row_logits - expected).abs().max().item())

    # prefill of prompts of different lengths in one batch
    prompts = [s[:-6] for s in seqs]
    logits = runner.forward(rows, prompts, all_positions=True)
    for i, p in enumerate(prompts):
        check(logits[i, : len(p)], p, slice(0, len(p)))
    # one decode token per row
    logits = runner.forward(rows, [[s[len(p)]] for s, p in zip(seqs, prompts)])
    for i, (s, p) in enumerate(zip(seqs, prompts)):
        check(logits[i], s[: len(p) + 1], len(p))
    # a k+1 = 4 token verify on the ragged rows
    logits = runner.forward(rows, [s[len(p) + 1: len(p) + 5] for s, p in zip(seqs, prompts)], all_positions=True)
    for i, (s, p) in enumerate(zip(seqs, prompts)):
        check(logits[i], s[: len(p) + 5], slice(len(p) + 1, len(p) + 5))
    # roll each row back by a different amount, then continue with other tokens
    for i, (row, _s, p) in enumerate(zip(rows, seqs, prompts)):
        runner.rollback(row, len(p) + 1 + i)
    alt = [s[: len(p) + 1 + i] + [5 + i, 7, 9] for i, (s, p) in enumerate(zip(seqs, prompts))]
    logits = runner.forward(rows, [a[-3:] for a in alt], all_positions=True)
    for i, a in enumerate(alt):
        check(logits[i], a, slice(len(a) - 3, len(a)))
    print(f"{family}: max |logit diff| = {worst:.2e}")
    assert worst < TOL


def test_freed_row_is_reused_without_touching_others(tmp_path):
    ref = save_random_model(family_config("llama"), tmp_path, seed=4)
    runner = ModelRunner(str(tmp_path), max_num_seqs=2, lookahead=4, block_size=4)
    a, b = runner.allocate(), runner.allocate()
    runner.forward([a, b], [[5, 6, 7], [8, 9]])
    runner.free(a)
    c = runner.allocate()
    runner.forward([c], [[10, 11, 12, 13, 14]])
    logits = runner.forward([b], [[20]])
    assert (logits[0] - reference_logits(ref, [8, 9, 20])[-1]).abs().max() < TOL


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import GPT2Config

    save_random_model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50), tmp_path)
    with pytest.raises(ValueError, match="supported: LlamaForCausalLM"):
        ModelRunner(str(tmp_path))
