"""Probe stage: the stage's measurement budget, spent on a uniform sample of the pool or by the oracle bandit.

From the stage checkpoint, an oracle (`probe.oracle`, models/stage_oracles.py) measures what documents do
to the reference loss: by default the conditional loss reduction (CoLoR), else MATES's one-step probe. By
default (`probe.sampling = "uniform"`) the documents are a seeded uniform sample of the pool (the bandit's
code with one arm, the pool). With `"bandit"`, the bandit (models/bandit.py) chooses which arm (cluster)
each pull of `probe.pull_size` documents comes from, rewarding it with what was measured, plus, once per
arm, a group reward from a short rollout on a batch of the arm (`probe.group_rollouts`). Every measured
document becomes a training label of the influence model (a seeded `heldout_fraction` judges it
instead); with the bandit, each arm's posterior reward goes on to the selection. Cross-fitting: the
conditional oracle fine-tunes on the reference's fit half (stopped on the measure half) and, by default
(`probe.conditional_folds = 2`), a second copy on the measure half (stopped on the fit half), averaging
the two drops; rollouts and one-step probes are taken on the measure half.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pyarrow as pa
import torch
from prefect import task

from core import db, store
from core.artifacts import Checkpoint, Clustered, Probes, Tokenized
from core.config import Settings
from core.faults import failpoint
from core.seeds import int_seed, rng
from models.bandit import Measurement, OracleBanditConfig, OracleTrace, arm_scores, spend_oracle
from models.conditional_loss import save_conditional
from models.proxy_lm import load_token_rows, pack_sequences, probe_inputs
from models.rollout import RolloutConfig
from models.stage_oracles import ConditionalOracle, GroupOracle, OracleValues
from models.tokenizer import EOS_TOKEN, load_tokenizer
from models.trainer import load_checkpoint, make_optimizer, resolve_device
from runtime.configs import train_config
from runtime.oracles import make_oracle
from runtime.policies import STAGE_CACHE

GROUP_DOCS = 64
"""Documents drawn at a time from an arm (or the pool, for the control) to pack a rollout batch from."""
MAX_GROUP_DOCS = 2048
"""At most this many documents per batch: an arm of tweets fills 32 rows of 128 tokens with ~1,000."""


class Measurer:
    """The bandit's `measure(arm, documents)`: reads the documents' texts, runs the oracle (and the arm's
    group rollout on its first pull), and keeps every value for the `probes` rows."""

    def __init__(self, con, settings: Settings, run_id: str, stage: int, pool: store.Candidates, tokenizer,
                 oracle, group: GroupOracle | None) -> None:
        self.con, self.settings, self.run_id, self.pool = con, settings, run_id, pool
        self.tokenizer, self.oracle, self.group = tokenizer, oracle, group
        self.draws = rng(settings.seed, "rollout", stage)
        self.results: list[tuple[np.ndarray, OracleValues]] = []
        self.seconds = 0.0

    def token_ids(self, indices: np.ndarray) -> list[list[int]]:
        ids = [self.pool.doc_ids[i] for i in indices]
        texts = store.texts_of(self.con, self.run_id, ids)
        return probe_inputs(self.tokenizer, [texts[d] for d in ids], self.settings.proxy.seq_len)

    def batch_rows(self, indices: np.ndarray) -> torch.Tensor | None:
        """A rollout batch: documents of `indices` in random order, packed into whole rows, drawn GROUP_DOCS at a
        time until they fill the rollout (short documents, tweets, need many); None below one step's rows."""
        cfg = self.settings.probe
        wanted, order = cfg.rollout_steps * cfg.rollout_rows_per_step, self.draws.permutation(indices)
        token_ids: list[list[int]] = []
        rows = torch.zeros(0, self.settings.proxy.seq_len, dtype=torch.long)
        for start in range(0, min(len(order), MAX_GROUP_DOCS), GROUP_DOCS):
            token_ids += self.token_ids(order[start:start + GROUP_DOCS])
            rows, _ = pack_sequences(token_ids, self.settings.proxy.seq_len, self.tokenizer.token_to_id(EOS_TOKEN))
            if len(rows) >= wanted:
                break
        rows = rows[:wanted]
        return rows if len(rows) >= cfg.rollout_rows_per_step else None

    def __call__(self, arm: int, indices: np.ndarray) -> Measurement:
        failpoint("probe.pull")
        started = time.perf_counter()
        measured = self.oracle.measure(self.token_ids(indices))
        self.seconds += time.perf_counter() - started
        self.results.append((indices, measured))
        group = None
        if self.group is not None and arm not in self.group.rewards:
            group = self.group.reward(arm, self.batch_rows(np.flatnonzero(self.pool.cluster_ids == arm)))
        return Measurement(measured.values, group)


