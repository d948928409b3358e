"""Security properties checked on the source and on real objects, not by convention.

* SQL: no statement is built by string formatting; every statement is a `sql/*.sql` file with bound
  parameters, and every statement name used exists.
* Models: nothing is unpickled (no torch.load / pickle / joblib / cloudpickle / dill, no remote code);
  weights come from safetensors.
* Paths: a run id cannot lead outside the folder influmix writes under (tests/test_config.py).
* Services: bound to 127.0.0.1 unless configured, with a warning otherwise.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from core.config import load_settings
from influmix import services

REPO = Path(__file__).resolve().parents[1]
CODE_DIRS = ("core", "runtime", "influmix", "tasks", "models", "flows", "benchmarks")
SQL_WORDS = re.compile(
    r"\b(select\s.+\sfrom|insert\s+into|update\s+\w+\s+set|delete\s+from|create\s+(table|view|index)|"
    r"drop\s+(table|view)|alter\s+table)\b", re.IGNORECASE | re.DOTALL)
EXECUTORS = {"execute", "executemany", "sql", "query", "from_query"}
STATEMENT_HELPERS = {"run", "rows", "arrow", "arrow_reader", "insert_arrow"}  # core.db: (con, "<name>", ...)
UNPICKLERS = {("torch", "load"), ("pickle", "load"), ("pickle", "loads"), ("joblib", "load"), ("cloudpickle", "load"),
              ("cloudpickle", "loads"), ("dill", "load"), ("dill", "loads"), ("pd", "read_pickle"),
              ("pandas", "read_pickle"), ("torch", "save"), ("pickle", "dump"), ("joblib", "dump")}


def python_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (REPO / d).rglob("*.py"))


def parsed() -> list[tuple[Path, ast.AST]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"), filename=str(p))) for p in python_files()]


def _formatted(node: ast.AST) -> bool:
    """An f-string, `%` formatting, `+` concatenation or `.format()` call."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        sides = (node.left, node.right) if isinstance(node.op, ast.Add) else (node.left,)
        return any(isinstance(side, ast.JoinedStr) or _formatted(side)
                   or (isinstance(side, ast.Constant) and isinstance(side.value, str)) for side in sides)
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"


def _literal_text(node: ast.AST) -> str:
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def _call_name(node: ast.Call) -> str | None:
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)


def sql_offenders(tree: ast.AST) -> list[str]:
    """Lines that pass a formatted string to an executor, or format a string that reads like SQL."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _call_name(node) in EXECUTORS and node.args and _formatted(node.args[0]):
            found.append(f"{node.lineno}: formatted string passed to {_call_name(node)}")
        elif _formatted(node) and SQL_WORDS.search(_literal_text(node)):
            found.append(f"{node.lineno}: SQL built by formatting")
    return found


@pytest.mark.parametrize("snippet", [
    'con.execute(f"SELECT * FROM {table}")', 'con.sql("DELETE FROM t WHERE id = %s" % x)',
    'q = "SELECT a FROM t WHERE b = " + value', 'q = "INSERT INTO {} VALUES (1)".format(t)',
    'con.execute("UPDATE t SET a = " + str(a) + " WHERE b = 1")',
])
def test_the_sql_scanner_catches_offenders(snippet):
    assert sql_offenders(ast.parse(snippet))


def test_the_sql_scanner_allows_bound_statements():
    for snippet in ['con.execute(db.sql("count_documents"), [run_id])', 'con.execute("SET threads = 1")',
                    'db.run(con, "insert_run", {"run_id": run_id})', 'msg = f"setting `{key}`: bad"']:
        assert not sql_offenders(ast.parse(snippet)), snippet
    assert len(python_files()) > 30 and REPO / "core" / "db.py" in python_files()


def test_no_sql_is_built_by_string_formatting():
    offenders = [f"{path.relative_to(REPO)}:{line}" for path, tree in parsed() for line in sql_offenders(tree)]
    assert not offenders, "\n".join(offenders)


def test_every_statement_is_a_sql_file_named_by_a_literal():
    """`db.run(con, "<name>", params)` and friends name a file in sql/; the name is never computed."""
    known = {p.stem for p in (REPO / "sql").glob("*.sql")}
    used, computed = set(), []
    for path, tree in parsed():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "db"):
                continue
            name = node.args[1] if node.func.attr in STATEMENT_HELPERS and len(node.args) > 1 else (
                node.args[0] if node.func.attr == "sql" and node.args else None)
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                used.add(name.value)
            elif name is not None:
                computed.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert used and used <= known, sorted(used - known)
    # the few computed names are constants chosen in code (e.g. a loop over three delete statements)
    assert len(computed) <= 3, computed


def test_nothing_is_unpickled():
    offenders = []
    for path, tree in parsed():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                pair = (owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None), node.func.attr)
                if pair in UNPICKLERS:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {'.'.join(pair)}")
                if node.func.attr == "load" and any(k.arg == "allow_pickle" for k in node.keywords):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: np.load(allow_pickle=...)")
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and not (
                    isinstance(node.value, ast.Constant) and node.value.value is False):
                offenders.append(f"{path.relative_to(REPO)}:{node.value.lineno}: trust_remote_code not False")
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in {"pickle", "joblib", "cloudpickle", "dill"} for n in names):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: imports a pickle library")
    assert not offenders, "\n".join(offenders)


def test_sentence_transformers_load_safetensors_only():
    loaders = []
    for path, tree in parsed():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) == "SentenceTransformer":
                kwargs = {k.arg: k.value for k in node.keywords}
                assert "model_kwargs" in kwargs and "use_safetensors" in ast.unparse(kwargs["model_kwargs"]), path
                loaders.append(path.relative_to(REPO).as_posix())
    assert {"models/embedder.py", "models/influence_encoder.py"} <= set(loaders)  # every loader was seen


def test_services_bind_loopback_by_default(tmp_path):
    settings = load_settings(None, [f'run_dir="{tmp_path}"'])
    assert settings.serve.host == "127.0.0.1" and settings.serve.host in services.LOOPBACK
    servers = [s for s in services.plan(settings) if s.port]
    assert servers and all(s.command[s.command.index("--host") + 1] == "127.0.0.1" for s in servers)
    assert all("127.0.0.1" in s.url for s in services.plan(settings))


@pytest.mark.parametrize(("host", "warned"), [("127.0.0.1", False), ("0.0.0.0", True), ("10.1.2.3", True)])
def test_non_loopback_host_is_served_with_a_warning(tmp_path, monkeypatch, host, warned):
    settings = load_settings(None, [f'run_dir="{tmp_path}"', f'serve.host="{host}"'])
    monkeypatch.setattr(services, "plan", lambda s: [])  # the warning comes before anything starts
    lines: list[str] = []
    assert services.serve(settings, echo=lines.append) == {}
    warnings = [line for line in lines if line.startswith("warning:")]
    assert bool(warnings) == warned
    if warned:
        assert host in warnings[0] and "serve.host" in warnings[0]
