from minedraft.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("role", "model", "device", "device_uuid", "vocab_size", "context_len", "transports", "hostname", "pid", "tokenizer_fingerprint", "architecture", "num_active", "instance_id", "num_kv_blocks", "num_free_kv_blocks", "kv_block_size", "kv_cache_usage", "max_k", "max_num_seqs", "method", "prefix_cache_queries", "prefix_cache_hits", "missing_features", "feature_layers", "max_num_batched_tokens")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LEN_FIELD_NUMBER: _ClassVar[int]
    TRANSPORTS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    NUM_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NUM_FREE_KV_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_QUERIES_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_BATCHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    role: str
    model: str
    device: str
    device_uuid: str
    vocab_size: int
    context_len: int
    transports: _containers.RepeatedScalarFieldContainer[str]
    hostname: str
    pid: int
    tokenizer_fingerprint: str
    architecture: str
    num_active: int
    instance_id: str
    num_kv_blocks: int
    num_free_kv_blocks: int
    kv_block_size: int
    kv_cache_usage: float
    max_k: int
    max_num_seqs: int
    method: str
    prefix_cache_queries: int
    prefix_cache_hits: int
    missing_features: int
    feature_layers: _containers.RepeatedScalarFieldContainer[int]
    max_num_batched_tokens: int
    def __init__(self, role: _Optional[str] = ..., model: _Optional[str] = ..., device: _Optional[str] = ..., device_uuid: _Optional[str] = ..., vocab_size: _Optional[int] = ..., context_len: _Optional[int] = ..., transports: _Optional[_Iterable[str]] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ..., tokenizer_fingerprint: _Optional[str] = ..., architecture: _Optional[str] = ..., num_active: _Optional[int] = ..., instance_id: _Optional[str] = ..., num_kv_blocks: _Optional[int] = ..., num_free_kv_blocks: _Optional[int] = ..., kv_block_size: _Optional[int] = ..., kv_cache_usage: _Optional[float] = ..., max_k: _Optional[int] = ..., max_num_seqs: _Optional[int] = ..., method: _Optional[str] = ..., prefix_cache_queries: _Optional[int] = ..., prefix_cache_hits: _Optional[int] = ..., missing_features: _Optional[int] = ..., feature_layers: _Optional[_Iterable[int]] = ..., max_num_batched_tokens: _Optional[int] = ...) -> None: ...

class ChannelSpec(_message.Message):
    __slots__ = ("transport", "name", "handle", "device", "num_slots", "slot_bytes", "pid", "hostname", "device_uuid")
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NUM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    SLOT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    transport: str
    name: str
    handle: bytes
    device: str
    num_slots: int
    slot_bytes: int
    pid: int
    hostname: str
    device_uuid: str
    def __init__(self, transport: _Optional[str] = ..., name: _Optional[str] = ..., handle: _Optional[bytes] = ..., device: _Optional[str] = ..., num_slots: _Optional[int] = ..., slot_bytes: _Optional[int] = ..., pid: _Optional[int] = ..., hostname: _Optional[str] = ..., device_uuid: _Optional[str] = ...) -> None: ...

class BlockRef(_message.Message):
    __slots__ = ("transport", "slot", "offset", "nbytes", "generation", "batch", "k", "vocab", "has_probs", "payload")
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    VOCAB_FIELD_NUMBER: _ClassVar[int]
    HAS_PROBS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    transport: str
    slot: int
    offset: int
    nbytes: int
    generation: int
    batch: int
    k: int
    vocab: int
    has_probs: bool
    payload: bytes
    def __init__(self, transport: _Optional[str] = ..., slot: _Optional[int] = ..., offset: _Optional[int] = ..., nbytes: _Optional[int] = ..., generation: _Optional[int] = ..., batch: _Optional[int] = ..., k: _Optional[int] = ..., vocab: _Optional[int] = ..., has_probs: _Optional[bool] = ..., payload: _Optional[bytes] = ...) -> None: ...

class HandshakeRequest(_message.Message):
    __slots__ = ("reader_transports", "reader_hostname", "reader_device", "forced_transport", "channel_id", "feature_layers")
    READER_TRANSPORTS_FIELD_NUMBER: _ClassVar[int]
    READER_HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    READER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    FORCED_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    reader_transports: _containers.RepeatedScalarFieldContainer[str]
    reader_hostname: str
    reader_device: str
    forced_transport: str
    channel_id: str
    feature_layers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, reader_transports: _Optional[_Iterable[str]] = ..., reader_hostname: _Optional[str] = ..., reader_device: _Optional[str] = ..., forced_transport: _Optional[str] = ..., channel_id: _Optional[str] = ..., feature_layers: _Optional[_Iterable[int]] = ...) -> None: ...

class HandshakeReply(_message.Message):
    __slots__ = ("spec", "transport")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    spec: ChannelSpec
    transport: str
    def __init__(self, spec: _Optional[_Union[ChannelSpec, _Mapping]] = ..., transport: _Optional[str] = ...) -> None: ...

class OpenChannelRequest(_message.Message):
    __slots__ = ("channel_id", "spec")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    spec: ChannelSpec
    def __init__(self, channel_id: _Optional[str] = ..., spec: _Optional[_Union[ChannelSpec, _Mapping]] = ...) -> None: ...

class OpenChannelReply(_message.Message):
    __slots__ = ("transport",)
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    transport: str
    def __init__(self, transport: _Optional[str] = ...) -> None: ...

