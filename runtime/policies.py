"""How the stage tasks are cached and retried.

A stage is reused when nothing it depends on changed: the run id (every table is versioned by it), the
settings sections the stage reads, the corpus and reference files (path, size, modification time), the
database file's identity and the stage's other inputs. So `influmix resume RUN_ID`, or a re-run with the
same run id, skips the stages that finished and redoes the rest; changing `select.*` redoes selection and
what follows but not ingestion or embedding. Results persist under Prefect's local storage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.utilities.hashing import hash_objects

from core import db
from core.artifacts import Run
from core.config import Settings

# Settings each corpus-level stage reads; per-stage tasks depend on the whole (mixture-shaping) config.
# The pool is what ingest kept and the filter stage did not reject, so the stages reading it depend on both.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "ingest": ("ingest",),
    "filter": ("ingest", "filter"),
    "reference": ("reference",),
    "embed": ("ingest", "filter", "embed"),
    "cluster": ("ingest", "filter", "embed", "cluster", "seed"),
    "tokenizer": ("ingest", "filter", "reference", "proxy", "seed"),
}


def source_fingerprint(settings: Settings) -> list[Any]:
    """Cheap identity of every input: files by (path, size, mtime), Hugging Face sources by their spec.

    An unpinned Hugging Face source (no `hf_revision`) can change upstream without notice: pin it to make
    its ingestion reusable by content, else a re-run re-reads it only when the settings change.
    """
    from core.sources import resolve_paths

    out: list[Any] = []
    for source in [*settings.ingest.sources, *settings.reference.sources]:
        if source.path is None:
            out.append(source.model_dump(mode="json"))
            continue
        try:
            files = resolve_paths(source)
        except Exception:  # noqa: BLE001 - the stage itself reports a bad source; no cache key then
            return [None]
        out += [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return out


def database_instance(settings: Settings) -> str | None:
    if not settings.database.exists():
        return None
    with db.connect(settings.database, read_only=True) as con:
        rows = db.rows(con, "database_instance")
    return rows[0][0] if rows else None


def settings_payload(settings: Settings, task_name: str) -> str:
    sections = STAGE_SECTIONS.get(task_name)
    if sections is None:
        return settings.config_hash()
    return json.dumps(settings.model_dump(mode="json", include=set(sections)), sort_keys=True)


# Inputs that name this attempt rather than shape the result (a re-run has a new Prefect flow run).
RUN_LOCAL_INPUTS = frozenset({"settings", "prefect_flow_run_id", "flow_run_id"})


def attempt_free(value: Any) -> Any:
    """An input as far as it shapes the result: a `Run` counts by its run id, not its Prefect flow run."""
    return value.run_id if isinstance(value, Run) else value


@dataclass
class StageCache(CachePolicy):
    """Cache key = run id + the stage's settings + input files + database identity + other inputs."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        settings = inputs.get("settings")
        if not isinstance(settings, Settings) or not settings.reuse_stages:
            return None
        instance = database_instance(settings)
        fingerprint = source_fingerprint(settings)
        if instance is None or fingerprint == [None]:
            return None
        name = task_ctx.task.name
        others = {k: attempt_free(v) for k, v in inputs.items() if k not in RUN_LOCAL_INPUTS}
        return hash_objects(name, settings_payload(settings, name), fingerprint, instance, others)


STAGE_CACHE = StageCache()
"""Shared by the stage tasks (`cache_policy=STAGE_CACHE, persist_result=True`)."""

NETWORK_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


def retry_on_network_error(task, task_run, state) -> bool:
    """Retry a service-touching stage on connection trouble only: a user mistake fails at once."""
    try:
        state.result()
    except NETWORK_ERRORS:
        return True
    except Exception as exc:  # noqa: BLE001 - inspect the chain: requests/httpx wrap socket errors
        cause = exc.__cause__ or exc.__context__
        return isinstance(cause, NETWORK_ERRORS) or "connection" in type(exc).__name__.lower()
    return False
