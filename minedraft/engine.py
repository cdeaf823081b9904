"""`Engine`: the Python entry point. Loads target (and draft), builds in-process workers and the
scheduler, and turns prompts into results through the same Frontend as the gateway."""

from __future__ import annotations

import dataclasses
import itertools
import logging

import torch

from minedraft.config import DEFAULT_MAX_K, EngineConfig
from minedraft.drafting.worker import ModelFreeDraftWorker, make_proposer
from minedraft.runner import hf_adapter
from minedraft.runner.model_runner import ModelRunner
from minedraft.spec.compat import check_draft_fits_target, tokenizer_digest
from minedraft.spec.frontend import Frontend, SchedulerSink
from minedraft.spec.local_workers import LocalDraftWorker, LocalTargetWorker
from minedraft.spec.placement import CallerThreads, DraftShare, parameter_share, threads_per_model, worker_thread_setup
from minedraft.spec.request import Request
from minedraft.spec.sampling import SamplingParams
from minedraft.spec.scheduler import Scheduler

log = logging.getLogger("minedraft")


@dataclasses.dataclass
class GenerationResult:
    request_id: str
    prompt_ids: list[int]
    token_ids: list[int]  # generated ids only
    text: str
    finish_reason: str
    num_drafted: int
    num_accepted: int


def default_model_paths() -> tuple[str, str]:
    from minedraft.assets import default_draft_path, default_target_path

    return default_target_path(), default_draft_path()


