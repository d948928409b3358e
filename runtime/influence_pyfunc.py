"""The influence model as an MLflow pyfunc, logged as "model from code".

MLflow stores this file, the `models` package (code_paths) and the student's folder (safetensors + JSON,
plus the tokenizer for the token student), never a pickle: loading it runs this code and reads the
weights through `models.students.load_student`, whichever student it is. Input: texts (a list, or a frame
with a `text` column) for students that read text; document embeddings (n x d float32, from the run's
embedding model) for the embedding head. Output: scores in probe units.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


def _texts(model_input: Any) -> list[str]:
    if hasattr(model_input, "columns"):
        column = model_input["text"] if "text" in model_input.columns else model_input.iloc[:, 0]
        return [str(t) for t in column.tolist()]
    return [str(t) for t in np.asarray(model_input, dtype=object).reshape(-1)]


class InfluenceScorer(PythonModel):
    def load_context(self, context: Any) -> None:
        from models.students import load_student

        self.student = load_student(context.artifacts["influence_model"])

    def predict(self, context: Any, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        """Scores for texts (students that read text) or embeddings (n x d, the embedding head).

        `np.ndarray` is one of the hints MLflow does not validate against (the signature comes from the input
        example), which is what a model with two input kinds needs; without a hint MLflow warns on every load.
        """
        from models.students import StudentInputs

        if self.student.reads == "text":
            return self.student.score(StudentInputs(texts=_texts(model_input)))
        return self.student.score(StudentInputs(embeddings=np.asarray(model_input, dtype=np.float32)))


mlflow.models.set_model(InfluenceScorer())
