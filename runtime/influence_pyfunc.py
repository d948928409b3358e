"""The influence model as an MLflow pyfunc, logged as "model from code".

MLflow stores this file and the model's safetensors (plus, for the token model, its tokenizer), never a
pickle: loading it runs this code and reads the weights. Input: document embeddings (n x d float32) from
the run's embedding model for the embedding head; texts (a list, or a frame with a `text` column) for the
token model (`distill.features = "tokens"`). Output: scores in probe units.
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


def _texts(model_input) -> list[str]:
    if hasattr(model_input, "columns"):
        column = model_input["text"] if "text" in model_input.columns else model_input.iloc[:, 0]
        return [str(t) for t in column.tolist()]
    return [str(t) for t in np.asarray(model_input, dtype=object).reshape(-1)]


class InfluenceScorer(PythonModel):
    def load_context(self, context) -> None:
        from pathlib import Path

        from models.token_influence import TOKENIZER_FILE, is_token_model, load_token_model

        directory = context.artifacts["influence_head"]
        self.token_model = load_token_model(directory) if is_token_model(directory) else None
        if self.token_model is not None:
            from models.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(Path(directory) / TOKENIZER_FILE)
        else:
            from models.influence import load_head

            self.head = load_head(directory)

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        """Scores for embeddings (n x d), or for texts when this is a token model.

        `np.ndarray` is one of the hints MLflow does not validate against (the signature comes from the input
        example), which is what a model with two input kinds needs; without a hint MLflow warns on every load.
        """
        if self.token_model is not None:
            from models.proxy_lm import probe_inputs
            from models.token_influence import predict_tokens

            ids = probe_inputs(self.tokenizer, _texts(model_input), self.token_model.seq_len)
            return predict_tokens(self.token_model, ids)
        from models.influence import predict

        return predict(self.head, np.asarray(model_input, dtype=np.float32))


mlflow.models.set_model(InfluenceScorer())
