"""The evaluation harness of DESIGN.md section 4: every metric, computed from the images.

For each triplet ``(x1, x2, y)`` with subject keys ``kA`` (for x's person), ``kA2`` (a
second key for x's person) and ``kB`` (for y's person) it anonymizes:

    v11 = G(x1, kA)   v21 = G(x2, kA)   vy = G(y, kA)   v12 = G(x1, kA2)   vyB = G(y, kB)

and scores, with the judge R and the system recognizer S (and KVFA I for keyed models):
- anonymity: R(v) vs R(x) for (v11, x1), (v21, x2), (vy, y), judged different
- diversity: (v11, v12) judged different;  differentiation: (v11, vy) judged different
- synchronism: genuine (v11, v21) against impostor (v11, vy)
- KVFA: genuine I(v11, kA) vs S(x2) and I(v21, kA) vs S(x1); impostor I(v11, kA) vs S(y)
  and I(vyB, kB) vs S(x1); wrong keys: I(v11, kA with b bits flipped) vs S(x2)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.anonymizer import Anonymizer
from edge_agent.face.detect import FaceDetector, NoFaceError
from edge_agent.face.image_io import ImageError, load_image
from edge_agent.keys import flip_bits
from edge_agent.progress import progress
from edge_agent.recognizer import SAME_PERSON_THRESHOLD, SystemRecognizer
from training.datasets import Triplet, identity_of, read_triplets
from training.evaluation import metrics
from training.evaluation.cache import embed_cached
from training.evaluation.judges import FaceRef, Judge, locate
from training.evaluation.keyring import Keyring
from training.evaluation.measures import FaceMeasures, Measurer

log = logging.getLogger(__name__)

WRONG_BITS = (1, 3, 5, 16)


@dataclass
class EvalConfig:
    root: Path
    triplets: Path
    judges: list[Judge]  # the first one fills the report's flat keys
    anonymizer: Anonymizer
    limit: int | None = None
    seed: int | None = None
    wrong_key_trials: int = 4
    cache: Path | None = None

    @property
    def judge(self) -> Judge:
        """Return the primary judge."""
        return self.judges[0]


@dataclass
class Sample:
    """One image (original or anonymized) and what was measured on it."""

    image: np.ndarray
    ref: FaceRef
    system: np.ndarray
    measures: FaceMeasures
    judged: dict[str, np.ndarray] = field(default_factory=dict)  # judge name -> embedding
    anonymize_ms: float = 0.0


@dataclass
class EvalRun:
    """Everything the report needs: the results and the samples behind them."""

    results: dict
    originals: dict[str, Sample]
    virtuals: dict[tuple[str, str], Sample]
    triplets: list[Triplet]
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


class Harness:
    def __init__(self, config: EvalConfig) -> None:
        self.cfg = config
        self.detector = FaceDetector()
        self.system = SystemRecognizer()
        self.measurer = Measurer(self.detector)
        self.keys = Keyring(config.seed)

    # -- originals ---------------------------------------------------------------
    def _originals(self, triplets: list[Triplet]) -> tuple[dict[str, Sample], list[Triplet]]:
        paths = sorted({p for t in triplets for p in (t.x1, t.x2, t.y)})
        out: dict[str, Sample] = {}
        for rel in progress(paths, desc="originals"):
            try:
                image = load_image(self.cfg.root / rel)
                face = self.detector.primary(image)
            except (ImageError, NoFaceError) as exc:
                log.warning("skipping %s: %s", rel, exc)
                continue
            ref = locate(image, face)
            out[rel] = Sample(
                image,
                ref,
                self.system.embed(image, face.landmarks),
                self.measurer.measure(image, ref),
            )
        self._judge_originals(out)
        kept = [t for t in triplets if all(p in out for p in (t.x1, t.x2, t.y))]
        return out, kept

    def _judge_originals(self, samples: dict[str, Sample]) -> None:
        rels = list(samples)
        for judge in self.cfg.judges:
            embs = embed_cached(
                judge,
                [self.cfg.root / r for r in rels],
                [(samples[r].image, samples[r].ref) for r in rels],
                self.cfg.cache,
            )
            for rel, e in zip(rels, embs, strict=True):
                samples[rel].judged[judge.name] = e

    # -- anonymized --------------------------------------------------------------
    def _jobs(self, triplets: list[Triplet]) -> dict[tuple[str, str], bool]:
        """Map each (image, key name) to anonymize to whether the judge must see the result.

        Key names are resolved by the Keyring; keyless anonymizers use the name "".
        ``G(y, kB)`` only serves KVFA, so it is made only for anonymizers that recover.
        """
        anon = self.cfg.anonymizer
        jobs: dict[tuple[str, str], bool] = {}
        for t in triplets:
            a, b = identity_of(t.x1), identity_of(t.y)
            wanted = [(t.x1, a, True), (t.x2, a, True), (t.y, a, True), (t.x1, a + "#2", True)]
            if anon.recovers:
                wanted.append((t.y, b, False))
            for rel, key_name, judged in wanted:
                job = (rel, key_name if anon.keyed else "")
                jobs[job] = jobs.get(job, False) or judged
        return jobs

    def _virtuals(self, originals: dict[str, Sample], jobs: dict) -> dict:
        anonymizer = self.cfg.anonymizer
        out = {}
        for rel, key_name in progress(list(jobs), desc="anonymize"):
            orig = originals[rel]
            key = self.keys.key(key_name) if anonymizer.keyed else None
            t0 = time.perf_counter()
            image = anonymizer.anonymize(orig.image, orig.ref.face, key)
            ms = (time.perf_counter() - t0) * 1000
            out[rel, key_name] = Sample(
                image,
                orig.ref,
                self.system.embed(image, orig.ref.face.landmarks),
                self.measurer.measure(image, orig.ref, against=orig.measures),
                anonymize_ms=ms,
            )
        judged = [out[job] for job, needed in jobs.items() if needed]
        for judge in self.cfg.judges:
            items = [(s.image, s.ref) for s in judged]
            embs = judge.embed(items, desc=f"{judge.name}: anonymized")
            for s, e in zip(judged, embs, strict=True):
                s.judged[judge.name] = e
        return out

    # -- run ---------------------------------------------------------------------
    def run(self) -> EvalRun:
        cfg = self.cfg
        triplets, bad_lines = read_triplets(cfg.triplets, cfg.limit)
        if bad_lines:
            log.warning(
                "skipped %d inconsistent triplets (lines %s)",
                len(bad_lines),
                ", ".join(map(str, bad_lines[:10])),
            )
        originals, kept = self._originals(triplets)
        if not kept:
            raise NoFaceError("no triplet has a detectable face in all three images")
        virtuals = self._virtuals(originals, self._jobs(kept))
        run = EvalRun({}, originals, virtuals, kept)
        run.results = self._score(run)
        run.results["n_triplets_skipped"] = len(bad_lines) + len(triplets) - len(kept)
        return run

    def grid(self, run: EvalRun, rows: int = 6) -> tuple[list[list[np.ndarray]], list[str]]:
        """Return picture rows (original, then anonymized under up to three keys) and labels."""
        anon, out, seen = self.cfg.anonymizer, [], set()
        for t in run.triplets:
            a = identity_of(t.x1)
            if a in seen:
                continue
            seen.add(a)
            orig = run.originals[t.x1]
            if anon.keyed:
                third = anon.anonymize(orig.image, orig.ref.face, self.keys.key(a + "#3"))
                row = [
                    orig.image,
                    run.virtuals[t.x1, a].image,
                    run.virtuals[t.x1, a + "#2"].image,
                    third,
                ]
            else:
                row = [orig.image, run.virtuals[t.x1, ""].image]
            out.append(row)
            if len(out) >= rows:
                break
        labels = ["original", "key 1", "key 2", "key 3"] if anon.keyed else ["original", anon.name]
        return out, labels

    @staticmethod
    def _jscores(judge: Judge, pairs: list[tuple[Sample, Sample]]) -> np.ndarray:
        a = np.stack([p.judged[judge.name] for p, _ in pairs])
        b = np.stack([q.judged[judge.name] for _, q in pairs])
        return judge.score(a, b)

    def _judged(self, run: EvalRun, judge: Judge, primary: bool) -> dict:
        """Return the metrics that depend on the judge: anonymity, diversity, synchronism."""
        anon, o, ts = self.cfg.anonymizer, run.originals, run.triplets

        def score(pairs: list) -> np.ndarray:
            return self._jscores(judge, pairs)

        gen = score([(o[t.x1], o[t.x2]) for t in ts])
        imp = score([(o[t.x1], o[t.y]) for t in ts])
        _, thr = metrics.eer(gen, imp)  # the judge's own "same identity" rule

        def v(rel: str, key_name: str) -> Sample:
            return run.virtuals[rel, key_name if anon.keyed else ""]

        A = [identity_of(t.x1) for t in ts]
        v11 = [v(t.x1, a) for t, a in zip(ts, A, strict=True)]
        v21 = [v(t.x2, a) for t, a in zip(ts, A, strict=True)]
        vy = [v(t.y, a) for t, a in zip(ts, A, strict=True)]
        v12 = [v(t.x1, a + "#2") for t, a in zip(ts, A, strict=True)]
        other_person = list(zip(v11, vy, strict=True))
        anonymity_pairs = [(v11[i], o[t.x1]) for i, t in enumerate(ts)]
        anonymity_pairs += [(v21[i], o[t.x2]) for i, t in enumerate(ts)]
        anonymity_pairs += [(vy[i], o[t.y]) for i, t in enumerate(ts)]

        def different(pairs: list) -> float:
            return float((score(pairs) < thr).mean())

        sync = (score(list(zip(v11, v21, strict=True))), score(other_person))
        if primary:
            run.scores["judge on originals"] = (gen, imp)
            run.scores["synchronism (judge)"] = sync
            system = tuple(
                np.array([p.system @ q.system for p, q in pairs])
                for pairs in (list(zip(v11, v21, strict=True)), other_person)
            )
            run.scores["virtual verify (system)"] = system
        else:
            run.scores[f"synchronism ({judge.name})"] = sync
        return {
            "judge": judge.name,
            "threshold": round(judge.to_native(thr), 6),
            "judge_metric": judge.metric,
            "judge_auc_original": metrics.auc(gen, imp),
            "anonymity": different(anonymity_pairs),
            "diversity": different(list(zip(v11, v12, strict=True))) if anon.keyed else None,
            "differentiation": different(other_person),
            "synchronism_auc": metrics.auc(*sync),
            "synchronism_eer": metrics.eer(*sync)[0],
        }

    def _score(self, run: EvalRun) -> dict:
        anon, o, ts = self.cfg.anonymizer, run.originals, run.triplets
        per_judge = {j.name: self._judged(run, j, i == 0) for i, j in enumerate(self.cfg.judges)}
        virt = list(run.virtuals.values())
        res = {
            "n_triplets": len(ts),
            **per_judge[self.cfg.judge.name],
            "anonymizer": anon.name,
            "virtual_verify_auc": metrics.auc(*run.scores["virtual verify (system)"]),
            **Measurer.summarize([s.measures for s in virt]),
            "brisque_original": float(np.mean([s.measures.brisque for s in o.values()])),
            "ms_per_face": float(np.mean([s.anonymize_ms for s in virt])),
            "kvfa_crr": None,
            "kvfa_far": None,
            "kvfa_auc": None,
            "wrong_key_accept": None,
            "judges": per_judge,
        }
        if anon.keyed and anon.recovers:
            res.update(self._kvfa(run, ts, [identity_of(t.x1) for t in ts]))
        return res

    def _kvfa(self, run: EvalRun, ts: list[Triplet], A: list[str]) -> dict:
        anon, o = self.cfg.anonymizer, run.originals
        thr = getattr(anon, "threshold", SAME_PERSON_THRESHOLD)  # a model may bring its own

        def rec(rel: str, key_name: str, key: bytes | None = None) -> np.ndarray:
            s = run.virtuals[rel, key_name]
            return anon.recover(s.image, s.ref.face, key or self.keys.key(key_name))

        gen, imp = [], []
        for t, a in progress(list(zip(ts, A, strict=True)), desc="KVFA"):
            r11, r21 = rec(t.x1, a), rec(t.x2, a)
            gen += [r11 @ o[t.x2].system, r21 @ o[t.x1].system]
            imp += [r11 @ o[t.y].system, rec(t.y, identity_of(t.y)) @ o[t.x1].system]
        gen, imp = np.array(gen), np.array(imp)
        run.scores["KVFA recovery (system)"] = (gen, imp)
        rng = self.keys.rng("wrong-bits")
        wrong = {}
        for bits in WRONG_BITS:
            hits = [
                rec(t.x1, a, flip_bits(self.keys.key(a), bits, rng)) @ o[t.x2].system >= thr
                for t, a in zip(ts, A, strict=True)
                for _ in range(self.cfg.wrong_key_trials)
            ]
            wrong[str(bits)] = float(np.mean(hits))
        return {
            "kvfa_crr": metrics.accept_rate(gen, thr),
            "kvfa_far": metrics.accept_rate(imp, thr),
            "kvfa_auc": metrics.auc(gen, imp),
            "wrong_key_accept": wrong,
            "wrong_key_trials": len(ts) * self.cfg.wrong_key_trials,
            "kvfa_threshold": thr,
        }
