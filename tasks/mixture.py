"""Write a stage's mixture atomically, read it back, and export it for training.

A mixture is a header row in `mixtures` plus its `mixture_members`; both are replaced in one transaction,
so a reader (`influmix show`, any DuckDB client) sees the old mixture or the new one, never half.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from core import db
from core.artifacts import Mixture, Selection
from core.config import Settings
from core.faults import failpoint
from runtime.policies import STAGE_CACHE


def write_mixture(settings: Settings, selection: Selection) -> Mixture:
    """Replace the stage's mixture header and members with `selection`, in one transaction."""
    run_id, stage = selection.run_id, selection.stage
    n = len(selection.doc_ids)
    if n != len(set(selection.doc_ids)):
        raise ValueError(f"stage {stage}: the selection lists a document twice")
    if selection.tokens > selection.token_budget:
        raise ValueError(f"stage {stage}: the selection ({selection.tokens} tokens) exceeds its budget")
    with db.connect(settings.database) as con, db.transaction(con):
        db.run(con, "delete_mixture", {"run_id": run_id, "stage": stage})
        db.run(con, "delete_mixture_members", {"run_id": run_id, "stage": stage})
        db.run(con, "insert_mixture", {
            "run_id": run_id, "stage": stage, "config_hash": settings.config_hash(),
            "token_budget": selection.token_budget, "tokens": selection.tokens, "n_documents": n,
        })
        failpoint("mixture.write")
        db.insert_arrow(con, "insert_mixture_members", pa.table({
            "run_id": [run_id] * n, "stage": [stage] * n, "doc_id": selection.doc_ids,
            "cluster_id": pa.array(selection.cluster_ids, pa.int32()), "score": selection.scores,
            "round": pa.array(selection.rounds, pa.int32()),
        }))
    return Mixture(run_id, stage, n, selection.tokens, selection.token_budget)


def mixture_reader(con, run_id: str, stage: int) -> pa.RecordBatchReader:
    return db.arrow_reader(con, "mixture_documents", {"run_id": run_id, "stage": stage})


def export_mixture(db_path: Path, run_id: str, stage: int, out: Path) -> int:
    """Stream a mixture to Parquet (`.parquet`) or JSON lines (`.jsonl`, `.jsonl.gz`); returns rows written."""
    out = Path(out)
    suffixes = "".join(out.suffixes[-2:])
    if out.suffix != ".parquet" and suffixes not in {".jsonl", ".jsonl.gz"} and out.suffix != ".jsonl":
        raise ValueError(f"export path {out} must end in .parquet, .jsonl or .jsonl.gz")
    if not out.parent.is_dir():  # a typo in the folder should not leave a new directory tree behind
        raise FileNotFoundError(f"export folder {out.parent} does not exist: create it first")
    written = 0
    with db.connect(db_path, read_only=True) as con:
        reader = mixture_reader(con, run_id, stage)
        if out.suffix == ".parquet":
            with pq.ParquetWriter(out, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    written += batch.num_rows
        else:
            opener = gzip.open if out.suffix == ".gz" else open
            with opener(out, "wt", encoding="utf-8") as fh:
                for batch in reader:
                    for row in batch.to_pylist():
                        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    written += batch.num_rows
    return written


write_mixture_task = task(write_mixture, name="write-mixture", task_run_name="write-mixture[stage={selection.stage}]", cache_policy=STAGE_CACHE, persist_result=True)
