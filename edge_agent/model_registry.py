"""Signed model versions: publish a bundle to a registry, verify and install it on an edge.

A registry is a folder of versions, ``<registry>/hpvfg/<version>/``, each a bundle
(``manifest.json`` listing every file's SHA-256) plus ``manifest.sig``: an Ed25519
signature by the publisher over the manifest's exact bytes. The manifest names the
version and every file digest, so one signature covers the whole version. An edge trusts
only the publisher verify keys it was given; it checks the signature, then every file's
digest, before it copies the version into its own models folder and points ``current``
at it. Nothing is loaded from the registry itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from nacl.encoding import HexEncoder
from nacl.exceptions import BadSignatureError
from nacl.hash import blake2b
from nacl.signing import SigningKey, VerifyKey

from edge_agent.hpvfg import Bundle, BundleError

REGISTRY_ENV = "KFAAR_MODEL_REGISTRY"
EDGE_MODELS_ENV = "KFAAR_EDGE_MODELS"
PUBLISHER_KEY_ENV = "KFAAR_PUBLISHER_KEY"  # the edge's trusted publisher verify key file
FAMILY = "hpvfg"
SIGNATURE = "manifest.sig"
CURRENT = "current"


class SignatureError(BundleError):
    """A model version is unsigned, signed by an untrusted key, or altered."""


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", "~/.local/share")).expanduser() / "kfaar"


def default_registry() -> Path:
    """Return ``$KFAAR_MODEL_REGISTRY``, else ``~/.local/share/kfaar/models``."""
    env = os.environ.get(REGISTRY_ENV)
    return Path(env).expanduser() if env else _data_home() / "models"


def default_edge_models() -> Path:
    """Return ``$KFAAR_EDGE_MODELS``, else ``~/.local/share/kfaar/edge-models``."""
    env = os.environ.get(EDGE_MODELS_ENV)
    return Path(env).expanduser() if env else _data_home() / "edge-models"


def key_id(verify_key: VerifyKey) -> str:
    """Return a short public fingerprint of a publisher verify key."""
    digest = blake2b(bytes(verify_key), digest_size=8, person=b"kfaar-pubkey-id1")
    return digest.decode()


def generate_publisher_key(out: Path) -> Path:
    """Write a new signing key (hex seed, mode 0600) to ``out`` and its verify key beside."""
    if out.exists():
        raise ValueError(f"{out} exists; refusing to overwrite a publisher key")
    key = SigningKey.generate()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.encode(HexEncoder) + b"\n")
    pub = out.with_suffix(".pub")
    pub.write_bytes(key.verify_key.encode(HexEncoder) + b"\n")
    return pub


def _read_key(path: Path, cls):
    try:
        return cls(path.read_bytes().strip(), encoder=HexEncoder)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not a hex Ed25519 key: {exc}") from exc


def publish(bundle_dir: Path, signing_key_file: Path, registry: Path | None = None) -> Path:
    """Copy a verified bundle into the registry as its version and sign its manifest."""
    bundle = Bundle.load(bundle_dir)  # every file must match the manifest before signing
    key = _read_key(signing_key_file, SigningKey)
    dest = (registry or default_registry()) / FAMILY / bundle.version
    if dest.exists():
        raise ValueError(f"version {bundle.version} is already published at {dest}")
    tmp = dest.with_name(f".{bundle.version}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ["manifest.json", *bundle.manifest["files"]]:
        shutil.copy2(bundle.path / name, tmp / name)
    signed = key.sign((tmp / "manifest.json").read_bytes())
    sig = {"algorithm": "ed25519", "key_id": key_id(key.verify_key)}
    sig["signature"] = signed.signature.hex()
    (tmp / SIGNATURE).write_text(json.dumps(sig, indent=1) + "\n")
    tmp.rename(dest)
    return dest


def verify(version_dir: Path, trusted: list[VerifyKey]) -> Bundle:
    """Return the bundle if a trusted key signed its manifest and every file matches."""
    try:
        sig = json.loads((version_dir / SIGNATURE).read_text())
        signature = bytes.fromhex(sig["signature"])
        manifest = (version_dir / "manifest.json").read_bytes()
    except FileNotFoundError as exc:
        raise SignatureError(f"{version_dir}: unsigned or incomplete ({exc.filename})") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{version_dir}: unreadable signature: {exc}") from exc
    for vk in trusted:
        try:
            vk.verify(manifest, signature)
        except BadSignatureError:
            continue
        return Bundle.load(version_dir)  # raises BundleError on any altered file
    raise SignatureError(
        f"{version_dir}: manifest signature does not verify under any trusted publisher key "
        f"({', '.join(key_id(k) for k in trusted)}); refusing this model version"
    )


def latest_version(registry: Path) -> str:
    """Return the highest published version (numeric ordering)."""
    versions = [p.name for p in (registry / FAMILY).glob("*") if p.is_dir() and p.name[0] != "."]
    if not versions:
        raise LookupError(f"no published versions under {registry / FAMILY}")
    return max(versions, key=lambda v: tuple(int(x) if x.isdigit() else -1 for x in v.split(".")))


def install(
    registry: Path, version: str | None, trusted: list[VerifyKey], models: Path | None = None
) -> Path:
    """Verify a published version and install it for this edge; return its folder."""
    version = version or latest_version(registry)
    source = registry / FAMILY / version
    if not source.is_dir():
        raise LookupError(f"version {version} is not published in {registry}")
    signed = verify(source, trusted).version
    if signed != version:  # a signed old version renamed to pose as a newer one
        raise SignatureError(f"{source}: the signed manifest is version {signed}, not {version}")
    root = (models or default_edge_models()) / FAMILY
    dest = root / version
    tmp = root / f".{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    verify(tmp, trusted)  # what was copied is what was verified
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    (root / f"{CURRENT}.tmp").write_text(version + "\n")
    (root / f"{CURRENT}.tmp").replace(root / CURRENT)
    return dest


def current_bundle(models: Path | None = None) -> Path:
    """Return the installed version's folder, for ``Bundle.load``."""
    root = (models or default_edge_models()) / FAMILY
    try:
        return root / (root / CURRENT).read_text().strip()
    except FileNotFoundError as exc:
        raise LookupError(f"no model version installed under {root}") from exc


