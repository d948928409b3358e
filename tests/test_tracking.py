"""The registry alias moves only past the quality gate, against a real MLflow registry (sqlite store)."""

from __future__ import annotations

import pytest

from core.artifacts import Influence, RunResult, Tracked
from core.config import load_settings
from core.tracking import mlflow_client
from tasks.track.registry import current_alias_version, gate_alias


def influence(spearman: float, run_id: str = "run-a") -> Influence:
    return Influence(run_id, 1, train_probes=48, heldout_probes=16, heldout_spearman=spearman, heldout_pearson=0.0,
                     scored_documents=100, model_dir="unused", student="tokens", seconds=1.0)


@pytest.fixture
def registry(tmp_path):
    """(settings, client, new_version) over a fresh sqlite registry; new_version registers an empty version."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = load_settings(None, [f'run_dir="{tmp_path}"', f'track.tracking_uri="{uri}"',
                                    "track.alias_min_spearman=0.3"])
    client = mlflow_client(uri)
    name = settings.track.registered_model
    client.create_registered_model(name)
    source = tmp_path / "model"
    source.mkdir()

    def new_version() -> str:
        return str(client.create_model_version(name, source.as_uri()).version)

    return settings, client, new_version


def test_the_alias_moves_only_to_versions_past_the_gate(registry):
    settings, client, new_version = registry
    name, alias = settings.track.registered_model, settings.track.model_alias

    poor = new_version()
    expected = (f"@{alias} not moved to v{poor}: its held-out Spearman 0.100 is below track.alias_min_spearman "
                "= 0.3; no version has it yet")
    assert gate_alias(client, settings, influence(0.1), poor) == (None, expected)
    assert current_alias_version(client, name, alias) is None

    good = new_version()
    assert gate_alias(client, settings, influence(0.53, "run-b"), good) == (good, "")
    assert current_alias_version(client, name, alias) == good

    worse = new_version()
    held, note = gate_alias(client, settings, influence(0.22, "run-c"), worse)
    assert held == good and note.endswith(f"it stays on v{good}")
    assert current_alias_version(client, name, alias) == good

    nan = new_version()
    assert gate_alias(client, settings, influence(float("nan")), nan)[0] == good  # an unjudged model never passes

    tags = client.get_model_version(name, worse).tags
    assert tags["influmix.gate"] == "held" and tags["influmix.run_id"] == "run-c"
    assert tags["influmix.stage"] == "1" and tags["influmix.heldout_spearman"] == "0.2200"
    assert client.get_model_version(name, good).tags["influmix.gate"] == "passed"
    assert "run-c, stage 1" in client.get_model_version(name, worse).description

    settings.track.alias_min_spearman = None  # no gate: every version takes the alias
    assert gate_alias(client, settings, influence(-0.5), worse)[0] == worse


def test_the_report_card_says_when_the_alias_did_not_move(registry):
    from influmix.report import run_locations

    settings, _, _ = registry
    note = "@current not moved to v3: its held-out Spearman 0.100 is below track.alias_min_spearman = 0.3"
    tracked = Tracked("abc", "1", settings.mlflow_uri, settings.track.registered_model, "3", "2", note)
    lines = run_locations(settings, RunResult("run-a", str(settings.database), None, tracked, {}))
    assert any("v3" in line and note in line for line in lines)
    moved = Tracked("abc", "1", settings.mlflow_uri, settings.track.registered_model, "4", "4", "")
    lines = run_locations(settings, RunResult("run-a", str(settings.database), None, moved, {}))
    assert any(line.endswith("v4 @current") for line in lines)
