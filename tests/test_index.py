"""The 1:N index: the HNSW path agrees with exact search, removals and rebuilds stay right."""

from __future__ import annotations

import numpy as np
import pytest

from auth_service.index import IndexConfig, TemplateIndex
from auth_service.store import Gallery

SUBJECTS, PER_SUBJECT = 400, 3


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


def test_graph_search_agrees_with_exact_search_and_reports_exact_scores(people) -> None:
    centres, templates = people
    exact = TemplateIndex.from_gallery(gallery(templates))
    graph = TemplateIndex.from_gallery(gallery(templates), IndexConfig(ann_min_templates=100))
    assert graph.uses_graph and not exact.uses_graph
    agree = 0
    for i, p in enumerate(probes(centres, 1)):
        want, got = exact.search(p, 0.5, 3), graph.search(p, 0.5, 3)
        assert want[0][1] == f"s{i}"
        agree += [s for _, s in got] == [s for _, s in want]
        for score, subject in got:  # re-scored: an exact cosine, not the f16 graph's distance
            assert np.abs(templates[int(subject[1:])] @ p - score).min() < 1e-6
    assert agree >= 0.99 * SUBJECTS


def test_threshold_and_top_k_are_applied_per_subject(people) -> None:
    centres, templates = people
    index = TemplateIndex.from_gallery(gallery(templates), IndexConfig(ann_min_templates=100))
    p = probes(centres, 2)[7]
    assert [s for _, s in index.search(p, 0.5, 5)] == ["s7"]  # others are far below 0.5
    assert len(index.search(p, -1.0, 5)) == 5  # one entry per subject, never a template twice
    assert index.search(p, 0.9999, 5) == []


def test_adds_and_removals_cross_the_graph_threshold_both_ways(people) -> None:
    centres, templates = people
    index = TemplateIndex(IndexConfig(ann_min_templates=600, rebuild_dead_fraction=0.3))
    for i in range(SUBJECTS):
        index.add(f"s{i}", templates[i])
        if i == 150:
            assert not index.uses_graph
    assert index.uses_graph and len(index) == SUBJECTS * PER_SUBJECT
    ps = probes(centres, 3)
    for i in range(0, 100, 2):  # revoke some: tombstones, below the rebuild fraction
        assert index.remove(f"s{i}") == PER_SUBJECT
    assert index.uses_graph and index.remove("s0") == 0
    found = [[s for _, s in index.search(ps[i], 0.5, 3)] for i in range(100)]
    assert all(found[i] == [] for i in range(0, 100, 2))  # revoked: never, graph or not
    assert sum(found[i] == [f"s{i}"] for i in range(1, 100, 2)) >= 49
    for i in range(100, 300):  # now more than 30% are gone: compacted, below 600: exact
        index.remove(f"s{i}")
    assert not index.uses_graph and len(index) == (SUBJECTS - 250) * PER_SUBJECT
    for i in (1, 333, 399):
        assert [s for _, s in index.search(ps[i], 0.5, 3)] == [f"s{i}"]
    index.add("s0", templates[0])  # a re-enrolled subject is found again
    assert [s for _, s in index.search(ps[0], 0.5, 3)] == ["s0"]
