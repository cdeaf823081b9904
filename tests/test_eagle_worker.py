"""EagleDraftWorker's bookkeeping: a discarded proposal (no update arrives) leaves nothing behind, so
drafting again gives the same greedy drafts; after a verify the drafted entries are rolled back and
the head's KV holds exactly the entries with true features; a resumed request drafts as before."""

import torch

from minedraft.assets import default_eagle_path, default_target_path
from minedraft.drafting.eagle_format import load_head
from minedraft.drafting.eagle_worker import EagleDraftWorker
from minedraft.drafting.features import FeatureStore
from minedraft.runner.model_runner import ModelRunner
from minedraft.spec.local_workers import LocalTargetWorker
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.workers import NewRequest

PROMPT = [0, 17, 300, 45, 99, 1200, 7, 64, 12]
K = 4


def pair():
    store = FeatureStore()
    runner = ModelRunner(default_target_path(), max_num_seqs=2, enable_prefix_caching=False)
    target = LocalTargetWorker(runner, feature_store=store)
    draft = EagleDraftWorker(load_head(default_eagle_path(), default_target_path()), store, runner.context_len,
                             max_num_seqs=2)
    return target, draft


def test_discarded_proposal_and_rollback():
    target, draft = pair()
    req = NewRequest("r", PROMPT, SamplingParams(), seed=0)
    first = target.add([req])[0]
    draft.add([req])
    a = draft.propose(["r"], K, {"r": [first]})
    b = draft.propose(["r"], K, {})  # the first was discarded (as after NoRoom): same drafts again
    assert torch.equal(a.tokens, b.tokens)
    row = draft.rows["r"]
    committed = len(PROMPT) + 1
    assert draft.blocks.lengths[row.seq] == committed - 1 + K - 1  # true entries + the drafted ones
    verdict = target.verify(b)
    c = draft.propose(["r"], K, {"r": verdict.tokens[0]})
    committed += len(verdict.tokens[0])
    assert row.true_entries == committed - 1
    assert draft.blocks.lengths[row.seq] == committed - 1 + K - 1
    # a resumed request (preempted: both sides re-added with every committed token) drafts the same
    tokens = row.tokens.copy()
    target.release(["r"])
    draft.release(["r"])
    again = NewRequest("r", tokens, SamplingParams(), seed=0, resume=True)
    target.add([again])
    draft.add([again])
    d = draft.propose(["r"], K, {})
    assert torch.equal(c.tokens, d.tokens)
