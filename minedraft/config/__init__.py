"""The one configuration tree: what `serve target|draft|gateway`, `up`, `Engine(...)` and compose take.

Each dataclass checks itself in `__post_init__` (a ValueError names the field). The flags, their
help and defaults, `minedraft up`'s command lines and Engine's checks are all derived from these
fields (see flags.py here): a default lives here once. No torch, no grpc here: the CLI
imports this module and `--help` must answer at once."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field

MODES = ("ar", "sd", "psd")
MAX_SPECULATIVE_TOKENS = 16
DEFAULT_MAX_K = 8  # a draft's token channel is sized for this k unless --max-k says otherwise
# Token-channel transports, fastest first (minedraft.rpc.channels.negotiate.PREFERENCE is this tuple).
TRANSPORTS = ("cuda_ipc", "shm", "inline")
TRANSPORT_CHOICES = ("auto",) + TRANSPORTS
Q_DTYPES = ("float32", "bfloat16")
# How a draft node makes tokens: a draft model, model-free (minedraft/drafting/ngram.py, suffix.py), or an
# EAGLE head fed the target's features (drafting/eagle_worker.py; over the services: a feature channel)
DRAFT_METHODS = ("model", "ngram", "suffix", "eagle")
ENGINE_DRAFT_METHODS = DRAFT_METHODS
PORTS = {"gateway": 50051, "target": 50052, "draft": 50053}
MAX_NUM_SEQS = 64
PINNED_WORKER_NICE = 10  # CPU placement: pinned workers yield their cores to the gateway (UpConfig._placement)
# staged prefill of long prompts (minedraft/spec/staged_prefill.py): the running streams wait for one
# chunk per step, so it bounds their inter-token latency; it and the step's rows fit one pass of the
# CPU's default pass budget (--max-num-batched-tokens, 2048)
PREFILL_CHUNK_TOKENS = 512
HTTP_PORT_ENV = "MINEDRAFT_HTTP_PORT"
DEFAULT_MAX_REQUEST_BYTES = 4 << 20  # a prompt of a million tokens or so; far above any context here


def option(default=None, help: str = "", *, flags: tuple = (), shown: str | None = None, choices=None,
           metavar: str | None = None, env: str | None = None, append: bool = False, argv: bool = True,
           parse=None):
    """A config field that is also a command-line flag. flags: default `--field-name`; shown: how
    the help names a None default; env: the default is read from this variable when the config is
    made; argv=False: never written into a child's command line (secrets travel by environment);
    parse: the flag's argparse type (default: from the annotation)."""
    meta = dict(help=help, flags=tuple(flags), shown=shown, choices=choices, metavar=metavar, env=env,
                append=append, argv=argv, parse=parse)
    if env:
        return field(default_factory=lambda: type(default)(os.environ.get(env, str(default))), metadata=meta)
    return field(default=default, metadata=meta)


def group(factory, **overrides):
    """A nested config (a group of flags in --help); overrides: this parent's defaults for it."""
    return field(default_factory=lambda: factory(**overrides), metadata={"group": True})


AUTO_K = "auto"  # num_speculative_tokens: the goodput controller picks k per step (0 included)


def parse_k(text: str):
    """-k's argparse type: "auto" or an integer."""
    if text == AUTO_K:
        return AUTO_K
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or an integer, got {text!r}") from None


def check_mode_and_k(mode: str, k, has_draft: bool) -> None:
    """The one validation of a schedule's mode and k (configs, Engine, gateway and reconfigure use it)."""
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "ar" and not has_draft:
        raise ValueError(f"mode: {mode!r} needs a draft model")
    if k != AUTO_K:
        try:
            _int_in("num_speculative_tokens", k, 1, MAX_SPECULATIVE_TOKENS)
        except ValueError:
            raise ValueError(f"num_speculative_tokens: must be auto or an integer in [1, {MAX_SPECULATIVE_TOKENS}], "
                             f"got {k!r}") from None


def check_max_k(value) -> None:
    _int_in("max_k", value, 1, MAX_SPECULATIVE_TOKENS)


