"""Sampled decoding with an EAGLE draft follows the target's distribution: the joint law of the first
three generated tokens (the 2nd and 3rd come out of verification against the head's q) matches the
target's own, by a chi-square test over every (t1, t2, t3) at top_k 3, temperature 1; also with a
reduced draft vocabulary (d2t) that leaves out some of the target's likely tokens, which only the
residual max(0, p - q) can then emit."""

import itertools

import numpy as np
import torch
from scipy.stats import chisquare

from minedraft import Engine, SamplingParams
from minedraft.assets import default_eagle_path, default_target_path, load_heldout_prompts
from minedraft.drafting.eagle_format import load_head, save_head
from minedraft.spec.logits_processing import probs_from_logits
from minedraft.train_eagle import with_draft_vocab
from minedraft.training.models import load_checkpoint

N, TOP_K = 3000, 3
EXACT = 1e-3


def target_joint(prompt_ids, params):
    """{(t1, t2, t3): probability} under the target with the request's own logits processing."""
    model = load_checkpoint(default_target_path())

    def next_probs(ids):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[:, -1].float()
        return probs_from_logits(logits, [params])[0]

    joint = {}
    p1 = next_probs(prompt_ids)
    for t1 in torch.nonzero(p1)[:, 0].tolist():
        p2 = next_probs(prompt_ids + [t1])
        for t2 in torch.nonzero(p2)[:, 0].tolist():
            p3 = next_probs(prompt_ids + [t1, t2])
            for t3 in torch.nonzero(p3)[:, 0].tolist():
                joint[(t1, t2, t3)] = (p1[t1] * p2[t2] * p3[t3]).item()
    return joint


def _check_follows_target(head_dir=None):
    params = SamplingParams(temperature=1.0, top_k=TOP_K, max_tokens=3, ignore_eos=True)
    prompt = load_heldout_prompts(1)[0][-60:]
    with Engine(draft=head_dir, draft_method="eagle", mode="sd", num_speculative_tokens=3,
                max_num_seqs=64) as engine:
        prompt_ids = engine.encode(prompt)
        results = engine.generate([prompt_ids] * N, params)
    drafted, accepted = sum(r.num_drafted for r in results), sum(r.num_accepted for r in results)
    assert 0 < accepted < drafted  # both verification paths ran
    joint = target_joint(prompt_ids, params)
    cells = sorted(joint)
    index = {c: i for i, c in enumerate(cells)}
    counts = np.zeros(len(cells))
    for r in results:
        key = tuple(r.token_ids[:3])
        assert key in index, f"emitted {key}, which the target gives probability 0"
        counts[index[key]] += 1
    expected = np.array([joint[c] for c in cells])
    pvalue = chisquare(counts, expected / expected.sum() * N).pvalue
    print(f"eagle sampled: {len(cells)} cells, accepted {accepted}/{drafted}, chi-square p = {pvalue:.3g}")
    assert pvalue > EXACT
    assert len(set(itertools.chain.from_iterable(c[:1] for c in cells))) == TOP_K
    return joint


def test_sampled_output_follows_the_target_with_an_eagle_draft():
    _check_follows_target()


def test_sampled_output_follows_the_target_with_a_reduced_vocab_head(tmp_path):
    params = SamplingParams(temperature=1.0, top_k=TOP_K, max_tokens=3, ignore_eos=True)
    model = load_checkpoint(default_target_path())
    with Engine(mode="ar") as engine:
        prompt_ids = engine.encode(load_heldout_prompts(1)[0][-60:])
    with torch.no_grad():
        first = probs_from_logits(model(input_ids=torch.tensor([prompt_ids])).logits[:, -1].float(), [params])[0]
    # leave out the target's 2nd and 3rd likeliest first tokens, and a third of all ids
    left_out = set(first.topk(TOP_K).indices[1:].tolist()) | set(range(1, 4096, 3))
    ids = torch.tensor([t for t in range(4096) if t not in left_out])
    target = default_target_path()
    save_head(with_draft_vocab(load_head(default_eagle_path(), target), target, ids), tmp_path / "h", target)
    joint = _check_follows_target(str(tmp_path / "h"))
    assert any(c[0] in left_out for c in joint)  # cells the draft could never propose are in the test
