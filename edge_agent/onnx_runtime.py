"""Create onnxruntime sessions on the best execution provider this machine has."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

# Preferred order: dedicated accelerators first, the CPU last.
PROVIDER_ORDER = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "QNNExecutionProvider",
    "CPUExecutionProvider",
)


def pick_providers(available: list[str] | None = None) -> list[str]:
    """Return the available providers in preference order, always ending with the CPU."""
    available = available if available is not None else ort.get_available_providers()
    chosen = [p for p in PROVIDER_ORDER if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def create_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """Open an ONNX model; ``threads`` > 0 caps intra-op threads (0 lets onnxruntime decide)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    providers = pick_providers()
    session = ort.InferenceSession(str(path), options, providers=providers)
    log.info("loaded %s on %s", path.name, session.get_providers()[0])
    return session