def _int_in(name: str, value, lo: int, hi: int | None = None, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        want = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: must be an integer {want}, got {value!r}")


def _positive(name: str, value, optional: bool = False, zero: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 if zero else value > 0):
        raise ValueError(f"{name}: must be a number {'>= 0' if zero else '> 0'}, got {value!r}")


def _one_of(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: must be one of {', '.join(choices)}, got {value!r}")


def _port(name: str, value) -> None:
    _int_in(name, value, 0, 65535)


# -- one model on one device ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheConfig:
    """KV cache (same names as Engine's keywords)"""

    max_num_seqs: int = option(MAX_NUM_SEQS, "concurrent requests")
    max_model_len: int | None = option(
        None, "longest sequence; lowered with a warning when the KV budget cannot hold one such sequence, "
              "while a value given here is refused instead", shown="the checkpoint's")
    kv_cache_memory: float | None = option(None, "CPU: GiB for the KV cache", metavar="GIB",
                                           shown="25% of the memory available at start")
    gpu_memory_utilization: float = option(0.9, "GPU: share of the device this process may use in all")
    max_num_batched_tokens: int | None = option(None, "prefill chunk: most tokens in one forward",
                                                shown="2048 on CPU, 8192 on GPU")
    block_size: int = option(16, "tokens per KV block")
    num_kv_blocks: int | None = option(None, "force the number of KV blocks (tests; overrides the memory budget)",
                                       shown="from the memory budget")
    cuda_graphs: bool | None = option(None, "CUDA graphs for decode, draft and verify steps",
                                      shown="on for a CUDA device, off on CPU (MINEDRAFT_CUDA_GRAPHS=0|1 overrides)")
    enable_prefix_caching: bool = option(True, "automatic prefix caching: full KV blocks of committed tokens are "
                                               "shared by requests that start with them, and kept until evicted")

    def __post_init__(self):
        _int_in("max_num_seqs", self.max_num_seqs, 1)
        _int_in("max_model_len", self.max_model_len, 2, optional=True)
        _positive("kv_cache_memory", self.kv_cache_memory, optional=True)
        g = self.gpu_memory_utilization
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0 < g <= 1:
            raise ValueError(f"gpu_memory_utilization: must be in (0, 1], got {g!r}")
        _int_in("max_num_batched_tokens", self.max_num_batched_tokens, 1, optional=True)
        _int_in("block_size", self.block_size, 1)
        _int_in("num_kv_blocks", self.num_kv_blocks, 2, optional=True)
        if self.cuda_graphs not in (None, True, False):
            raise ValueError(f"cuda_graphs: must be True, False or None, got {self.cuda_graphs!r}")
        if not isinstance(self.enable_prefix_caching, bool):
            raise ValueError(f"enable_prefix_caching: must be True or False, got {self.enable_prefix_caching!r}")


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_device(name: str, device) -> None:
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ValueError(f"{name}: must be cpu, cuda or cuda:N, got {device!r}")


@dataclass(frozen=True)
class ModelConfig:
    """model"""

    model: str | None = option(None, "checkpoint folder", shown="the bundled tiny model")
    device: str = option("cpu", "cpu or cuda:N")
    dtype: str = option("auto", "auto (bf16 on GPU; on CPU a bf16 checkpoint's bf16 where the CPU has "
                                "AMX/AVX512-BF16, else fp32), float32, bfloat16")
    cache: CacheConfig = group(CacheConfig)

    def __post_init__(self):
        check_device("device", self.device)


@dataclass(frozen=True)
class SpeculationConfig:
    """speculation"""

    mode: str = option("psd", "schedule: psd (two batches, draft and target in parallel), sd, or ar (target "
                              "only)", choices=MODES)
    k: int | str = option(AUTO_K, "draft tokens per step (num_speculative_tokens): auto (a controller picks k per "
                                  "step, 0 included, maximising goodput) or a fixed number",
                          flags=("-k", "--num-speculative-tokens"), parse=parse_k)
    max_k: int = option(DEFAULT_MAX_K, "with -k auto: the largest k the controller may pick (the draft nodes' "
                                       "--max-k bounds it too)")
    transport: str = option("auto", "force the token channel's transport", choices=TRANSPORT_CHOICES,
                            shown="auto: the best both ends support")
    prefill_chunk_tokens: int = option(PREFILL_CHUNK_TOKENS, "schedule: a prompt longer than twice this is "
                                       "prefilled this many tokens per step before it is admitted, so that the "
                                       "running streams never wait for a whole long prompt; cut to what the "
                                       "target's --max-num-batched-tokens leaves beside the step's rows (0: whole "
                                       "prompts)")

    def __post_init__(self):
        check_mode_and_k(self.mode, self.k, has_draft=True)  # the draft's presence is checked by the owner
        check_max_k(self.max_k)
        _one_of("transport", self.transport, TRANSPORT_CHOICES)
        _int_in("prefill_chunk_tokens", self.prefill_chunk_tokens, 0)

    @property
    def capacity_k(self) -> int:
        """The largest k this schedule may ask a draft for."""
        return self.max_k if self.k == AUTO_K else self.k


# -- the services ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceConfig:
    """service"""

    bind: str = option("127.0.0.1", "address to listen on (0.0.0.0 in containers)")
    port: int = option(0, "gRPC port")
    log_level: str = option("INFO", "DEBUG, INFO, WARNING or ERROR", env="MINEDRAFT_LOG_LEVEL")
    drain_s: float = option(5.0, "on SIGTERM, how long in-flight calls may finish (the process exits within "
                                 "drain + 5 s)")

    def __post_init__(self):
        _port("port", self.port)
        _positive("drain_s", self.drain_s, zero=True)


@dataclass(frozen=True)
class PlacementConfig:
    """placement and metrics"""

    threads: int | None = option(None, "torch CPU threads", shown="torch's")
    cpu_cores: str | None = option(None, "pin to these CPU cores, e.g. '0' or '0,1'", shown="no pinning")
    nice: int = option(0, "lower this process's CPU priority by this much (0-19): a worker sharing its cores "
                          "with the gateway then yields them to it at once")
    metrics_port: int = option(0, "serve Prometheus /metrics on this port, on --bind (0: off)")

    def __post_init__(self):
        _int_in("threads", self.threads, 1, optional=True)
        _int_in("nice", self.nice, 0, 19)
        if self.cpu_cores is not None and not re.fullmatch(r"\d+(,\d+)*", self.cpu_cores):
            raise ValueError(f"cpu_cores: must be a comma-separated list of core numbers, got {self.cpu_cores!r}")
        _port("metrics_port", self.metrics_port)


@dataclass(frozen=True)
class TargetConfig:
    """Run the target service: prefill, verify k+1 positions per request, accept/reject, KV rollback."""

    model: ModelConfig = group(ModelConfig)
    service: ServiceConfig = group(ServiceConfig, port=PORTS["target"])
    placement: PlacementConfig = group(PlacementConfig)


@dataclass(frozen=True)
class DraftOptions:
    """drafting"""

    max_k: int = option(DEFAULT_MAX_K, "largest k the token channel is sized for (a gateway's -k must not "
                                       "exceed it)")
    transport: str = option("auto", "force the token channel's transport unless the gateway forces one",
                            choices=TRANSPORT_CHOICES, shown="auto: the best both ends support")
    q_dtype: str = option("float32", "dtype of the q sent for sampled requests (bfloat16: half the bytes, still "
                                     "exact)", choices=Q_DTYPES)
    one_hot_q: bool = option(False, "for sampled requests, draft greedily and send no distributions")
    method: str = option("model", "how tokens are drafted: model (a draft LM), ngram (prompt lookup: what followed "
                                  "the longest earlier match of the last tokens), suffix (suffix tries over the "
                                  "request and recent outputs) or eagle (--model is an EAGLE head folder, fed the "
                                  "target's hidden states); ngram and suffix load no model",
                         choices=DRAFT_METHODS)
    target_model: str | None = option(None, "eagle: the target's checkpoint folder (only its embeddings and LM "
                                            "head are loaded)", shown="the bundled tiny target, with no --model")
    ngram_min: int = option(2, "ngram: shortest match (one token matches nearly anywhere and predicts little)")
    ngram_max: int = option(5, "ngram: longest match tried (past five tokens the source of a copy rarely changes)")
    suffix_depth: int = option(24, "suffix: longest substring kept in the tries")
    suffix_min_token_prob: float = option(0.1, "suffix: stop extending a draft when its estimated probability "
                                               "falls below this")
    suffix_max_spec_factor: float = option(1.0, "suffix: a draft is at most this many tokens per matched token")
    suffix_max_cached_requests: int = option(1000, "suffix: finished requests whose outputs the global trie keeps "
                                                   "(LRU; 0: no global trie)")
    suffix_cache_mib: float = option(256.0, "suffix: memory cap of the global trie, MiB (oldest outputs leave "
                                            "first)")

    def __post_init__(self):
        _int_in("max_k", self.max_k, 1, MAX_SPECULATIVE_TOKENS)
        _one_of("transport", self.transport, TRANSPORT_CHOICES)
        _one_of("q_dtype", self.q_dtype, Q_DTYPES)
        _one_of("method", self.method, DRAFT_METHODS)
        _int_in("ngram_min", self.ngram_min, 1)
        _int_in("ngram_max", self.ngram_max, self.ngram_min if isinstance(self.ngram_min, int) else 1)
        _int_in("suffix_depth", self.suffix_depth, 2)
        p = self.suffix_min_token_prob
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"suffix_min_token_prob: must be in [0, 1], got {p!r}")
        _positive("suffix_max_spec_factor", self.suffix_max_spec_factor)
        _int_in("suffix_max_cached_requests", self.suffix_max_cached_requests, 0)
        _positive("suffix_cache_mib", self.suffix_cache_mib)


@dataclass(frozen=True)
class DraftConfig:
    """Run a draft service: prefill, propose k tokens (and their q) per request into the token channel."""

    model: ModelConfig = group(ModelConfig)
    service: ServiceConfig = group(ServiceConfig, port=PORTS["draft"])
    placement: PlacementConfig = group(PlacementConfig)
    drafting: DraftOptions = group(DraftOptions)


@dataclass(frozen=True)
class FrontDoorConfig:
    """public front door"""

    http_port: int = option(8000, "OpenAI-compatible HTTP API on --bind (0: off)", env=HTTP_PORT_ENV)
    served_model_name: str | None = option(None, "the model name of the HTTP API", shown="the target folder's name")
    api_key: list | None = option(None, "require this key on HTTP and gRPC (repeat or comma-separate for several); "
                                        "health checks and /metrics stay open", append=True,
                                  shown="$MINEDRAFT_API_KEY", argv=False)

    max_request_bytes: int = option(DEFAULT_MAX_REQUEST_BYTES, "largest request body (HTTP, 413 past it) and "
                                    "gRPC message (RESOURCE_EXHAUSTED past it) the gateway reads")

    def __post_init__(self):
        _port("http_port", self.http_port)
        _int_in("max_request_bytes", self.max_request_bytes, 1024, 1 << 30)


@dataclass(frozen=True)
class TimeoutConfig:
    """worker deadlines"""

    worker_timeout_s: float = option(60.0, "deadline of a worker step call; a worker that does not answer is "
                                           "treated as dead")
    prefill_timeout_s: float = option(600.0, "deadline of a worker's prefill call (a long prompt on CPU takes "
                                             "minutes)")
    recovery_timeout_s: float = option(60.0, "how long running requests wait for a failed or restarted target to "
                                             "come back before they end with UNAVAILABLE")

    def __post_init__(self):
        for name in ("worker_timeout_s", "prefill_timeout_s", "recovery_timeout_s"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True)
class GatewayConfig:
    """Run the gateway: the public API over the schedule, against one target and 1..N draft nodes."""

    target: str = option(f"127.0.0.1:{PORTS['target']}", "target service address")
    draft: str = option(f"127.0.0.1:{PORTS['draft']}", "draft service address(es), comma-separated; a DNS name "
                        "with several addresses counts as several nodes ('' for none: target-only)")
    draft_refresh_s: float = option(2.0, "how often to look for new or recovered draft nodes")
    tokenizer: str | None = option(None, "tokenizer folder", shown="the target's model folder")
    max_num_seqs: int = option(MAX_NUM_SEQS, "concurrent requests")
    max_waiting: int = option(1024, "requests queued beyond --max-num-seqs; past it gRPC answers "
                                    "RESOURCE_EXHAUSTED, HTTP 429")
    tls_cert: str | None = option(None, "PEM certificate: serve gRPC and HTTP over TLS", shown="plaintext")
    tls_key: str | None = option(None, "PEM private key of --tls-cert", shown="none")
    speculation: SpeculationConfig = group(SpeculationConfig)
    service: ServiceConfig = group(ServiceConfig, port=PORTS["gateway"])
    front_door: FrontDoorConfig = group(FrontDoorConfig)
    timeouts: TimeoutConfig = group(TimeoutConfig)

    def __post_init__(self):
        has_draft = bool(self.draft.strip(", "))
        check_mode_and_k(self.speculation.mode if has_draft else "ar", self.speculation.k, has_draft)
        _positive("draft_refresh_s", self.draft_refresh_s)
        _int_in("max_num_seqs", self.max_num_seqs, 1)
        _int_in("max_waiting", self.max_waiting, 0)


# -- minedraft up ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpConfig:
    """Start target, draft and gateway locally and wait for Ctrl-C."""

    target: str | None = option(None, "target checkpoint folder", shown="the bundled tiny target")
    draft: str | None = option(None, "draft checkpoint folder", shown="the bundled tiny draft")
    device: str = option("cpu", "target device (cpu, cuda:0)")
    draft_device: str | None = option(None, "draft device", shown="--device")
    draft_method: str = option("model", "the draft node's --method: model, ngram or suffix (no draft model loaded) "
                                        "or eagle (--draft is an EAGLE head folder)", choices=DRAFT_METHODS)
    port: int = option(PORTS["gateway"], "gateway's gRPC port")
    target_port: int = option(PORTS["target"], "target's gRPC port")
    draft_port: int = option(PORTS["draft"], "draft's gRPC port")
    bind: str = option("127.0.0.1", "gateway bind address")
    bind_workers: str = option("127.0.0.1", "target and draft bind address")
    pin: bool = option(True, "on CPU, do not pin target and draft to cores 0 and 1 with one thread each",
                       flags=("--no-pin",), shown="pinned on a CPU machine with two cores or more")
    restart: bool = option(True, "do not restart a service that exits; stop all three instead",
                           flags=("--no-restart",), shown="restarted with backoff")
    log_dir: str | None = option(None, "write each service's log there", shown="the terminal")
    startup_timeout: float = option(600.0, "seconds the three may take to become healthy")
    drain_s: float = option(5.0, "on Ctrl-C / SIGTERM, how long the gateway's streams may finish before the "
                                 "workers stop (all exit within drain + 5 s each)")
    max_waiting: int = option(1024, "gateway's queue limit beyond --max-num-seqs (see serve gateway --help)")
    target_metrics_port: int = option(0, "target's Prometheus /metrics port (0: off)")
    draft_metrics_port: int = option(0, "draft's Prometheus /metrics port (0: off)")
    speculation: SpeculationConfig = group(SpeculationConfig)
    cache: CacheConfig = group(CacheConfig)  # passed to target and draft alike
    front_door: FrontDoorConfig = group(FrontDoorConfig)

    def __post_init__(self):
        check_device("device", self.device)
        if self.draft_device is not None:
            check_device("draft_device", self.draft_device)
        _one_of("draft_method", self.draft_method, DRAFT_METHODS)
        for name in ("port", "target_port", "draft_port", "target_metrics_port", "draft_metrics_port"):
            _port(name, getattr(self, name))
        _positive("startup_timeout", self.startup_timeout)
        _positive("drain_s", self.drain_s, zero=True)
        _int_in("max_waiting", self.max_waiting, 0)

    # The three services' configs: `up` is these with their addresses wired together.
    def target_config(self) -> TargetConfig:
        return TargetConfig(
            model=ModelConfig(model=self.target, device=self.device, cache=self.cache),
            service=ServiceConfig(bind=self.bind_workers, port=self.target_port),
            placement=self._placement(0, self.target_metrics_port))

    def draft_config(self) -> DraftConfig:
        return DraftConfig(
            model=ModelConfig(model=self.draft, device=self.draft_device or self.device, cache=self.cache),
            service=ServiceConfig(bind=self.bind_workers, port=self.draft_port),
            placement=self._placement(1, self.draft_metrics_port),
            # the token channel must hold the gateway's k
            drafting=DraftOptions(max_k=max(self.speculation.capacity_k, DEFAULT_MAX_K),
                                  transport=self.speculation.transport, method=self.draft_method,
                                  # an EAGLE head reads its target's embeddings and LM head
                                  target_model=self.target if self.draft_method == "eagle" else None))

    def gateway_config(self) -> GatewayConfig:
        speculation = self.speculation
        # staged prefill rides on the workers' prefix cache, which is off with an EAGLE node
        if not self.cache.enable_prefix_caching or self.draft_method == "eagle":
            speculation = dataclasses.replace(speculation, prefill_chunk_tokens=0)
        return GatewayConfig(
            target=f"127.0.0.1:{self.target_port}", draft=f"127.0.0.1:{self.draft_port}",
            max_num_seqs=self.cache.max_num_seqs, max_waiting=self.max_waiting, speculation=speculation,
            service=ServiceConfig(bind=self.bind, port=self.port, drain_s=self.drain_s), front_door=self.front_door)

    def _placement(self, core: int, metrics_port: int) -> PlacementConfig:
        # The paper's two devices map onto two cores on a CPU machine. The gateway has no core of its
        # own: it runs on the workers' cores, and every token waits for it (a step's collect and
        # dispatch, a stream's write). Niced workers yield a core to it the moment it wakes: on 2 cores,
        # TTFT of a cached prompt 17 -> 12 ms (bench --chat).
        if self.pin:
            return PlacementConfig(threads=1, cpu_cores=str(core), nice=PINNED_WORKER_NICE,
                                   metrics_port=metrics_port)
        return PlacementConfig(metrics_port=metrics_port)


# -- Engine(...) ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineConfig:
    """Engine's keywords, checked before any model loads."""

    target: str | None = None
    draft: str | None = None
    mode: str = "psd"
    num_speculative_tokens: int | str = AUTO_K
    max_k: int = DEFAULT_MAX_K  # with auto: the largest k the controller may pick
    device: str = "cpu"
    draft_device: str | None = None
    dtype: str | None = None
    full_q: bool = True
    q_dtype: str = "float32"
    draft_method: str = "model"  # ngram / suffix: model-free (draft ignored); eagle: draft is a head folder
    # On CPU with a draft: torch intra-op threads of each thread that runs a model (None: torch's own);
    # one avoids two models' OpenMP teams spinning against each other (minedraft/spec/placement.py).
    cpu_threads_per_model: int | None = 1
    prefill_chunk_tokens: int = PREFILL_CHUNK_TOKENS  # see SpeculationConfig
    cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self):
        _one_of("draft_method", self.draft_method, ENGINE_DRAFT_METHODS)
        check_mode_and_k(self.mode, self.num_speculative_tokens, self.has_draft)
        check_max_k(self.max_k)
        _one_of("q_dtype", self.q_dtype, Q_DTYPES)
        _int_in("cpu_threads_per_model", self.cpu_threads_per_model, 1, optional=True)
        _int_in("prefill_chunk_tokens", self.prefill_chunk_tokens, 0)

    @property
    def capacity_k(self) -> int:
        return self.max_k if self.num_speculative_tokens == AUTO_K else self.num_speculative_tokens

    @property
    def has_draft(self) -> bool:
        return self.draft is not None or self.draft_method != "model"

    @classmethod
    def from_kwargs(cls, **kwargs) -> EngineConfig:
        names = {f.name for f in dataclasses.fields(CacheConfig)}
        cache = CacheConfig(**{k: kwargs.pop(k) for k in list(kwargs) if k in names})
        return cls(cache=cache, **kwargs)

    def cache_kwargs(self) -> dict:
        return dataclasses.asdict(self.cache)


ROLES = {"target": TargetConfig, "draft": DraftConfig, "gateway": GatewayConfig}
