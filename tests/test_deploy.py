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
    code = "".join(p.read_text() for p in _project_sources())
    names = set()
    for example in SYSTEMD.glob("*.env.example"):
        names |= set(re.findall(r"^(KFAAR_[A-Z_]+)=", example.read_text(), re.M))
    assert len(names) > 10
    missing = {
        n for n in names if f'"{n}"' not in code and n not in {"KFAAR_SOURCE", "KFAAR_CLAIM"}
    }
    assert not missing, f"settings no code reads: {missing}"


def _project_sources() -> list[Path]:
    """Return the project's Python files, not those of any .venv* or other dot folder."""
    return [
        p for p in REPO.glob("*/**/*.py")
        if not any(part.startswith(".") for part in p.relative_to(REPO).parts)
    ]  # fmt: skip


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


# Settings read by libpq (psycopg) rather than by kfaar's own code.
LIBPQ_SETTINGS = {"PGPASSWORD"}


def _k8s() -> list[dict]:
    files = sorted(p for p in (REPO / "deploy/k8s").glob("*.yaml") if p.stem != "kustomization")
    return [d for f in files for d in _yaml_docs(f)]


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _kfaar_pods(docs: list[dict]) -> dict[str, dict]:
    """Return the pod specs that run the kfaar image, by workload name."""
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "Job")
        and d["spec"]["template"]["spec"]["containers"][0]["image"].startswith("kfaar:")
    }


