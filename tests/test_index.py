"""The 1:N index: shortlists agree with exact search; writes, rebuilds and background builds."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from auth_service.index import IndexConfig, TemplateIndex
from auth_service.shortlist import ivf_lists
from auth_service.store import Gallery

SUBJECTS, PER_SUBJECT = 400, 3
ENGINES = ["ivf", "hnsw"]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def people() -> tuple[np.ndarray, np.ndarray]:
    """Subject centres (S, 128) and their templates (S, 3, 128): noisy views of a centre."""
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((SUBJECTS, 128)))
    templates = unit(centres[:, None] + 0.04 * rng.standard_normal((SUBJECTS, PER_SUBJECT, 128)))
    return centres, templates


def probes(centres: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return unit(centres + 0.04 * rng.standard_normal(centres.shape))


def gallery(templates: np.ndarray) -> Gallery:
    names = [f"s{i}" for i in range(len(templates)) for _ in range(PER_SUBJECT)]
    return Gallery(names, templates.reshape(-1, 128))


def top(index: TemplateIndex, probe: np.ndarray) -> list[str]:
    return [s for _, s in index.search(probe, 0.5, 3)]


def test_ivf_list_count_grows_with_the_square_root_and_feeds_every_list() -> None:
    sizes = (1, 38, 39, 1200, 200_000, 1_000_000)
    assert [ivf_lists(n) for n in sizes] == [1, 1, 1, 30, 2048, 4096]


@pytest.mark.parametrize("engine", ENGINES)
def test_shortlist_agrees_with_exact_search_and_reports_exact_scores(people, engine) -> None:
    centres, templates = people
    exact = TemplateIndex.from_gallery(gallery(templates))
    approx = TemplateIndex.from_gallery(
        gallery(templates), IndexConfig(ann_min_templates=100, ann=engine)
    )
    assert approx.uses_shortlist and not exact.uses_shortlist
    agree = 0
    for i, p in enumerate(probes(centres, 1)):
        want, got = exact.search(p, 0.5, 3), approx.search(p, 0.5, 3)
        assert want[0][1] == f"s{i}"
        agree += [s for _, s in got] == [s for _, s in want]
        for score, subject in got:  # re-scored: an exact cosine, not the engine's estimate
            assert np.abs(templates[int(subject[1:])] @ p - score).min() < 1e-6
    assert agree >= 0.99 * SUBJECTS


@pytest.mark.parametrize("engine", ENGINES)
def test_threshold_and_top_k_are_applied_per_subject(people, engine) -> None:
    centres, templates = people
    config = IndexConfig(ann_min_templates=100, ann=engine)
    index = TemplateIndex.from_gallery(gallery(templates), config)
    p = probes(centres, 2)[7]
    assert top(index, p) == ["s7"]  # others are far below 0.5
    assert len(index.search(p, -1.0, 5)) == 5  # one entry per subject, never a template twice
    assert index.search(p, 0.9999, 5) == []


@pytest.mark.parametrize("engine", ENGINES)
def test_adds_and_removals_cross_the_shortlist_threshold_both_ways(people, engine) -> None:
    centres, templates = people
    config = IndexConfig(ann_min_templates=600, rebuild_dead_fraction=0.3, ann=engine)
    index = TemplateIndex(config)
    for i in range(SUBJECTS):
        index.add(f"s{i}", templates[i])
        if i == 150:
            assert not index.uses_shortlist
    assert index.wait_for_shortlist(60)
    assert index.uses_shortlist and len(index) == SUBJECTS * PER_SUBJECT
    ps = probes(centres, 3)
    for i in range(0, 100, 2):  # revoke some: tombstones, below the rebuild fraction
        assert index.remove(f"s{i}") == PER_SUBJECT
    assert index.uses_shortlist and index.remove("s0") == 0
    found = [top(index, ps[i]) for i in range(100)]
    assert all(found[i] == [] for i in range(0, 100, 2))  # revoked: never, shortlist or not
    assert sum(found[i] == [f"s{i}"] for i in range(1, 100, 2)) >= 49
    for i in range(100, 300):  # now more than 30% are gone: compacted, below 600: exact
        index.remove(f"s{i}")
    assert index.wait_for_shortlist(60)
    assert not index.uses_shortlist and len(index) == (SUBJECTS - 250) * PER_SUBJECT
    for i in (1, 333, 399):
        assert top(index, ps[i]) == [f"s{i}"]
    index.add("s0", templates[0])  # a re-enrolled subject is found again
    assert top(index, ps[0]) == ["s0"]


class HeldBuild:
    """Hold a TemplateIndex's background build until released: writes land meanwhile."""

    def __init__(self, monkeypatch) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        build = TemplateIndex._new_shortlist

        def held(index, rows, vectors):
            self.started.set()
            self.release.wait(60)
            return build(index, rows, vectors)

        monkeypatch.setattr(TemplateIndex, "_new_shortlist", held)


