"""One typed settings object for a whole curation run, loaded from TOML/YAML plus `key=value` overrides.

Every default here is documented in README.md ("Configuration"); `influmix config` prints them all.
A bad value is reported as one line naming the setting (see `ConfigError`), never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from core.sections import (  # noqa: F401 - the sections are part of this module's interface
    DEVICE_PATTERN,
    STATIC_EMBED_MODELS,
    STATIC_EMBED_PREFIX,
    C4QualitySettings,
    ClusterSettings,
    DistillSettings,
    EmbedSettings,
    FilterSettings,
    FineWebQualitySettings,
    GopherQualitySettings,
    GopherRepetitionSettings,
    IngestSettings,
    LanguageFilterSettings,
    ProbeSettings,
    ProxySettings,
    ReferenceSettings,
    RunnerSettings,
    SelectSettings,
    ServeSettings,
    SourceSettings,
    TrackSettings,
    _Section,
)


def static_source(model: str) -> str | None:
    """The transformer a static `embed.model` name is distilled from; None for every other model."""
    if model in STATIC_EMBED_MODELS:
        return STATIC_EMBED_MODELS[model]
    return model.removeprefix(STATIC_EMBED_PREFIX) if model.startswith(STATIC_EMBED_PREFIX) else None


def encoder_to_finetune(model: str) -> str:
    """The transformer `distill.finetune_encoder` fine-tunes: a static model's source (a static model has no
    encoder of its own; the student scores from text, so it need not share the stored vectors' space), else
    `embed.model` itself."""
    return static_source(model) or model


def is_static_embed_name(model: str) -> bool:
    """`embed.model` names a static model to distil (a model2vec folder given by path is found at load time)."""
    return static_source(model) is not None


# A run id names a folder influmix writes under (run_dir, shard_dir): no separators, no leading dot.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ConfigError(ValueError):
    """A user mistake in the configuration: the message names the setting and says what is wrong."""


class Settings(_Section):
    run_dir: Path = Path("runs")
    db_path: Path | None = Field(None, description="default <run_dir>/influmix.duckdb")
    run_id: str | None = Field(
        None, description="letters, digits, '.', '_', '-' (a folder name under run_dir); default a fresh id")
    seed: int = 0
    stages: int = Field(2, ge=1)
    reuse_stages: bool = Field(True, description="skip stages a previous attempt of the same run id finished")
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    filter: FilterSettings = Field(default_factory=FilterSettings)
    reference: ReferenceSettings = Field(default_factory=ReferenceSettings)
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    distill: DistillSettings = Field(default_factory=DistillSettings)
    select: SelectSettings = Field(default_factory=SelectSettings)
    track: TrackSettings = Field(default_factory=TrackSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    @property
    def database(self) -> Path:
        return self.db_path or self.run_dir / "influmix.duckdb"

    @property
    def mlflow_uri(self) -> str:
        """`track.tracking_uri`, else MLflow's own MLFLOW_TRACKING_URI (set by `influmix serve`), else a local file."""
        return (self.track.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                or f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}")

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, value: str | None) -> str | None:
        return value if value is None else check_run_id(value)

    @model_validator(mode="after")
    def _settings_agree(self) -> Settings:
        """Values that are each fine but make no sense together; the message names the one to change."""
        if self.probe.pull_size > self.probe.budget:
            raise ValueError(f"setting `probe.pull_size`: {self.probe.pull_size} is above probe.budget = "
                             f"{self.probe.budget}")
        if self.distill.reference_prior > 0 and self.distill.features != "tokens":
            raise ValueError("setting `distill.reference_prior`: the prior is a per-token weight, so it needs "
                             "distill.features = 'tokens'")
        if self.ingest.min_chars > self.ingest.max_chars:
            raise ValueError(f"setting `ingest.max_chars`: {self.ingest.max_chars} is below ingest.min_chars = "
                             f"{self.ingest.min_chars}, so every record would be quarantined")
        if self.serve.prefect_port == self.serve.mlflow_port:
            raise ValueError(f"setting `serve.mlflow_port`: {self.serve.mlflow_port} is also serve.prefect_port")
        return self

    def config_hash(self) -> str:
        """Hash of everything that shapes the mixture: where it runs (run id, services, runner) is left out."""
        payload = self.model_dump(mode="json", exclude={"run_id", "serve", "runner", "reuse_stages"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def stage_dir(self, run_id: str, stage: int | None = None) -> Path:
        """`<run_dir>/<run_id>[/stage-<stage>]`, refusing a run id that would lead outside run_dir."""
        base = run_subdir(self.run_dir, run_id, "run_dir")
        if stage is None:
            return base
        if not isinstance(stage, numbers.Integral) or isinstance(stage, bool) or stage < 0:
            raise ConfigError(f"setting `stages`: stage {stage!r} is not a stage number")
        return base / f"stage-{int(stage)}"


def flatten_settings(value: Any, prefix: str = "") -> dict[str, str]:
    """Settings (as `model_dump(mode="json")`) as flat `section.key` -> string: MLflow params, `compare`."""
    if not isinstance(value, dict):
        return {prefix: json.dumps(value) if isinstance(value, list) else str(value)}
    out: dict[str, str] = {}
    for key, item in value.items():
        out.update(flatten_settings(item, f"{prefix}.{key}" if prefix else key))
    return out


def check_run_id(run_id: str) -> str:
    """`run_id` if it is a safe folder name, else ConfigError naming `run_id`."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ConfigError(f"setting `run_id`: {run_id!r} must be 1-128 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit (it names a folder under run_dir)")
    return run_id


def run_subdir(root: Path, run_id: str, setting: str) -> Path:
    """`<root>/<run_id>`: where influmix writes for one run below a user-chosen folder (run_dir, shard_dir).

    The run id is checked, and the joined path must stay inside `root` (compared without resolving
    symlinks, so a run_dir that is itself a symlink keeps working).
    """
    base = Path(root) / check_run_id(run_id)
    inside = Path(os.path.normpath(base.absolute())).parent == Path(os.path.normpath(Path(root).absolute()))
    if not inside:
        raise ConfigError(f"setting `{setting}`: run folder {base} would lie outside {root}")
    return base


def _parse_value(raw: str) -> Any:
    """CLI override values are TOML literals where they parse as one, else plain strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. select.token_budget=20000)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_value(raw.strip())
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":  # what a run stores as `<run_dir>/<run_id>/settings.json`
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is a user mistake, reported in one line
        raise ConfigError(f"config file {path} could not be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    base = path.parent.resolve()
    for section in ("ingest", "reference"):
        for source in data.get(section, {}).get("sources", []) or []:
            if isinstance(source, dict) and source.get("path") and not Path(source["path"]).is_absolute():
                candidate = base / source["path"]
                if not Path(source["path"]).exists() and _glob_exists(candidate):
                    source["path"] = str(candidate)
    return data


def _glob_exists(candidate: Path) -> bool:
    return candidate.exists() or any(candidate.parent.glob(candidate.name)) if candidate.parent.exists() else False


def format_validation_error(exc: ValidationError) -> str:
    """One line: `setting `<section.key>`: <why>` per error; cross-field checks name their own setting."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(msg if msg.startswith("setting `") else f"setting `{loc}`: {msg}")
    return "; ".join(lines)


def load_settings(path: str | Path | None = None, overrides: list[str] | None = None) -> Settings:
    """Settings from a file (optional) and overrides; raises ConfigError with a one-line message."""
    data = read_config_file(path) if path else {}
    apply_overrides(data, overrides or [])
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