def test_compose_and_kubernetes_run_real_commands_with_real_settings() -> None:
    from edge_agent.cli import build_parser

    compose = _yaml_docs(REPO / "deploy/compose.yaml")[0]
    ours = {n: s for n, s in compose["services"].items() if s["image"].startswith("kfaar:")}
    pods = _kfaar_pods(_k8s())
    assert set(pods) == {"kfaar-serve", "kfaar-migrate"}
    commands = [s["command"] for s in ours.values()]
    settings = {n for s in ours.values() for n in s.get("environment", {})}
    for pod in pods.values():
        (container,) = pod["containers"]
        commands.append(container["args"])
        probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")
                  if p in container]  # fmt: skip
        commands += [probe["exec"]["command"][1:] for probe in probes]
        settings |= {e["name"] for e in container["env"]}
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounted = {m["mountPath"] for m in container["volumeMounts"]}
        for e in container["env"]:
            if e.get("value", "").startswith("/"):
                assert any(e["value"].startswith(m) for m in mounted), e
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)  # exits (SystemExit) on an unknown subcommand or flag
    code = "".join(p.read_text() for p in _project_sources())
    missing = {n for n in settings - LIBPQ_SETTINGS if f'"{n}"' not in code}
    assert not missing, f"settings no code reads: {missing}"


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_kubernetes_objects_reference_each_other() -> None:
    from urllib.parse import urlsplit

    from auth_service.targets import resolve_target

    docs = _k8s()
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] != "Namespace"} == {"kfaar"}
    serve = _one(docs, "Deployment", "kfaar-serve")
    labels = serve["spec"]["template"]["metadata"]["labels"]
    assert _selects(serve["spec"]["selector"]["matchLabels"], labels)
    (container,) = serve["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert str(ports["grpc"]) == _env(container)["KFAAR_PORT"]["value"]

    # Two Services over the replicas: one virtual IP, and a headless one for round_robin.
    services = [
        d for d in docs if d["kind"] == "Service" and _selects(d["spec"]["selector"], labels)
    ]
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    assert len(services) == 2 and len(headless) == 1
    for service in services:
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    pods_name = f"{headless[0]['metadata']['name']}.kfaar.svc"
    header = (REPO / "deploy/k8s/kfaar-serve.yaml").read_text()
    assert f"dns:///{pods_name}:{ports['grpc']}" in header  # what clients are told to use
    assert pods_name in header.split("make-dev-certs.sh", 1)[1].splitlines()[0]  # in the cert
    resolve_target(f"dns:///{pods_name}:{ports['grpc']}")  # a target the client accepts

    replicas = serve["spec"]["replicas"]
    pdb = _one(docs, "PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"].get("maxUnavailable", 0) < replicas - 1 or (
        pdb["spec"].get("minAvailable", replicas) < replicas
    )
    hpa = _one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "kfaar-serve")
    assert hpa["spec"]["minReplicas"] == replicas >= 2 and hpa["spec"]["maxReplicas"] > replicas
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "cpu" in container["resources"]["requests"]  # utilization needs a request

    # PostgreSQL: a StatefulSet with a volume behind its own headless Service.
    pg = _one(docs, "StatefulSet", "kfaar-postgres")
    pg_labels = pg["spec"]["template"]["metadata"]["labels"]
    pg_service = _one(docs, "Service", pg["spec"]["serviceName"])
    assert pg_service["spec"]["clusterIP"] == "None"
    assert _selects(pg_service["spec"]["selector"], pg_labels)
    assert pg["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {
        m["name"] for m in pg["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    pg_env = _env(pg["spec"]["template"]["spec"]["containers"][0])

    # Every Secret used is one the header tells the operator to create, with those keys.
    created = dict(re.findall(r"create secret generic (\S+)((?:.*\\\n)*.*)", header))
    refs = {
        (ref["name"], ref["key"])
        for pod in [*_kfaar_pods(docs).values(), pg["spec"]["template"]["spec"]]
        for e in pod["containers"][0]["env"]
        if (ref := e.get("valueFrom", {}).get("secretKeyRef"))
    }
    for name, key in refs:
        assert name in created and f"--from-literal={key}=" in created[name], (name, key)
    volumes = [v["secret"]["secretName"] for v in serve["spec"]["template"]["spec"]["volumes"]
               if "secret" in v]  # fmt: skip
    assert set(volumes) <= set(created)
    url = urlsplit(re.search(r"--from-literal=url=(\S+)", created["kfaar-db"])[1])
    assert url.hostname == f"{pg_service['metadata']['name']}.kfaar.svc" and not url.password
    assert url.port == pg_service["spec"]["ports"][0]["port"]
    assert (url.username, url.path[1:]) == (
        pg_env["POSTGRES_USER"]["value"],
        pg_env["POSTGRES_DB"]["value"],
    )

    # The migration Job and the replicas read the same database, and may reach it.
    job = _one(docs, "Job", "kfaar-migrate")
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["db", "migrate"] and migrate["image"] == container["image"]
    for name in ("KFAAR_DB_URL", "PGPASSWORD"):
        assert _env(migrate)[name] == _env(container)[name]
    assert _env(container)["PGPASSWORD"]["valueFrom"] == pg_env["POSTGRES_PASSWORD"]["valueFrom"]
    policy = _one(docs, "NetworkPolicy", "kfaar-postgres")
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], pg_labels)
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert _selects(allowed, labels)
    assert _selects(allowed, job["spec"]["template"]["metadata"]["labels"])
    resources = _yaml_docs(REPO / "deploy/k8s/kustomization.yaml")[0]["resources"]
    assert sorted(resources) == sorted(p.name for p in (REPO / "deploy/k8s").glob("*.yaml")
                                       if p.name != "kustomization.yaml")  # fmt: skip


def test_compose_scales_with_postgres_and_keeps_sqlite_at_one() -> None:
    services = _yaml_docs(REPO / "deploy/compose.yaml")[0]["services"]
    assert services["kfaar-serve"]["deploy"]["replicas"] == "${KFAAR_REPLICAS:-1}"
    assert "profiles" not in services["kfaar-serve"]  # `docker compose up` works as before
    pg = services["kfaar-serve-pg"]
    default = int(re.fullmatch(r"\$\{KFAAR_PG_REPLICAS:-(\d+)\}", pg["deploy"]["replicas"])[1])
    assert default >= 2 and pg["profiles"] == ["postgres"]
    host_ports = re.fullmatch(r"(\d+)-(\d+):50051", pg["ports"][0])
    assert int(host_ports[2]) - int(host_ports[1]) + 1 >= default  # a host port per replica
    migrate = services[next(iter(pg["depends_on"]))]
    assert migrate["command"] == ["db", "migrate"]
    assert pg["depends_on"]["kfaar-migrate"]["condition"] == "service_completed_successfully"
    for service in (pg, migrate):
        url = service["environment"]["KFAAR_DB_URL"]
        assert url.split("@")[1].split(":")[0] in services  # a compose service name
        assert ":" not in url.split("//")[1].split("@")[0]  # no password in the URL
    assert "postgres" in migrate["depends_on"]


