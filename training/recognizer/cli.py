"""``kfaar recognizer``: build the system recognizer's ONNX form, or an ArcFace-style judge."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recognizer",
        help="build the ONNX port of dlib's face recognizer",
        description="Parse dlib_face_recognition_resnet_model_v1.dat, rebuild it in torch and "
        "export it to ONNX. Needs kfaar[eval].",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="build (or rebuild) the ONNX recognizer from dlib's weights",
        description="Build the ONNX recognizer into the kfaar cache "
        "($KFAAR_CACHE_DIR, default ~/.cache/kfaar). The package ships the same file; "
        "building it again shows where it comes from.",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.set_defaults(handler=_build)
    arc = actions.add_parser(
        "export-arcface",
        help="export it behind an ArcFace-style 112x112 input",
        description="Write an ONNX model with the ArcFace input contract (N x 3 x 112 x 112 "
        "RGB, ArcFace 5-point alignment, (x-127.5)/128), usable as --judge onnx:PATH.",
    )
    arc.add_argument("path", type=Path, help="output .onnx file")
    arc.set_defaults(handler=_export_arcface)


def _build(args: argparse.Namespace) -> int:
    from edge_agent.assets import cache_dir
    from edge_agent.recognizer import RECOGNIZER_BUILD
    from training.recognizer.export import export_recognizer

    path = cache_dir() / f"{RECOGNIZER_BUILD}.onnx"
    if args.force or not path.is_file():
        export_recognizer(path)
    sys.stdout.write(f"{path}\n")
    return 0


def _export_arcface(args: argparse.Namespace) -> int:
    from training.recognizer.export import export_arcface_style

    if args.path.suffix != ".onnx":
        raise ValueError(f"output must be an .onnx file, got {args.path}")
    sys.stdout.write(f"{export_arcface_style(args.path)}\n")
    return 0
