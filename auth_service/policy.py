"""What the service accepts and how it decides: model version, spaces, operating point."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import grpc
import numpy as np

from auth_service.store import EMBED_DIM
from kfaar_pb.v1 import common_pb2

log = logging.getLogger(__name__)

MAX_TEMPLATES = 32
MAX_FUSED_VIEWS = 32
SPACE_NAMES = {
    common_pb2.EMBEDDING_SPACE_VIRTUAL: "VIRTUAL",
    common_pb2.EMBEDDING_SPACE_KEYED: "KEYED",
    common_pb2.EMBEDDING_SPACE_RECOVERED: "RECOVERED",
}
SPACES_BY_NAME = {name: space for space, name in SPACE_NAMES.items()}
# The false-accept rate the service runs at unless told otherwise (NIST SP 800-63B).
DEFAULT_FAR = 1e-3
FAR_ENV = "KFAAR_OPERATING_FAR"


class RequestError(Exception):
    """A request the service refuses: carries the gRPC status code and a message."""

    def __init__(self, code: grpc.StatusCode, message: str, audited: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.audited = audited  # already recorded (with its own reason): not again


class PolicyError(ValueError):
    """A bundle cannot give the operating point asked for."""


def far_label(far: float) -> str:
    """Write a false-accept rate the way the manifest keys it: 0.001 -> "1e-3"."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def operating_thresholds(manifest: dict, far: float, fused: bool = False) -> dict[str, float]:
    """Return {space name: threshold} calibrated at ``far`` in a bundle manifest.

    Bundles calibrated by ``kfaar calibrate`` carry ``operating_points``, with thresholds
    for single probes and for fused ones; older ones only ``virtual_threshold`` and
    ``kvfa_threshold`` at FAR 1e-3 (single probes), which are used then.
    """
    points = manifest.get("operating_points", {})
    label = far_label(far)
    if label in points:
        found = points[label].get("fused_thresholds" if fused else "thresholds", {})
        return {k: float(v) for k, v in found.items()}
    if fused:
        return {}
    if points or label != far_label(DEFAULT_FAR):
        have = ", ".join(sorted(points)) or "none (run kfaar calibrate)"
        raise PolicyError(f"the bundle has no operating point at FAR {label}; it has: {have}")
    legacy = {
        "VIRTUAL": manifest.get("virtual_threshold"),
        "RECOVERED": manifest.get("kvfa_threshold"),
    }
    return {k: float(v) for k, v in legacy.items() if v is not None}


