"""A process that writes or reads mixtures over and over, for tests/test_concurrency.py.

    python -m tests.concurrent_client write DB RUN_ID STAGE ROUNDS SEED BARRIER_DIR
    python -m tests.concurrent_client read DB RUN_ID ROUNDS

Writers replace their stage's mixture with random subsets of the run's documents through the real
`write_mixture`; the reader checks through the real `mixture_summary` that every mixture it sees is whole
(its header's document count equals its members). Either exits non-zero on the first violation.

Writers start together (each leaves a file in BARRIER_DIR and waits for the other's), pause briefly between
writes as a run does between stages, and print `wrote START END` (wall-clock seconds) per write, so the test
can show that their writes really interleaved rather than ran one writer after the other.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

from core import db
from core.artifacts import Selection
from core.config import load_settings
from core.store import mixture_summary
from tasks.mixture import write_mixture

PAUSE_S = 0.3


def wait_for_peers(barrier: Path, peers: int) -> None:
    barrier.mkdir(parents=True, exist_ok=True)
    (barrier / str(os.getpid())).touch()
    while len(list(barrier.iterdir())) < peers:
        time.sleep(0.05)


def write(database: Path, run_id: str, stage: int, rounds: int, seed: int, barrier: Path) -> None:
    settings = load_settings(None, [f'db_path="{database}"'])
    with db.connect(database, read_only=True) as con:
        doc_ids = [r[0] for r in con.execute("SELECT doc_id FROM documents WHERE run_id = ? ORDER BY doc_id",
                                             [run_id]).fetchall()]
    rng = random.Random(seed)
    wait_for_peers(barrier, 2)
    for _ in range(rounds):
        picked = rng.sample(doc_ids, rng.randint(1, len(doc_ids)))
        n = len(picked)
        started = time.time()
        write_mixture(settings, Selection(run_id=run_id, stage=stage, token_budget=10**9, doc_ids=picked,
                                          cluster_ids=[0] * n, scores=[0.0] * n, rounds=[0] * n, tokens=n,
                                          n_rounds=1, exhausted=False))
        print(f"wrote {started:.6f} {time.time():.6f}", flush=True)
        time.sleep(PAUSE_S)


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
        write(Path(database), run_id, int(rest[0]), int(rest[1]), int(rest[2]), Path(rest[3]))
    else:
        read(Path(database), run_id, int(rest[0]))
