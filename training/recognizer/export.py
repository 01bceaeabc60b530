"""Export the torch port of dlib's recognizer to ONNX, as-is and behind an ArcFace-style input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_agent.face.align import ARCFACE_112, DLIB_150, similarity_transform
from training.onnx_export import export_onnx
from training.recognizer import dlib_format
from training.recognizer.dlib_resnet import DlibResNet, from_dlib


def load_port() -> DlibResNet:
    """Build the torch recognizer from the installed dlib model file."""
    return from_dlib(dlib_format.load())


def _export(model: nn.Module, example: torch.Tensor, path: Path, in_name: str) -> Path:
    return export_onnx(model, {in_name: example}, ["embedding"], path)


def export_recognizer(path: Path, model: DlibResNet | None = None) -> Path:
    """Export the recognizer: input ``chip`` (N, 3, 150, 150) RGB 0..255 in dlib geometry."""
    model = model or load_port()
    return _export(model, torch.zeros(1, 3, 150, 150), path, "chip")


class ArcFaceAdapter(nn.Module):
    """Take ArcFace-style input and re-warp it to dlib's chip geometry inside the graph.

    Input: (N, 3, 112, 112) RGB aligned to the ArcFace template, scaled (x - 127.5) / 128.
    This lets the recognizer stand in for any ArcFace-style judge (``--judge onnx:PATH``).
    """

    def __init__(self, model: DlibResNet) -> None:
        super().__init__()
        self.model = model
        # For each dlib-chip pixel, where it lies in the ArcFace chip (normalised coordinates).
        to_arc = similarity_transform(DLIB_150.points, ARCFACE_112.points)
        ys, xs = np.mgrid[0:150, 0:150].astype(np.float64)
        src = np.stack([xs, ys, np.ones_like(xs)], -1) @ to_arc.T  # (150, 150, 2) arc px
        grid = (src + 0.5) / 112 * 2 - 1  # align_corners=False convention
        self.register_buffer("grid", torch.tensor(grid, dtype=torch.float32)[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, 112, 112)
        rgb = x * 128.0 + 127.5
        grid = self.grid.expand(x.shape[0], -1, -1, -1)
        chip = F.grid_sample(
            rgb, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (N, 3, 150, 150)
        return self.model(chip)


def export_arcface_style(path: Path, model: DlibResNet | None = None) -> Path:
    """Export the recognizer behind the ArcFace-style input contract of DESIGN.md section 4."""
    adapter = ArcFaceAdapter(model or load_port())
    return _export(adapter, torch.zeros(1, 3, 112, 112), path, "input")
