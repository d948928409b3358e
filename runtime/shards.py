"""Document shards for the embedding, probing and scoring stages, run in-process or on a Ray cluster.

DuckDB has one writer, so shard workers never open the database: the driver (the stage task) writes each
shard's inputs to Parquet, every worker reads its file and writes a result Parquet file, and the driver
loads all results in one transaction. Both runners (`runner.kind`) go through this same code with the
same shard boundaries, and the boundaries fall on the stages' own batch boundaries (`align`), so every
document is computed in the same batch with the same neighbours wherever it runs: the mixture does not
depend on the runner or on `runner.shards`.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import Task
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from core.config import ConfigError, Settings, run_subdir

RAY_CONNECT_TIMEOUT_S = 5.0
"""How long the driver waits for a TCP answer from `runner.ray_address` before calling it unreachable."""
_ray_connection: dict[str, Any] = {}
"""The address this process's Ray connection was made for: stages reuse one connection (and its warm
worker processes, which have already imported torch) instead of reconnecting per stage."""


@dataclass
class ShardResult:
    """One finished shard: the result Parquet file its worker wrote and what the worker returned."""

    index: int
    output: Path
    info: dict[str, Any]


def shard_bounds(n_items: int, shards: int, align: int = 1) -> list[tuple[int, int]]:
    """Contiguous [start, end) slices covering range(n_items) in order, at most `shards` of them.

    Every boundary is a multiple of `align` (a stage's batch or page), so a batch never straddles two
    shards; shards get as equal a number of batches as possible and none is empty.
    """
    if shards < 1 or align < 1:
        raise ValueError("shards and align must be at least 1")
    units = -(-n_items // align)
    count = min(shards, units)
    bounds, start = [], 0
    for k in range(count):
        end = min(n_items, start + (units // count + (k < units % count)) * align)
        bounds.append((start, end))
        start = end
    return bounds


def split_table(table: pa.Table, shards: int, align: int) -> Iterator[tuple[int, pa.Table]]:
    """(shard index, rows) of `table` cut at `shard_bounds`."""
    for k, (start, end) in enumerate(shard_bounds(table.num_rows, shards, align)):
        yield k, table.slice(start, end - start)


def tag_pages(pages: Iterable[pa.Table], n_pages: int, shards: int) -> Iterator[tuple[int, pa.Table]]:
    """(shard index, page) for a stream of equal-sized pages: consecutive pages share a shard."""
    owner = [k for k, (start, end) in enumerate(shard_bounds(n_pages, shards)) for _ in range(start, end)]
    for p, page in enumerate(pages):
        yield owner[p], page


def pages_of(table: pa.Table, page_size: int) -> Iterator[pa.Table]:
    """A worker's input in the stage's pages: its first row starts a page, since shards are page-aligned."""
    for start in range(0, table.num_rows, page_size):
        yield table.slice(start, page_size)


def shard_root(settings: Settings, run_id: str) -> Path:
    """This run's shard folder, absolute: workers may run in another working directory or machine."""
    if settings.runner.shard_dir:
        base = run_subdir(settings.runner.shard_dir, run_id, "runner.shard_dir")
    else:
        base = settings.stage_dir(run_id) / "shards"
    return base.resolve()


def write_table(path: Path, table: pa.Table) -> Path:
    """One Parquet file the workers can read (a driver-side input such as the probe reference set)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _write_inputs(directory: Path, tagged: Iterable[tuple[int, pa.Table]]) -> list[Path]:
    """Stream tagged tables into one Parquet file per shard; returns the inputs in shard order."""
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for k, table in tagged:
            if k not in writers:
                writers[k] = pq.ParquetWriter(directory / f"input-{k:04d}.parquet", table.schema)
            writers[k].write_table(table)
    finally:
        for writer in writers.values():
            writer.close()
    return [directory / f"input-{k:04d}.parquet" for k in sorted(writers)]


def _ray_reachable(address: str) -> None:
    """Fail fast, in one line, when nothing listens at the configured head (ray.init would hang or trace)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"setting `runner.ray_address`: {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"setting `runner.ray_address`: no Ray head answers at {address} ({exc}); "
                          "start one with `ray start --head` (see infra/RAY.md)") from None


