"""The influence study's fits: every registered student over its grid, baselines, and the label sources.

A student is built exactly as the distil stage builds it (tasks/distill.py `new_student`, which goes through
runtime/configs.py) from a variant of the pipeline settings, fed exactly as the stage feeds it
(`student_inputs`: texts, or the stored embeddings), and fitted and scored through the student interface
(models/students.py). A grid point is a set of pipeline settings, so what the study finds is a setting.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import numpy as np
from pydantic import ValidationError

from benchmarks.influence_study_config import RUN_ID, StudentPlan, StudyConfig
from benchmarks.influence_study_data import LabelBudget, Split, StudyData
from core import db, store
from core.config import Settings, apply_overrides, format_validation_error
from models.ranking import spearman
from models.students import Student
from tasks.distill import Probed, new_student, student_inputs, student_name

STUDENT_SETTINGS: dict[str, dict[str, Any]] = {
    "head": {"distill.features": "embedding", "distill.finetune_encoder": False, "distill.reference_prior": 0.0},
    "finetuned": {"distill.features": "embedding", "distill.finetune_encoder": True, "distill.reference_prior": 0.0},
    "tokens": {"distill.features": "tokens"},
}
"""The pipeline settings that make the distil stage choose each registered student."""
RIDGE_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0)


def mean_std(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the config's order ([{}] for no grid)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def student_settings(settings: Settings, name: str, plan: StudentPlan, point: dict[str, Any]) -> Settings:
    """The pipeline settings under which the distil stage fits student `name` at grid `point`."""
    if name not in STUDENT_SETTINGS:
        raise ValueError(f"the study does not know which settings choose student {name!r}: add it to STUDENT_SETTINGS")
    overrides = {**STUDENT_SETTINGS[name], **plan.settings, **point}
    data = apply_overrides(settings.model_dump(mode="json"), [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    try:
        variant = Settings.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"student {name} at {point}: {format_validation_error(exc)}") from None
    if student_name(variant) != name:
        raise ValueError(f"settings {overrides} choose student {student_name(variant)!r}, not {name!r}")
    return variant


class Fitter:
    """Fits students on (doc ids, labels) and judges them on a split's test documents' EXACT probes."""

    def __init__(self, con, data: StudyData) -> None:
        self.con, self.data = con, data
        self.embeddings = db.arrow(con, "load_embeddings", {"run_id": RUN_ID})

    def fit(self, variant: Settings, fit: list[str], y_fit: np.ndarray, val: list[str], y_val: np.ndarray,
            test: list[str]) -> tuple[Student, dict[str, float]]:
        student = new_student(self.con, variant, self.data.corpus.tokenized, self.data.probes.stage)
        probed = Probed(list(zip(fit, y_fit)), list(zip(val, y_val)),
                        list(zip(test, self.data.labels.exact_of(test))))
        parts = student_inputs(self.con, RUN_ID, probed, self.embeddings if student.reads == "embedding" else None)
        started = time.perf_counter()
        student.fit(parts["fit"], probed.labels("fit"), parts["val"], probed.labels("val"))
        seconds = time.perf_counter() - started
        rho = spearman(student.score(parts["held"]), probed.labels("held"))
        return student, {"test_spearman": rho, "fit_seconds": seconds}

    def fit_exact(self, variant: Settings, split: Split) -> tuple[Student, dict[str, float]]:
        exact = self.data.labels.exact_of
        return self.fit(variant, split.fit, exact(split.fit), split.val, exact(split.val), split.test)


def compare_students(cfg: StudyConfig, data: StudyData, splits: list[Split]) -> tuple[dict[str, Any], dict[str, Student]]:
    """Held-out Spearman of every configured student at every grid point, on exact labels; and each
    student's first fit (first grid point, split 0), kept for the scoring measurement."""
    results: dict[str, Any] = {}
    kept: dict[str, Student] = {}
    with db.connect(data.settings.database, read_only=True) as con:
        fitter = Fitter(con, data)
        for name, plan in cfg.students.items():
            points = []
            for point in grid_points(plan.grid):
                variant = student_settings(data.settings, name, plan, point)
                runs = []
                for split in splits[:plan.repeats or len(splits)]:
                    student, run = fitter.fit_exact(variant, split)
                    kept.setdefault(name, student)
                    runs.append(run)
                points.append({"settings": point, "test_spearman": mean_std([r["test_spearman"] for r in runs]),
                               "per_repeat": [r["test_spearman"] for r in runs],
                               "fit_seconds": mean_std([r["fit_seconds"] for r in runs])})
            best = max(points, key=lambda p: p["test_spearman"]["mean"])
            results[name] = {"reads": kept[name].reads, "settings": {**STUDENT_SETTINGS[name], **plan.settings},
                             "points": points, "best": best["settings"], "best_test_spearman": best["test_spearman"]}
    return results, kept


