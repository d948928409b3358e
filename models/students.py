"""One interface for every influence model ("student"): fit on probes, score documents, save, load.

The probes are the teacher; a student learns them and scores the whole pool. Students differ in what they
read -- stored embeddings (`reads = "embedding"`) or raw texts (`reads = "text"`) -- and in how they learn,
but the distillation stage, the tracking stage and the MLflow pyfunc only see this interface, so a new
student is one class registered here by name, not an if/elif in four files.

Registered students:
  * `head`: an MLP head on stored sentence embeddings (models/influence.py), the CPU default.
  * `finetuned`: the sentence encoder and the head fine-tuned end to end (models/influence_encoder.py).
  * `tokens`: ridge weights on the proxy LM's own tokens (models/token_influence.py), text in.

A saved student is a folder holding `student.json` (its name and format) beside its own weight files, all
safetensors/JSON: `load_student(folder)` needs nothing else, which is what lets the registered MLflow model
load anywhere this package is importable.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

STUDENT_FILE = "student.json"


@dataclass
class StudentInputs:
    """What a student reads for a list of documents: their texts, their stored embeddings, or both."""

    texts: list[str] | None = None
    embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.embeddings)

    def needs(self, reads: str) -> Any:
        value = self.texts if reads == "text" else self.embeddings
        if value is None:
            raise ValueError(f"this student reads {reads}s, which the inputs do not carry")
        return value


class Student(ABC):
    """Base of the registered students: `fit`, `score`, `save`, `load`."""

    name: ClassVar[str]
    reads: ClassVar[str]  # "embedding" | "text"

    @abstractmethod
    def fit(self, fit: StudentInputs, y_fit: np.ndarray, val: StudentInputs, y_val: np.ndarray) -> None:
        """Learn the probe labels `y_fit`; `val` is for early stopping / model selection only."""

    @abstractmethod
    def score(self, inputs: StudentInputs) -> np.ndarray:
        """Predicted probe scores (float64, the probes' own units), one per document."""

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_weights(directory)
        (directory / STUDENT_FILE).write_text(json.dumps({"name": self.name, "format": 1}))
        return directory

    @abstractmethod
    def _save_weights(self, directory: Path) -> None:
        """Write the student's own weight and metadata files into `directory`."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, device: str = "cpu") -> Student:
        """The student saved in `directory` by `save`."""


STUDENTS: dict[str, type[Student]] = {}


def register(cls: type[Student]) -> type[Student]:
    STUDENTS[cls.name] = cls
    return cls


def load_student(directory: str | Path, device: str = "cpu") -> Student:
    """The student saved in `directory`, whichever it is."""
    directory = Path(directory)
    meta = json.loads((directory / STUDENT_FILE).read_text())
    if meta.get("name") not in STUDENTS:
        raise ValueError(f"{directory}: unknown influence student {meta.get('name')!r} (known: {', '.join(STUDENTS)})")
    return STUDENTS[meta["name"]].load(directory, device)


def make_student(name: str, **options: Any) -> Student:
    """A fresh, unfitted student `name` with its own options (see each class)."""
    if name not in STUDENTS:
        raise ValueError(f"unknown influence student {name!r} (known: {', '.join(STUDENTS)})")
    return STUDENTS[name](**options)


@register
class HeadStudent(Student):
    """MLP head on stored embeddings. Options: `config` (models.influence.InfluenceConfig)."""

    name, reads = "head", "embedding"

    def __init__(self, config: Any = None, head: Any = None) -> None:
        from models.influence import InfluenceConfig

        self.config, self.head = config or InfluenceConfig(), head

    def fit(self, fit: StudentInputs, y_fit: np.ndarray, val: StudentInputs, y_val: np.ndarray) -> None:
        from models.influence import train_influence_head

        self.head, _ = train_influence_head(fit.needs(self.reads), y_fit, val.needs(self.reads), y_val, self.config)

    def score(self, inputs: StudentInputs) -> np.ndarray:
        from models.influence import predict

        return predict(self.head, inputs.needs(self.reads))

    def _save_weights(self, directory: Path) -> None:
        from models.influence import save_head

        save_head(self.head, directory, self.config)

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> HeadStudent:
        from models.influence import InfluenceConfig, load_head

        head = load_head(directory, device)
        known = InfluenceConfig.__dataclass_fields__
        return cls(InfluenceConfig(**{k: v for k, v in (head.config or {}).items() if k in known}), head)

    @property
    def in_dim(self) -> int:
        return self.head.in_dim


@register
class FinetunedStudent(Student):
    """Sentence encoder + head fine-tuned end to end. Options: `config`, `encoder` (a SentenceTransformer
    to start from; it is modified in place), `batch_size` (scoring)."""

    name, reads = "finetuned", "text"

    def __init__(self, config: Any = None, encoder: Any = None, batch_size: int = 64, model: Any = None) -> None:
        from models.influence import InfluenceConfig

        self.config = config or InfluenceConfig(finetune_encoder=True)
        self.encoder, self.batch_size, self.model = encoder, batch_size, model

    def fit(self, fit: StudentInputs, y_fit: np.ndarray, val: StudentInputs, y_val: np.ndarray) -> None:
        from models.influence_encoder import train_influence_model

        if self.encoder is None:
            raise ValueError("the finetuned student needs an `encoder` to start from")
        self.model, _ = train_influence_model(fit.needs(self.reads), y_fit, val.needs(self.reads), y_val,
                                              self.encoder, self.config)

    def score(self, inputs: StudentInputs) -> np.ndarray:
        from models.influence_encoder import predict_texts

        return predict_texts(self.model, inputs.needs(self.reads), batch_size=self.batch_size)

    def _save_weights(self, directory: Path) -> None:
        from models.influence_encoder import save_model

        save_model(self.model, directory, self.config)
        (directory / "finetuned.json").write_text(json.dumps({"batch_size": self.batch_size}))

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> FinetunedStudent:
        from models.influence_encoder import load_model

        options = json.loads((directory / "finetuned.json").read_text())
        return cls(model=load_model(directory, device), batch_size=options["batch_size"])


@register
class TokenStudent(Student):
    """Ridge weights on the proxy's tokens. Options: `tokenizer_file`, `seq_len`, and an optional `prior`
    (per-token values added at `prior_weight` times the probes' spread; see models/token_influence.py)."""

    name, reads = "tokens", "text"

    def __init__(self, tokenizer_file: str | Path, seq_len: int, prior: np.ndarray | None = None,
                 prior_weight: float = 0.0, model: Any = None) -> None:
        from models.tokenizer import load_tokenizer

        self.tokenizer_file, self.seq_len = Path(tokenizer_file), int(seq_len)
        self.tokenizer = load_tokenizer(self.tokenizer_file)
        self.prior, self.prior_weight, self.model = prior, prior_weight, model

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """What a probe step on each text sees: its first `seq_len` proxy tokens."""
        from models.proxy_lm import probe_inputs

        return probe_inputs(self.tokenizer, texts, self.seq_len)

    def fit(self, fit: StudentInputs, y_fit: np.ndarray, val: StudentInputs, y_val: np.ndarray) -> None:
        from models.token_influence import fit_token_influence

        self.model, _ = fit_token_influence(self.token_ids(fit.needs(self.reads)), y_fit,
                                            self.token_ids(val.needs(self.reads)), y_val,
                                            self.tokenizer.get_vocab_size(), self.seq_len, prior=self.prior,
                                            prior_weight=self.prior_weight)

    def score(self, inputs: StudentInputs) -> np.ndarray:
        from models.token_influence import predict_tokens

        return predict_tokens(self.model, self.token_ids(inputs.needs(self.reads)))

    def _save_weights(self, directory: Path) -> None:
        from models.token_influence import save_token_model

        save_token_model(self.model, directory, self.tokenizer_file)

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> TokenStudent:
        from models.token_influence import TOKENIZER_FILE, load_token_model

        model = load_token_model(directory)
        return cls(directory / TOKENIZER_FILE, model.seq_len, prior_weight=model.prior_weight, model=model)


def describe(student: Student) -> dict[str, Any]:
    """Name, what it reads and its config, for tracking."""
    config = getattr(student, "config", None)
    return {"name": student.name, "reads": student.reads,
            "config": asdict(config) if config is not None and hasattr(config, "__dataclass_fields__") else {}}
