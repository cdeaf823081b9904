"""Sampling and acceptance stay on the device: the same draws as torch.multinomial, and one
read-back per call (on a GPU every read-back is a host sync)."""

import pytest
import torch

from minedraft.spec.logits_processing import draw, make_generator, probs_from_logits, sample
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.verification import verify_batch


def test_draw_is_multinomial_with_the_same_generator():
    for seed in range(300):
        g = torch.Generator().manual_seed(seed)
        w = torch.softmax(torch.randn(7 + seed % 50, generator=g) * 3, -1)
        w[:: 2 + seed % 3] = 0.0
        a, b = make_generator(seed, "cpu"), make_generator(seed, "cpu")
        assert int(draw(w, a)) == int(torch.multinomial(w, 1, generator=b))
        assert torch.rand(1, generator=a) == torch.rand(1, generator=b)  # same amount consumed


class _ReadBacks:
    """Counts what reads tensor values back to the host: tolist, item, int/float/bool of a tensor."""

    def __init__(self, monkeypatch):
        self.calls = []
        for name in ("tolist", "item", "__int__", "__float__", "__bool__", "__index__"):
            original = getattr(torch.Tensor, name)

            def counted(t, *a, _name=name, _original=original, **kw):
                self.calls.append(_name)
                return _original(t, *a, **kw)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("with_q", [True, False])
def test_verification_reads_back_once(monkeypatch, with_q):
    g = torch.Generator().manual_seed(0)
    b, k, v = 6, 4, 30
    params = [SamplingParams(temperature=0.0 if i % 2 else 0.9) for i in range(b)]
    p = probs_from_logits(torch.randn(b, k + 1, v, generator=g), params)
    q = torch.softmax(torch.randn(3, k, v, generator=g), -1) if with_q else None
    drafts = torch.randint(0, v, (b, k), generator=g)
    gens = [make_generator(i, "cpu") for i in range(b)]
    reads = _ReadBacks(monkeypatch)
    verdicts = verify_batch(p, drafts, q, params, gens)
    assert reads.calls == ["tolist"]
    monkeypatch.undo()
    for verdict, row in zip(verdicts, drafts.tolist()):
        n = verdict.num_accepted
        assert verdict.tokens[:n] == row[:n] and len(verdict.tokens) == n + 1


def test_sampling_reads_back_once(monkeypatch):
    g = torch.Generator().manual_seed(1)
    params = [SamplingParams(temperature=0.0 if i % 3 == 0 else 0.8, top_k=5) for i in range(5)]
    probs = probs_from_logits(torch.randn(5, 40, generator=g), params)
    reads = _ReadBacks(monkeypatch)
    tokens = sample(probs, params, [make_generator(i, "cpu") for i in range(5)])
    assert reads.calls == ["tolist"]
    monkeypatch.undo()
    assert tokens[0] == int(probs[0].argmax()) and all(probs[i, t] > 0 for i, t in enumerate(tokens))