@dataclass
class Policy:
    """What the service accepts and how it decides."""

    model: str  # "name/version" of the only model version accepted, e.g. "hpvfg/1.0.0"
    thresholds: dict[int, float] = field(default_factory=dict)  # space -> cosine threshold
    far: float | None = None  # the calibrated false-accept rate of the thresholds
    # space -> threshold for probes fused from several views of one face (same FAR)
    fused: dict[int, float] = field(default_factory=dict)
    # The scopes that accept VIRTUAL templates ("*": all). VIRTUAL embeddings are linkable
    # across keys (issue 20: D_sys 0.29, 6.8% of cross-key pairs pass), so `kfaar serve`
    # accepts them only where a scope opts in; None (a policy built in code) accepts them.
    virtual_scopes: frozenset[str] | None = None

    @classmethod
    def from_bundle(
        cls,
        bundle,
        allow_recovered: bool = False,
        far: float = DEFAULT_FAR,
        virtual_scopes: frozenset[str] | None = None,
    ) -> Policy:
        """Accept the bundle's model version at the thresholds calibrated for ``far``.

        VIRTUAL and KEYED are accepted whenever the bundle is calibrated for them;
        RECOVERED (linkable across keys) only with ``allow_recovered``.
        """
        by_name = operating_thresholds(bundle.manifest, far)
        names = ["VIRTUAL", "KEYED"] + (["RECOVERED"] if allow_recovered else [])
        if allow_recovered and "RECOVERED" not in by_name:
            raise PolicyError(f"the bundle has no RECOVERED threshold at FAR {far_label(far)}")
        thresholds = {SPACES_BY_NAME[n]: by_name[n] for n in names if n in by_name}
        if not thresholds:
            raise PolicyError(f"the bundle has no VIRTUAL or KEYED threshold at {far_label(far)}")
        fused = operating_thresholds(bundle.manifest, far, fused=True)
        fused_ids = {SPACES_BY_NAME[n]: t for n, t in fused.items() if n in names}
        return cls(f"hpvfg/{bundle.version}", thresholds, far, fused_ids, virtual_scopes)

    def allowed(self, space: int, scope: str) -> None:
        """Refuse VIRTUAL embeddings from a scope that has not opted in to them."""
        opted = self.virtual_scopes
        if space != common_pb2.EMBEDDING_SPACE_VIRTUAL or opted is None:
            return
        if "*" not in opted and scope not in opted:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"VIRTUAL templates are off in scope {scope!r}: they are linkable across keys "
                "(docs/SECURITY.md); use KEYED, or opt the scope in with --virtual-scopes",
            )

    def threshold(self, probe: common_pb2.Embedding, single_view: bool = False) -> float:
        """The threshold deciding ``probe``, whatever it declares.

        ``fused_views`` is the device's word, and a device that fuses but declares a single
        view would be decided at the laxer single-frame threshold (issue 20: 3.7x the
        false accepts). So a probe is held to the stricter of its space's single-frame and
        fused calibrations, unless its device was registered as single-frame (the admin's
        word, not the device's). Without a fused calibration: the single-frame threshold
        (a fused probe's false-accept rate is then above the operating point).
        """
        return self.space_threshold(probe.space, single_view)

    def space_threshold(self, space: int, single_view: bool = False) -> float:
        """The threshold the probes of ``space`` from such a device are decided at."""
        if single_view:
            return self.thresholds[space]
        return max(self.thresholds[space], self.fused.get(space, float("-inf")))

    def operating_point(self, space: int, fused: bool = False) -> str:
        """Name the operating point that decides in ``space``: model, space, FAR.

        ``fused``: the decision is held to the fused calibration (every device but one
        registered single-frame).
        """
        rate = f" FAR {far_label(self.far)}" if self.far is not None else ""
        kind = " fused" if fused and self.fused.get(space, -1.0) >= self.thresholds[space] else ""
        return f"{self.model} {SPACE_NAMES.get(space, space)}{kind}{rate}"

    def decided_at(self, space: int, single_view: bool = False):
        """Return the OperatingPoint message of ``space`` for a reply."""
        from kfaar_pb.v1 import auth_pb2

        return auth_pb2.OperatingPoint(
            model=self.model,
            space=space,
            far=self.far or 0.0,
            threshold=self.space_threshold(space, single_view),
        )

    def describe(self) -> str:
        """One line for the start-up log: every accepted space with its threshold."""
        spaces = ", ".join(
            f"{SPACE_NAMES[s]} {t:.4f}"
            + (f" (fused {self.fused[s]:.4f})" if s in self.fused else "")
            for s, t in self.thresholds.items()
        )
        rate = far_label(self.far) if self.far is not None else "uncalibrated"
        line = f"model {self.model}, operating point FAR {rate}: {spaces}"
        if self.fused:
            line += "; every probe is decided at its space's stricter threshold"
        virtual = common_pb2.EMBEDDING_SPACE_VIRTUAL
        if virtual in self.thresholds and self.virtual_scopes is not None:
            opted = ", ".join(sorted(self.virtual_scopes)) or "none"
            line += f"; VIRTUAL accepted in scopes: {opted}"
        return line

    def check(self, emb: common_pb2.Embedding) -> np.ndarray:
        """Validate one embedding's tags and values; return it as a unit vector."""
        model = f"{emb.model.name}/{emb.model.version}"
        if emb.space not in self.thresholds:
            allowed = ", ".join(SPACE_NAMES[s] for s in self.thresholds)
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"embedding space {SPACE_NAMES.get(emb.space, emb.space)} is not accepted "
                f"here (accepted: {allowed})",
            )
        if model != self.model:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model version {model!r} does not match the service's {self.model!r}: "
                "re-enroll or rekey with the current model",
            )
        v = np.asarray(emb.values, dtype=np.float32)
        if v.shape != (EMBED_DIM,):
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, f"embedding has {v.size} values, need {EMBED_DIM}"
            )
        if emb.fused_views > MAX_FUSED_VIEWS:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, f"fused_views must be 0 to {MAX_FUSED_VIEWS}"
            )
        if not np.isfinite(v).all():
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "embedding has NaN or Inf values")
        norm = float(np.linalg.norm(v))
        if not 0.5 <= norm <= 2.0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"embedding norm {norm:.3g}")
        return v / norm

    def batch(self, embs) -> tuple[np.ndarray, int]:
        """Validate a list of templates of one space; return them stacked, and the space."""
        if not 1 <= len(embs) <= MAX_TEMPLATES:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, f"send 1 to {MAX_TEMPLATES} templates"
            )
        vecs = np.stack([self.check(e) for e in embs])
        if len({e.space for e in embs}) != 1:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "templates mix embedding spaces")
        return vecs, embs[0].space
