"""The target's feature export: with a FeatureStore, prefill and verify hand over the final-normed
hidden state of exactly the positions they committed (the pending token's and the accepted drafts',
not the rejected ones), equal to transformers' last_hidden_state at those positions; features_of
forwards a request's committed context again (an EAGLE node taking it over) to the same values."""

import torch

from minedraft.assets import default_target_path
from minedraft.drafting.features import FeatureStore
from minedraft.runner.model_runner import ModelRunner
from minedraft.spec.local_workers import LocalTargetWorker
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.workers import NewRequest, Proposal
from minedraft.training.models import load_checkpoint


def test_prefill_and_verify_export_the_committed_positions_features():
    path = default_target_path()
    ref = load_checkpoint(path)
    prompt = [0, 17, 300, 45, 99, 1200, 7]
    with torch.no_grad():
        greedy = ref.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=4, min_new_tokens=4,
                              pad_token_id=2)[0, len(prompt):].tolist()
    store = FeatureStore()
    runner = ModelRunner(path, max_num_seqs=2, enable_prefix_caching=False)
    target = LocalTargetWorker(runner, feature_store=store)
    first = target.add([NewRequest("r", prompt, SamplingParams(), seed=0)])[0]
    assert first == greedy[0]
    (start, prefill_feats), = store.take("r")
    assert start == 0 and prefill_feats.shape[0] == len(prompt)
    # two drafts the target agrees with, then one it rejects
    wrong = (greedy[3] + 1) % runner.vocab_size
    drafts = torch.tensor([[greedy[1], greedy[2], wrong]])
    verdict = target.verify(Proposal(["r"], 3, drafts))
    assert verdict.num_accepted == [2] and verdict.tokens == [[greedy[1], greedy[2], greedy[3]]]
    (start, verify_feats), = store.take("r")
    assert start == len(prompt) and verify_feats.shape[0] == 3  # pending token + 2 accepted
    assert torch.equal(verdict.features[0], verify_feats)
    with torch.no_grad():
        expected = ref.model(input_ids=torch.tensor([prompt + greedy[:3]])).last_hidden_state[0]
    torch.testing.assert_close(torch.cat([prefill_feats, verify_feats]), expected, atol=1e-4, rtol=1e-4)
    # An EAGLE node that takes the request over: every committed position but the last (still pending)
    # forwarded again on scratch rows, the request's own row and the store untouched.
    committed = prompt + greedy[:4]
    free, length = runner.blocks.num_free, runner.length(target.book.states["r"].row)
    (rid, start, again), = target.features_of([NewRequest("r", committed, SamplingParams(), seed=0, resume=True)])
    assert (rid, start) == ("r", 0) and again.shape[0] == len(committed) - 1
    torch.testing.assert_close(again, expected, atol=1e-4, rtol=1e-4)
    assert (runner.blocks.num_free, runner.length(target.book.states["r"].row), len(store)) == (free, length, 0)
    target.release(["r"])
    assert len(store) == 0


def test_no_store_no_features():
    runner = ModelRunner(default_target_path(), max_num_seqs=2)
    target = LocalTargetWorker(runner)
    target.add([NewRequest("r", [0, 5, 6], SamplingParams(), seed=0)])
    verdict = target.verify(Proposal(["r"], 2, torch.tensor([[3, 4]])))
    assert verdict.features is None
