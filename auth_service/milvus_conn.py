"""Connecting to Milvus: URI checks, the client, and the one exception callers see."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

from auth_service.store import StoreUnavailable

TIMEOUT_S = 10.0  # per search or read: Identify fails over instead of hanging on Milvus
# Per write: Lite flushes its memtable (128 MiB) inside the write that fills it, which took
# over 10 s during a 500k bulk load here.
WRITE_TIMEOUT_S = 120.0


class IndexUnavailable(StoreUnavailable):
    """Milvus cannot be reached or refused a call: UNAVAILABLE, and the index sync retries."""


def check_uri(uri: str | None) -> str:
    """Return ``uri`` if it names a Milvus Lite file or server, else raise ValueError."""
    if not uri:
        raise ValueError(
            "the milvus index backend needs --milvus-uri: FILE.db or http://HOST:19530"
        )
    if "://" not in uri:
        if not uri.endswith(".db"):
            raise ValueError(f"milvus uri {uri!r}: a local Milvus Lite file must end in .db")
        if not Path(uri).expanduser().parent.is_dir():
            raise ValueError(f"milvus uri {uri!r}: the folder {Path(uri).parent} does not exist")
        need = ("pymilvus", "milvus_lite")
    else:
        parsed = urlparse(uri)
        try:
            parsed.port  # noqa: B018  (raises ValueError on a malformed port)
        except ValueError:
            raise ValueError(f"milvus uri {uri!r}: bad port") from None
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"milvus uri {uri!r}: want http(s)://HOST:PORT or a FILE.db")
        need = ("pymilvus",)
    for module in need:
        try:
            __import__(module)
        except ImportError:
            raise ValueError(
                f"the milvus index backend needs {module}: pip install 'kfaar[milvus]'"
            ) from None
    return uri


def why(exc: BaseException) -> str:
    """Return the message of a pymilvus, gRPC or OS error."""
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


def _lite_noise(record: logging.LogRecord) -> bool:
    # Milvus Lite logs a traceback for each RPC it lacks; pymilvus falls back by itself.
    return "Method not implemented" not in record.getMessage()


def connect(uri: str):
    """Return a pymilvus MilvusClient on ``uri`` (checked with check_uri first)."""
    from pymilvus import MilvusClient

    # pymilvus prints a traceback of its own (its own handler, no propagation) for every
    # failed call; IndexUnavailable carries the message and the service logs it per outage.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    options = {}
    if "://" not in uri:  # Milvus Lite serves gRPC from this very process
        logging.getLogger("grpc._server").addFilter(_lite_noise)
        # pymilvus pings every 10 s; Lite's gRPC server allows one per 5 min and answers
        # GOAWAY "too_many_pings" (logged by gRPC's C core) after an idle minute.
        options["grpc_options"] = {"grpc.keepalive_time_ms": 300_000}
    try:
        return MilvusClient(uri=uri, timeout=TIMEOUT_S, **options)
    except Exception as exc:  # pymilvus raises its own, grpc's and OS errors alike
        raise IndexUnavailable(f"cannot reach Milvus at {uri}: {why(exc)}") from exc
