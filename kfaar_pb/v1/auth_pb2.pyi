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

class VerifyRequest(_message.Message):
    __slots__ = ("proof", "subject_id", "probe", "idempotency_key")
    PROOF_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    proof: DeviceProof
    subject_id: str
    probe: _common_pb2.Embedding
    idempotency_key: str
    def __init__(self, proof: _Optional[_Union[DeviceProof, _Mapping]] = ..., subject_id: _Optional[str] = ..., probe: _Optional[_Union[_common_pb2.Embedding, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class VerifyReply(_message.Message):
    __slots__ = ("match", "score", "operating_point")
    MATCH_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    match: bool
    score: float
    operating_point: str
    def __init__(self, match: _Optional[bool] = ..., score: _Optional[float] = ..., operating_point: _Optional[str] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("proof", "probe", "top_k", "idempotency_key")
    PROOF_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    proof: DeviceProof
    probe: _common_pb2.Embedding
    top_k: int
    idempotency_key: str
    def __init__(self, proof: _Optional[_Union[DeviceProof, _Mapping]] = ..., probe: _Optional[_Union[_common_pb2.Embedding, _Mapping]] = ..., top_k: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("subject_id", "score")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    score: float
    def __init__(self, subject_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class IdentifyReply(_message.Message):
    __slots__ = ("candidates", "operating_point")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    operating_point: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., operating_point: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("device_id", "verify_key", "scope")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    VERIFY_KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    verify_key: bytes
    scope: str
    def __init__(self, device_id: _Optional[str] = ..., verify_key: _Optional[bytes] = ..., scope: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("app_name", "scope", "device_ids", "methods")
    APP_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    app_name: str
    scope: str
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    methods: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, app_name: _Optional[str] = ..., scope: _Optional[str] = ..., device_ids: _Optional[_Iterable[str]] = ..., methods: _Optional[_Iterable[str]] = ...) -> None: ...

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
