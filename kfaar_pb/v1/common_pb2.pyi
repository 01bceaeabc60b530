from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbeddingSpace(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EMBEDDING_SPACE_UNSPECIFIED: _ClassVar[EmbeddingSpace]
    EMBEDDING_SPACE_VIRTUAL: _ClassVar[EmbeddingSpace]
    EMBEDDING_SPACE_RECOVERED: _ClassVar[EmbeddingSpace]
    EMBEDDING_SPACE_KEYED: _ClassVar[EmbeddingSpace]
EMBEDDING_SPACE_UNSPECIFIED: EmbeddingSpace
EMBEDDING_SPACE_VIRTUAL: EmbeddingSpace
EMBEDDING_SPACE_RECOVERED: EmbeddingSpace
EMBEDDING_SPACE_KEYED: EmbeddingSpace

class ModelVersion(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "space", "model", "fused_views")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FUSED_VIEWS_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    space: EmbeddingSpace
    model: ModelVersion
    fused_views: int
    def __init__(self, values: _Optional[_Iterable[float]] = ..., space: _Optional[_Union[EmbeddingSpace, str]] = ..., model: _Optional[_Union[ModelVersion, _Mapping]] = ..., fused_views: _Optional[int] = ...) -> None: ...
