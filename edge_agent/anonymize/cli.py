"""``kfaar anonymize`` and ``kfaar search-footage``: anonymize stored media, search it by key."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from edge_agent.keys_cli import DEVICE_SECRET_ENV, KEYSTORE_ENV


def _key_options(p: argparse.ArgumentParser, key_map: bool) -> None:
    g = p.add_mutually_exclusive_group(required=not key_map)
    g.add_argument("--key-file", type=Path, default=None,
                   help="a raw key file: 32 bytes or 64 hex digits")  # fmt: skip
    g.add_argument("--site-key", default=None,
                   help="a keystore entry (site or subject) used for every face")  # fmt: skip
    if key_map:
        p.add_argument("--key-map", type=Path, default=None,
                       help="enrollment map JSON: per-person keys matched by a reference photo; "
                       "other faces use --key-file/--site-key, else a discarded key")  # fmt: skip
    p.add_argument("--keystore", type=Path, default=None, help=f"default: ${KEYSTORE_ENV}")
    p.add_argument("--device-secret", type=Path, default=None, help=f"or ${DEVICE_SECRET_ENV}")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="generator precision (default fp32)")  # fmt: skip
    p.add_argument("--threads", type=int, default=0,
                   help="onnxruntime intra-op threads (0: all cores)")  # fmt: skip
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="threads that decode and detect (default: all cores)")  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser(
        "anonymize",
        help="replace every face of images, folders or videos by its virtual face",
        description="Writes each output under the same relative path and name, with a JSON "
        "sidecar (face boxes, model version, key fingerprint; never the key). Files in a "
        "folder that are not images or videos are counted and left alone. Exit code 0 when "
        "every file succeeded; 1 when some failed (no face, output not writable); 2 for bad "
        "usage, or when an input is corrupt or unreadable (the other files are still done).",
    )
    a.add_argument("input", type=Path, help="an image, a video, or a folder (recursive)")
    a.add_argument("-o", "--output", type=Path, required=True,
                   help="output folder (or file, for a single input file)")  # fmt: skip
    _key_options(a, key_map=True)
    a.add_argument("--fallback", choices=("fail", "blur", "skip"), default="fail",
                   help="an image or video frame without a detected face: fail the file "
                   "(default), blur the whole frame, or skip the file (no output); in videos, "
                   "blur also replaces tracked-through-a-miss faces by a blurred box")  # fmt: skip
    a.add_argument("--suspect-score", type=float, default=0.4,
                   help="detections scoring from this up to the replace score (0.6) are "
                   "blurred, not replaced: cut-off, blurry or turned-away faces (0.4; 0.6 "
                   "turns it off)")  # fmt: skip
    a.add_argument("--hold", type=int, default=8,
                   help="video: frames a lost face stays anonymized in place (8)")  # fmt: skip
    a.add_argument("--smooth", type=float, default=0.5,
                   help="video: landmark smoothing, weight of the past (0.5)")  # fmt: skip
    a.add_argument("--batch", type=int, default=16, help="faces per generator call (16)")
    a.add_argument("--fourcc", default=None,
                   help="video codec (default: MJPG for .avi/.mkv, mp4v otherwise)")  # fmt: skip
    a.add_argument("--summary", type=Path, default=None, help="also write a JSON run summary")
    a.set_defaults(handler=_anonymize)

    s = sub.add_parser(
        "search-footage",
        help="with the key, find a person in anonymized images and videos (KVFA)",
        description="Recovers I(v, k) for every face and compares it with the reference "
        "photo's embedding. Lists files, frames, boxes and scores; writes no images. Exit "
        "code 0 when every file was searched, 2 for bad usage or a corrupt or unreadable "
        "input (the other files are still searched).",
    )
    s.add_argument("inputs", type=Path, nargs="+", help="anonymized images, videos or folders")
    s.add_argument("--reference", type=Path, required=True, help="a photo of the person")
    _key_options(s, key_map=False)
    s.add_argument("--method", choices=("virtual", "kvfa"), default="virtual",
                   help="virtual (default): anonymize the reference under the key and compare "
                   "virtual faces; kvfa: recover I(v, k) and compare it with the "
                   "reference, the paper's way, weaker with the shipped model "
                   "(docs/ANONYMIZE.md)")  # fmt: skip
    s.add_argument("--threshold", type=float, default=None,
                   help="match threshold (default: the bundle's, calibrated at FAR 1e-3 "
                   "for the method)")  # fmt: skip
    s.add_argument("--top", type=int, default=0,
                   help="also list the K best faces, matching or not")  # fmt: skip
    s.add_argument("--stride", type=int, default=1, help="video: search every Nth frame (1)")
    s.add_argument("--json", type=Path, default=None, help="write all results as JSON here")
    s.set_defaults(handler=_search)


def _check(args: argparse.Namespace) -> None:
    for name in ("hold", "batch", "workers", "stride", "top", "threads"):
        v = getattr(args, name, None)
        if v is not None and v < (0 if name in ("hold", "top", "threads") else 1):
            raise ValueError(f"--{name} must not be {v}")
    if not 0 <= getattr(args, "smooth", 0) < 1:
        raise ValueError("--smooth must be in [0, 1)")


def _single_key(args: argparse.Namespace) -> bytes | None:
    from edge_agent.anonymize.engine import read_key_file

    if args.key_file is not None:
        return read_key_file(args.key_file)
    if args.site_key is not None:
        from edge_agent.keys_cli import open_keystore

        return open_keystore(args).key(args.site_key)
    return None


def _anonymize(args: argparse.Namespace) -> int:
    from edge_agent.anonymize.batch import Options, Runner, not_media, plan, write_atomic
    from edge_agent.anonymize.engine import REPLACE_SCORE, Engine, KeyChooser, load_key_map
    from edge_agent.face.detect import DetectorConfig, FaceDetector
    from edge_agent.hpvfg import HpvfgAnonymizer
    from edge_agent.progress import plural

    _check(args)
    pairs = plan(args.input, args.output)  # bad paths fail before any model loads
    ignored = not_media(args.input)
    default = _single_key(args)
    anon = HpvfgAnonymizer(precision=args.precision, threads=args.threads)
    if not 0 < args.suspect_score <= REPLACE_SCORE:
        raise ValueError(f"--suspect-score must be in (0, {REPLACE_SCORE}]")
    detector = FaceDetector(DetectorConfig(score_threshold=args.suspect_score))
    subjects = []
    if args.key_map is not None:
        store = None
        if args.keystore or os.environ.get(KEYSTORE_ENV):
            from edge_agent.keys_cli import open_keystore

            store = open_keystore(args)
        subjects = load_key_map(args.key_map, anon, detector, store)
    keys = KeyChooser(default, subjects)
    engine = Engine(anon, keys, detector, args.batch)
    meta = {
        "model": {"name": "hpvfg", "version": anon.bundle.version, "precision": args.precision},
        "key_fingerprints": keys.fingerprints(),
        "fallback": args.fallback,
    }
    options = Options(args.fallback, args.hold, args.smooth, args.workers, args.fourcc)
    results = Runner(engine, options, meta).run(pairs)
    w = sys.stdout.write
    for r in results:
        extra = r.error
        if r.flicker:
            f = r.flicker
            extra = f"flicker {f['virtual_chip_mad']} (original {f['original_chip_mad']})"
        w(f"{r.status}\t{r.source}\t{plural(r.faces, 'face')}\t{extra}\n")
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped")}
    w(f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped\n")
    if ignored:
        names = ", ".join(str(p.relative_to(args.input)) for p in ignored[:5])
        more = f" and {len(ignored) - 5} more" if len(ignored) > 5 else ""
        w(f"skipped: {plural(len(ignored), 'file')} not images or videos ({names}{more})\n")
    if args.summary:
        doc = {**meta, "counts": counts, "files": [r.to_json() for r in results]}
        doc["not_media"] = [str(p) for p in ignored]
        write_atomic(args.summary, (json.dumps(doc, indent=1) + "\n").encode())
    bad = [r for r in results if r.bad_input]
    if bad:
        sys.stderr.write(f"kfaar anonymize: {plural(len(bad), 'input')} corrupt or unreadable\n")
        return 2
    return 1 if counts["failed"] else 0


def _search(args: argparse.Namespace) -> int:
    from edge_agent.anonymize.batch import write_atomic
    from edge_agent.anonymize.search import FootageSearch, media_files
    from edge_agent.face.detect import FaceDetector
    from edge_agent.hpvfg import HpvfgAnonymizer
    from edge_agent.keys import fingerprint
    from edge_agent.progress import plural

    _check(args)
    files = media_files(args.inputs)
    key = _single_key(args)
    anon = HpvfgAnonymizer(precision=args.precision, threads=args.threads)
    detector = FaceDetector()
    finder = FootageSearch(anon, detector, key, args.reference, args.workers, args.method)
    threshold = finder.default_threshold if args.threshold is None else args.threshold
    hits, errors = finder.search(files, args.stride)
    ranked = sorted(hits, key=lambda h: -h.score)
    matches = [h for h in ranked if h.score >= threshold]
    w = sys.stdout.write
    w("| match | file | frame | box | score |\n|---|---|---|---|---|\n")
    shown = matches + [h for h in ranked[: args.top] if h.score < threshold]
    for h in shown:
        frame = "-" if h.frame is None else str(h.frame)
        box = ",".join(f"{v:.0f}" for v in h.box)
        w(f"| {'MATCH' if h.score >= threshold else 'top'} | {h.file} | {frame} | {box} "
          f"| {h.score:.4f} |\n")  # fmt: skip
    w(f"{plural(len(matches), 'match', 'matches')} among {plural(len(hits), 'face')} in "
      f"{plural(len(files), 'file')} at threshold {threshold:.4f}\n")  # fmt: skip
    for path, err in errors:  # image errors already start with the file's name
        message = err if err.startswith(path) else f"{path}: {err}"
        sys.stderr.write(f"kfaar search-footage: {message}\n")
    if args.json:
        doc = {
            "model": {"name": "hpvfg", "version": anon.bundle.version},
            "key_fingerprint": fingerprint(key),
            "method": args.method,
            "threshold": threshold,
            "matches": [h.to_json() for h in matches],
            "faces": [h.to_json() for h in ranked],
            "errors": [{"file": p, "error": e} for p, e in errors],
        }
        write_atomic(args.json, (json.dumps(doc, indent=1) + "\n").encode())
    return 2 if errors else 0
