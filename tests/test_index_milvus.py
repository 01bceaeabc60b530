"""The Milvus 1:N index on a real embedded Milvus Lite: parity with the exact index, writes."""

from __future__ import annotations

from pathlib import Path

import grpc
import nacl.signing
import numpy as np
import pytest
from authz_kit import ADMIN, THRESHOLD, VIRTUAL, Client, unit

from auth_service.index import IndexConfig, TemplateIndex, build_index
from auth_service.store import Gallery

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from auth_service.index_milvus import IndexUnavailable, MilvusIndex, check_uri

SUBJECTS, PER_SUBJECT = 1000, 3
# Centres share a direction, as faces do: strangers reach cosine ~0.5 here, mates ~0.99.
THR = 0.7


def units(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def people() -> tuple[np.ndarray, np.ndarray]:
    """Centres (S, 128) around a shared direction, as faces are, and 3 noisy templates each."""
    rng = np.random.default_rng(0)
    centres = units(
        0.5 * units(rng.standard_normal(128)) + units(rng.standard_normal((SUBJECTS, 128)))
    )
    templates = units(centres[:, None] + 0.04 * rng.standard_normal((SUBJECTS, PER_SUBJECT, 128)))
    return centres, templates


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """Build Lite's HNSW on one thread: OpenMP on 2 busy shared cores ran 3x slower here."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    # One Milvus Lite per module (it starts in ~0.3 s, a collection in ~0.5 s); each test
    # uses its own collection through its own index name.
    return str(tmp_path_factory.mktemp("milvus") / "index.db")


def probes(centres: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return units(centres + 0.04 * rng.standard_normal(centres.shape))


def gallery(templates: np.ndarray) -> Gallery:
    names = [f"s{i}" for i in range(len(templates)) for _ in range(templates.shape[1])]
    return Gallery(names, templates.reshape(-1, 128))


def milvus(uri: str, name: str, templates: np.ndarray) -> MilvusIndex:
    index = build_index(gallery(templates), IndexConfig(backend="milvus", milvus_uri=uri), name)
    assert isinstance(index, MilvusIndex) and index.uses_shortlist
    return index


def same(got: list[tuple[float, str]], want: list[tuple[float, str]]) -> bool:
    """The same subjects in the same order, each at the same exact score."""
    return [s for _, s in got] == [s for _, s in want] and np.allclose(
        [sc for sc, _ in got], [sc for sc, _ in want], rtol=0, atol=1e-6
    )


def test_search_agrees_with_the_exact_index_at_exact_scores(uri, people) -> None:
    centres, templates = people
    index, exact = milvus(uri, "parity", templates), TemplateIndex.from_gallery(gallery(templates))
    assert len(index) == len(exact) == SUBJECTS * PER_SUBJECT
    ps = probes(centres, 1)
    for i in range(0, SUBJECTS, 10):  # 100 searches: Lite costs ~40 ms each here
        want, got = exact.search(ps[i], THR, 3), index.search(ps[i], THR, 3)
        assert want[0][1] == f"s{i}" and same(got, want), (i, got, want)


def test_remove_add_and_replace_keep_parity(uri, people) -> None:
    centres, templates = people
    index, exact = (
        milvus(uri, "writes", templates[:200]),
        TemplateIndex.from_gallery(gallery(templates[:200])),
    )
    ps = probes(centres, 2)
    for i in range(0, 200, 20):
        assert index.remove(f"s{i}") == exact.remove(f"s{i}") == PER_SUBJECT
        assert index.search(ps[i], THR, 3) == []  # gone at once, no wait
    assert index.remove("s0") == 0 and len(index) == len(exact) == 190 * PER_SUBJECT
    index.add("s0", templates[0, :2])  # re-enrolled with two templates
    exact.add("s0", templates[0, :2])
    index.add("s1", templates[1, :1])  # replaced by fewer: the third row must go
    exact.replace("s1", templates[1, :1])
    assert len(index) == len(exact) == 190 * PER_SUBJECT + 2 - 2
    for backend in (index, exact):  # replace by nothing: revoked
        backend.replace("s2", np.zeros((0, 128), np.float32))
        backend.replace("s3", templates[3, ::-1])  # same rows, new order: still found
    assert index.search(ps[2], THR, 3) == []
    for i in (0, 1, 2, 3, 20, 199):
        assert same(index.search(ps[i], THR, 3), exact.search(ps[i], THR, 3)), i


def test_two_replicas_applying_the_same_writes_converge(uri, people) -> None:
    _, templates = people
    a, b = milvus(uri, "shared", templates[:100]), milvus(uri, "shared", templates[:100])
    assert b.replace_all(gallery(templates[:100])) == (0, 0)  # in step already: no writes
    for index in (a, b, a):  # the same change, applied by both replicas (and retried)
        index.add("new", templates[500])
        index.remove("s3")
    assert len(a) == len(b) == 100 * PER_SUBJECT  # +3 new, -3 revoked, no duplicates
    assert [s for _, s in b.search(templates[500, 0], THR, 5)] == ["new"]
    # A replica reloading from the store (s3 back, s4 and new gone) makes it exact.
    subjects = [s for s in gallery(templates[:100]).subjects if s != "s4"]
    vectors = np.delete(templates[:100], 4, axis=0).reshape(-1, 128)
    assert a.replace_all(Gallery(subjects, vectors)) == (PER_SUBJECT, 2 * PER_SUBJECT)
    assert len(b) == 99 * PER_SUBJECT and b.search(templates[4, 0], THR, 5) == []


def test_threshold_and_top_k_apply_per_subject(uri, people) -> None:
    centres, templates = people
    index = milvus(uri, "threshold", templates[:300])
    p = probes(centres, 3)[7]
    assert [s for _, s in index.search(p, THR, 5)] == ["s7"]  # strangers are below 0.7
    assert len(index.search(p, -1.0, 5)) == 5  # one entry per subject, never a template twice
    assert index.search(p, 0.9999, 5) == []


def test_bad_uris_and_backends_give_clear_errors(tmp_path: Path) -> None:
    for bad, why in [
        (None, "needs --milvus-uri"),
        ("index.txt", "must end in .db"),
        (str(tmp_path / "missing" / "x.db"), "does not exist"),
        ("ftp://host:19530", "want http"),
        ("http://host:99999", "bad port"),
    ]:
        with pytest.raises(ValueError, match=why):
            check_uri(bad)
    with pytest.raises(IndexUnavailable, match=r"cannot reach Milvus at http://127\.0\.0\.1:1"):
        MilvusIndex("http://127.0.0.1:1", "nowhere")
    with pytest.raises(ValueError, match="index backend 'faiss'"):
        IndexConfig(backend="faiss")


def test_kfaar_serve_refuses_a_bad_milvus_uri(capsys) -> None:
    from edge_agent.cli import main

    argv = ["serve", "--insecure", "--index-backend", "milvus", "--milvus-uri", "x.txt"]
    assert main(argv) == 2
    assert "must end in .db" in capsys.readouterr().err


@pytest.fixture
def site(tmp_path: Path):
    from auth_service.server import ServerConfig, start
    from auth_service.servicer import Policy
    from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc

    uri = str(tmp_path / "index.db")
    cfg = ServerConfig(
        db=tmp_path / "kfaar.db",
        policy=Policy("hpvfg/1.0.0", {VIRTUAL: THRESHOLD}),
        port=0,
        admin_token=ADMIN,
        index=IndexConfig(backend="milvus", milvus_uri=uri),
    )
    running = start(cfg)
    admin = auth_pb2_grpc.AdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
    meta = (("authorization", f"Bearer {ADMIN}"),)
    key = nacl.signing.SigningKey.generate()
    admin.RegisterDevice(
        auth_pb2.RegisterDeviceRequest(device_id="door-1", verify_key=key.verify_key.encode()),
        metadata=meta,
    )
    token = admin.CreateAppToken(
        auth_pb2.CreateAppTokenRequest(
            app_name="app", methods=["Enroll", "Verify", "Identify", "Rekey"]
        ),
        metadata=meta,
    )
    yield (
        uri,
        Client(running.port, token.token, "door-1", key),
        Client(running.port, ADMIN, "door-1", key),
    )
    running.stop(0)


def test_service_identifies_through_milvus_and_revoke_stops_it(site) -> None:
    from milvus_lite.server_manager import server_manager_instance

    from kfaar_pb.v1 import auth_pb2

    uri, app, admin = site
    a, b = unit(1), unit(2)
    app.enroll("alice", a)
    app.enroll("bob", b)
    assert app.identify(a + 0.05 * unit(3)) == ["alice"]
    assert admin.call("Revoke", auth_pb2.RevokeRequest(subject_id="alice")).templates_removed == 1
    assert app.identify(a + 0.05 * unit(3)) == []  # revoked: no longer found, at once
    assert app.identify(b) == ["bob"]
    server_manager_instance.release_server(uri)  # Milvus goes away: a retryable refusal
    with pytest.raises(grpc.RpcError) as exc:
        app.identify(b)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
