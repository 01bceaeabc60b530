from kfaar_pb.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceProof(_message.Message):
    __slots__ = ("device_id", "timestamp_ms", "nonce", "signature")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    timestamp_ms: int
    nonce: bytes
    signature: bytes
    def __init__(self, device_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("proof", "subject_id", "templates", "idempotency_key")
    PROOF_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    proof: DeviceProof
    subject_id: str
    templates: _containers.RepeatedCompositeFieldContainer[_common_pb2.Embedding]
    idempotency_key: str
    def __init__(self, proof: _Optional[_Union[DeviceProof, _Mapping]] = ..., subject_id: _Optional[str] = ..., templates: _Optional[_Iterable[_Union[_common_pb2.Embedding, _Mapping]]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class EnrollReply(_message.Message):
    __slots__ = ("subject_id", "templates_stored")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_STORED_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    templates_stored: int
    def __init__(self, subject_id: _Optional[str] = ..., templates_stored: _Optional[int] = ...) -> None: ...

class LivenessEvidence(_message.Message):
    __slots__ = ("method", "score", "model_version", "threshold", "passed", "views_scored", "challenge")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    VIEWS_SCORED_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    method: str
    score: float
    model_version: str
    threshold: float
    passed: bool
    views_scored: int
    challenge: str
    def __init__(self, method: _Optional[str] = ..., score: _Optional[float] = ..., model_version: _Optional[str] = ..., threshold: _Optional[float] = ..., passed: _Optional[bool] = ..., views_scored: _Optional[int] = ..., challenge: _Optional[str] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("proof", "subject_id", "probe", "idempotency_key", "liveness")
    PROOF_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_FIELD_NUMBER: _ClassVar[int]
    proof: DeviceProof
    subject_id: str
    probe: _common_pb2.Embedding
    idempotency_key: str
    liveness: LivenessEvidence
    def __init__(self, proof: _Optional[_Union[DeviceProof, _Mapping]] = ..., subject_id: _Optional[str] = ..., probe: _Optional[_Union[_common_pb2.Embedding, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., liveness: _Optional[_Union[LivenessEvidence, _Mapping]] = ...) -> None: ...

class OperatingPoint(_message.Message):
    __slots__ = ("model", "space", "far", "threshold")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    FAR_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    model: str
    space: _common_pb2.EmbeddingSpace
    far: float
    threshold: float
    def __init__(self, model: _Optional[str] = ..., space: _Optional[_Union[_common_pb2.EmbeddingSpace, str]] = ..., far: _Optional[float] = ..., threshold: _Optional[float] = ...) -> None: ...

class VerifyReply(_message.Message):
    __slots__ = ("match", "score", "operating_point", "decided_at", "access_grant")
    MATCH_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    ACCESS_GRANT_FIELD_NUMBER: _ClassVar[int]
    match: bool
    score: float
    operating_point: str
    decided_at: OperatingPoint
    access_grant: bytes
    def __init__(self, match: _Optional[bool] = ..., score: _Optional[float] = ..., operating_point: _Optional[str] = ..., decided_at: _Optional[_Union[OperatingPoint, _Mapping]] = ..., access_grant: _Optional[bytes] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("proof", "probe", "top_k", "idempotency_key", "liveness")
    PROOF_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_FIELD_NUMBER: _ClassVar[int]
    proof: DeviceProof
    probe: _common_pb2.Embedding
    top_k: int
    idempotency_key: str
    liveness: LivenessEvidence
    def __init__(self, proof: _Optional[_Union[DeviceProof, _Mapping]] = ..., probe: _Optional[_Union[_common_pb2.Embedding, _Mapping]] = ..., top_k: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., liveness: _Optional[_Union[LivenessEvidence, _Mapping]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("subject_id", "score")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    score: float
    def __init__(self, subject_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class IdentifyReply(_message.Message):
    __slots__ = ("candidates", "operating_point", "decided_at", "access_grant")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    ACCESS_GRANT_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    operating_point: str
    decided_at: OperatingPoint
    access_grant: bytes
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., operating_point: _Optional[str] = ..., decided_at: _Optional[_Union[OperatingPoint, _Mapping]] = ..., access_grant: _Optional[bytes] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("proof", "subject_id", "idempotency_key")
    PROOF_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    proof: DeviceProof
    subject_id: str
    idempotency_key: str
    def __init__(self, proof: _Optional[_Union[DeviceProof, _Mapping]] = ..., subject_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class RevokeReply(_message.Message):
    __slots__ = ("templates_removed",)
    TEMPLATES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    templates_removed: int
    def __init__(self, templates_removed: _Optional[int] = ...) -> None: ...

class RekeyRequest(_message.Message):
    __slots__ = ("proof", "subject_id", "templates", "idempotency_key")
    PROOF_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    proof: DeviceProof
    subject_id: str
    templates: _containers.RepeatedCompositeFieldContainer[_common_pb2.Embedding]
    idempotency_key: str
    def __init__(self, proof: _Optional[_Union[DeviceProof, _Mapping]] = ..., subject_id: _Optional[str] = ..., templates: _Optional[_Iterable[_Union[_common_pb2.Embedding, _Mapping]]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class RekeyReply(_message.Message):
    __slots__ = ("templates_stored",)
    TEMPLATES_STORED_FIELD_NUMBER: _ClassVar[int]
    templates_stored: int
    def __init__(self, templates_stored: _Optional[int] = ...) -> None: ...

class AuthProbe(_message.Message):
    __slots__ = ("verify", "identify", "sequence")
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    IDENTIFY_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    verify: VerifyRequest
    identify: IdentifyRequest
    sequence: int
    def __init__(self, verify: _Optional[_Union[VerifyRequest, _Mapping]] = ..., identify: _Optional[_Union[IdentifyRequest, _Mapping]] = ..., sequence: _Optional[int] = ...) -> None: ...

class AuthDecision(_message.Message):
    __slots__ = ("sequence", "verify", "identify", "error_code", "error_message")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    IDENTIFY_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    verify: VerifyReply
    identify: IdentifyReply
    error_code: int
    error_message: str
    def __init__(self, sequence: _Optional[int] = ..., verify: _Optional[_Union[VerifyReply, _Mapping]] = ..., identify: _Optional[_Union[IdentifyReply, _Mapping]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class RegisterDeviceRequest(_message.Message):
    __slots__ = ("device_id", "verify_key", "scope", "single_view", "cert_sha256")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    VERIFY_KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SINGLE_VIEW_FIELD_NUMBER: _ClassVar[int]
    CERT_SHA256_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    verify_key: bytes
    scope: str
    single_view: bool
    cert_sha256: bytes
    def __init__(self, device_id: _Optional[str] = ..., verify_key: _Optional[bytes] = ..., scope: _Optional[str] = ..., single_view: _Optional[bool] = ..., cert_sha256: _Optional[bytes] = ...) -> None: ...

class RegisterDeviceReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnregisterDeviceRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class UnregisterDeviceReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateAppTokenRequest(_message.Message):
    __slots__ = ("app_name", "scope", "device_ids", "methods", "shared")
    APP_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    app_name: str
    scope: str
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    methods: _containers.RepeatedScalarFieldContainer[str]
    shared: bool
    def __init__(self, app_name: _Optional[str] = ..., scope: _Optional[str] = ..., device_ids: _Optional[_Iterable[str]] = ..., methods: _Optional[_Iterable[str]] = ..., shared: _Optional[bool] = ...) -> None: ...

class CreateAppTokenReply(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class RevokeAppTokenRequest(_message.Message):
    __slots__ = ("app_name",)
    APP_NAME_FIELD_NUMBER: _ClassVar[int]
    app_name: str
    def __init__(self, app_name: _Optional[str] = ...) -> None: ...

class RevokeAppTokenReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClearGuessBudgetRequest(_message.Message):
    __slots__ = ("budget_key",)
    BUDGET_KEY_FIELD_NUMBER: _ClassVar[int]
    budget_key: str
    def __init__(self, budget_key: _Optional[str] = ...) -> None: ...

class ClearGuessBudgetReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
