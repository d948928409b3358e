"""The sections of the run's settings (`core.config.Settings` puts them together): each a strict pydantic model,
so an unknown key or a bad value is one line naming the setting.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
STATIC_EMBED_MODELS = {"minilm-static": "all-MiniLM-L6-v2"}
"""`embed.model` names of static models distilled locally (tasks/embed/encoders.py), and the transformer each is
distilled from; `embed.model = "static:<model>"` distils one from any other sentence-transformers model."""
STATIC_EMBED_PREFIX = "static:"


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

    enabled: bool = Field(True, description="off: no filter judges anything, the pool is every ingested document")
    language: LanguageFilterSettings = Field(default_factory=LanguageFilterSettings)
    gopher_quality: GopherQualitySettings = Field(default_factory=GopherQualitySettings)
    gopher_repetition: GopherRepetitionSettings = Field(default_factory=GopherRepetitionSettings)
    fineweb_quality: FineWebQualitySettings = Field(default_factory=FineWebQualitySettings)
    c4_quality: C4QualitySettings = Field(default_factory=C4QualitySettings)


class ReferenceSettings(_Section):
    sources: list[SourceSettings] = Field(default_factory=list)
    max_documents: int = Field(256, ge=1)


def auto_embed_model(device: str) -> str:
    """What `embed.model = "auto"` means: the static model distilled from MiniLM on a CPU (150x faster there:
    27 against 4,100 documents/s, benchmarks/results/embedders.json), MiniLM itself where a GPU makes it cheap."""
    if device.startswith(("cuda", "mps")):
        return "all-MiniLM-L6-v2"
    return "all-MiniLM-L6-v2" if device == "auto" and cuda_likely() else "minilm-static"


def cuda_likely() -> bool:
    """An NVIDIA driver is loaded, a GPU is visible and torch is not the CPU wheel: judged without importing
    torch (seconds on every settings load, `influmix runs` included), so a driver without a working GPU reads
    as a GPU, and MiniLM then runs on the CPU: slower, never wrong."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1") or not Path("/proc/driver/nvidia/version").exists():
        return False
    try:
        return not metadata.version("torch").endswith("+cpu")
    except metadata.PackageNotFoundError:
        return False


class EmbedSettings(_Section):
    model: str = Field("auto", description="sentence-transformers id or local path; 'minilm-static' (or "
                                           "'static:<model>') distils a static model from it, ~100x faster on CPU; "
                                           "'auto': minilm-static on a CPU, all-MiniLM-L6-v2 on a GPU")
    batch_size: int = Field(32, ge=1)
    max_seq_length: int = Field(128, ge=8)
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="auto | cpu | cuda | cuda:N | mps")

    @model_validator(mode="after")
    def _auto_model_for_the_device(self) -> EmbedSettings:
        """`auto` becomes a concrete model as the settings load, so the effective settings, the embedding
        cache key and MLflow's params name the model that ran."""
        if self.model == "auto":
            self.model = auto_embed_model(self.device)
        return self


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
    """The stage's oracle and how its budget is spent: a uniform sample of the pool, or the oracle bandit
    (tasks/probe.py, models/bandit.py)."""

    oracle: Literal["conditional", "one_step"] = Field(
        "conditional", description="conditional: a document's loss drop under the checkpoint briefly fine-tuned on half "
                                   "the reference (CoLoR); one_step: MATES's one AdamW step on the document")
    budget: int = Field(512, ge=8, description="documents the oracle measures per stage")
    sampling: Literal["bandit", "uniform"] = Field(
        "uniform", description="uniform: a random sample of the pool (the default: with the cascade on, the bandit "
                               "tied it at twice the probe stage's time); bandit: the oracle bandit chooses each "
                               "pull's arm")
    pull_size: int = Field(8, ge=1, description="documents measured per bandit pull")
    ucb_alpha: float = Field(1.0, ge=0, description="exploration of the oracle bandit")
    warm_pulls: int = Field(1, ge=0, description="pulls of every arm before the bandit chooses")
    share_distance: float = Field(0.2, ge=0, le=2, description="rewards are shared with arms whose centroids are closer")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="measured documents kept to judge the influence model")
    reference_sequences: int = Field(32, ge=1, description="reference rows the losses of probes and rollouts are taken on")
    finetune_steps: int = Field(128, ge=1, description="conditional oracle: most fine-tuning steps on the fit half")
    finetune_eval_every: int = Field(16, ge=1, description="conditional oracle: steps between checks on the other half")
    conditional_folds: int = Field(
        2, ge=1, le=2, description="conditional oracle: 2 (the default) fine-tunes one copy on each reference half, "
                                   "each stopped on the other, and averages the two drops (CoLoR's cross-fit; "
                                   "models/stage_oracles.py); 1 fine-tunes on the fit half only")
    finetune_lr: float | None = Field(None, gt=0, description="conditional oracle: default the proxy's peak lr")
    shrink_tokens: float = Field(0.0, ge=0, description="conditional oracle: pseudo-tokens a document's mean drop is "
                                                         "shrunk by (a length prior)")
    group_rollouts: bool = Field(False, description="bandit sampling: each arm's group reward, a short rollout on a "
                                                    "batch of it minus a random pool batch's")
    rollout_steps: int = Field(4, ge=1)
    rollout_rows_per_step: int = Field(8, ge=1)
    control_batches: int = Field(4, ge=1, description="random pool batches the rollout control averages")
    probe_lr: float | None = Field(None, gt=0, description="one_step: lr of the probe step; default the trainer's peak lr")
    fast_estimator: Literal["shifted", "first_order", "gradient_cosine"] = Field(
        "shifted", description="one_step: the fast probe's estimator (the exact probe runs on a slice)")
    exact_fraction: float = Field(0.25, ge=0, le=1, description="one_step: share of measured documents probed exactly")


