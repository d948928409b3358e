"""Which files a configured source stands for: resolved before any work, so a typo fails in one line.

Shared by the ingest stage (which reads the files) and the stage cache policy (which fingerprints them by
path, size and modification time), so it lives below both.
"""

from __future__ import annotations

import glob
from pathlib import Path

from core.config import SourceSettings

SUPPORTED_SUFFIXES = (".jsonl.gz", ".jsonl", ".json", ".parquet", ".txt")


class IngestError(ValueError):
    """A user error about a source as a whole: one line that names the source; printed without a traceback."""


def _supported(path: Path) -> bool:
    return path.is_file() and path.name.endswith(SUPPORTED_SUFFIXES) and not path.name.startswith(".")


def resolve_paths(source: SourceSettings) -> list[Path]:
    """The files a path source stands for; raises IngestError if there are none."""
    assert source.path is not None
    raw = source.path
    path = Path(raw).expanduser()
    if path.is_file():
        if not path.name.endswith(SUPPORTED_SUFFIXES):
            raise IngestError(
                f"source {raw}: unsupported file type (expected one of {', '.join(SUPPORTED_SUFFIXES)})"
            )
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if _supported(p))
        if not files:
            raise IngestError(f"source {raw}: directory has no {'/'.join(SUPPORTED_SUFFIXES)} files")
        return files
    if any(ch in raw for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if _supported(Path(p)))
        if not files:
            raise IngestError(f"source {raw}: glob matches no {'/'.join(SUPPORTED_SUFFIXES)} files")
        return files
    if path.exists():
        raise IngestError(f"source {raw}: not a regular file or directory")
    raise IngestError(f"source {raw}: path does not exist")
