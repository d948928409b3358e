"""What every benchmark's results JSON carries so a number can be traced: the device and the versions of the
packages that made it, and an atomic write (a reader, or a crash, never sees half a file)."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any


def device_and_versions(eval_device: str) -> tuple[str, dict[str, str]]:
    import torch

    if eval_device.startswith("cuda"):
        device = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor() or "unknown CPU")
        device = f"CPU: {cpu}, {len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} torch threads"
    names = ("torch", "transformers", "tokenizers", "numpy", "duckdb", "mlflow", "data-selection",
             "sentence-transformers", "prefect")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return device, {"python": platform.python_version(), **found}


def write_json(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=float))
    tmp.replace(out)  # a reader (or a crash) never sees half a file
