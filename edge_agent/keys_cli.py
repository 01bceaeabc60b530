"""``kfaar keys``: create and manage the edge keystore (``init|add|list|rotate|export-*``)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

KEYSTORE_ENV = "KFAAR_KEYSTORE"
PASSPHRASE_ENV = "KFAAR_KEYSTORE_PASSPHRASE"
DEVICE_SECRET_ENV = "KFAAR_DEVICE_SECRET_FILE"


def default_keystore() -> Path:
    """Return ``$KFAAR_KEYSTORE``, else ``~/.local/share/kfaar/keystore.json``."""
    env = os.environ.get(KEYSTORE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".local/share/kfaar/keystore.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "keys",
        help="manage the edge keystore (subject/site keys, device signing key)",
        description="Keys are sealed with SecretBox under a key derived from a passphrase "
        f"(Argon2id; ${PASSPHRASE_ENV} or a prompt) or a 32-byte device secret file "
        f"(--device-secret or ${DEVICE_SECRET_ENV}).",
    )
    p.add_argument("--keystore", type=Path, default=None, help=f"default: ${KEYSTORE_ENV}")
    p.add_argument("--device-secret", type=Path, default=None, help="32-byte secret file")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="create a keystore and a device signing key")
    init.add_argument(
        "--kdf-limits",
        choices=("interactive", "moderate", "sensitive"),
        default="moderate",
        help="Argon2id cost (default moderate)",
    )
    init.set_defaults(handler=_init)
    add = actions.add_parser("add", help="create a fresh key for a subject or site")
    add.add_argument("name")
    add.add_argument("--site", action="store_true", help="a per-site key (1:N deployments)")
    add.set_defaults(handler=_add)
    actions.add_parser("list", help="list entries with fingerprints, never keys").set_defaults(
        handler=_list
    )
    rot = actions.add_parser("rotate", help="replace a key; the old one is kept for rekey")
    rot.add_argument("name")
    rot.set_defaults(handler=_rotate)
    actions.add_parser(
        "export-public", help="print the device's Ed25519 verify key (hex)"
    ).set_defaults(handler=_export_public)
    exp = actions.add_parser(
        "export-key",
        help="write one key as a raw 32-byte file (mode 0600), for another key holder",
        description="The file is the key in the clear: anyone holding it can make and search "
        "that key's virtual faces. Hand it over on an encrypted channel and delete it after "
        "use; kfaar anonymize and search-footage read it with --key-file.",
    )
    exp.add_argument("name")
    exp.add_argument("--out", type=Path, required=True, help="file to create (never overwritten)")
    exp.set_defaults(handler=_export_key)


def _secrets(args: argparse.Namespace, confirm: bool = False) -> dict:
    secret_file = args.device_secret or os.environ.get(DEVICE_SECRET_ENV)
    if secret_file:
        return {"device_secret": Path(secret_file).read_bytes()}
    phrase = os.environ.get(PASSPHRASE_ENV)
    if phrase is None:
        try:
            phrase = getpass.getpass("keystore passphrase: ")
            if confirm and getpass.getpass("again: ") != phrase:
                raise ValueError("the passphrases differ")
        except EOFError:  # no terminal and nothing on stdin: say how to give the secret
            raise ValueError(
                f"no keystore passphrase: set ${PASSPHRASE_ENV}, give --device-secret "
                f"(or ${DEVICE_SECRET_ENV}), or run from a terminal"
            ) from None
    return {"passphrase": phrase.encode()}


def open_keystore(args: argparse.Namespace):
    """Open the keystore named by --keystore (or $KFAAR_KEYSTORE) with the given secret."""
    from edge_agent.keystore import Keystore

    return Keystore.open(args.keystore or default_keystore(), **_secrets(args))


def _init(args: argparse.Namespace) -> int:
    from edge_agent.keystore import Keystore

    path = args.keystore or default_keystore()
    store = Keystore.create(path, **_secrets(args, confirm=True), limits=args.kdf_limits)
    sys.stdout.write(f"{store.path}\n")
    return 0


def _add(args: argparse.Namespace) -> int:
    from edge_agent.keys import fingerprint

    key = open_keystore(args).add(args.name, "site" if args.site else "subject")
    sys.stdout.write(f"{args.name} {fingerprint(key)}\n")
    return 0


def _list(args: argparse.Namespace) -> int:
    for e in open_keystore(args).entries():
        sys.stdout.write(f"{e.name}\t{e.kind}\t{e.fingerprint}\tgeneration {e.generation}\n")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from edge_agent.keys import fingerprint

    sys.stdout.write(f"{args.name} {fingerprint(open_keystore(args).rotate(args.name))}\n")
    return 0


def _export_public(args: argparse.Namespace) -> int:
    sys.stdout.write(f"{open_keystore(args).signing_key().verify_key.encode().hex()}\n")
    return 0


def _export_key(args: argparse.Namespace) -> int:
    from edge_agent.keys import fingerprint

    key = open_keystore(args).key(args.name)
    try:  # O_EXCL: never overwrite, and the key is never readable by others, not even briefly
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ValueError(f"{args.out} exists; choose a new file") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    sys.stdout.write(f"{args.name} {fingerprint(key)} -> {args.out}\n")
    return 0