def installed_bundle(models: Path | None = None) -> Path | None:
    """Return the version ``kfaar edge update`` installed, or None to use the packaged one."""
    try:
        return current_bundle(models)
    except LookupError:
        return None


def add_update_parser(actions: argparse._SubParsersAction) -> None:
    """Add ``kfaar edge update`` to the edge command's actions."""
    u = actions.add_parser("update", help="install a signed model version from the registry")
    u.add_argument("--registry", type=Path, default=None, help=f"default: ${REGISTRY_ENV}")
    u.add_argument("--version", dest="model_version", default=None, help="default: the latest")
    u.add_argument("--trust", type=Path, action="append", default=None,
                   help=f"publisher verify key, repeatable (${PUBLISHER_KEY_ENV})")  # fmt: skip
    u.add_argument("--models-dir", type=Path, default=None, help=f"default: ${EDGE_MODELS_ENV}")
    u.set_defaults(handler=_update)


def _update(args: argparse.Namespace) -> int:
    files = args.trust or ([Path(os.environ[PUBLISHER_KEY_ENV])] if os.environ.get(
        PUBLISHER_KEY_ENV) else [])  # fmt: skip
    if not files:
        raise ValueError(f"no trusted publisher key: pass --trust or set ${PUBLISHER_KEY_ENV}")
    trusted = [_read_key(f, VerifyKey) for f in files]
    registry = args.registry or default_registry()
    dest = install(registry, args.model_version, trusted, args.models_dir)
    sys.stdout.write(f"{dest}\n")
    return 0
