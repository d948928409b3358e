"""Settings: defaults, files, overrides, and one clear message per mistake."""

from __future__ import annotations

import pytest

from influmix.config import ConfigError, Settings, load_settings


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
    settings = load_settings(cfg, ["select.ucb_alpha=0.5", "embed.model=some/model"])
    assert settings.stages == 3
    assert settings.select.token_budget == 1234
    assert settings.select.ucb_alpha == 0.5
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