@pytest.mark.parametrize("engine", ENGINES)
def test_writes_during_a_background_build_reach_the_installed_shortlist(
    people, engine, monkeypatch
) -> None:
    centres, templates = people
    index = TemplateIndex(IndexConfig(ann_min_templates=300, ann=engine))
    held = HeldBuild(monkeypatch)
    for i in range(100):  # 300 templates: the build starts and is held
        index.add(f"s{i}", templates[i])
    assert held.started.wait(10) and not index.uses_shortlist
    ps = probes(centres, 4)
    assert top(index, ps[5]) == ["s5"]  # meanwhile searches are exact, and right
    for i in range(100, 200):
        index.add(f"s{i}", templates[i])
    for i in range(0, 20):
        index.remove(f"s{i}")
    index.replace("s30", templates[31])  # s30 now carries s31's templates
    held.release.set()
    assert index.wait_for_shortlist(60) and index.uses_shortlist
    assert all(top(index, ps[i]) == [] for i in range(20))  # removed during the build
    assert sum(top(index, ps[i]) == [f"s{i}"] for i in range(100, 200)) >= 99  # added
    assert sorted(top(index, ps[31])) == ["s30", "s31"]


def test_compaction_during_a_build_discards_it_and_builds_on_the_new_rows(
    people, monkeypatch
) -> None:
    centres, templates = people
    index = TemplateIndex(IndexConfig(ann_min_templates=300, rebuild_dead_fraction=0.3))
    held = HeldBuild(monkeypatch)
    for i in range(200):
        index.add(f"s{i}", templates[i])
    assert held.started.wait(10)
    for i in range(100):  # half gone: compacted while the build holds old row numbers
        index.remove(f"s{i}")
    held.release.set()
    assert index.wait_for_shortlist(60)
    assert index.wait_for_shortlist(60) and index.uses_shortlist
    ps = probes(centres, 5)
    assert all(top(index, ps[i]) == [] for i in range(100))
    assert sum(top(index, ps[i]) == [f"s{i}"] for i in range(100, 200)) >= 99


def test_a_failed_build_leaves_exact_search_and_logs_it(people, monkeypatch, caplog) -> None:
    centres, templates = people

    def broken(index, rows, vectors):
        raise MemoryError("no room for the lists")

    monkeypatch.setattr(TemplateIndex, "_new_shortlist", broken)
    index = TemplateIndex.from_gallery(gallery(templates), IndexConfig(ann_min_templates=100))
    assert not index.uses_shortlist and "shortlist" in caplog.text
    ps = probes(centres, 6)
    assert all(top(index, ps[i]) == [f"s{i}"] for i in range(0, SUBJECTS, 40))
    index.add("extra", templates[0])  # no retry on every write: the log stays quiet
    assert index.wait_for_shortlist(10) and caplog.text.count("failed") == 1


def test_replace_is_one_step_for_concurrent_searches(people) -> None:
    centres, templates = people
    index = TemplateIndex.from_gallery(gallery(templates), IndexConfig(ann_min_templates=100))
    p, misses, stop = probes(centres, 7)[9], [], threading.Event()

    def search() -> None:
        while not stop.is_set():
            if top(index, p) != ["s9"]:
                misses.append(1)

    t = threading.Thread(target=search)
    t.start()
    for _ in range(300):
        index.replace("s9", templates[9])
    stop.set()
    t.join()
    assert not misses
    assert index.wait_for_shortlist(60)  # replaced rows were compacted: a rebuild ran


def test_a_gallery_that_doubles_gets_a_retrained_shortlist(people, caplog) -> None:
    centres, templates = people
    caplog.set_level("INFO", logger="auth_service.index")
    index = TemplateIndex(IndexConfig(ann_min_templates=300))
    for i in range(SUBJECTS):
        index.add(f"s{i}", templates[i])
        index.wait_for_shortlist(60)  # one build at a time, so each size shows in the log
    built = [int(r.message.split(" over ")[1].split()[0]) for r in caplog.records]
    assert built == [300, 600, 1200], caplog.text
    ps = probes(centres, 8)
    assert all(top(index, ps[i]) == [f"s{i}"] for i in range(0, SUBJECTS, 20))


def test_kfaar_serve_refuses_an_unknown_shortlist_engine(monkeypatch, capsys) -> None:
    from edge_agent.cli import main

    monkeypatch.setenv("KFAAR_ANN", "annoy")
    assert main(["serve", "--insecure"]) == 2
    assert "shortlist engine 'annoy': want one of ivf, hnsw" in capsys.readouterr().err


def test_metrics_show_templates_and_a_build_in_progress(people, monkeypatch) -> None:
    from auth_service.metrics import Metrics

    _, templates = people
    metrics, indexes = Metrics(), []
    metrics.watch_indexes(lambda: indexes)

    def scrape(name: str) -> float:
        return metrics.registry.get_sample_value(name)

    held = HeldBuild(monkeypatch)
    indexes.append(TemplateIndex.from_gallery(gallery(templates), wait=False))
    indexes.append(
        TemplateIndex.from_gallery(gallery(templates), IndexConfig(ann_min_templates=100), False)
    )
    assert held.started.wait(10)
    assert scrape("kfaar_index_templates") == 2 * SUBJECTS * PER_SUBJECT
    assert scrape("kfaar_index_shortlists_building") == 1
    held.release.set()
    assert indexes[1].wait_for_shortlist(60)
    assert scrape("kfaar_index_shortlists_building") == 0
