"""A decode or verify batch with one long row among short ones takes the varlen path (each row reads
its own keys, not the longest row's worth of padding) and computes the same logits as the uniform one."""

import pytest
import torch

from minedraft.assets import default_target_path
from minedraft.runner import attention
from minedraft.runner.model_runner import ModelRunner


@pytest.mark.parametrize("q", [1, 4])
def test_long_row_among_short_ones_same_logits_on_either_path(monkeypatch, q):
    runner = ModelRunner(default_target_path(), num_kv_blocks=64, max_model_len=512)
    prompts = [[1] + [(7 * j) % 300 + 5 for j in range(300)]] + [[1, 5 + i, 9, 12 + i] for i in range(5)]
    rows = [runner.allocate() for _ in prompts]
    runner.forward(rows, prompts)
    step = [[(3 * i + j) % 200 + 4 for j in range(q)] for i in range(len(rows))]
    seen = []
    real_init = attention.ForwardBatch.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen.append(self.uniform)

    monkeypatch.setattr(attention.ForwardBatch, "__init__", spy)
    varlen = runner.forward(rows, step, all_positions=True)
    for r, p in zip(rows, prompts):
        runner.rollback(r, len(p))
    monkeypatch.setattr(attention, "UNIFORM_MAX_PADDING", float("inf"))
    uniform = runner.forward(rows, step, all_positions=True)
    assert seen == [False, True]
    torch.testing.assert_close(varlen, uniform, atol=1e-4, rtol=1e-4)