class Engine:
    def __init__(self, target: str | None = None, draft: str | None = None, mode: str = "psd",
                 num_speculative_tokens: int | str = "auto", max_k: int = DEFAULT_MAX_K, device: str = "cpu",
                 draft_device: str | None = None,
                 dtype: str | None = None, max_num_seqs: int = 64, max_model_len: int | None = None,
                 full_q: bool = True, q_dtype: str = "float32", kv_cache_memory: float | None = None,
                 gpu_memory_utilization: float = 0.9, max_num_batched_tokens: int | None = None, block_size: int = 16,
                 num_kv_blocks: int | None = None, cuda_graphs: bool | None = None,
                 enable_prefix_caching: bool = True, prefill_chunk_tokens: int = EngineConfig.prefill_chunk_tokens,
                 cpu_threads_per_model: int | None = EngineConfig.cpu_threads_per_model,
                 draft_method: str = "model"):
        eagle_head = None
        if draft_method == "eagle":  # the draft is a head folder (default: the bundled tiny-eagle)
            from minedraft.assets import default_eagle_path

            eagle_head = draft or default_eagle_path()
            # The target forwards every committed position, so each one's feature reaches the head:
            # prefix-cached blocks would skip that forward (staged prefill rides on the cache too).
            if enable_prefix_caching or prefill_chunk_tokens:
                log.info("draft_method eagle: prefix caching and staged prefill are off (every committed "
                         "position must be forwarded for its feature)")
            enable_prefix_caching, prefill_chunk_tokens = False, 0
        if draft_method != "model":
            draft = None  # model-free drafting or an EAGLE head (minedraft/drafting/): no draft model
        if target is None:
            target, default_draft = default_model_paths()
            draft = draft if draft is not None or draft_method != "model" else default_draft
        # Every keyword checked before anything loads (minedraft.config names the field that is wrong).
        # cuda_graphs: None = runner.model_runner.cuda_graphs_default (on for a CUDA device).
        config = EngineConfig.from_kwargs(
            target=target, draft=draft, mode=mode, num_speculative_tokens=num_speculative_tokens, max_k=max_k,
            device=device,
            draft_device=draft_device, dtype=dtype, full_q=full_q, q_dtype=q_dtype, max_num_seqs=max_num_seqs,
            max_model_len=max_model_len, kv_cache_memory=kv_cache_memory,
            gpu_memory_utilization=gpu_memory_utilization, max_num_batched_tokens=max_num_batched_tokens,
            block_size=block_size, num_kv_blocks=num_kv_blocks, cuda_graphs=cuda_graphs,
            enable_prefix_caching=enable_prefix_caching, prefill_chunk_tokens=prefill_chunk_tokens,
            cpu_threads_per_model=cpu_threads_per_model, draft_method=draft_method)
        lookahead = config.capacity_k + 2  # auto: the KV room of the largest k it may pick
        # Target and draft each get the budget (kv_cache_memory / gpu_memory_utilization) on their device.
        memory = config.cache_kwargs()
        self.target_runner = ModelRunner(target, device, dtype, lookahead=lookahead, role="target", **memory)
        self.draft_runner = None
        draft_worker = None
        self.tokenizer = hf_adapter.load_tokenizer(target)
        if draft is not None and mode != "ar":
            self.draft_runner = ModelRunner(draft, draft_device or device, dtype, lookahead=lookahead, role="draft",
                                            **memory)
            # The gateway's pool checks the same two facts, as its workers report them.
            check_draft_fits_target(self.draft_runner.vocab_size, self.target_runner.vocab_size,
                                    tokenizer_digest(hf_adapter.load_tokenizer(draft)),
                                    tokenizer_digest(self.tokenizer))
            draft_worker = LocalDraftWorker(self.draft_runner, full_q=full_q, q_dtype=q_dtype)
        elif eagle_head is not None and mode != "ar":
            draft_worker = self._eagle_worker(eagle_head, target, draft_device or device, max_num_seqs, lookahead,
                                              block_size)
        elif draft_method not in ("model", "eagle"):  # costs nothing to hold, so ar mode keeps it too
            draft_worker = ModelFreeDraftWorker(make_proposer(draft_method))
        cfg = self.target_runner.cfg
        self.eos_token_ids = frozenset(cfg.eos_token_ids)
        # A request must fit both caches (a draft's budget may allow a shorter max_model_len).
        self.context_len = min(r.context_len for r in (self.target_runner, self.draft_runner) if r is not None)
        self.vocab_size = cfg.vocab_size
        # With a thread count per model, a long prefill still gets torch's own (placement.py).
        prefill_threads = torch.get_num_threads() if threads_per_model(config) is not None else None
        feature_store = getattr(draft_worker, "store", None)  # only an EAGLE draft reads target features
        self.scheduler = Scheduler(LocalTargetWorker(self.target_runner, prefill_threads, feature_store),
                                   draft_worker, mode,
                                   num_speculative_tokens, max_num_seqs, max_k=max_k,
                                   # staging rides on the prefix cache (see staged_prefill.py)
                                   prefill_chunk_tokens=prefill_chunk_tokens if enable_prefix_caching else 0)
        # On CPU, each thread that runs a model gets cpu_threads_per_model intra-op threads (placement.py).
        self.threads_per_model = threads_per_model(config)
        if self.threads_per_model is not None:
            self.scheduler.set_worker_thread_setup(worker_thread_setup(self.threads_per_model))
        self.scheduler.threads = CallerThreads(self.threads_per_model)  # the target (and SD's draft) run here
        if self.draft_runner is not None:  # whether the first steps draft before the verify (placement.py)
            self.scheduler.draft_share = DraftShare(parameter_share(self.draft_runner.model, self.target_runner.model))
        self.frontend = Frontend(SchedulerSink(self.scheduler), self.tokenizer, self.eos_token_ids, self.vocab_size,
                                 self.context_len, model=target)
        self._ids = itertools.count()

    def _eagle_worker(self, head_dir, target, device, max_num_seqs, lookahead, block_size):
        from minedraft.drafting.eagle_format import load_head
        from minedraft.drafting.eagle_worker import EagleDraftWorker
        from minedraft.drafting.features import FeatureStore

        head = load_head(head_dir, target, device=device, dtype=self.target_runner.dtype)
        # EAGLE-3: the target exports the states entering the head's layers (FeatureStore.layers)
        return EagleDraftWorker(head, FeatureStore(head.feature_layers), self.target_runner.context_len,
                                max_num_seqs=max_num_seqs, lookahead=lookahead, block_size=block_size, device=device)

    # -- incremental API (the bench and the tests use it) ---------------------------------------------
    def encode(self, prompt: str | list[int]) -> list[int]:
        return self.frontend.encode(prompt)

    def make_request(self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None) -> Request:
        return self.frontend.make_request(prompt, params, request_id or f"req-{next(self._ids)}")

    def add_request(self, prompt, params: SamplingParams, request_id: str | None = None) -> str:
        return self.frontend.submit(prompt, params, request_id or f"req-{next(self._ids)}").request_id

    def step(self) -> list[Request]:
        return self.scheduler.step()

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def decode(self, ids: list[int]) -> str:
        return self.frontend.decode(ids)

    def result(self, req: Request) -> GenerationResult:
        return GenerationResult(req.request_id, req.prompt_ids, list(req.output_ids), self.decode(req.output_ids),
                                req.finish_reason, req.num_drafted, req.num_accepted)

    # -- batch API ------------------------------------------------------------------------------------
    def generate(self, prompts: list[str] | list[list[int]] | str, params: SamplingParams | None = None,
                 progress: bool = False) -> list[GenerationResult]:
        params = params or SamplingParams()
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        requests = [self.make_request(p, params) for p in prompts]  # validate all before running any
        for req in requests:
            self.frontend.enqueue(req)
        bar = _progress(len(requests), progress)
        while any(not r.finished for r in requests):
            for req in self.step():
                if req.finished and bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        while self.scheduler.has_unfinished():  # let the last releases happen
            self.step()
        return [self.result(r) for r in requests]

    @property
    def metrics(self):
        return self.scheduler.metrics

    def close(self) -> None:
        """Stop the scheduler's worker threads (and close its draft)."""
        self.scheduler.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="requests", unit="req")
