"""What an edge camera does with a frame: detect, anonymize under a key, embed the result.

The original frame, the face and the key stay here; only the virtual face's embedding,
wrapped in an ``Embedding`` message, is meant to leave the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.face.detect import Face, FaceDetector
from edge_agent.hpvfg import HpvfgAnonymizer
from kfaar_pb.v1 import common_pb2


@dataclass
class VirtualFace:
    face: Face  # where the face is in the frame (stays on the edge)
    image: np.ndarray  # the frame with the face replaced by its virtual face
    embedding: np.ndarray  # (128,) R(G(x, k)): the VIRTUAL template or probe


class EdgePipeline:
    def __init__(self, anonymizer: HpvfgAnonymizer, detector: FaceDetector | None = None):
        self.anonymizer = anonymizer
        self.detector = detector or FaceDetector()
        self.model = common_pb2.ModelVersion(name="hpvfg", version=anonymizer.bundle.version)

    def virtual(self, image: np.ndarray, key: bytes) -> VirtualFace:
        """Anonymize the frame's main face under ``key`` and embed the virtual face."""
        face = self.detector.primary(image)
        virtual = self.anonymizer.anonymize(image, face, key)
        return VirtualFace(face, virtual, self.anonymizer.recognizer.embed(virtual, face.landmarks))

    def embed(self, image: np.ndarray, face: Face, key: bytes) -> np.ndarray:
        """Return the embedding (128,) of ``face``'s virtual face under ``key``."""
        virtual = self.anonymizer.anonymize(image, face, key)
        return self.anonymizer.recognizer.embed(virtual, face.landmarks)

    def message(self, embedding: np.ndarray) -> common_pb2.Embedding:
        """Wrap a VIRTUAL embedding for the wire."""
        return common_pb2.Embedding(
            values=np.asarray(embedding, np.float32).tolist(),
            space=common_pb2.EMBEDDING_SPACE_VIRTUAL,
            model=self.model,
        )