def group_oracle(settings: Settings, model, optimizer_state, tokenized: Tokenized) -> GroupOracle:
    optimizer = make_optimizer(model, train_config(settings))
    optimizer.load_state_dict(copy.deepcopy(optimizer_state))
    cfg = settings.probe
    return GroupOracle(model, optimizer, load_token_rows(tokenized.reference_path, cfg.reference_sequences, "measure"),
                       RolloutConfig(steps=cfg.rollout_steps, rows_per_step=cfg.rollout_rows_per_step,
                                     grad_clip=settings.proxy.grad_clip))


def probe_rows(run_id: str, stage: int, pool: store.Candidates, measurer: Measurer, trace: OracleTrace,
               heldout: np.ndarray) -> pa.Table:
    """One `probes` row per measured document, in measurement order."""
    indices = np.concatenate([i for i, _ in measurer.results])
    values = {name: np.concatenate([getattr(m, name) if getattr(m, name) is not None else np.full(len(i), np.nan)
                                    for i, m in measurer.results])
              for name in ("values", "exact", "loss_before", "loss_after")}
    pull_of = np.concatenate([np.full(len(p.documents), p.pull) for p in trace.pulls])
    one_step = measurer.oracle.name == "one_step"
    n = len(indices)
    return pa.table({
        "run_id": [run_id] * n, "stage": [stage] * n, "doc_id": [pool.doc_ids[i] for i in indices],
        "exact_score": pa.array(values["exact"], from_pandas=True),
        "fast_score": pa.array(values["values"] if one_step else np.full(n, np.nan), from_pandas=True),
        "loss_before": pa.array(values["loss_before"], from_pandas=True),
        "loss_after": pa.array(values["loss_after"], from_pandas=True),
        "split": np.where(heldout, "heldout", "train"), "label": values["values"],
        "pull": pull_of.astype(np.int32), "oracle": [measurer.oracle.name] * n,
    })


def pull_rows(run_id: str, stage: int, trace: OracleTrace) -> pa.Table:
    pulls = trace.pulls
    return pa.table({
        "run_id": [run_id] * len(pulls), "stage": [stage] * len(pulls),
        "pull": pa.array([p.pull for p in pulls], pa.int32()), "cluster_id": pa.array([p.arm for p in pulls], pa.int32()),
        "ucb": [p.ucb if np.isfinite(p.ucb) else None for p in pulls],
        "n_measured": pa.array([len(p.documents) for p in pulls], pa.int32()),
        "mean_value": [float(np.nanmean(p.values)) if np.isfinite(p.values).any() else None for p in pulls],
        "group_reward": [p.group if p.group is not None and np.isfinite(p.group) else None for p in pulls],
        "reward": [p.reward for p in pulls],
    })


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    keep = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[keep], b[keep]).statistic) if keep.sum() > 2 else None


