"""A row's logits do not depend on how long its neighbours in a uniform step (decode, verify) are: the
key length the attention sums over is rounded up to a multiple of UNIFORM_KEY_GRAIN, where torch's CPU
kernel sums a row's keys in the same order whatever the padding. Otherwise a verify and a decode of the
same position rounded apart, and greedy speculative decoding could pick another token than target-only
decoding on a logit tie (bf16 especially). (How many rows a step has still matters in fp32: a matmul
of one row and of two may sum in other orders.)"""

import pytest
import torch

from minedraft.assets import default_target_path
from minedraft.runner import attention
from minedraft.runner.model_runner import ModelRunner

ROW = [(5 * j) % 300 + 7 for j in range(20)]
SHORT = [(7 * j) % 300 + 3 for j in range(10)]
LONG = [(3 * j) % 300 + 11 for j in range(50)]


def decode_logits(runner, rows: list[list[int]]) -> torch.Tensor:
    """Prefill each row but its last token, then decode every row's last token in one uniform step: the
    first row's logits."""
    seqs = [runner.allocate() for _ in rows]
    try:
        for s, r in zip(seqs, rows):
            runner.forward([s], [r[:-1]])
        return runner.forward(seqs, [[r[-1]] for r in rows])[0].clone()
    finally:
        for s in seqs:
            runner.free(s)


@pytest.fixture(scope="module")
def runner():
    return ModelRunner(default_target_path(), max_model_len=256, num_kv_blocks=64, enable_prefix_caching=False)


def test_a_rows_logits_are_the_same_beside_a_shorter_or_a_longer_row(runner):
    shorter = decode_logits(runner, [ROW, SHORT])  # keys: its own 20
    longer = decode_logits(runner, [ROW, LONG])  # its 20 padded to the long row's 50
    assert torch.equal(shorter, longer)


def test_without_the_grain_the_padding_changes_them(runner, monkeypatch):
    """The negative control: key lengths of 20 and 50 sum the same keys in another order."""
    monkeypatch.setattr(attention, "UNIFORM_KEY_GRAIN", 1)
    shorter = decode_logits(runner, [ROW, SHORT])
    longer = decode_logits(runner, [ROW, LONG])
    assert torch.allclose(shorter, longer, atol=1e-4) and not torch.equal(shorter, longer)
