"""Read the model version and calibrated thresholds the service decides at.

The service needs only a bundle's ``manifest.json`` (version, thresholds per space and
FAR), never its ONNX files or the edge's code: the models run on the edge. The shipped
bundle sits in the same installed distribution, under the edge package's assets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent.parent / "edge_agent" / "assets" / "models" / "hpvfg"
REQUIRED = ("version",)  # thresholds: checked per FAR by policy.operating_thresholds


class ManifestError(ValueError):
    """A bundle's manifest is missing, unreadable or lacks what the service decides by."""


@dataclass(frozen=True)
class ModelManifest:
    path: Path
    manifest: dict

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @classmethod
    def load(cls, path: Path | None = None) -> ModelManifest:
        """Read ``manifest.json`` of the bundle folder ``path`` (default: the shipped one)."""
        folder = Path(path) if path is not None else SHIPPED
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{folder} is not a model bundle: {exc}") from None
        missing = [k for k in REQUIRED if not isinstance(manifest, dict) or k not in manifest]
        if missing:
            raise ManifestError(f"{folder}/manifest.json lacks {', '.join(missing)}")
        return cls(folder, manifest)
