"""Issue 5: the shipped bundle in torch, partitions, a real Flower federation, signed updates."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.assets import asset_path
from edge_agent.cli import main

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def sample_chips():
    from training.chips import build_chip_set, list_images

    root = asset_path("sample_faces")
    return build_chip_set(root, list_images(root)[:6])


def test_bundle_rebuilds_in_torch_like_onnx(sample_chips) -> None:
    from training.federated.task import default_bundle
    from training.hpvfg.from_bundle import load_bundle_models
    from training.hpvfg.projector import RotationProjector

    bundle = default_bundle()
    generator, kvfa, basis, _ = load_bundle_models(bundle)
    rng = np.random.default_rng(0)
    rot = basis.random_rotation(rng)
    z = torch.from_numpy(sample_chips.z)
    zv = RotationProjector(basis)(z, torch.from_numpy(rot))
    chip = torch.from_numpy(sample_chips.chips).permute(0, 3, 1, 2).float()
    feed = {"chip": chip.numpy(), "z": z.numpy(), "z_virtual": zv.numpy()}
    with torch.no_grad():
        ours = generator(chip, z, zv).numpy()
        rec = kvfa(zv, torch.from_numpy(rot)).numpy()
    theirs = _session(bundle / "generator.onnx").run(None, feed)[0]
    assert np.abs(ours - theirs).max() < 1e-3
    assert np.abs(ours - chip.numpy()).mean() > 1.0  # the comparison saw a real edit
    kvfa_feed = {"virtual": zv.numpy(), "rotation": rot}
    assert np.abs(rec - _session(bundle / "kvfa.onnx").run(None, kvfa_feed)[0]).max() < 1e-3


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("scheme", ["iid", "noniid"])
def test_partition_is_identity_disjoint(tmp_path, lfw_dir, splits_dir, scheme, capsys) -> None:
    from training.federated.partition import dev_identities

    root = lfw_dir.parent
    args = ["fl", "partition", "--out", str(tmp_path), "--sites", "3", "--scheme", scheme]
    assert main([*args, "--data-root", str(root), "--max-identities", "30"]) == 0
    doc = json.loads((tmp_path / "partition.json").read_text())
    sites = [set(s["identities"]) for s in doc["sites"]]
    assert all(sites) and sum(map(len, sites)) == len(set().union(*sites)) == 30
    held_out = dev_identities(splits_dir / "lfw_dev_triplets.txt")
    for s, ids in zip(doc["sites"], sites, strict=True):
        on_disk = {p.name for p in Path(s["path"]).iterdir() if p.is_dir()}
        assert on_disk == ids and not ids & held_out
        assert all(f.resolve().is_file() for f in Path(s["path"]).glob("*/*"))
    assert "site-2" in capsys.readouterr().out


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A small bundle: the edge checks digests, not what the ONNX files compute."""
    src = tmp_path / "bundle"
    src.mkdir()
    (src / "kvfa.onnx").write_bytes(b"model bytes")
    import hashlib

    files = {"kvfa.onnx": hashlib.sha256(b"model bytes").hexdigest()}
    manifest = {"format": 1, "version": "1.1.0", "rotation_bands": [127], "files": files}
    (src / "manifest.json").write_text(json.dumps(manifest))
    return src


def test_publish_and_update_verify_signatures(tmp_path, bundle, capsys) -> None:
    from edge_agent.hpvfg import Bundle
    from edge_agent.model_registry import current_bundle

    key, registry, edge = tmp_path / "pub.key", tmp_path / "registry", tmp_path / "edge"
    assert main(["models", "keygen", str(key)]) == 0
    assert key.stat().st_mode & 0o077 == 0
    assert (
        main(["models", "publish", str(bundle), "--key", str(key), "--registry", str(registry)])
        == 0
    )
    update = ["edge", "update", "--registry", str(registry), "--models-dir", str(edge)]
    trust = ["--trust", str(key.with_suffix(".pub"))]
    assert main([*update, *trust]) == 0
    assert Bundle.load(current_bundle(edge)).version == "1.1.0"

    assert main(update) == 2  # no trusted key at all
    assert "no trusted publisher key" in capsys.readouterr().err
    assert main(["models", "keygen", str(tmp_path / "other.key")]) == 0
    assert main([*update, "--trust", str(tmp_path / "other.pub")]) == 2
    assert "does not verify" in capsys.readouterr().err

    published = registry / "hpvfg" / "1.1.0"
    manifest = published / "manifest.json"
    original = manifest.read_bytes()
    manifest.write_bytes(original.replace(b"1.1.0", b"1.1.1"))  # tampered manifest
    assert main([*update, *trust]) == 2
    assert "signature does not verify" in capsys.readouterr().err
    manifest.write_bytes(original)
    published.rename(registry / "hpvfg" / "9.9.9")  # a signed version posing as another
    assert main([*update, *trust, "--version", "9.9.9"]) == 2
    assert "signed manifest is version 1.1.0, not 9.9.9" in capsys.readouterr().err
    (registry / "hpvfg" / "9.9.9").rename(published)
    (published / "kvfa.onnx").write_bytes(b"evil bytes")  # signed manifest, swapped file
    assert main([*update, *trust]) == 2
    assert "does not match its manifest" in capsys.readouterr().err
    (published / "manifest.sig").unlink()
    assert main([*update, *trust]) == 2
    assert "unsigned" in capsys.readouterr().err


