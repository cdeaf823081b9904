"""psd evens out its two batches whenever nothing drafted is in flight (the pipeline starts, or after
merged steps): rows that finish unevenly otherwise leave halves of 1 and 3 rows, whose steps do not
overlap (a 3-row draft beside a 1-row verify, then the other way round)."""

from minedraft import Engine, SamplingParams


def _run(mode: str, watch=None):
    with Engine(mode=mode, num_speculative_tokens="auto" if mode != "ar" else 4) as engine:
        if watch is not None:
            watch(engine.scheduler.controller)
        # placed alternately: batch 0 gets requests 0, 2, 4 and batch 1 gets 1, 3, 5; 0 and 2 end early
        budgets = [2, 16, 2, 16, 16, 16]
        ids = [engine.add_request(f"Request number {i} says", SamplingParams(max_tokens=n, ignore_eos=True))
               for i, n in enumerate(budgets)]
        done = {}
        while engine.has_unfinished():
            for req in engine.step():
                if req.finished:
                    done[req.request_id] = req.output_ids
        return [done[i] for i in ids]


def test_the_pipeline_starts_with_even_batches():
    seen = []

    def watch(controller):
        merges = iter([True] * 4 + [False] * 200)  # four merged steps: requests 0 and 2 finish in them
        controller.merge = lambda batches, requests, max_k=None, riding=False: next(merges)

        def psd_k_for(draft_ids, verify_ids, verify_k, requests, max_k=None):
            seen.append((len(draft_ids), len(verify_ids)))
            return 2
        controller.psd_k_for = psd_k_for

    outputs = _run("psd", watch)
    # the first pipeline step drafts one half (nothing to verify yet), the next the other beside its verify
    assert seen[:2] == [(2, 0), (2, 2)], seen[:4]  # unbalanced: (3, 0), (1, 3)
    assert outputs == _run("ar")  # greedy: the moved rows lose nothing