def connect_ray(address: str | None) -> dict[str, Any]:
    """Connect this process to Ray once (or start a local instance on 127.0.0.1); returns the init kwargs.

    RayTaskRunner reuses an initialised connection and then leaves it open on exit, so every sharded stage
    of a run shares one Ray job and its warm workers.
    """
    import ray

    kwargs: dict[str, Any] = {"namespace": "prefect", "log_to_driver": True}
    if address is None:
        kwargs.update(include_dashboard=False, _node_ip_address="127.0.0.1")
    if ray.is_initialized() and _ray_connection.get("address", False) == address:
        return kwargs
    if ray.is_initialized():
        ray.shutdown()
    if address is not None:
        _ray_reachable(address)
    try:
        ray.init(address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any connection failure is a configuration problem
        raise ConfigError(f"setting `runner.ray_address`: cannot connect to Ray at {address or 'a new local instance'}: "
                          f"{exc}") from None
    _ray_connection["address"] = address
    return kwargs


def disconnect_ray() -> None:
    """Leave the shared Ray connection (a test or a long-lived process switching clusters)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _ray_connection.clear()


def task_runner(settings: Settings) -> TaskRunner:
    """The runner chosen by `runner.kind`: one worker thread here (shards in order), or Ray."""
    if settings.runner.kind == "ray":
        from prefect_ray import RayTaskRunner

        init_kwargs = connect_ray(settings.runner.ray_address)
        return RayTaskRunner(address=settings.runner.ray_address, init_kwargs=init_kwargs)
    return ThreadPoolTaskRunner(max_workers=1)


def use_threads(threads: int) -> None:
    """Start of every shard worker: torch on the driver's intra-op thread count.

    Why: some reductions (the vmapped fast probe) round differently with another thread count, and Ray
    starts workers with OMP_NUM_THREADS=1; in-process this is a no-op (the count is already the driver's).
    """
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextmanager
def _reserve_cpus(settings: Settings, threads: int) -> Iterator[None]:
    """On Ray, reserve as many CPUs per shard task as it runs threads (capped at the largest node's).

    Why: Ray reserves one CPU per task by default, so a 2-CPU node ran two 2-thread shards at once and the
    oversubscribed OpenMP threads made probing ~4x slower than running the shards one after another.
    """
    if settings.runner.kind != "ray":
        yield
        return
    import ray
    from prefect_ray.context import remote_options

    largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=1)
    with remote_options(num_cpus=max(1, min(threads, int(largest)))):
        yield


def run_shards(settings: Settings, worker: Task, inputs: list[Path], params: dict[str, Any]) -> list[ShardResult]:
    """Run `worker(input_path=..., output_path=..., threads=..., **params)` once per input file; wait for all.

    Submitting from inside a running stage task is supported by both runners: the shard task runs show up
    in Prefect as the stage's children. `threads` is for `use_threads`.
    """
    import torch

    outputs = [path.with_name(path.name.replace("input-", "output-")) for path in inputs]
    fixed = {"threads": torch.get_num_threads(), **params}
    with task_runner(settings) as runner, _reserve_cpus(settings, fixed["threads"]):
        futures = [runner.submit(worker, parameters={"input_path": str(i), "output_path": str(o), **fixed})
                   for i, o in zip(inputs, outputs)]
        infos = [future.result() for future in futures]
    return [ShardResult(k, output, info or {}) for k, (output, info) in enumerate(zip(outputs, infos))]


@contextmanager
def sharded(settings: Settings, run_id: str, name: str, worker: Task, tagged: Iterable[tuple[int, pa.Table]],
            params: dict[str, Any] | None = None, shared: dict[str, pa.Table] | None = None,
            ) -> Iterator[list[ShardResult]]:
    """Write the shards' inputs under `<shard root>/<name>`, run `worker` on each, yield the results.

    `shared` tables (inputs every shard reads, e.g. the probe reference set) are written once and reach the
    worker as the path parameter of the same name. The caller loads the result files into DuckDB (one
    transaction) inside the `with`; the folder is removed afterwards, and kept when anything failed so the
    failing shard can be inspected.
    """
    directory = shard_root(settings, run_id) / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    params = dict(params or {})
    for key, table in (shared or {}).items():
        params[key] = str(write_table(directory / f"{key}.parquet", table))
    inputs = _write_inputs(directory, tagged)
    yield run_shards(settings, worker, inputs, params)
    shutil.rmtree(directory, ignore_errors=True)


def read_output(result: ShardResult) -> pa.Table:
    """A worker's result table."""
    return pq.read_table(result.output)
