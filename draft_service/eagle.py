"""`draft_service --method eagle`: an EAGLE head (drafting/eagle_worker.py) with, of its target, only the
embeddings and LM head (drafting/eagle_format.py). Its features come from the target's feature
channel (minedraft/rpc/channels/features.py), which the server feeds into the worker's FeatureStore."""

from __future__ import annotations

from minedraft.config import MAX_SPECULATIVE_TOKENS
from minedraft.drafting.eagle_format import load_head
from minedraft.drafting.eagle_worker import EagleDraftWorker
from minedraft.drafting.features import FeatureStore
from minedraft.rpc.grpc_common import log
from minedraft.rpc.worker_service import device_uuid
from minedraft.runner import hf_adapter
from minedraft.runner.checkpoint import checkpoint_dtype
from minedraft.runner.model_runner import resolve_dtype
from minedraft.spec.compat import tokenizer_digest


def head_and_target(model: str | None, target_model: str | None) -> tuple[str, str]:
    """With neither: the bundled head and its bundled target. A head of one's own needs its target."""
    from minedraft import assets

    if model is None:
        return assets.default_eagle_path(), target_model or assets.default_target_path()
    if target_model is None:
        raise ValueError("target_model: --method eagle --model HEAD_DIR needs --target-model TARGET_DIR (the head "
                         "reads that target's embeddings, LM head and hidden states)")
    return model, target_model


def load_eagle_worker(config) -> tuple[EagleDraftWorker, str, dict]:
    """(worker, head folder, the WorkerInfo facts: the target's vocabulary, tokenizer and context)."""
    model = config.model
    head_dir, target_dir = head_and_target(model.model, config.drafting.target_model)
    device = model.device
    # auto follows the target's checkpoint: the head reads its embeddings, LM head and features
    dtype = resolve_dtype(None if model.dtype == "auto" else model.dtype, device, checkpoint_dtype(target_dir))
    log.info("draft: loading the EAGLE head %s for the target %s on %s", head_dir, target_dir, device)
    head = load_head(head_dir, target_dir, device=device, dtype=dtype)
    target_cfg = hf_adapter.load_model_config(target_dir)
    cache = model.cache
    context_len = min(cache.max_model_len or target_cfg.max_position_embeddings, target_cfg.max_position_embeddings)
    worker = EagleDraftWorker(head, FeatureStore(head.feature_layers), context_len, max_num_seqs=cache.max_num_seqs,
                              lookahead=MAX_SPECULATIVE_TOKENS + 2, block_size=cache.block_size, device=device)
    facts = dict(device=device, device_uuid=device_uuid(device), vocab_size=target_cfg.vocab_size,
                 context_len=context_len, architecture=target_cfg.architecture,
                 tokenizer_fingerprint=tokenizer_digest(hf_adapter.load_tokenizer(target_dir)),
                 feature_layers=list(head.feature_layers))  # the target exports these (EAGLE-3; EAGLE-1: none)
    return worker, head_dir, facts
