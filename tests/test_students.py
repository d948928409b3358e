"""The influence students behind one interface, and the registered MLflow model in a fresh environment.

Every registered student fits, saves, loads by name from its folder and scores the same; the registered
model (code + weights, no pickle) loads and scores in a new virtual environment that has the project's
wheel and its dependencies but not this checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from models.influence import InfluenceConfig
from models.students import STUDENTS, StudentInputs, load_student, make_student
from models.tokenizer import save_tokenizer, train_bpe_tokenizer
from tests.conftest import REPO, sample_texts


def _labels(texts: list[str]) -> np.ndarray:
    """A learnable target: how often a document says 'the', plus a little noise."""
    noise = np.random.default_rng(0).normal(0, 0.01, len(texts))
    return np.array([t.lower().count(" the ") / max(len(t.split()), 1) for t in texts]) + noise


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    texts = sample_texts(160, max_chars=600)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    save_tokenizer(train_bpe_tokenizer(texts, 512), path)
    return texts, _labels(texts), path


def test_the_registry_names_every_student():
    assert set(STUDENTS) == {"head", "finetuned", "tokens"}
    with pytest.raises(ValueError, match="unknown influence student"):
        make_student("forest")


@pytest.mark.parametrize("name", ["head", "tokens"])
def test_a_student_fits_saves_loads_and_scores_the_same(name, corpus, tmp_path):
    texts, y, tokenizer_file = corpus
    embeddings = np.random.default_rng(1).standard_normal((len(texts), 16)).astype(np.float32)
    embeddings[:, 0] = y * 50  # the head's signal lives in one embedding dimension
    inputs = StudentInputs(texts=texts, embeddings=embeddings)
    parts = {k: StudentInputs(texts=texts[s], embeddings=embeddings[s])
             for k, s in (("fit", slice(0, 100)), ("val", slice(100, 130)), ("held", slice(130, 160)))}
    options = {"head": {"config": InfluenceConfig(epochs=60, hidden_dim=16)},
               "tokens": {"tokenizer_file": tokenizer_file, "seq_len": 64}}[name]
    student = make_student(name, **options)
    student.fit(parts["fit"], y[:100], parts["val"], y[100:130])
    held = student.score(parts["held"])
    assert np.corrcoef(held, y[130:])[0, 1] > 0.3  # it learnt something real
    student.save(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "student.json").read_text())["name"] == name
    loaded = load_student(tmp_path / "model")
    assert type(loaded) is type(student)
    np.testing.assert_allclose(loaded.score(inputs), student.score(inputs), rtol=1e-6, atol=1e-9)


def test_a_student_refuses_inputs_it_cannot_read(corpus):
    _, _, tokenizer_file = corpus
    student = make_student("tokens", tokenizer_file=tokenizer_file, seq_len=64)
    with pytest.raises(ValueError, match="reads texts"):
        student.score(StudentInputs(embeddings=np.zeros((2, 4), np.float32)))


def _fresh_environment(root: Path) -> Path:
    """A new venv holding only the influmix wheel; its dependencies come from the test venv's site-packages
    through a plain path entry, which (unlike a site directory) skips that venv's editable-install hook."""
    wheels, source = root / "wheels", root / "source"  # built from a copy: the build leaves no build/ in the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info",
                                                                "__pycache__", "data", "docs", "benchmarks"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, text=True)
    env = root / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    wheel = next(wheels.glob("influmix-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


SCORE_IN_FRESH_ENV = """
import json, sys
import mlflow, pandas as pd
import models
assert not models.__file__.startswith(sys.argv[3]), models.__file__  # the wheel's, not the checkout's
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
inputs = json.load(sys.stdin)
if isinstance(inputs[0], str):  # a student that reads text
    inputs = pd.DataFrame({"text": inputs})
else:  # the embedding head: the run's document embeddings
    import numpy as np
    inputs = np.asarray(inputs, dtype=np.float32)
print(json.dumps([float(x) for x in model.predict(inputs)]))
"""


def test_the_registered_model_loads_in_a_fresh_environment_with_the_wheel(e2e_run, tmp_path):
    from core import db, store

    settings, result = e2e_run
    last = result.stages[-1].influence
    assert last.student == "head"  # the default student on a CPU: the run's embeddings in, scores out
    with db.connect(settings.database, read_only=True) as con:
        ids, vectors = store.load_embeddings(con, result.run_id)
        expected = store.stage_scores(con, result.run_id, last.stage)
    doc_ids, inputs = ids[:20], vectors[:20].tolist()
    python = _fresh_environment(tmp_path)
    uri = f"models:/{settings.track.registered_model}@{settings.track.model_alias}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(python), "-c", SCORE_IN_FRESH_ENV, settings.mlflow_uri, uri, str(REPO)],
                          input=json.dumps(inputs), capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(scores, [expected[d] for d in doc_ids], rtol=1e-5)
