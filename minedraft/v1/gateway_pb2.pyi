from minedraft.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "prompt_ids", "params", "request_id")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    params: _common_pb2.SamplingParams
    request_id: str
    def __init__(self, prompt: _Optional[str] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., params: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "token_ids", "text", "finished", "finish_reason", "num_prompt_tokens", "num_generated_tokens", "num_drafted", "num_accepted")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_DRAFTED_FIELD_NUMBER: _ClassVar[int]
    NUM_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    finished: bool
    finish_reason: str
    num_prompt_tokens: int
    num_generated_tokens: int
    num_drafted: int
    num_accepted: int
    def __init__(self, request_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., finished: _Optional[bool] = ..., finish_reason: _Optional[str] = ..., num_prompt_tokens: _Optional[int] = ..., num_generated_tokens: _Optional[int] = ..., num_drafted: _Optional[int] = ..., num_accepted: _Optional[int] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class AbortReply(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("target_model", "draft_model", "mode", "num_speculative_tokens", "vocab_size", "context_len", "transport", "draft_endpoints", "target_endpoint", "max_num_seqs", "auto_k", "max_k")
    TARGET_MODEL_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    NUM_SPECULATIVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LEN_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    DRAFT_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    TARGET_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    AUTO_K_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    target_model: str
    draft_model: str
    mode: str
    num_speculative_tokens: int
    vocab_size: int
    context_len: int
    transport: str
    draft_endpoints: _containers.RepeatedScalarFieldContainer[str]
    target_endpoint: str
    max_num_seqs: int
    auto_k: bool
    max_k: int
    def __init__(self, target_model: _Optional[str] = ..., draft_model: _Optional[str] = ..., mode: _Optional[str] = ..., num_speculative_tokens: _Optional[int] = ..., vocab_size: _Optional[int] = ..., context_len: _Optional[int] = ..., transport: _Optional[str] = ..., draft_endpoints: _Optional[_Iterable[str]] = ..., target_endpoint: _Optional[str] = ..., max_num_seqs: _Optional[int] = ..., auto_k: _Optional[bool] = ..., max_k: _Optional[int] = ...) -> None: ...

class ConfigureRequest(_message.Message):
    __slots__ = ("mode", "num_speculative_tokens", "max_num_seqs", "auto_k")
    MODE_FIELD_NUMBER: _ClassVar[int]
    NUM_SPECULATIVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    AUTO_K_FIELD_NUMBER: _ClassVar[int]
    mode: str
    num_speculative_tokens: int
    max_num_seqs: int
    auto_k: bool
    def __init__(self, mode: _Optional[str] = ..., num_speculative_tokens: _Optional[int] = ..., max_num_seqs: _Optional[int] = ..., auto_k: _Optional[bool] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("reset",)
    RESET_FIELD_NUMBER: _ClassVar[int]
    reset: bool
    def __init__(self, reset: _Optional[bool] = ...) -> None: ...

class StepBreakdown(_message.Message):
    __slots__ = ("num_steps", "wall_s", "draft_compute_s", "verify_compute_s", "draft_call_s", "verify_call_s", "draft_idle_s", "target_idle_s", "control_plane_s", "draft_service_s", "verify_service_s", "channel_bytes", "feature_bytes")
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    DRAFT_COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    VERIFY_COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    DRAFT_CALL_S_FIELD_NUMBER: _ClassVar[int]
    VERIFY_CALL_S_FIELD_NUMBER: _ClassVar[int]
    DRAFT_IDLE_S_FIELD_NUMBER: _ClassVar[int]
    TARGET_IDLE_S_FIELD_NUMBER: _ClassVar[int]
    CONTROL_PLANE_S_FIELD_NUMBER: _ClassVar[int]
    DRAFT_SERVICE_S_FIELD_NUMBER: _ClassVar[int]
    VERIFY_SERVICE_S_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_BYTES_FIELD_NUMBER: _ClassVar[int]
    num_steps: int
    wall_s: float
    draft_compute_s: float
    verify_compute_s: float
    draft_call_s: float
    verify_call_s: float
    draft_idle_s: float
    target_idle_s: float
    control_plane_s: float
    draft_service_s: float
    verify_service_s: float
    channel_bytes: float
    feature_bytes: float
    def __init__(self, num_steps: _Optional[int] = ..., wall_s: _Optional[float] = ..., draft_compute_s: _Optional[float] = ..., verify_compute_s: _Optional[float] = ..., draft_call_s: _Optional[float] = ..., verify_call_s: _Optional[float] = ..., draft_idle_s: _Optional[float] = ..., target_idle_s: _Optional[float] = ..., control_plane_s: _Optional[float] = ..., draft_service_s: _Optional[float] = ..., verify_service_s: _Optional[float] = ..., channel_bytes: _Optional[float] = ..., feature_bytes: _Optional[float] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("spec_decode_num_drafts", "spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens", "spec_decode_num_accepted_tokens_per_pos", "steps", "mode", "k_steps", "prefix_cache", "feature_requests_held")
    class KStepsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: KSteps
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[KSteps, _Mapping]] = ...) -> None: ...
    class PrefixCacheEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: PrefixCacheStats
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[PrefixCacheStats, _Mapping]] = ...) -> None: ...
    SPEC_DECODE_NUM_DRAFTS_FIELD_NUMBER: _ClassVar[int]
    SPEC_DECODE_NUM_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SPEC_DECODE_NUM_ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SPEC_DECODE_NUM_ACCEPTED_TOKENS_PER_POS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    K_STEPS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_REQUESTS_HELD_FIELD_NUMBER: _ClassVar[int]
    spec_decode_num_drafts: int
    spec_decode_num_draft_tokens: int
    spec_decode_num_accepted_tokens: int
    spec_decode_num_accepted_tokens_per_pos: _containers.RepeatedScalarFieldContainer[int]
    steps: StepBreakdown
    mode: str
    k_steps: _containers.MessageMap[str, KSteps]
    prefix_cache: _containers.MessageMap[str, PrefixCacheStats]
    feature_requests_held: int
    def __init__(self, spec_decode_num_drafts: _Optional[int] = ..., spec_decode_num_draft_tokens: _Optional[int] = ..., spec_decode_num_accepted_tokens: _Optional[int] = ..., spec_decode_num_accepted_tokens_per_pos: _Optional[_Iterable[int]] = ..., steps: _Optional[_Union[StepBreakdown, _Mapping]] = ..., mode: _Optional[str] = ..., k_steps: _Optional[_Mapping[str, KSteps]] = ..., prefix_cache: _Optional[_Mapping[str, PrefixCacheStats]] = ..., feature_requests_held: _Optional[int] = ...) -> None: ...

class PrefixCacheStats(_message.Message):
    __slots__ = ("prefix_cache_queries", "prefix_cache_hits")
    PREFIX_CACHE_QUERIES_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    prefix_cache_queries: int
    prefix_cache_hits: int
    def __init__(self, prefix_cache_queries: _Optional[int] = ..., prefix_cache_hits: _Optional[int] = ...) -> None: ...

class KSteps(_message.Message):
    __slots__ = ("steps_at_k", "share_k0")
    STEPS_AT_K_FIELD_NUMBER: _ClassVar[int]
    SHARE_K0_FIELD_NUMBER: _ClassVar[int]
    steps_at_k: _containers.RepeatedScalarFieldContainer[int]
    share_k0: float
    def __init__(self, steps_at_k: _Optional[_Iterable[int]] = ..., share_k0: _Optional[float] = ...) -> None: ...
