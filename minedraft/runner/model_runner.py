"""ModelRunner: a model plus its paged KV cache, addressed by sequence handle.

It knows nothing about requests or sampling: feed it per-sequence token lists, get logits back.
Every forward first reserves the blocks its tokens need, all or nothing (`NoRoom` changes nothing),
and packs the tokens of all sequences into one stream, in chunks of at most
`max_num_batched_tokens` so that a long prompt's activations and attention stay bounded.
"""

from __future__ import annotations

import logging
import os

import torch

from minedraft.runner.attention import ForwardBatch, SeqSlice
from minedraft.runner.block_manager import BlockManager, NoRoom, blocks_for
from minedraft.runner.checkpoint import checkpoint_dtype, load_model
from minedraft.runner.cuda_graphs import GraphRunner
from minedraft.runner.kv_cache import PagedKVCache
from minedraft.runner.memory_budget import plan_kv_cache
from minedraft.runner.transfer import host_tensor

log = logging.getLogger("minedraft")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
DEFAULT_BLOCK_SIZE = 16
MAX_FILLED_Q = 4  # ragged one-logit steps up to this many tokens per row are padded onto a graph


def cuda_graphs_default(device: torch.device) -> bool:
    """On for a CUDA device, off elsewhere. On since the H200 check (docs/bench_gpu.txt): captured steps
    matched eager logits, SD/PSD and the services stayed lossless with graphs, and an 8B-shaped decode
    step fell from 57 to 9.5 ms. On CPU the static path is plain calls and brings nothing.
    MINEDRAFT_CUDA_GRAPHS=0|1 sets the default for a process tree (the GPU check's bench starts its
    services that way); Engine(cuda_graphs=) and --cuda-graphs/--no-cuda-graphs win over both."""
    env = os.environ.get("MINEDRAFT_CUDA_GRAPHS")
    if env in ("0", "1"):
        return env == "1"
    return device.type == "cuda"


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AMX-BF16 or AVX512-BF16), where oneDNN runs a
    bf16 GEMM several times faster than float32 (a 256x1024x3072 linear: 0.99 vs 5.73 ms on 2 cores of
    an AMX EPYC). Without them bf16 is emulated and slower than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype | None, device: str, checkpoint: str | None = None) -> torch.dtype:
    """auto: bfloat16 on a GPU; on a CPU, a bfloat16 checkpoint (`checkpoint`: its config's dtype, as
    Qwen3's and Llama's are published) keeps bfloat16 where the CPU computes it natively, as transformers
    does (half the memory: an 8B model is 16 GB, not 32), else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16
        return torch.bfloat16 if checkpoint == "bfloat16" and cpu_computes_bf16() else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown {dtype!r}; choose from {', '.join(DTYPES)}")
    return DTYPES[dtype]


def default_max_num_batched_tokens(device: torch.device) -> int:
    # CPU: vLLM's CPU serving default; each pass streams every weight, so an admission of 2,048 tokens in
    # one pass beat four of 512 (issue 21's case, 1.29x -> 1.17x transformers' time). Running streams wait
    # for one staged chunk (--prefill-chunk-tokens), not a pass. GPU: larger chunks fill the device.
    return 8192 if device.type == "cuda" else 2048


class ModelRunner:
    def __init__(self, path: str, device: str = "cpu", dtype=None, max_num_seqs: int = 64,
                 max_model_len: int | None = None, lookahead: int = 16, *, kv_cache_memory: float | None = None,
                 gpu_memory_utilization: float = 0.9, block_size: int = DEFAULT_BLOCK_SIZE,
                 max_num_batched_tokens: int | None = None, num_kv_blocks: int | None = None, role: str = "model",
                 cuda_graphs: bool | None = None, enable_prefix_caching: bool = True, preloaded=None):
        self.device = torch.device(device)
        self.graphs: GraphRunner | None = None  # set once the cache exists (the profile runs eagerly)
        declared = checkpoint_dtype(path) if preloaded is None else None
        self.dtype = resolve_dtype(dtype, device, declared)
        if dtype in (None, "auto"):
            log.info("%s: dtype auto -> %s (checkpoint: %s)", role, str(self.dtype).removeprefix("torch."),
                     declared if preloaded is None else "preloaded")
        # preloaded: (Model, ModelConfig) already on the device (step_times shares transformers' weights)
        self.model, self.cfg = preloaded or load_model(path, device=str(self.device), dtype=self.dtype)
        self.vocab_size = self.cfg.vocab_size
        self.max_num_batched_tokens = max_num_batched_tokens or default_max_num_batched_tokens(self.device)
        if not isinstance(self.max_num_batched_tokens, int) or self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens: must be an integer >= 1, got {max_num_batched_tokens!r}")
        non_kv = self._profile_non_kv_bytes(block_size) if self.device.type == "cuda" else 0
        self.plan = plan_kv_cache(self.cfg, self.dtype, self.device, max_num_seqs=max_num_seqs,
                                  max_model_len=max_model_len, lookahead=lookahead, block_size=block_size,
                                  kv_cache_memory=kv_cache_memory, gpu_memory_utilization=gpu_memory_utilization,
                                  non_kv_bytes=non_kv, num_kv_blocks=num_kv_blocks, role=role)
        # A sequence never grows past context_len; `lookahead` more positions let a verify pass of k+1
        # speculative tokens run at the very end of the context.
        self.context_len = self.plan.max_model_len
        # The cache's hashes are salted with the checkpoint: nothing else here changes a block's K/V.
        self.blocks = BlockManager(self.plan.num_blocks, block_size, enable_prefix_caching, salt=str(path))
        self.cache = self._new_cache(self.plan.num_blocks, block_size)
        log.info("%s", self.plan.summary(role, lookahead))
        self.graphs = self._graph_runner(cuda_graphs, lookahead, role)
        if self.device.type == "cpu":
            self._warm_up()

    def _warm_up(self) -> None:
        """One forward of a full pass on a scratch row, so that the first request does not pay for the
        process's first large allocations (on a 2-core CPU a Qwen3-0.6B-shaped target's first 512-token
        chunk took 2.9 s, a later one 2.0 s; held to 512 tokens under a 2048 budget, issue 21's case ran
        0.3 s slower). A GPU runner's profile run does the same for it."""
        n = min(self.max_num_batched_tokens, self.context_len)
        seq = self.allocate()  # no committed tokens: nothing of it is cached
        try:
            self.forward([seq], [[0] * n])
        except NoRoom:  # a cache too small for one chunk: the first request pays instead
            pass
        finally:
            self.free(seq)

    def _graph_runner(self, cuda_graphs: bool | None, lookahead: int, role: str) -> GraphRunner | None:
        """Static-shape uniform steps: captured as CUDA graphs on a GPU; on CPU (tests) the same
        static buffers and padding run as plain calls."""
        if not (cuda_graphs_default(self.device) if cuda_graphs is None else cuda_graphs):
            return None
        if self.device.type != "cuda":
            log.info("%s: cuda_graphs on a %s device: static buffers and buckets, no capture", role,
                     self.device.type)
        return GraphRunner(self.model, self.cache, self.blocks.block_size,
                           blocks_for(self.context_len + lookahead, self.blocks.block_size), self.device,
                           max_q=lookahead, max_tokens=self.max_num_batched_tokens)

    def _new_cache(self, num_blocks: int, block_size: int) -> PagedKVCache:
        cfg = self.cfg
        return PagedKVCache(cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim, self.dtype,
                            self.device)

    def _profile_non_kv_bytes(self, block_size: int) -> int:
        """GPU: weights plus the activation peak of one forward at the largest token count we run."""
        n = min(self.max_num_batched_tokens, self.cfg.max_position_embeddings)
        num_blocks = 2 + -(-n // block_size)
        self.blocks = BlockManager(num_blocks, block_size, enable_prefix_caching=False)
        self.cache = self._new_cache(num_blocks, block_size)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        seq = self.allocate()
        self.forward([seq], [[0] * n])
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - self.cache.nbytes
        self.blocks = self.cache = None
        torch.cuda.empty_cache()
        return peak

    # -- sequences ----------------------------------------------------------------------------------
    def allocate(self, committed: list[int] | None = None) -> int:
        """A new sequence whose committed tokens start with `committed`; with prefix caching its
        length starts past the leading blocks found cached (forward only the rest)."""
        return self.blocks.new_sequence(committed)

    def commit(self, seq: int, tokens: list[int]) -> None:
        """tokens are committed (never rolled back): the blocks they fill become shareable."""
        self.blocks.commit(seq, tokens)

    def free(self, seq: int) -> None:
        self.blocks.free(seq)

    def length(self, seq: int) -> int:
        return self.blocks.lengths[seq]

    def rollback(self, seq: int, length: int) -> None:
        """Forget positions >= length; whole blocks past it return to the pool."""
        self.blocks.truncate(seq, length)

    def reserve(self, growth: dict[int, int]) -> None:
        """Make each seq able to hold growth[seq] positions (raises NoRoom, changing nothing)."""
        self.cache.copy_blocks(self.blocks.reserve(growth))

    # -- compute --------------------------------------------------------------------------------------
    def forward(self, seqs: list[int], tokens: list[list[int]], all_positions: bool = False,
                with_features: bool = False, feature_layers: tuple[int, ...] | None = None,
                riders: list[tuple[int, list[int]]] = ()):
        """Append tokens[i] to seqs[i]; return the logits of each sequence's last token [B, V], or of
        every position [B, Q, V] (rows shorter than Q are zero-padded).
        riders: (seq, tokens) pairs prefilled in the same passes, whose logits nobody reads (a staged
        prompt's chunk riding on a verify or decode: one pass over the weights for both).
        with_features: return (logits, features), features[i] the final-normed hidden states [len(tokens[i]),
        hidden] of every token forwarded for seqs[i] (what an EAGLE head drafts from); runs eagerly.
        feature_layers: EAGLE-3's, the states entering those layers concatenated instead ([.., len * hidden],
        see Model.forward)."""
        if riders and with_features:
            raise ValueError("riders: not with features (an EAGLE target exports every forwarded position)")
        counts = [len(t) for t in tokens]
        starts = [self.blocks.lengths[s] for s in seqs]
        self.reserve({s: st + c for s, st, c in zip(seqs, starts, counts)}
                     | {s: self.blocks.lengths[s] + len(t) for s, t in riders})
        shape = None if with_features or riders else self._graph_shape(seqs, counts, starts, all_positions)
        if shape is not None:
            q = shape[1]
            if any(c != q for c in counts):  # fillers: repeat each short row's last token
                tokens = [list(t) + [t[-1]] * (q - len(t)) for t in tokens]
            logits = self.graphs.run(shape, tokens, starts, [self.blocks.tables[s] for s in seqs])
            for s, c in zip(seqs, counts):
                self.blocks.advance(s, c)
            if all_positions:
                return logits
            if q == 1:
                return logits[:, -1]
            last = host_tensor([c - 1 for c in counts], torch.long, logits.device)  # each row's last real token
            return logits[torch.arange(len(seqs), device=logits.device), last]
        pieces: list[list[torch.Tensor]] = [[] for _ in seqs]
        features: list[list[torch.Tensor]] = [[] for _ in seqs]
        for chunk in self._chunks(seqs, starts, tokens, all_positions, riders):
            logits = self._run_chunk(chunk, with_features, feature_layers)
            if with_features:
                logits, hidden = logits
                at = 0
                for i, sl, _want in chunk:
                    features[i].append(hidden[at:at + sl.q_len])
                    at += sl.q_len
            at = 0
            for i, _sl, want in chunk:
                if want:
                    pieces[i].append(logits[at:at + want])
                    at += want
        for s, c in zip(seqs, counts):
            self.blocks.advance(s, c)
        for s, t in riders:
            self.blocks.advance(s, len(t))
        if riders and not seqs:  # riders alone
            return None
        if not all_positions:
            out = torch.cat([p[-1][-1:] for p in pieces])
        else:
            q = max(counts)
            out = torch.zeros(len(seqs), q, self.vocab_size, device=self.device)
            for i, p in enumerate(pieces):
                rows = torch.cat(p)
                out[i, :rows.shape[0]] = rows
        if with_features:
            return out, [torch.cat(f) for f in features]
        return out

    def _graph_shape(self, seqs, counts, starts, all_positions):
        """The graph bucket of a uniform step (decode: 1 token per row; verify: k+1 with every
        position's logits), or None to run eagerly. A draft's first step after a verification is
        ragged (1 or 2 pending tokens per row): its short rows are padded with fillers, whose K/V
        land past the row's length (overwritten later, never read), when the blocks are free."""
        if self.graphs is None or not counts:
            return None
        q = max(counts)
        ragged = any(c != q for c in counts)
        if (ragged and (all_positions or q > MAX_FILLED_Q)) or (not ragged and q != 1 and not all_positions):
            return None
        shape = self.graphs.shape_for(len(counts), q, max(starts) + q)
        if shape is not None and ragged:
            try:  # the fillers' blocks; without them the step just runs eagerly
                self.reserve({s: st + q for s, st in zip(seqs, starts)})
            except NoRoom:
                return None
        return shape

    def _chunks(self, seqs, starts, tokens, all_positions, riders=()):
        """Split the work into passes of at most max_num_batched_tokens tokens. Each item is
        (index into seqs, SeqSlice with its tokens, how many logits rows to keep); riders come last,
        with index -1 and no logits."""
        budget = self.max_num_batched_tokens
        chunk, used = [], 0
        on_device = len(tokens) > 0 and torch.is_tensor(tokens[0])
        work = list(zip(range(len(seqs)), seqs, starts, tokens))
        for seq, toks in riders:  # the same kind of tokens as the rows' (a verify's are on the device)
            toks = torch.tensor(toks, dtype=torch.long, device=self.device) if on_device else list(toks)
            work.append((-1, seq, self.blocks.lengths[seq], toks))
        for i, seq, start, toks in work:
            done = 0
            while done < len(toks):
                take = min(len(toks) - done, budget - used)
                last = done + take == len(toks)
                want = 0 if i < 0 else take if all_positions else (1 if last else 0)
                chunk.append((i, SeqSlice(seq, start + done, take, toks[done:done + take]), want))
                used += take
                done += take
                if used == budget:
                    yield chunk
                    chunk, used = [], 0
        if chunk:
            yield chunk

    def _run_chunk(self, chunk, with_features: bool = False, feature_layers=None):
        slices = [sl for _, sl, _ in chunk]
        if torch.is_tensor(slices[0].tokens):  # a draft step's tokens, still on the device
            flat = torch.cat([sl.tokens for sl in slices])
        else:
            flat = [t for sl in slices for t in sl.tokens]
        index, at = [], 0
        for _, sl, want in chunk:
            index.extend(range(at + sl.q_len - want, at + sl.q_len))
            at += sl.q_len
        tables = [self.blocks.tables[sl.seq] for sl in slices]
        batch = ForwardBatch(slices, flat, tables, self.blocks.block_size, index, self.device)
        if with_features:
            return self.model(batch, self.cache, with_features=True, feature_layers=feature_layers)
        return self.model(batch, self.cache)
