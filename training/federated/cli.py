"""``kfaar fl`` (partition, local federation) and ``kfaar models`` (keygen, publish)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    fl = sub.add_parser(
        "fl",
        help="federated fine-tuning with Flower: partition, local federation",
        description="Federated fine-tuning of the HPVFG generator and KVFA (kfaar[fl]).",
    )
    actions = fl.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = actions.add_parser("partition", help="split LFW into identity-disjoint sites")
    p.add_argument("--out", type=Path, required=True, help="folder for site-<i>/ folders")
    _partition_args(p)
    p.set_defaults(handler=_partition)

    loc = actions.add_parser(
        "local",
        help="run a real SuperLink + N SuperNodes on loopback and export the best round",
        description="Partition, start flower-superlink and one flower-supernode per site on "
        "127.0.0.1, flwr run the app, stop every process, then export the best round as a "
        "new model version. OUT gets model/, metrics.json, dev_metrics.png, logs/.",
    )
    loc.add_argument("--out", type=Path, required=True, help="run folder")
    loc.add_argument("--rounds", type=int, default=3, help="server rounds (default 3)")
    loc.add_argument("--strategy", choices=("fedavg", "fedprox", "fedadam"), default="fedavg")
    loc.add_argument("--local-steps", type=int, default=None, help="generator steps per round")
    loc.add_argument("--local-kvfa-steps", type=int, default=None, help="KVFA steps per round")
    loc.add_argument("--batch", type=int, default=None, help="triplets per step")
    loc.add_argument("--dev-faces", type=int, default=120, help="dev faces per round (120)")
    loc.add_argument("--secagg", action="store_true",
                     help="SecAgg+: the server sees only the sum of the updates")  # fmt: skip
    loc.add_argument("--dp", action="store_true", help="local DP: clip + Gaussian noise")
    loc.add_argument("--dp-epsilon", type=float, default=None, help="per-round epsilon")
    loc.add_argument("--record", action="store_true",
                     help="debug: save every round's client and global arrays")  # fmt: skip
    loc.add_argument("--version", default=None, help="new model version (default: bump minor)")
    loc.add_argument("--no-export", action="store_true", help="stop after the federated run")
    loc.add_argument("--calib-faces", type=int, default=128, help="int8 calibration faces")
    loc.add_argument("--timeout", type=float, default=3600.0, help="seconds for flwr run")
    loc.add_argument("--tls", action="store_true",
                     help="TLS (dev CA in OUT/tls) + SuperNode authentication")  # fmt: skip
    loc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override an app run-config key, e.g. proximal-mu=0.1")  # fmt: skip
    _partition_args(loc)
    loc.set_defaults(handler=_local)

    m = sub.add_parser("models", help="model registry: publisher keys, signed publishing")
    mact = m.add_subparsers(dest="action", metavar="ACTION", required=True)
    k = mact.add_parser("keygen", help="create an Ed25519 publisher key (and KEY.pub)")
    k.add_argument("key", type=Path, help="signing key file to create (mode 0600)")
    k.set_defaults(handler=_keygen)
    pub = mact.add_parser("publish", help="sign a bundle's manifest and add it to the registry")
    pub.add_argument("bundle", type=Path, help="bundle folder (manifest.json + ONNX files)")
    pub.add_argument("--key", type=Path, required=True, help="publisher signing key file")
    pub.add_argument("--registry", type=Path, default=None, help="default: $KFAAR_MODEL_REGISTRY")
    pub.set_defaults(handler=_publish)


def _partition_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sites", type=int, default=3, help="organizations (default 3)")
    p.add_argument("--scheme", choices=("iid", "noniid"), default="iid")
    p.add_argument("--data-root", type=Path, default=None, help="default: $KFAAR_DATA_ROOT")
    p.add_argument("--max-identities", type=int, default=None, help="small runs: cap people")
    p.add_argument("--max-images", type=int, default=None, help="small runs: photos per person")
    p.add_argument("--seed", type=int, default=2025)


def _data(root: Path | None) -> tuple[Path, Path]:
    from training.datasets import data_root

    root = root or data_root()
    lfw, dev = root / "lfw", root / "splits" / "lfw_dev_triplets.txt"
    if not lfw.is_dir() or not dev.is_file():
        raise FileNotFoundError(f"need {lfw}/ and {dev} (set --data-root or $KFAAR_DATA_ROOT)")
    return lfw, dev


def _partition(args: argparse.Namespace) -> int:
    from training.federated.partition import PartitionConfig, partition

    lfw, dev = _data(args.data_root)
    cfg = PartitionConfig(args.sites, args.scheme, args.seed, args.max_identities, args.max_images)
    doc = partition(lfw, dev, args.out, cfg)
    for i, s in enumerate(doc["sites"]):
        sys.stdout.write(f"site-{i}\t{len(s['identities'])} identities\t{s['images']} images\n")
    return 0


def _override(item: str) -> tuple[str, object]:
    import tomllib

    key, sep, value = item.partition("=")
    if not sep:
        raise ValueError(f"--set {item!r}: expected KEY=VALUE")
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value  # a bare string


def _local(args: argparse.Namespace) -> int:
    from training.federated.local import LocalConfig
    from training.federated.pipeline import fl_local

    if args.sites < 1 or args.rounds < 1:
        raise ValueError("--sites and --rounds must be at least 1")
    rc: dict = {"strategy": args.strategy, "seed": args.seed}
    for flag, key in (
        ("local_steps", "local-steps"),
        ("local_kvfa_steps", "local-kvfa-steps"),
        ("batch", "batch"),
        ("dp_epsilon", "dp-epsilon"),
    ):
        if getattr(args, flag) is not None:
            rc[key] = getattr(args, flag)
    if args.dp:
        rc["dp"] = True
    if args.secagg:
        rc["secagg"] = True
    if args.record:
        rc["record-dir"] = str((args.out / "record").resolve())
    rc |= dict(_override(s) for s in args.set)
    cfg = LocalConfig(
        out=args.out.resolve(),
        sites=args.sites,
        rounds=args.rounds,
        scheme=args.scheme,
        seed=args.seed,
        data_root=args.data_root,
        max_identities=args.max_identities,
        max_images=args.max_images,
        dev_faces=args.dev_faces,
        version=args.version,
        export=not args.no_export,
        calib_faces=args.calib_faces,
        timeout_s=args.timeout,
        tls=args.tls,
        run_config=rc,
    )
    sys.stdout.write(json.dumps(fl_local(cfg), indent=1) + "\n")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from edge_agent.model_registry import generate_publisher_key

    sys.stdout.write(f"{generate_publisher_key(args.key)}\n")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from edge_agent.model_registry import publish

    sys.stdout.write(f"{publish(args.bundle, args.key, args.registry)}\n")
    return 0