class DistillSettings(_Section):
    val_fraction: float = Field(0.2, gt=0, lt=1, description="measured documents set aside for early stopping")
    finetune_encoder: bool | None = Field(
        None, description="fine-tune the encoder end to end; default: on CUDA yes, on CPU a head on stored embeddings")
    hidden_dim: int = Field(128, ge=1)
    epochs: int = Field(200, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    ranking_weight: float = Field(0.0, ge=0)
    patience: int = Field(30, ge=1)
    features: Literal["embedding", "tokens"] = Field(
        "embedding", description="what the influence model reads: the proxy's own tokens (ridge weights per token), or "
                              "the document embeddings (an MLP head, or the encoder fine-tuned)")
    reference_prior: float = Field(
        0.0, ge=0, description="token model only: weight of a DSIR-style prior (reference vs pool token log-ratio), "
                               "in units of the probes' spread")
    history_stages: int = Field(
        3, ge=0, description="earlier stages whose training probes (z-scored per stage) join this stage's fit set")


class SelectSettings(_Section):
    method: Literal["bandit", "topk", "arms"] = Field(
        "topk", description="topk: the influence scores alone (the default); bandit: plus each arm's measured reward "
                            "(with probe.sampling = bandit); arms: the arm rewards alone")
    token_budget: int = Field(50_000, ge=1, description="tokens per stage's mixture")
    arm_weight: float = Field(1.0, ge=0, description="bandit: weight of an arm's measured reward (z units) in the ranking")
    prior_pulls: float = Field(2.0, ge=0, description="bandit: pseudo-pulls an arm's reward is shrunk toward 0 by")
    temperature: float = Field(0.0, ge=0, description="Gumbel-top-k temperature over the ranking; 0 = plain top-k")
    coverage_share: float = Field(
        0.0, ge=0, lt=1, description="arm floors: every cluster gets at least this share of what uniform data would "
                                     "give it (models/coverage.py); 0 = the ranking alone")
    coverage_order: Literal["uniform", "ranked"] = Field(
        "uniform", description="arm floors: a short arm is topped up with a uniform sample of its documents, or with "
                               "its best-ranked ones")
    rerank_factor: float = Field(
        16.0, ge=0, description="cascade: the stage's oracle measures the ranking's head, this many times the token "
                                "budget, and the head is taken in measured order (tasks/rerank.py); 0 = off")
    rerank_estimate: Literal["measured", "shrunk"] = Field(
        "measured", description="cascade: order the head by the oracle's values as measured, or by their Fay-Herriot "
                                "estimates (shrunk toward a regression on the influence model's score by each "
                                "value's sampling variance; models/cascade.py)")
    exclude_previous: bool = True


class TrackSettings(_Section):
    tracking_uri: str | None = Field(None, description="default sqlite:///<run_dir>/mlflow.db")
    experiment: str = "influmix"
    registered_model: str = "influmix-influence"
    model_alias: str = "current"
    alias_min_spearman: float | None = Field(
        0.2, ge=-1, le=1, description="the alias moves to a new model version only if its held-out Spearman against "
                                      "the oracle is at least this; None moves it to every version")


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
