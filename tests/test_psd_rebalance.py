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


def test_rows_arriving_while_the_pipeline_runs_are_evened_out():
    """16 requests sent at once reached the scheduler over two steps: the first ones started the pipeline
    as halves of 4 and 4, the rest joined the half about to be drafted, and the round ran as halves of 4
    and 12 rows, fixed k too. Rows of the half about to be drafted now move to the half in flight."""
    def run(mode: str, seen=None):
        with Engine(mode=mode, num_speculative_tokens=2) as engine:
            if seen is not None:
                controller = engine.scheduler.controller
                psd_k_for = controller.psd_k_for

                def watched(draft_ids, verify_ids, verify_k, requests, max_k=None):
                    seen.append((len(draft_ids), len(verify_ids)))
                    return psd_k_for(draft_ids, verify_ids, verify_k, requests)
                controller.psd_k_for = watched
            params = SamplingParams(max_tokens=12, ignore_eos=True)
            ids = [engine.add_request(f"Request number {i} says", params) for i in range(2)]
            done = {}

            def step():
                for req in engine.step():
                    if req.finished:
                        done[req.request_id] = req.output_ids
            for _ in range(3):  # the pipeline runs: 1 row in each half
                step()
            ids += [engine.add_request(f"Request number {i} says", params) for i in range(2, 8)]
            while engine.has_unfinished():
                step()
            return [done[i] for i in ids]

    seen = []
    outputs = run("psd", seen)
    assert seen[:3] == [(1, 0), (1, 1), (1, 1)], seen
    # the six arrivals join the half about to be drafted, three of them move to the half in flight (they
    # are not in its proposal: verified beside this draft is 1 row); from then on the half drafted never
    # has more than one row more than the half verified beside it (before: (7, 1), then (1, 7), ...)
    assert seen[3:5] == [(4, 1), (4, 4)] and all(d - v <= 1 for d, v in seen[4:]), seen
    assert outputs == run("ar")  # greedy: the moved rows lose nothing
