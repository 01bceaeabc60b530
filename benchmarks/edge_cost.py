"""Edge cost per face of HPVFG (fp32 and int8) against dlib's plain recognition, same run.

Both sides start from a decoded LFW image and end with an embedding:
- dlib: HOG detection, 5-point shape, compute_face_descriptor (its plain pipeline);
- edge: YuNet detection, alignment, embedding, projector, generator, paste-back, and the
  embedding of the virtual face that the service receives.

Run: python benchmarks/edge_cost.py [--faces 48] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys

import cv2
import dlib
from recognizer_speed import best_ms_per_face, speed_table

from edge_agent.face.detect import FaceDetector
from edge_agent.face.image_io import load_image
from edge_agent.hpvfg import HpvfgAnonymizer
from edge_agent.keys import new_key
from edge_agent.recognizer import SystemRecognizer
from training.datasets import data_root
from training.evaluation.judges import _dlib_models


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    images = [load_image(f) for f in sorted((data_root() / "lfw").glob("*/*_0001.jpg"))[::60]]
    images = images[: args.faces]
    n, key = len(images), new_key()
    hog, sp5, facerec = _dlib_models()
    detector = FaceDetector()

    def dlib_pipeline() -> None:
        for image in images:
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            box = max(hog(rgb, 1), key=lambda r: r.area(), default=None)
            box = box or dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
            facerec.compute_face_descriptor(rgb, sp5(rgb, box))

    rows = [("dlib: HOG + shape + compute_face_descriptor", best_ms_per_face(dlib_pipeline, n, 1))]
    for threads in (1, 0):
        system = SystemRecognizer(threads=threads)
        for precision in ("fp32", "int8"):
            anon = HpvfgAnonymizer(precision=precision, recognizer=system, threads=threads)

            def edge(anon: HpvfgAnonymizer = anon) -> None:
                for image in images:
                    face = detector.primary(image)
                    virtual = anon.anonymize(image, face, key)
                    anon.recognizer.embed(virtual, face.landmarks)

            where = "1 thread" if threads == 1 else "all cores"
            rows.append(
                (f"edge HPVFG {precision}, {where}", best_ms_per_face(edge, n, args.repeat))
            )
    sys.stdout.write(f"{n} LFW images, one face each\n{speed_table(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
