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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
# A run id names a folder influmix writes under (run_dir, shard_dir): no separators, no leading dot.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ConfigError(ValueError):
    """A user mistake in the configuration: the message names the setting and says what is wrong."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceSettings(_Section):
    """One input: a local file/glob (JSONL, JSONL.gz, Parquet, plain text) or a Hugging Face dataset."""

    path: str | None = Field(None, description="file, directory or glob of .jsonl/.jsonl.gz/.json/.parquet/.txt")
    hf: str | None = Field(None, description="Hugging Face `datasets` path or id, streamed (e.g. 'json', 'wikitext')")
    hf_config: str | None = None
    hf_split: str = "train"
    hf_data_files: list[str] | None = None
    hf_revision: str | None = None
    text_field: str = "text"
    id_field: str | None = "id"
    domain_field: str | None = "domain"
    domain: str | None = Field(None, description="fixed domain label for every record of this source")
    max_records: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_location(self) -> SourceSettings:
        if (self.path is None) == (self.hf is None):
            raise ValueError("give exactly one of `path` or `hf`")
        return self


MIN_CHARS = 20
"""Why 20: a pretraining document needs a few words to teach anything (20 visible characters is about four
words, five tokens). On the shared corpus it drops 420 of 115,210 records ("Grueling.", "All right.",
"Where is he?": 1.5% of the reviews, 3.4% of the speech records -- debate interjections --, under 0.2%
elsewhere) and keeps the short tweets and reviews that say something ("It's not original enough.");
quality beyond that is the `filter` stage's job."""


class IngestSettings(_Section):
    sources: list[SourceSettings] = Field(default_factory=list)
    min_chars: int = Field(
        MIN_CHARS, ge=1, description="fewer visible characters (whitespace and invisible ones do not count) is "
                                     "quarantined as empty_text; the default drops one-to-three-word fragments")
    max_chars: int = Field(200_000, ge=1, description="longer is quarantined as too_long")
    corrupt_gzip: Literal["drop", "keep"] = Field(
        "drop", description="a .gz file failing its CRC/length/deflate check: drop all its records (one bad_file "
                            "row), or keep those read before the error")
    near_dup_threshold: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard at or above which a doc is a near duplicate")
    minhash_num_perm: int = Field(64, ge=16)
    shingle_words: int = Field(5, ge=1)
    batch_size: int = Field(2_000, ge=1)


class _DocumentFilter(_Section):
    enabled: bool = True
    skip_below_words: int = Field(
        50, ge=1, description="documents with fewer whitespace-separated words are not judged by this filter (kept): "
                              "its ratios mean nothing on a tweet")


class LanguageFilterSettings(_DocumentFilter):
    """py3langid (its model ships in the package): reject a document confidently in another language."""

    skip_below_words: int = Field(1, ge=1, description="documents with fewer words are not judged (kept)")
    languages: list[str] = Field(
        ["en", "pcm"], min_length=1, description="py3langid labels to keep (ISO 639 codes); 'pcm' (Nigerian Pidgin) "
                                                 "because py3langid gives it to English news headlines")
    threshold: float = Field(0.65, ge=0, le=1, description="reject when the top language is not in `languages` "
                                                           "with at least this probability; unsure is kept")


class GopherQualitySettings(_DocumentFilter):
    """datatrove's GopherQualityFilter (Rae et al. 2021); `None` switches a rule off."""

    min_doc_words: int | None = Field(None, ge=1, description="off by default: short documents are kept (see skip_below_words)")
    max_doc_words: int | None = Field(100_000, ge=1)
    min_avg_word_length: float | None = Field(3, ge=0)
    max_avg_word_length: float | None = Field(10, ge=0)
    max_symbol_word_ratio: float | None = Field(0.1, ge=0, description="'#' or ellipses per word")
    max_bullet_lines_ratio: float | None = Field(0.9, ge=0)
    max_ellipsis_lines_ratio: float | None = Field(
        None, ge=0, description="lines ending in an ellipsis; off by default (Gopher: 0.3): on a one-line text it "
                                "rejects every truncated synopsis and trailing-off quote")
    max_non_alpha_words_ratio: float | None = Field(
        0.5, ge=0, description="at least this share of words has a letter; Gopher's 0.8 counts the '>' of quoted "
                               "e-mail replies, the '-' of bullets and '>>>' of code examples as letterless words")
    min_stop_words: int | None = Field(2, ge=0, description="of the, be, to, of, and, that, have, with")