def test_every_postgresql_replica_and_migration_gets_the_service_key() -> None:
    # Without it kfaar serve refuses PostgreSQL (exit 2): the examples must provide one.
    services = _yaml_docs(REPO / "deploy/compose.yaml")[0]["services"]
    for name in ("kfaar-serve-pg", "kfaar-migrate"):
        path = services[name]["environment"]["KFAAR_SERVICE_KEY_FILE"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts[path].startswith("./secrets/"), (name, mounts)
        assert "KFAAR_ALLOW_UNSIGNED_STORE" not in services[name]["environment"]
    header = (REPO / "deploy/compose.yaml").read_text()
    assert "> deploy/secrets/service-key" in header  # the operator is told to make it
    docs = _k8s()
    k8s_header = (REPO / "deploy/k8s/kfaar-serve.yaml").read_text()
    created = set(re.findall(r"create secret generic (\S+)", k8s_header))
    for name, pod in _kfaar_pods(docs).items():
        (container,) = pod["containers"]
        env = _env(container)
        assert "KFAAR_ALLOW_UNSIGNED_STORE" not in env
        path = env["KFAAR_SERVICE_KEY_FILE"]["value"]
        mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"]))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] in created, name
        assert path.rsplit("/", 1)[1] in k8s_header  # the Secret's key is the file's name


def test_compose_keeps_the_rollback_anchor_off_the_database_volume() -> None:
    # A snapshot of the database's volume restored whole would bring its anchor back too,
    # and the rollback would pass: the anchor needs a volume of its own, writable by the
    # image's user (the Dockerfile creates and owns the mount point).
    serve = _yaml_docs(REPO / "deploy/compose.yaml")[0]["services"]["kfaar-serve"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in serve["volumes"]}
    anchor = Path(serve["environment"]["KFAAR_ANCHOR_FILE"])
    db = Path(serve["environment"]["KFAAR_DB"])
    assert mounts[str(anchor.parent)] != mounts[str(db.parent)], mounts
    assert not mounts[str(anchor.parent)].startswith("./")  # a named volume, kept
    dockerfile = (REPO / "deploy/container/Dockerfile").read_text()
    assert f"-o kfaar -g kfaar -m 0700 {anchor.parent}" in dockerfile


def _kustomize() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return ["kustomize", "build"] if shutil.which("kustomize") else None


@pytest.mark.skipif(_kustomize() is None, reason="no kubectl or kustomize here")
def test_kustomize_renders_the_manifests() -> None:
    import yaml

    done = subprocess.run([*_kustomize(), str(REPO / "deploy/k8s")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(done.stdout) if d)
    expected = ["Namespace", "Deployment", "StatefulSet", "Job", "PodDisruptionBudget"]
    expected += ["HorizontalPodAutoscaler", "NetworkPolicy", "NetworkPolicy"]
    expected += ["Service", "Service", "Service"]
    assert kinds == sorted(expected)


def test_every_install_path_installs_from_a_hashed_lock() -> None:
    """The image, make and CI install pinned, hashed versions, never a fresh resolution."""
    dockerfile = (REPO / "deploy/container/Dockerfile").read_text()
    assert "--require-hashes --no-deps -r /tmp/serve.lock" in dockerfile
    makefile = (REPO / "Makefile").read_text()
    assert "scripts/venv.sh $(VENV) requirements/dev.lock" in makefile
    assert "scripts/venv.sh $(VENV) requirements/eval.lock" in makefile
    venv = (REPO / "scripts/venv.sh").read_text()
    assert "--require-hashes --no-deps -r" in venv
    for lock in ("dev", "eval", "serve"):
        text = (REPO / f"requirements/{lock}.lock").read_text()
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.M)
        assert pins, lock
        # Every pinned distribution carries at least one hash, and nothing points at a path.
        assert text.count("==") == len(pins)
        assert len(re.findall(r"--hash=sha256:", text)) >= len(pins)
        assert "file://" not in text and "kfaar @" not in text
    dev = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", (REPO / "requirements/dev.lock")
                          .read_text(), re.M))  # fmt: skip
    for lock in ("eval", "serve"):
        sub = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", (REPO / f"requirements/{lock}.lock")
                         .read_text(), re.M)  # fmt: skip
        for name, version in sub:
            assert dev.get(name) == version, f"{lock}.lock has {name} {version}, dev.lock not"
