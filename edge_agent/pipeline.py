"""What an edge camera does with a frame: detect, anonymize under a key, make the template.

The original frame, the face, its embedding z and the key stay here; only the template,
wrapped in an ``Embedding`` message, is meant to leave the device. The template lives in
one of two spaces (DESIGN.md section 3):

- ``keyed`` (the default, chosen by measurement: docs/MODEL_CARD.md): z' = P(z, k), the
  keyed virtual identity HPVFG assigns to the person and asks the generator to render,
  sent in a frame the key also rotates (``hpvfg.keyed_frame``) so it cannot be linked;
- ``virtual``: R(G(x, k)), the recognizer's embedding of the rendered virtual face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.face.align import align, paste_back
from edge_agent.face.detect import Face, FaceDetector
from edge_agent.hpvfg import HpvfgAnonymizer
from edge_agent.keys import check_key
from kfaar_pb.v1 import common_pb2

SPACES = {
    "keyed": common_pb2.EMBEDDING_SPACE_KEYED,
    "virtual": common_pb2.EMBEDDING_SPACE_VIRTUAL,
}
DEFAULT_SPACE = "keyed"


@dataclass
class VirtualFace:
    face: Face  # where the face is in the frame (stays on the edge)
    image: np.ndarray  # the frame with the face replaced by its virtual face
    embedding: np.ndarray  # (128,) the template or probe, in the pipeline's space


class EdgePipeline:
    def __init__(
        self,
        anonymizer: HpvfgAnonymizer,
        detector: FaceDetector | None = None,
        space: str = DEFAULT_SPACE,
    ) -> None:
        if space not in SPACES:
            raise ValueError(f"space must be one of {sorted(SPACES)}, got {space!r}")
        self.anonymizer = anonymizer
        self.detector = detector or FaceDetector()
        self.space = space
        self.model = common_pb2.ModelVersion(name="hpvfg", version=anonymizer.bundle.version)

    def virtual(self, image: np.ndarray, key: bytes) -> VirtualFace:
        """Anonymize the frame's main face under ``key`` and make its template."""
        return self.render(image, self.detector.primary(image), key)

    def render(self, image: np.ndarray, face: Face, key: bytes) -> VirtualFace:
        """Replace ``face`` by its virtual face under ``key``; return it with its template."""
        key = check_key(key)
        anon = self.anonymizer
        aligned = align(image, face.landmarks, anon.spec)
        z = anon.recognizer.embed_chips(aligned.chip[None])
        chip = anon.generate(aligned.chip[None], z, key)[0]
        virtual = paste_back(image, chip, aligned.matrix, anon.mask)
        if self.space == "keyed":
            template = anon.keyed_template(z, key)[0]
        else:
            template = anon.recognizer.embed(virtual, face.landmarks)
        return VirtualFace(face, virtual, template)

    def embed(self, image: np.ndarray, face: Face, key: bytes) -> np.ndarray:
        """Return the template (128,) of ``face`` under ``key``, rendering only if needed."""
        if self.space != "keyed":
            return self.render(image, face, key).embedding
        z = self.anonymizer.recognizer.embed(image, face.landmarks)[None]
        return self.anonymizer.keyed_template(z, check_key(key))[0]

    def message(self, embedding: np.ndarray, fused_views: int = 1) -> common_pb2.Embedding:
        """Wrap a template of this pipeline's space for the wire (fused from some views)."""
        return common_pb2.Embedding(
            values=np.asarray(embedding, np.float32).tolist(),
            space=SPACES[self.space],
            model=self.model,
            fused_views=fused_views,
        )
