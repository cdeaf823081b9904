"""The first speculative step after target-only steps is a catch-up: the draft first feeds every token it
skipped. It is marked (StepRecord.catch_up) and measures nothing for its k, neither the period table nor
the draft's cost fit: measured, single-step tries made speculating look dearer than it is, and auto
stayed target-only where k = 3 ran 1.2x faster (one row, in process)."""

from minedraft import Engine, SamplingParams


def test_a_catch_up_step_is_marked_and_measures_nothing():
    with Engine(mode="sd", num_speculative_tokens="auto") as engine:
        scheduler = engine.scheduler
        controller = scheduler.controller
        script = iter([0, 0, 3, 3, 3, 0, 3, 3] + [3] * 64)
        controller.k_for = lambda ids, requests, max_k=None: next(script)
        drafts_fitted = []
        add_draft = controller.costs.add_draft
        controller.costs.add_draft = lambda rows, k, s, overlap=False: (drafts_fitted.append(k),
                                                                        add_draft(rows, k, s, overlap=overlap))
        engine.generate(["The quick brown fox"], SamplingParams(max_tokens=24, ignore_eos=True))
        steps = [r for r in scheduler.metrics.steps if r.k]
        # the k > 0 steps in order: catch-up, steady, steady, catch-up (after the k = 0 step), steady...
        assert [r.catch_up for r in steps[:5]] == [True, False, False, True, False]
        assert len(drafts_fitted) == len(steps) - 2  # the two catch-ups fitted nothing
        assert controller.periods.count("sd", 1, 3) <= len(steps) - 2


def test_psd_marks_each_batchs_first_draft_after_merged_steps():
    with Engine(mode="psd", num_speculative_tokens="auto") as engine:
        controller = engine.scheduler.controller
        merges = iter([True, True, True] + [False] * 200)
        controller.merge = lambda batches, requests, max_k=None, riding=False: next(merges)
        controller.psd_k_for = lambda draft_ids, verify_ids, verify_k, requests, max_k=None: 3
        records, on_record, on_period = [], controller.on_record, controller.on_period
        events = []  # a step's record, then its period (if it measured one): both close as the next step starts
        controller.on_record = lambda record, synchronous=False: (records.append(record), events.append(record),
                                                                   on_record(record, synchronous=synchronous))
        controller.on_period = lambda family, *rest: (events.append(family), on_period(family, *rest))
        prompts = ["The quick brown fox", "Once upon a time", "In the beginning", "def fibonacci(n):"]
        engine.generate(prompts, SamplingParams(max_tokens=24, ignore_eos=True))
        drafted = [r for r in records if r.draft_rows]  # the pipeline's first step verifies nothing: not in metrics
        # both batches skipped the three merged steps: each one's first draft is a catch-up, no later one
        assert [r.catch_up for r in drafted[:4]] == [True, True, False, False]
        assert not any(r.catch_up for r in drafted[2:])
        # ... and, as in sd, no catch-up measures the pipeline's period: the second batch's catch-up runs
        # beside the first batch's verify at the same k, and was taken for a steady step
        measured = [events[i - 1] for i, e in enumerate(events) if e == "psd"]
        assert measured and all(not r.catch_up for r in measured)
