"""The peer in `minedraft bench`: Hugging Face `transformers` `generate`, batch 1.

* `hf-target`: target-only greedy (or sampled) `generate`;
* `hf-assisted`: `generate(assistant_model=draft)`, HF's assisted generation (speculative
  decoding; it requires batch size 1), with the assistant fixed to `k` draft tokens per step
  (constant schedule, no confidence early-stop) so that it drafts like our `sd`;
* `hf-prompt-lookup`: `generate(prompt_lookup_num_tokens=k)`, HF's prompt lookup decoding (n-gram
  drafts from the prompt and output, batch 1): the peer of our ngram / suffix drafts.

Every request generates exactly `max_tokens` tokens (`min_new_tokens == max_new_tokens`), as our
modes do with `ignore_eos`. HF reports no acceptance counters; we count the target's forward passes
with a hook: in assisted generation each one verifies one draft block, so
`mean accepted length ~= tokens / forwards` (estimated: the last block may be cut short).
"""

from __future__ import annotations

import time

from minedraft.bench.runners import RequestRecord, RoundResult, Workload


class _FirstTokenTimer:
    """A transformers streamer that only notes when the first generated token arrives."""

    def __init__(self):
        self.calls = 0
        self.first_s: float | None = None

    def put(self, value) -> None:
        self.calls += 1  # the first put() is the prompt itself
        if self.calls == 2 and self.first_s is None:
            self.first_s = time.perf_counter()

    def end(self) -> None:
        pass


class HFPeer:
    def __init__(self, target_path: str, draft_path: str | None, device: str, k: int):
        import torch
        from transformers.utils import logging as hf_logging

        from minedraft.runner import hf_adapter

        hf_logging.set_verbosity_error()  # its deprecation notes about generate() kwargs are noise here
        hf_logging.disable_progress_bar()

        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.torch = torch
        self.device = device
        self.k = k
        self.target = hf_adapter.reference_model(target_path, dtype=dtype).to(device)
        self.draft = None
        if draft_path is not None:
            self.draft = hf_adapter.reference_model(draft_path, dtype=dtype).to(device)
            gc = self.draft.generation_config
            gc.num_assistant_tokens = k
            gc.num_assistant_tokens_schedule = "constant"
            gc.assistant_confidence_threshold = 0.0  # no early stop: always k drafts, like our sd
        eos = self.target.config.eos_token_id
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        self.pad_id = eos if eos is not None else 0
        self.forwards = 0
        self.target.register_forward_hook(self._count)

    def _count(self, module, args, output) -> None:
        self.forwards += 1

    def generate_one(self, prompt_ids: list[int], max_tokens: int, temperature: float, seed: int,
                     assisted: bool, lookup: bool = False) -> tuple[int, float | None, int]:
        """Returns (tokens generated, TTFT or None, target forward passes)."""
        torch = self.torch
        ids = torch.tensor([prompt_ids], device=self.device)
        kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                      pad_token_id=self.pad_id)
        if temperature > 0:
            torch.manual_seed(seed)
            kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False)
        if assisted:
            kwargs["assistant_model"] = self.draft
        if lookup:
            kwargs["prompt_lookup_num_tokens"] = self.k
        timer = _FirstTokenTimer()
        self.forwards = 0
        with torch.no_grad():
            out = self.target.generate(ids, streamer=timer, **kwargs)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return int(out.shape[1] - ids.shape[1]), timer.first_s, self.forwards


def run_hf_round(peer: HFPeer, mode: str, workload: Workload, round_index: int, indices: list[int]) -> RoundResult:
    assisted, lookup = mode == "hf-assisted", mode == "hf-prompt-lookup"
    records = []
    start = time.perf_counter()
    for i in indices:
        sent = time.perf_counter()
        n, first_s, forwards = peer.generate_one(workload.prompts[i], workload.max_tokens, workload.temperature,
                                                 workload.seed + i, assisted, lookup)
        done = time.perf_counter()
        records.append(RequestRecord(i, done - sent, (first_s - sent) if first_s else None, n, n,
                                     finish_reason="length", target_forwards=forwards))
    wall = time.perf_counter() - start
    counters = None
    if assisted or lookup:  # estimated from the target's forward passes (one per verified block)
        verifications = sum(r.target_forwards for r in records)
        accepted = max(0, sum(r.num_tokens for r in records) - verifications)
        counters = dict(num_drafts=verifications, num_draft_tokens=verifications * peer.k,
                        num_accepted_tokens=accepted, num_accepted_tokens_per_pos=None, estimated=True)
    return RoundResult(mode, round_index, wall, records, counters)
