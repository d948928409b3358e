"""The influence model in MLflow's registry: a version per run, tagged and described, and an alias that
moves only to a version that passed the quality gate.

Consumers load `models:/<registered_model>@<model_alias>`; moving the alias to every new version would
hand them whatever the last run produced, however poor (a held-out Spearman of 0.22 replacing 0.53).
The gate is the version's held-out Spearman against the oracle (`track.alias_min_spearman`); a version
below it is registered and tagged `influmix.gate=held`, and the alias stays where it was.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.artifacts import Influence
from core.config import Settings
from models.students import load_student

PYFUNC_CODE = Path(__file__).resolve().parents[2] / "runtime" / "influence_pyfunc.py"
MODELS_PACKAGE = Path(__file__).resolve().parents[2] / "models"
PYFUNC_REQUIREMENTS = ["torch", "safetensors", "numpy", "scipy", "tokenizers", "transformers", "pandas"]


def log_influence_model(mlflow, settings: Settings, influence: Influence) -> tuple[str | None, str | None, str]:
    """Register the stage's influence model (any student but the fine-tuned encoder) in the active run.

    Returns (this version, the version the alias points at afterwards, why the alias did not move or "").
    The model is "code + weights": runtime/influence_pyfunc.py and the `models` package travel with it
    (code_paths), so it loads wherever its requirements are installed, with or without influmix. The
    fine-tuned encoder is not registered: its weights are a whole SentenceTransformer per stage.
    """
    student = load_student(Path(influence.model_dir))
    if student.name == "finetuned":
        return None, None, "the fine-tuned encoder is not registered"
    if student.reads == "text":
        example: Any = pd.DataFrame({"text": ["An example document.", "Another one."]})
    else:
        example = np.zeros((2, student.in_dim), dtype=np.float32)
    info = mlflow.pyfunc.log_model(
        name="influence_model", python_model=str(PYFUNC_CODE), artifacts={"influence_model": influence.model_dir},
        registered_model_name=settings.track.registered_model, input_example=example,
        pip_requirements=PYFUNC_REQUIREMENTS, code_paths=[str(MODELS_PACKAGE)],
    )
    version = str(info.registered_model_version)
    return version, *gate_alias(mlflow.MlflowClient(), settings, influence, version)


def gate_alias(client, settings: Settings, influence: Influence, version: str) -> tuple[str | None, str]:
    """Tag and describe `version`; move the alias to it if it passes the gate. Returns (alias version, note)."""
    name, alias, gate = settings.track.registered_model, settings.track.model_alias, settings.track.alias_min_spearman
    spearman = influence.heldout_spearman
    passed = gate is None or (math.isfinite(spearman) and spearman >= gate)
    tags = {"influmix.run_id": influence.run_id, "influmix.stage": str(influence.stage),
            "influmix.student": influence.student, "influmix.heldout_spearman": f"{spearman:.4f}",
            "influmix.heldout_probes": str(influence.heldout_probes), "influmix.gate": "passed" if passed else "held"}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=(
        f"{influence.student} influence student of run {influence.run_id}, stage {influence.stage}: held-out "
        f"Spearman {spearman:.3f} against the oracle on {influence.heldout_probes} documents it was not fitted on"))
    if passed:
        client.set_registered_model_alias(name, alias, version)
        return version, ""
    current = current_alias_version(client, name, alias)
    where = f"it stays on v{current}" if current else "no version has it yet"
    return current, (f"@{alias} not moved to v{version}: its held-out Spearman {spearman:.3f} is below "
                     f"track.alias_min_spearman = {gate:g}; {where}")


def current_alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