class FeatureSpan(_message.Message):
    __slots__ = ("request_id", "start", "row", "rows")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    start: int
    row: int
    rows: int
    def __init__(self, request_id: _Optional[str] = ..., start: _Optional[int] = ..., row: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...

class FeatureBlock(_message.Message):
    __slots__ = ("channel", "block", "spans")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    channel: str
    block: BlockRef
    spans: _containers.RepeatedCompositeFieldContainer[FeatureSpan]
    def __init__(self, channel: _Optional[str] = ..., block: _Optional[_Union[BlockRef, _Mapping]] = ..., spans: _Optional[_Iterable[_Union[FeatureSpan, _Mapping]]] = ...) -> None: ...

class OpenFeaturesRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: ChannelSpec
    def __init__(self, spec: _Optional[_Union[ChannelSpec, _Mapping]] = ...) -> None: ...

class NewRequest(_message.Message):
    __slots__ = ("request_id", "prompt_ids", "params", "seed", "resume")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    params: _common_pb2.SamplingParams
    seed: int
    resume: bool
    def __init__(self, request_id: _Optional[str] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., params: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., seed: _Optional[int] = ..., resume: _Optional[bool] = ...) -> None: ...

class AddRequest(_message.Message):
    __slots__ = ("requests", "features", "export_features", "ride", "release_ids")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    RIDE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[NewRequest]
    features: _containers.RepeatedCompositeFieldContainer[FeatureBlock]
    export_features: bool
    ride: bool
    release_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, requests: _Optional[_Iterable[_Union[NewRequest, _Mapping]]] = ..., features: _Optional[_Iterable[_Union[FeatureBlock, _Mapping]]] = ..., export_features: _Optional[bool] = ..., ride: _Optional[bool] = ..., release_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AddReply(_message.Message):
    __slots__ = ("first_tokens", "compute_s", "num_admitted", "features")
    FIRST_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    NUM_ADMITTED_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    first_tokens: _containers.RepeatedScalarFieldContainer[int]
    compute_s: float
    num_admitted: int
    features: _containers.RepeatedCompositeFieldContainer[FeatureBlock]
    def __init__(self, first_tokens: _Optional[_Iterable[int]] = ..., compute_s: _Optional[float] = ..., num_admitted: _Optional[int] = ..., features: _Optional[_Iterable[_Union[FeatureBlock, _Mapping]]] = ...) -> None: ...

class ProposeRequest(_message.Message):
    __slots__ = ("request_ids", "k", "updates", "features", "release_ids")
    class UpdatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.TokenList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.TokenList, _Mapping]] = ...) -> None: ...
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    RELEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    updates: _containers.MessageMap[str, _common_pb2.TokenList]
    features: _containers.RepeatedCompositeFieldContainer[FeatureBlock]
    release_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., updates: _Optional[_Mapping[str, _common_pb2.TokenList]] = ..., features: _Optional[_Iterable[_Union[FeatureBlock, _Mapping]]] = ..., release_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ProposeReply(_message.Message):
    __slots__ = ("block", "compute_s", "service_s", "confidence", "top_prob", "lengths")
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    SERVICE_S_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TOP_PROB_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    block: BlockRef
    compute_s: float
    service_s: float
    confidence: _containers.RepeatedScalarFieldContainer[float]
    top_prob: _containers.RepeatedScalarFieldContainer[float]
    lengths: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, block: _Optional[_Union[BlockRef, _Mapping]] = ..., compute_s: _Optional[float] = ..., service_s: _Optional[float] = ..., confidence: _Optional[_Iterable[float]] = ..., top_prob: _Optional[_Iterable[float]] = ..., lengths: _Optional[_Iterable[int]] = ...) -> None: ...

class ProposalPart(_message.Message):
    __slots__ = ("channel_id", "block", "num_requests")
    CHANNEL_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    NUM_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    channel_id: str
    block: BlockRef
    num_requests: int
    def __init__(self, channel_id: _Optional[str] = ..., block: _Optional[_Union[BlockRef, _Mapping]] = ..., num_requests: _Optional[int] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("request_ids", "k", "parts", "lengths", "export_features", "release_ids")
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    RELEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    parts: _containers.RepeatedCompositeFieldContainer[ProposalPart]
    lengths: _containers.RepeatedScalarFieldContainer[int]
    export_features: bool
    release_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., parts: _Optional[_Iterable[_Union[ProposalPart, _Mapping]]] = ..., lengths: _Optional[_Iterable[int]] = ..., export_features: _Optional[bool] = ..., release_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class VerifyReply(_message.Message):
    __slots__ = ("tokens", "num_accepted", "compute_s", "service_s", "features")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    SERVICE_S_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenList]
    num_accepted: _containers.RepeatedScalarFieldContainer[int]
    compute_s: float
    service_s: float
    features: _containers.RepeatedCompositeFieldContainer[FeatureBlock]
    def __init__(self, tokens: _Optional[_Iterable[_Union[_common_pb2.TokenList, _Mapping]]] = ..., num_accepted: _Optional[_Iterable[int]] = ..., compute_s: _Optional[float] = ..., service_s: _Optional[float] = ..., features: _Optional[_Iterable[_Union[FeatureBlock, _Mapping]]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("request_ids", "export_features", "release_ids")
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    RELEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    export_features: bool
    release_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_ids: _Optional[_Iterable[str]] = ..., export_features: _Optional[bool] = ..., release_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DecodeReply(_message.Message):
    __slots__ = ("tokens", "compute_s", "features")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    compute_s: float
    features: _containers.RepeatedCompositeFieldContainer[FeatureBlock]
    def __init__(self, tokens: _Optional[_Iterable[int]] = ..., compute_s: _Optional[float] = ..., features: _Optional[_Iterable[_Union[FeatureBlock, _Mapping]]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("request_ids",)
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ReleaseReply(_message.Message):
    __slots__ = ("num_released",)
    NUM_RELEASED_FIELD_NUMBER: _ClassVar[int]
    num_released: int
    def __init__(self, num_released: _Optional[int] = ...) -> None: ...