def baselines(data: StudyData, splits: list[Split]) -> dict[str, Any]:
    """Floors: the document's length alone, and a ridge on the stored embeddings (alpha picked on `val`)."""
    from sklearn.linear_model import Ridge

    labels = data.labels
    length = [spearman(labels.tokens_of(s.test), labels.exact_of(s.test)) for s in splits]
    with db.connect(data.settings.database, read_only=True) as con:
        ids, X = store.load_embeddings(con, RUN_ID)
    row_of = {d: i for i, d in enumerate(ids)}

    def rows(part: list[str]) -> np.ndarray:
        return X[[row_of[d] for d in part]]

    ridge, alphas = [], []
    for s in splits:
        fitted = [Ridge(alpha=a).fit(rows(s.fit), labels.exact_of(s.fit)) for a in RIDGE_ALPHAS]
        best = max(fitted, key=lambda m: spearman(m.predict(rows(s.val)), labels.exact_of(s.val)))
        ridge.append(spearman(best.predict(rows(s.test)), labels.exact_of(s.test)))
        alphas.append(best.alpha)
    return {"length_only": mean_std(length), "length_only_per_repeat": length,
            "ridge_embeddings": mean_std(ridge), "ridge_embeddings_per_repeat": ridge, "ridge_alphas": alphas}


def compare_labels(cfg: StudyConfig, data: StudyData, splits: list[Split], budget: LabelBudget) -> dict[str, Any]:
    """Per label student: N exact labels vs the same N documents' fast labels vs k*N fast labels at equal
    compute, all judged on the test documents' exact probes; and the fast probe itself on them."""
    labels, arms_by_student = data.labels, {}
    with db.connect(data.settings.database, read_only=True) as con:
        fitter = Fitter(con, data)
        for name in cfg.label_students:
            variant = student_settings(data.settings, name, cfg.students.get(name, StudentPlan()), {})
            arms: dict[str, list[float]] = {"exact": [], "fast_same_n": [], "fast_k_n": []}
            for s in splits:
                arms["exact"].append(fitter.fit_exact(variant, s)[1]["test_spearman"])
                arms["fast_same_n"].append(fitter.fit(variant, s.fit, labels.fast_of(s.fit), s.val,
                                                      labels.fast_of(s.val), s.test)[1]["test_spearman"])
                arms["fast_k_n"].append(fitter.fit(variant, s.fast_fit, labels.fast_of(s.fast_fit), s.fast_val,
                                                   labels.fast_of(s.fast_val), s.test)[1]["test_spearman"])
            arms_by_student[name] = {arm: {**mean_std(v), "per_repeat": v} for arm, v in arms.items()}
    direct = [spearman(labels.fast_of(s.test), labels.exact_of(s.test)) for s in splits]
    return {"k_measured": budget.k_measured, "k": budget.k, "capped": budget.capped,
            "exact_s_per_probe": budget.exact_s_per_probe, "fast_s_per_probe": budget.fast_s_per_probe,
            "n_exact_train": budget.n_exact_train, "n_fast_train": budget.n_fast_train,
            "n_test": len(splits[0].test), "compute_exact_s": budget.compute_exact_s,
            "compute_fast_s": budget.compute_fast_s,
            "compute_ratio_fast_over_exact": budget.compute_fast_s / budget.compute_exact_s,
            "students": arms_by_student, "fast_probe_direct": {**mean_std(direct), "per_repeat": direct},
            "note": "fast_probe_direct: the fast probe itself on the test documents (no model: a probe per document)"}