class GopherRepetitionSettings(_DocumentFilter):
    """datatrove's GopherRepetitionFilter: duplicated lines, paragraphs and n-grams (Rae et al. 2021, table A1)."""

    dup_line_frac: float | None = Field(
        None, ge=0, description="share of lines that repeat; off by default: a bullet '-' on a line of its own "
                                "(converted HTML, code docs) counts as much as a repeated paragraph")
    dup_para_frac: float | None = Field(None, ge=0, description="share of paragraphs that repeat; off by default, "
                                                                "as dup_line_frac")
    dup_line_char_frac: float | None = Field(0.2, ge=0)
    dup_para_char_frac: float | None = Field(0.2, ge=0)
    top_n_grams: list[tuple[int, float]] = Field(
        [(2, 0.3), (3, 0.27), (4, 0.24)], description="(n, share of characters in the most frequent n-gram): Gopher's "
                                                      "x1.5, since glossaries repeat 'of or relating to' by design")
    dup_n_grams: list[tuple[int, float]] = Field(
        [(5, 0.3), (6, 0.28), (7, 0.26), (8, 0.24), (9, 0.22), (10, 0.2)],
        description="(n, share of characters in repeated n-grams): Gopher's x2, since API docs repeat 'Return value: "
                    "New reference.' and glossaries their formulas by design")


class FineWebQualitySettings(_DocumentFilter):
    """datatrove's FineWebQualityFilter: line punctuation, short lines, duplicated lines, list-like pages."""

    enabled: bool = False
    line_punct_thr: float = Field(0.12, ge=0, le=1)
    line_punct_exclude_zero: bool = False
    short_line_thr: float = Field(0.67, ge=0, le=1)
    short_line_length: int = Field(30, ge=1)
    char_duplicates_ratio: float = Field(0.01, ge=0, le=1)
    new_line_ratio: float = Field(0.3, ge=0)


class C4QualitySettings(_DocumentFilter):
    """datatrove's C4QualityFilter, document-level verdicts only (the lines it would drop are not dropped)."""

    enabled: bool = False
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = Field(5, ge=-1, description="-1 switches it off")
    min_words_per_line: int = Field(3, ge=-1)
    max_word_length: int = Field(1000, ge=-1)
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class FilterSettings(_Section):
    """The quality filters between ingest and embed; each rejection is a quarantine row named after its filter."""

    language: LanguageFilterSettings = Field(default_factory=LanguageFilterSettings)
    gopher_quality: GopherQualitySettings = Field(default_factory=GopherQualitySettings)
    gopher_repetition: GopherRepetitionSettings = Field(default_factory=GopherRepetitionSettings)
    fineweb_quality: FineWebQualitySettings = Field(default_factory=FineWebQualitySettings)
    c4_quality: C4QualitySettings = Field(default_factory=C4QualitySettings)


class ReferenceSettings(_Section):
    sources: list[SourceSettings] = Field(default_factory=list)
    max_documents: int = Field(256, ge=1)


class EmbedSettings(_Section):
    model: str = Field("all-MiniLM-L6-v2", description="sentence-transformers id or local path")
    batch_size: int = Field(32, ge=1)
    max_seq_length: int = Field(128, ge=8)
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="auto | cpu | cuda | cuda:N | mps")


class ClusterSettings(_Section):
    k: int = Field(16, ge=2)
    batch_size: int = Field(1024, ge=16)


class ProxySettings(_Section):
    preset: Literal["tiny", "25m", "125m", "410m"] = Field("tiny", description="GPTNeoX size preset")
    vocab_size: int = Field(4096, ge=260)
    seq_len: int = Field(128, ge=16)
    tokenizer_max_docs: int = Field(20_000, ge=10)
    batch_size: int = Field(8, ge=1)
    steps_per_stage: int = Field(60, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, gt=0, lt=1)
    beta2: float = Field(0.95, gt=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="auto | cpu | cuda | cuda:N | mps")
    bf16: bool = True
    compile: bool = False
    train_attention: Literal["sdpa", "eager"] = Field("sdpa", description="attention kernel while training")
    peak_flops: float | None = Field(None, gt=0, description="device peak FLOP/s for MFU; default from a GPU table")