@pytest.mark.slow
def test_fl_local_two_sites_two_rounds(tmp_path, lfw_dir, splits_dir) -> None:
    from training.federated.local import group_alive

    out = tmp_path / "fl"
    argv = ["fl", "local", "--out", str(out), "--sites", "2", "--rounds", "2"]
    argv += ["--data-root", str(lfw_dir.parent), "--max-identities", "12", "--max-images", "4"]
    argv += ["--local-steps", "2", "--local-kvfa-steps", "2", "--batch", "4"]
    argv += ["--dev-faces", "16", "--calib-faces", "8", "--record", "--timeout", "300"]
    try:
        assert main(argv) == 0
    finally:
        pids = json.loads((out / "pids.json").read_text()) if (out / "pids.json").is_file() else []
        assert pids and not any(group_alive(p) for p in pids)  # every Flower process is gone

    rec = out / "record"
    initial, first = np.load(rec / "global-round0.npz"), np.load(rec / "global-round1.npz")
    sites = [np.load(p) for p in sorted(rec.glob("round1-node*.npz"))]
    assert len(sites) == 2
    n = np.array([float(s["num_examples"]) for s in sites])
    assert n.min() > 0
    for name in first.files:
        mean = sum(w * s[name] for w, s in zip(n, sites, strict=True)) / n.sum()
        np.testing.assert_allclose(first[name], mean, atol=1e-5)
    assert max(np.abs(first[k] - initial[k]).max() for k in first.files) > 1e-4

    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    assert metrics["best_round"] in (1, 2) and metrics["rounds"][1]["bytes_sent"] > 0
    assert (out / "dev_metrics.png").stat().st_size > 1000
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["version"] == "1.1.0"
    chip = np.zeros((1, 3, 150, 150), np.float32)
    z = np.zeros((1, 128), np.float32)
    z[0, 0] = 1.0
    for name in ("generator.onnx", "generator.int8.onnx"):
        virtual = _session(out / "model" / name).run(None, {"chip": chip, "z": z, "z_virtual": z})
        assert virtual[0].shape == (1, 3, 150, 150)
    shutil.rmtree(out / "sites")  # symlinks to the data: keep tmp_path small


@pytest.mark.slow
def test_secagg_aggregate_matches_plain_fedavg(tmp_path, lfw_dir) -> None:
    out = tmp_path / "fl"
    argv = ["fl", "local", "--out", str(out), "--sites", "2", "--rounds", "1", "--secagg"]
    argv += ["--data-root", str(lfw_dir.parent), "--max-identities", "12", "--max-images", "4"]
    argv += ["--local-steps", "2", "--local-kvfa-steps", "2", "--batch", "4", "--dev-faces", "8"]
    argv += ["--record", "--no-export", "--timeout", "300", "--set", "secagg-max-weight=50"]
    assert main(argv) == 0
    assert "Secure aggregation completed" in (out / "logs" / "flwr-run.log").read_text()
    rec = out / "record"
    initial, first = np.load(rec / "global-round0.npz"), np.load(rec / "global-round1.npz")
    sites = [np.load(p) for p in sorted(rec.glob("round1-node*.npz"))]
    n = np.array([float(s["num_examples"]) for s in sites])
    moved = 0.0
    for name in first.files:  # what plain FedAvg would give, from what each site trained
        mean = sum(w * s[name] for w, s in zip(n, sites, strict=True)) / n.sum()
        # Measured: 3e-7 at most, from quantizing updates of up to 2e-3 to 2**22 levels.
        np.testing.assert_allclose(first[name], mean, atol=2e-6)
        moved = max(moved, float(np.abs(mean - initial[name]).max()))
    assert moved > 1e-4  # the comparison saw real updates
    shutil.rmtree(out / "sites")