def probe_stage(settings: Settings, checkpoint: Checkpoint, tokenized: Tokenized, clustered: Clustered,
                progress: bool = True) -> Probes:
    """Spend `probe.budget` oracle measurements over the stage's arms; write `probes` and `oracle_pulls`."""
    started = time.perf_counter()
    cfg, run_id, stage = settings.probe, checkpoint.run_id, checkpoint.stage
    device = resolve_device(settings.proxy.device)
    model, optimizer_state, _ = load_checkpoint(checkpoint.path, device)
    tokenizer = load_tokenizer(tokenized.tokenizer_path)
    oracle = make_oracle(settings, model, optimizer_state, tokenized, stage)
    conditional_path = None
    if isinstance(oracle, ConditionalOracle):  # kept for the cascade's second look (tasks/rerank.py)
        conditional_path = str(save_conditional(settings.stage_dir(run_id, stage) / "conditional",
                                                oracle.conditionals, oracle.traces))
    with db.connect(settings.database, read_only=True) as con:
        pool = store.candidates(con, run_id, stage, settings.seed, settings.select.exclude_previous)
        centroids = store.load_centroids(con, clustered.run_id)
        by_arm = cfg.sampling == "bandit"
        group = group_oracle(settings, model, optimizer_state, tokenized) if cfg.group_rollouts and by_arm else None
        measurer = Measurer(con, settings, run_id, stage, pool, tokenizer, oracle, group)
        if group is not None:
            control = rng(settings.seed, "rollout", stage).permutation(len(pool))
            batches = [measurer.batch_rows(control[i::cfg.control_batches]) for i in range(cfg.control_batches)]
            group.calibrate([b for b in batches if b is not None])
        arms = pool.cluster_ids if by_arm else np.zeros(len(pool), dtype=np.int64)  # uniform: one arm, the pool
        trace = spend_oracle(arms, centroids if by_arm else centroids[:1], measurer, OracleBanditConfig(
            budget=min(cfg.budget, len(pool)), pull_size=cfg.pull_size, ucb_alpha=cfg.ucb_alpha,
            warm_pulls=cfg.warm_pulls, share_distance=cfg.share_distance, seed=int_seed(settings.seed, "oracle", stage)))
    measured = len(trace.measured)
    split = rng(settings.seed, "probe_split", stage)
    heldout = split.random(measured) < cfg.heldout_fraction
    heldout[split.integers(measured)] = True  # at least one held-out document to judge the influence model on
    rows = probe_rows(run_id, stage, pool, measurer, trace, heldout)
    with db.connect(settings.database) as con, db.transaction(con):
        db.run(con, "delete_probes", {"run_id": run_id, "stage": stage})
        db.run(con, "delete_oracle_pulls", {"run_id": run_id, "stage": stage})
        db.insert_arrow(con, "insert_probes", rows)
        failpoint("probe.write")
        db.insert_arrow(con, "insert_oracle_pulls", pull_rows(run_id, stage, trace))
    labels = trace.values
    exact = rows.column("exact_score").to_numpy(zero_copy_only=False)
    return Probes(
        run_id=run_id, stage=stage, oracle=oracle.name, measured=measured, heldout=int(heldout.sum()),
        label_mean=float(np.nanmean(labels)), label_std=float(np.nanstd(labels)),
        seconds_per_document=measurer.seconds / max(measured, 1), pulls=len(trace.pulls),
        arms_pulled=len({p.arm for p in trace.pulls}) if by_arm else 0, arm_scores=(arm_scores(trace, settings.select.prior_pulls) if by_arm else np.zeros(len(centroids))).tolist(),
        exact_agreement=_spearman(labels, exact) if oracle.name == "one_step" else None,
        group_rewards=int(sum(np.isfinite(v) for v in group.rewards.values())) if group else 0,
        group_seconds=group.seconds if group else 0.0, oracle_setup_seconds=oracle.setup_seconds,
        finetune_step=oracle.finetune.best_step if oracle.finetune is not None else None,
        seconds=time.perf_counter() - started, oracle_timings=dict(oracle.timings), conditional_path=conditional_path)


probe_task = task(probe_stage, name="probe", task_run_name="probe[stage={checkpoint.stage}]", cache_policy=STAGE_CACHE,
                  persist_result=True)
