"""Benchmarks: scripts that measure influmix and write JSON results (with device, versions, command) and plots.

They read the shared multi-domain corpus beside the checkout (`../shared/corpus`, or $INFLUMIX_CORPUS), and
fall back to the sample bundled in `data/sample` where it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
_SHARED = Path(os.environ.get("INFLUMIX_CORPUS", _REPO.parent / "shared" / "corpus"))
SHARED_CORPUS = _SHARED if (_SHARED / "corpus.jsonl.gz").exists() else _REPO / "data" / "sample"
