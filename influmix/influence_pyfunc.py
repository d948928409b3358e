"""The influence model as an MLflow pyfunc, logged as "model from code".

MLflow stores this file and the head's safetensors, never a pickle: loading it runs this code and reads
the weights. Input: document embeddings (n x d float32) from the run's embedding model; output: scores.
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class InfluenceScorer(PythonModel):
    def load_context(self, context) -> None:
        from models.influence import load_head

        self.head = load_head(context.artifacts["influence_head"])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        from models.influence import predict

        return predict(self.head, np.asarray(model_input, dtype=np.float32))


mlflow.models.set_model(InfluenceScorer())
