"""The influence study's configuration: a TOML file (configs/influence_study.toml) plus `--set key=value`.

`[pipeline]` holds ordinary influmix settings (README "Configuration"): the study runs the pipeline's own
stages with them, and every student it compares is built from them (a grid point is a set of pipeline
settings, e.g. `distill.hidden_dim`). The other keys are the study's own: where the data is, how many
repeated splits, which students and grids, which students learn from each label source, scoring sizes.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from benchmarks import SHARED_CORPUS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"full": ROOT / "configs" / "influence_study.toml", "tiny": ROOT / "configs" / "influence_study_tiny.toml"}
RUN_ID = "influence-study"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StudentPlan(_Strict):
    """How one registered student is compared: its own pipeline settings and a grid of others to sweep."""

    settings: dict[str, Any] = Field(default_factory=dict,
                                     description="pipeline settings for this student, e.g. {'distill.epochs' = 4}")
    grid: dict[str, list[Any]] = Field(default_factory=dict,
                                       description="pipeline settings to sweep; every combination is fitted")
    repeats: int | None = Field(None, ge=1, description="splits it is fitted on (default: all `repeats`)")


class StudyConfig(_Strict):
    corpus: str = str(SHARED_CORPUS / "corpus.jsonl.gz")
    reference: str = str(SHARED_CORPUS / "reference.jsonl.gz")
    corpus_records: int | None = Field(6000, ge=1, description="ingest the corpus's first N records")
    workdir: str = "runs/bench-influence-study"
    out: str = "benchmarks/results/influence_study.json"
    threads: int = Field(1, ge=1)
    repeats: int = Field(3, ge=1, description="random splits of the exact probes into train and test")
    students: dict[str, StudentPlan] = Field(default_factory=dict, description="default: every registered student")
    label_students: list[str] = Field(["head", "tokens"], description="students fitted on each label source")
    fast_per_exact: float | None = Field(None, gt=0, description="fast labels per exact one; default the measured "
                                                                 "cost ratio")
    scoring_docs: int = Field(512, ge=1, description="pool documents every student scores from its input")
    embedding_scoring_rows: int = Field(100_000, ge=1, description="rows an embedding student scores")
    pipeline: dict[str, Any] = Field(default_factory=dict, description="influmix settings (README: Configuration)")

    @model_validator(mode="after")
    def _known_students(self) -> StudyConfig:
        from models.students import STUDENTS

        if not self.students:
            self.students = {name: StudentPlan() for name in STUDENTS}
        unknown = sorted((set(self.students) | set(self.label_students)) - set(STUDENTS))
        if unknown:
            raise ValueError(f"unknown students {unknown}; registered: {', '.join(STUDENTS)}")
        return self


def load_config(path: Path, overrides: list[str]) -> StudyConfig:
    from core.config import apply_overrides

    data = apply_overrides(tomllib.loads(Path(path).read_text(encoding="utf-8")), overrides)
    for key in ("corpus", "reference", "workdir", "out"):
        if key in data and not Path(data[key]).is_absolute():
            data[key] = str(ROOT / data[key])
    return StudyConfig.model_validate(data)


def pipeline_settings(cfg: StudyConfig):
    """The influmix settings of the study's run: the config's `[pipeline]` on the study's data and folder."""
    from core.config import Settings

    workdir = Path(cfg.workdir).resolve()
    data = json.loads(json.dumps(cfg.pipeline))
    data.update(run_dir=str(workdir / "runs"), run_id=RUN_ID)
    data.setdefault("ingest", {})["sources"] = [{"path": cfg.corpus, "max_records": cfg.corpus_records}]
    data.setdefault("reference", {})["sources"] = [{"path": cfg.reference}]
    data.setdefault("track", {})["tracking_uri"] = f"sqlite:///{workdir / 'runs' / 'mlflow.db'}"
    settings = Settings.model_validate(data)
    if settings.probe.oracle != "one_step" or settings.probe.exact_fraction <= 0:
        raise ValueError("setting `pipeline.probe.oracle`: the study compares exact with fast one-step probes, so it "
                         "needs probe.oracle = 'one_step' and probe.exact_fraction > 0")
    return settings