class ProbeSettings(_Section):
    n_probes: int = Field(64, ge=4, description="documents probed per stage")
    reference_sequences: int = Field(32, ge=1)
    probe_lr: float | None = Field(None, gt=0, description="learning rate of the probe step; default the trainer's peak lr")
    fast: bool = Field(True, description="also compute the fast estimate")
    fast_estimator: Literal["shifted", "first_order", "gradient_cosine"] = Field(
        "shifted", description="the fast probe: first-order estimates of the exact probe, or the cosine between the "
                               "document's and the reference's gradients (no optimizer state)")
    fast_label_multiplier: float = Field(4.0, ge=1, description="fast-probed docs per exact-probed doc")
    heldout_fraction: float = Field(0.25, gt=0, lt=1, description="exact probes kept to judge the influence model")


class DistillSettings(_Section):
    labels: Literal["fast", "exact"] = Field("fast", description="train on many fast probes, or on the exact ones")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="training probes set aside for early stopping")
    finetune_encoder: bool | None = Field(
        None, description="fine-tune the encoder end to end; default: on CUDA yes, on CPU a head on stored embeddings")
    hidden_dim: int = Field(128, ge=1)
    epochs: int = Field(200, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    ranking_weight: float = Field(0.0, ge=0)
    patience: int = Field(30, ge=1)
    features: Literal["embedding", "tokens"] = Field(
        "embedding", description="what the influence model reads: document embeddings, or the proxy's own tokens")
    reference_prior: float = Field(
        0.0, ge=0, description="token model only: weight of a DSIR-style prior (reference vs pool token log-ratio), "
                               "in units of the probes' spread")
    history_stages: int = Field(
        0, ge=0, description="earlier stages whose training probes (z-scored per stage) join this stage's fit set")


class SelectSettings(_Section):
    token_budget: int = Field(50_000, ge=1, description="tokens per stage's mixture")
    ucb_alpha: float = Field(1.0, ge=0)
    arms_per_round: int = Field(2, ge=1)
    sample_per_arm: int = Field(4, ge=1)
    exploit_batch: int = Field(16, ge=0)
    reward_threshold: float = 0.0
    share_distance: float = Field(0.2, ge=0, le=2)
    temperature: float = Field(0.5, gt=0, description="Gumbel-top-k temperature inside a pulled cluster")
    exclude_previous: bool = True


class TrackSettings(_Section):
    tracking_uri: str | None = Field(None, description="default sqlite:///<run_dir>/mlflow.db")
    experiment: str = "influmix"
    registered_model: str = "influmix-influence"
    model_alias: str = "current"


class ServeSettings(_Section):
    """Where `influmix serve` runs the Prefect server, worker and MLflow server."""

    host: str = Field("127.0.0.1", description="bind address; anything but loopback exposes the services")
    prefect_port: int = Field(4200, ge=1, le=65535)
    mlflow_port: int = Field(5000, ge=1, le=65535)
    work_pool: str = Field("influmix-process", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    startup_timeout: float = Field(180.0, gt=0, description="seconds each service gets to become healthy")
    dir: Path | None = Field(None, description="logs, pid files and the env file; default <run_dir>/services")


class RunnerSettings(_Section):
    """Where the sharded stages (embed, probe, influence scoring) run: in this process or on a Ray cluster.

    Both runners execute the same shard code on the same shard boundaries, so the mixture does not depend
    on the choice; Ray only spreads the shards over more cores and machines (see infra/RAY.md).
    """

    kind: Literal["local", "ray"] = Field("local", description="local: shards run one after another in-process")
    ray_address: str | None = Field(
        None, description="Ray head, e.g. '127.0.0.1:6379' or 'ray://host:10001'; None with kind ray starts a local Ray")
    shards: int = Field(4, ge=1, description="document shards per sharded stage (fewer if there is less work)")
    shard_dir: Path | None = Field(
        None, description="shard Parquet files, per run under <shard_dir>/<run_id>; default <run_dir>/<run_id>/shards; "
                          "on a multi-node cluster it must be storage every node can read and write")


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
        if self.distill.labels == "fast" and not self.probe.fast:
            raise ValueError("setting `distill.labels`: 'fast' needs probe.fast = true")
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
