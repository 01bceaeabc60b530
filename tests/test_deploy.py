"""Deployment files: the systemd units parse, and every setting they name exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "deploy" / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_units_pass_systemd_analyze(tmp_path: Path) -> None:
    for unit in SYSTEMD.glob("*.service"):
        text = unit.read_text().replace("/opt/kfaar/venv/bin/kfaar", "/bin/true")
        name = unit.name.replace("@.service", "@test.service")
        (tmp_path / name).write_text(text)
        done = subprocess.run(
            ["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr


def test_every_setting_in_the_examples_is_read_by_the_code() -> None:
    code = "".join(p.read_text() for p in REPO.glob("*/**/*.py") if ".venv" not in p.parts)
    names = set()
    for example in SYSTEMD.glob("*.env.example"):
        names |= set(re.findall(r"^(KFAAR_[A-Z_]+)=", example.read_text(), re.M))
    assert len(names) > 10
    missing = {
        n for n in names if f'"{n}"' not in code and n not in {"KFAAR_SOURCE", "KFAAR_CLAIM"}
    }
    assert not missing, f"settings no code reads: {missing}"


def _yaml_docs(path: Path) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_container_image_copies_what_exists_and_ignores_the_rest() -> None:
    dockerfile = (REPO / "deploy/container/Dockerfile").read_text()
    sources = re.findall(r"^COPY (?!--from)(.+?) \S+$", dockerfile, re.M)
    paths = [p for line in sources for p in line.split()]
    assert "pyproject.toml" in paths and "kfaar_pb" in paths
    allowed = re.findall(r"^!(\S+?)/?$", (REPO / "deploy/container/Dockerfile.dockerignore")
                         .read_text(), re.M)  # fmt: skip
    for path in paths:
        assert (REPO / path).exists(), path
        assert path in allowed, f"{path} is copied but the .dockerignore leaves it out"
    package_dirs = re.findall(r"include = \[(.+)\]", (REPO / "pyproject.toml").read_text())[0]
    for name in re.findall(r'"(\w+)\*"', package_dirs):
        assert name in paths, f"package {name} is not copied into the image"
    assert "USER 10001" in dockerfile and 'CMD ["kfaar", "health"]' in dockerfile


def test_compose_and_kubernetes_run_real_commands_with_real_settings() -> None:
    from edge_agent.cli import build_parser

    compose = _yaml_docs(REPO / "deploy/compose.yaml")[0]
    k8s = [d for f in sorted((REPO / "deploy/k8s").glob("*.yaml")) for d in _yaml_docs(f)]
    assert {d["kind"] for d in k8s} >= {"StatefulSet", "Service", "NetworkPolicy", "Namespace"}
    (pod,) = [d["spec"]["template"]["spec"] for d in k8s if d["kind"] == "StatefulSet"]
    (container,) = pod["containers"]
    commands = [s["command"] for s in compose["services"].values()] + [container["args"]]
    commands += [container[p]["exec"]["command"][1:] for p in ("readinessProbe", "livenessProbe")]
    settings = {n for s in compose["services"].values() for n in s.get("environment", {})}
    settings |= {e["name"] for e in container["env"]}
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)  # exits (SystemExit) on an unknown subcommand or flag
    code = "".join(p.read_text() for p in REPO.glob("*/**/*.py") if ".venv" not in p.parts)
    missing = {n for n in settings if f'"{n}"' not in code}
    assert not missing, f"settings no code reads: {missing}"
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    for e in container["env"]:
        if e["value"].startswith("/"):
            assert any(e["value"].startswith(m) for m in mounted), e


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl here")
def test_kustomize_renders_the_manifests() -> None:
    done = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "deploy/k8s")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "kind: StatefulSet" in done.stdout and "kind: NetworkPolicy" in done.stdout
