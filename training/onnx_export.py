"""Export torch modules to ONNX with a dynamic batch axis, written atomically."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
OPSET = 17


def export_onnx(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    outputs: list[str],
    path: Path,
    static: tuple[str, ...] = (),
) -> Path:
    """Export ``model(*inputs.values())``; inputs and outputs but ``static`` get a batch axis."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = {n: {0: "batch"} for n in [*inputs, *outputs] if n not in static}
    # Write beside the target and rename, so a crash never leaves a half-written model.
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # Shapes are static apart from the batch, so the tracer's warnings are expected.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is intended
            warnings.filterwarnings("ignore", message="Constant folding")  # flips: harmless
            torch.onnx.export(
                model.eval(),
                tuple(inputs.values()),
                tmp,
                dynamo=False,
                opset_version=OPSET,
                input_names=list(inputs),
                output_names=outputs,
                dynamic_axes=dynamic,
            )
        os.chmod(tmp, 0o644)  # package data: readable by every user, like the wheel's files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("wrote %s", path)
    return path
