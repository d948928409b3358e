"""Settings: defaults, files, overrides, and one clear message per mistake."""

from __future__ import annotations

import pytest

from core.config import ConfigError, Settings, load_settings


def test_defaults_are_valid_and_documented():
    settings = load_settings()
    assert settings.select.token_budget > 0
    assert settings.database.name == "influmix.duckdb"
    for name, field in Settings.model_fields.items():
        assert field.default is not None or field.default_factory is not None or name in {"db_path", "run_id"}


def test_file_and_overrides(tmp_path):
    cfg = tmp_path / "my.toml"
    cfg.write_text('stages = 3\n[select]\ntoken_budget = 1234\n[[ingest.sources]]\npath = "corpus.jsonl"\n')
    (tmp_path / "corpus.jsonl").write_text('{"text": "hello"}\n')
    settings = load_settings(cfg, ["probe.ucb_alpha=0.5", "embed.model=some/model"])
    assert settings.stages == 3
    assert settings.select.token_budget == 1234
    assert settings.probe.ucb_alpha == 0.5
    assert settings.embed.model == "some/model"
    assert settings.ingest.sources[0].path == str(tmp_path / "corpus.jsonl")  # relative to the config file


def test_yaml_config(tmp_path):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("cluster:\n  k: 7\n")
    assert load_settings(cfg).cluster.k == 7


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("select.token_budget=-5", "select.token_budget"),
        ("cluster.k=1", "cluster.k"),
        ("proxy.lr=0", "proxy.lr"),
        ("select.bogus=1", "select.bogus"),
        ("stages=zero", "stages"),
        ("proxy.preset=huge", "proxy.preset"),
        ("embed.device=gpu0", "embed.device"),
    ],
)
def test_bad_values_name_the_setting(override, named):
    with pytest.raises(ConfigError) as info:
        load_settings(None, [override])
    assert named in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("stages = = 2")
    with pytest.raises(ConfigError, match="could not be parsed"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_settings(None, ["stages"])


def test_source_needs_exactly_one_location():
    with pytest.raises(ConfigError, match="exactly one"):
        load_settings(None, ['ingest.sources=[{path="a.jsonl", hf="json"}]'])


def test_config_hash_ignores_run_id_only():
    a = load_settings(None, ["run_id=x"])
    b = load_settings(None, ["run_id=y"])
    c = load_settings(None, ["seed=1"])
    assert a.config_hash() == b.config_hash() != c.config_hash()


# ------------------------------------------------------------------ values that are wrong only together


@pytest.mark.parametrize(("overrides", "named"), [
    (["select.token_budget=0"], "select.token_budget"),
    (["ingest.min_chars=50", "ingest.max_chars=10"], "ingest.max_chars"),
    (["serve.prefect_port=5000"], "serve.mlflow_port"),
    (["probe.budget=16", "probe.pull_size=32"], "probe.pull_size"),
    (["distill.reference_prior=1.0", "distill.features=\"embedding\""], "distill.reference_prior"),
    (['distill.features="nope"'], "distill.features"),
])
def test_inconsistent_values_name_the_setting(overrides, named):
    with pytest.raises(ConfigError) as info:
        load_settings(None, overrides)
    message = str(info.value)
    assert message.startswith(f"setting `{named}`: ") and "\n" not in message and "Value error" not in message


def test_k_larger_than_the_corpus_names_cluster_k(tmp_path):
    from core.artifacts import Embedded
    from tasks.cluster import cluster_documents

    settings = load_settings(None, [f'run_dir="{tmp_path}"', "cluster.k=8"])
    with pytest.raises(ConfigError, match=r"^setting `cluster.k`: 8 clusters .* only 0 documents") as info:
        cluster_documents(settings, Embedded("empty-run", "all-MiniLM-L6-v2", 384, 0, 0.0, 0.0))
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ run ids and run folders


@pytest.mark.parametrize("run_id", ["../escape", "a/b", "/abs", ".hidden", "..", "", "a b", "x" * 129, "run\\x"])
def test_unsafe_run_ids_are_rejected(run_id, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(None, [f"run_id={run_id!r}".replace("'", '"')])
    assert str(info.value).startswith("setting `run_id`: ") and "\n" not in str(info.value)
    settings = load_settings(None, [f'run_dir="{tmp_path}"'])
    with pytest.raises(ConfigError, match="setting `run_id`"):
        settings.stage_dir(run_id)  # run ids that do not come from the settings are checked too


def test_run_folders_stay_inside_their_root(tmp_path):
    from core.config import run_subdir

    settings = load_settings(None, [f'run_dir="{tmp_path / "runs"}"', "run_id=run-20260101.a_b"])
    assert settings.stage_dir("run-20260101.a_b", 2) == tmp_path / "runs" / "run-20260101.a_b" / "stage-2"
    assert settings.stage_dir("r").parent == tmp_path / "runs"
    with pytest.raises(ConfigError, match="stages"):
        settings.stage_dir("r", -1)
    assert run_subdir(tmp_path / "shards", "r1", "runner.shard_dir") == tmp_path / "shards" / "r1"
    with pytest.raises(ConfigError, match="run_id"):
        run_subdir(tmp_path / "shards", "../r1", "runner.shard_dir")


# ------------------------------------------------------------------------------------------ embed.model


def _model_folder(tmp_path, *files: str):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in files:
        (folder / name).write_text("{}")
    return folder


@pytest.mark.parametrize(("model", "problem"), [
    ("{tmp}/no/such/model", "no model folder"),
    ("./relative/missing", "no model folder"),
    ("{tmp}/weights.bin", "is not a model folder"),
    ("{tmp}/model", "no modules.json or config.json"),
    ("{tmp}/model+config", "no *.safetensors weights"),
    ("org/bad id with spaces", "neither a model folder nor a Hugging Face model id"),
    ("some-org/model-that-is-not-cached", "not in the Hugging Face cache"),
])
def test_unknown_embed_model_is_one_line_before_any_work(tmp_path, monkeypatch, model, problem):
    from huggingface_hub import constants

    from tasks.embed import EmbedError, check_embed_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "weights.bin").write_bytes(b"")
    if model.startswith("{tmp}/model"):
        _model_folder(tmp_path, *(["config.json", "pytorch_model.bin"] if model.endswith("+config") else []))
        model = "{tmp}/model"
    settings = load_settings(None, [f'embed.model="{model.format(tmp=tmp_path)}"'])
    with pytest.raises(EmbedError) as info:
        check_embed_model(settings)
    message = str(info.value)
    assert message.startswith("setting `embed.model`: ") and problem in message and "\n" not in message


def test_usable_embed_models_pass_the_check(tmp_path):
    from tasks.embed import check_embed_model

    check_embed_model(load_settings(None, ['embed.model="all-MiniLM-L6-v2"']))  # the packaged MiniLM
    check_embed_model(load_settings(None, ['embed.device="cpu"']))  # auto on a CPU: minilm-static
    folder = _model_folder(tmp_path, "config.json", "model.safetensors")
    check_embed_model(load_settings(None, [f'embed.model="{folder}"']))


def test_every_setting_the_readme_table_names_exists():
    """The README's Configuration table names real settings (a renamed setting must not linger there)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    named = []
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        first, *rest = re.findall(r"`([^`]+)`", line.split("|")[1])
        section = first.rsplit(".", 1)[0] if "." in first else ""
        named += [first, *(f"{section}.{key}" if section and "." not in key else key for key in rest)]
    assert len(named) > 30
    missing = []
    for name in named:
        if "<" in name:
            continue
        value = Settings()
        for part in name.split("."):
            if not hasattr(value, part):
                missing.append(name)
                break
            value = getattr(value, part)
    assert not missing, missing


def test_auto_embed_model_is_the_static_one_on_a_cpu_and_minilm_on_a_gpu(monkeypatch):
    """`embed.model = "auto"` (the default) resolves when the settings load, so the effective settings,
    the embedding cache key and MLflow's params all name the model that ran; fine-tuning a static model's
    encoder fine-tunes the transformer it was distilled from."""
    from core.config import EmbedSettings, encoder_to_finetune

    assert load_settings(None, ['embed.device="cpu"']).embed.model == "minilm-static"
    assert load_settings(None, ['embed.device="cuda"']).embed.model == "all-MiniLM-L6-v2"
    tuned = load_settings(None, ['embed.device="cpu"', "distill.finetune_encoder=true"])
    assert tuned.embed.model == "minilm-static" and encoder_to_finetune(tuned.embed.model) == "all-MiniLM-L6-v2"
    assert EmbedSettings(device="cpu").model == "minilm-static"  # a section on its own resolves too
    assert load_settings(None, ['embed.model="all-MiniLM-L6-v2"']).embed.model == "all-MiniLM-L6-v2"  # named: kept
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert load_settings(None, []).embed.model == "minilm-static"  # no visible GPU
