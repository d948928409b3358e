"""A process that writes or reads mixtures over and over, for tests/test_concurrency.py.

    python -m tests.concurrent_client write DB RUN_ID STAGE ROUNDS SEED
    python -m tests.concurrent_client read DB RUN_ID ROUNDS

Writers replace their stage's mixture with random subsets of the run's documents through the real
`write_mixture`; the reader checks through the real `mixture_summary` that every mixture it sees is whole
(its header's document count equals its members). Either exits non-zero on the first violation.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from core import db
from core.config import load_settings
from influmix.report import mixture_summary
from tasks.mixture import write_mixture
from tasks.select import Selection


def write(database: Path, run_id: str, stage: int, rounds: int, seed: int) -> None:
    settings = load_settings(None, [f'db_path="{database}"'])
    with db.connect(database, read_only=True) as con:
        doc_ids = [r[0] for r in con.execute("SELECT doc_id FROM documents WHERE run_id = ? ORDER BY doc_id",
                                             [run_id]).fetchall()]
    rng = random.Random(seed)
    for _ in range(rounds):
        picked = rng.sample(doc_ids, rng.randint(1, len(doc_ids)))
        n = len(picked)
        write_mixture(settings, run_id, Selection(stage, 10**9, picked, [0] * n, [0.0] * n, [0] * n, n, 1, False))


def read(database: Path, run_id: str, rounds: int) -> None:
    seen = 0
    for _ in range(rounds):
        for stage in mixture_summary(database, run_id)["stages"]:
            members = sum(row["documents"] for row in stage["by_domain"])
            if members != stage["documents"]:
                sys.exit(f"stage {stage['stage']}: header says {stage['documents']} documents, {members} visible")
            seen += 1
    print(f"checked {seen} mixtures")


if __name__ == "__main__":
    mode, database, run_id, *rest = sys.argv[1:]
    if mode == "write":
        write(Path(database), run_id, int(rest[0]), int(rest[1]), int(rest[2]))
    else:
        read(Path(database), run_id, int(rest[0]))