@pytest.mark.slow
def test_fl_local_interrupted_stops_every_process(tmp_path, lfw_dir) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from training.federated.local import group_alive

    out = tmp_path / "fl"
    cmd = [sys.executable, "-m", "edge_agent.cli", "fl", "local", "--out", str(out)]
    cmd += ["--sites", "2", "--rounds", "50", "--data-root", str(lfw_dir.parent)]
    cmd += ["--max-identities", "8", "--max-images", "3", "--dev-faces", "8", "--no-export"]
    # A shell's background job (`.ci/run &`) ignores SIGINT, and Python keeps an ignored
    # SIGINT ignored: give the child the default, as a terminal's Ctrl+C would find it.
    proc = subprocess.Popen(
        cmd,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (out / "logs" / "flwr-run.log").is_file() and time.monotonic() < deadline:
            time.sleep(0.5)
        pids = json.loads((out / "pids.json").read_text())
        assert any(group_alive(p) for p in pids)
        proc.send_signal(signal.SIGINT)  # Ctrl+C
        assert proc.wait(120) == 130  # a loaded 2-core machine needs more than a minute
        assert not any(group_alive(p) for p in pids)
    finally:
        proc.kill()
        for pgid in pids:  # a failed run must not leave a federation training for hours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


def test_dev_tls_material_verifies_for_loopback(tmp_path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.cli.supernode.register import try_load_public_key

    from training.federated.tls import make_tls_material

    tls = make_tls_material(tmp_path / "tls", sites=2)
    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    server = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert not (tmp_path / "tls" / "ca.key").exists()  # nothing can sign more certificates
    for key in tls.node_keys:
        private = serialization.load_ssh_private_key(key.read_bytes(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert key.stat().st_mode & 0o077 == 0
        assert try_load_public_key(Path(f"{key}.pub"))  # what `flwr supernode register` accepts


@pytest.mark.slow
def test_fl_local_tls_with_supernode_auth(tmp_path, lfw_dir) -> None:
    from training.federated.local import group_alive

    out = tmp_path / "fl"
    argv = ["fl", "local", "--out", str(out), "--sites", "2", "--rounds", "1", "--tls"]
    argv += ["--data-root", str(lfw_dir.parent), "--max-identities", "12", "--max-images", "4"]
    argv += ["--local-steps", "1", "--local-kvfa-steps", "1", "--batch", "4", "--dev-faces", "8"]
    argv += ["--no-export", "--timeout", "300"]
    try:
        assert main(argv) == 0
    finally:
        pids = json.loads((out / "pids.json").read_text()) if (out / "pids.json").is_file() else []
        assert pids and not any(group_alive(p) for p in pids)  # every Flower process is gone
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1]
    logs = out / "logs"
    link = (logs / "superlink.log").read_text()
    assert "https://127.0.0.1" in link and "authentication is disabled" not in link
    assert (logs / "register.log").read_text().count("registered successfully") == 2
    assert link.count("[Fleet.ActivateNode] Activated node_id=") == 2
    for i in range(2):
        node = (logs / f"supernode-{i}.log").read_text()
        assert "--insecure" not in node and "Failed to activate" not in node
    shutil.rmtree(out / "sites")


@pytest.mark.slow
def test_tls_scripts_refuse_an_unregistered_supernode(tmp_path) -> None:
    import os
    import subprocess
    import sys
    import time

    from training.federated.local import (
        Processes,
        _bin,
        _wait_port,
        free_port,
        group_alive,
        register_nodes,
        write_flwr_home,
    )

    repo = Path(__file__).resolve().parents[1]
    scripts, tls, port = repo / "deploy" / "flower", tmp_path / "tls", free_port()
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "home"), PORT=str(port), TLS_DIR=str(tls))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run(["bash", str(repo / "deploy/tls/make-dev-certs.sh"), str(tls)], check=True)
    for name in ("site-a.key", "rogue.key"):
        subprocess.run(["bash", str(scripts / "node-key.sh"), str(tls), name], check=True)
    write_flwr_home(tmp_path / "home", port, tls / "ca.crt")
    (tmp_path / "data").mkdir()
    procs = Processes(tmp_path / "logs", env)
    node = ["env", f"SUPERLINK=127.0.0.1:{port}", "bash", str(scripts / "supernode.sh")]
    node += [str(tmp_path / "data"), "tls"]
    try:
        _wait_port(port, procs.start("superlink", ["bash", str(scripts / "superlink.sh"), "tls"]))
        register_nodes([tls / "site-a.key"], env, tmp_path / "logs")
        site = [f"PORT={free_port()}", f"NODE_KEY={tls / 'site-a.key'}"]
        procs.start("site-a", [*node[:2], *site, *node[2:]])
        rogue_env = [f"PORT={free_port()}", f"NODE_KEY={tls / 'rogue.key'}"]
        rogue = procs.start("rogue", [*node[:2], *rogue_env, *node[2:]])
        assert rogue.wait(60) != 0  # the SuperLink refused it: it gave up
        ls = [_bin("flwr"), "supernode", "ls", "--format", "json"]
        deadline, nodes = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            listing = subprocess.run(ls, env=env, capture_output=True, text=True, check=True)
            nodes = json.loads(listing.stdout[listing.stdout.index("{") :])["nodes"]
            if [n["status"] for n in nodes] == ["online"]:
                break
            time.sleep(1)
        assert [n["status"] for n in nodes] == ["online"]  # only the registered site joined
    finally:
        procs.stop()
    assert not any(group_alive(p) for p in procs.pgids())
    link = (tmp_path / "logs" / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in link
    assert "Failed to activate SuperNode" in (tmp_path / "logs" / "rogue.log").read_text()
