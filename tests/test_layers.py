"""Imports run one way: the import-linter contracts in pyproject.toml hold, and no module is in an import cycle.

The contracts (layers: app and benchmarks > flows > tasks > runtime > core | models; models free of Prefect,
DuckDB and MLflow; core free of torch and of everything above it; no stage importing another stage) are
checked by import-linter, the same as `lint-imports` on the command line. The cycle check covers what the
layers cannot: two modules of one package importing each other (the old readers <-> repeats loop).
"""

from __future__ import annotations

import os

import grimp
from importlinter.cli import lint_imports

from tests.conftest import REPO

PACKAGES = ("influmix", "benchmarks", "flows", "tasks", "runtime", "core", "models")


def test_import_contracts_hold():
    cwd = os.getcwd()
    os.chdir(REPO)  # the contracts live in the repository's pyproject.toml
    try:
        assert lint_imports(no_cache=True) == 0  # its report above names any broken contract and the import
    finally:
        os.chdir(cwd)


def test_no_module_is_in_an_import_cycle():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.append((importer, *back))
    assert not cycles, cycles
