"""The package's structure and its Python API: one-way imports, the docs' session, the CLI,
the test command (.ci/run = the README's = the docs').

The import graph is read with ``ast`` (nothing is imported): every import in
``pipeline/``, function bodies included, becomes an edge between modules.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pipeline"
#: The flow, bottom to top: a module may import only from its own layer or those before it.
LAYERS = [
    {"pipeline.errors", "pipeline.options", "pipeline.files", "pipeline.balance",
     "pipeline.calibration", "pipeline.registry", "pipeline.configs", "pipeline.parallel"},
    {"pipeline.data"},
    {"pipeline.backbones"},
    {"pipeline.store"},
    {"pipeline.extraction"},
    {"pipeline.heads"},
    {"pipeline.train"},
    {"pipeline.runs"},
    # a run's saved model of any kind, opened from its record (runs) and rebuilt from heads
    # and train; asked by the predict and export workflows, never by the report
    {"pipeline.models"},
    {"pipeline.reporting"},
    {"pipeline.workflows", "pipeline.bench"},
    {"pipeline.api", "pipeline"},
    {"pipeline.cli"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_edges(files=None):
    """``{module: {(imported module, name or None), ...}}`` for every module of the package."""
    files = files or {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        out = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    out.add((sub, None) if sub in files else (target, alias.name))
            elif isinstance(node, ast.Import):
                out.update((alias.name, None) for alias in node.names)
        edges[mod] = {(t, n) for t, n in out if t.split(".")[0] == "pipeline" and t != mod}
    return edges


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(mod: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(mod == m or mod.startswith(m + ".") for m in layer if m != "pipeline"):
            return i
    return next(i for i, layer in enumerate(LAYERS) if "pipeline" in layer)  # __init__.py


def module_graph(edges: dict) -> dict:
    """Module -> modules it depends on; an import of a package stands for the modules its
    ``__init__`` imports (re-exports), and ``__init__`` modules leave the graph."""
    inits = {m for m in edges if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}

    def resolve(target, seen=()):
        if target not in inits or target in seen:
            return {target} - inits
        return set().union(*[resolve(t, (*seen, target)) for t, _ in edges[target]] or [set()])

    return {m: set().union(*[resolve(t) for t, _ in out] or [set()]) - {m}
            for m, out in edges.items() if m not in inits}


def test_no_import_cycles_no_private_imports_and_imports_point_down():
    edges = import_edges()
    assert cycles(module_graph(edges)) == []
    private = [f"{m} imports {n} from {t}" for m, out in edges.items() for t, n in out
               if n and n.startswith("_") and not n.startswith("__")]
    assert private == []
    upward = [f"{m} -> {t}" for m, out in edges.items() for t, _ in out
              if m != "pipeline" and layer_of(t) > layer_of(m)]
    assert upward == []
    assert len(edges) > 40 and sum(map(len, edges.values())) > 100   # the walk saw the package


def test_the_checker_finds_a_planted_cycle_and_a_private_import(tmp_path):
    pkg = tmp_path / "pipeline"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def f():\n    from .y import _hidden\n")
    (pkg / "a" / "y.py").write_text("from pipeline.a import x\n_hidden = 1\n")
    files = {".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
             for p in pkg.rglob("*.py")}
    edges = import_edges(files)
    assert ("pipeline.a.y", "_hidden") in edges["pipeline.a.x"]
    assert cycles({m: {t for t, _ in out} for m, out in edges.items()}) == [
        ["pipeline.a.x", "pipeline.a.y"]]


def python_api_session() -> str:
    """The session of the docs' Python API page (docs/python-api.md), as written there."""
    text = (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
    section = text.split("# From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_docs_from_python_session_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(python_api_session(), "docs/python-api.md: From Python", "exec"), namespace)
    store, head, pixels, tuned = (namespace[k] for k in ("store", "head", "pixels", "tuned"))
    X, y = namespace["X"], namespace["y"]
    assert X.shape == (110, 320) and X.dtype == np.float32 and len(y) == 110
    assert store.path == Path("features/flowers_efficientnet_lite0_avg.h5")
    assert head.model is not None and Path(head.record["model_file"]).is_file()
    assert head.predict(store.X("layer4", "test")).shape == (20,)
    assert 0.5 < head.accuracy <= 1.0                    # real pretrained features
    assert pixels.record["kind"] == "baseline" and tuned.record["kind"] == "finetune"
    assert namespace["page"].is_file() and len(list(Path("reports/runs").glob("*.json"))) == 3
    printed = capsys.readouterr().out
    assert "efficientnet_lite0 layer4 + logreg" in printed and "notebook.html" in printed


def test_import_pipeline_is_light_and_exports_the_api():
    code = ("import sys, pipeline; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'sklearn', 'h5py', 'timm')); print(heavy, pipeline.__all__); "
            "assert all(callable(getattr(pipeline, n)) for n in pipeline.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.startswith("[] ") and "'extract'" in out and "'report'" in out


def test_workbench_console_script_runs_the_same_cli():
    script = Path(sys.executable).parent / "workbench"
    assert script.is_file(), "pip install -e . installs the workbench console script"
    res = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "Start with `" in res.stdout
    assert all(c in res.stdout for c in ("extract", "fit", "report", "demo"))
    setup = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    assert "workbench = pipeline.cli:main" in setup and "py_modules" not in setup


@pytest.mark.parametrize("started, program", [
    ("/venv/bin/workbench", "workbench"), ("cli.py", "python cli.py"),
    (str(PACKAGE / "cli" / "__main__.py"), "python -m pipeline.cli"),
    ("-c", "python cli.py"),          # a notebook or a test, in a checkout
])
def test_messages_and_help_name_the_program_as_it_was_started(started, program):
    """One helper spells the program in every message (pipeline.errors.program), and the
    help's examples follow it: `workbench fit` under the console script."""
    code = ("import sys; sys.argv[0] = sys.argv.pop(1); from pipeline.errors import program; "
            "print(program()); from pipeline.cli import main; main()")
    res = subprocess.run([sys.executable, "-c", code, started, "fit", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == program
    assert f"Example: {program} fit --layer all" in res.stdout


def spelled_programs(source: str) -> list[int]:
    """Lines of ``source`` whose strings (docstrings aside) spell ``python cli.py``."""
    tree = ast.parse(source)
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and "python cli.py" in node.value and id(node) not in docs]


def test_messages_spell_the_program_through_one_helper():
    allowed = {PACKAGE / "errors.py", PACKAGE / "cli" / "params.py"}   # the helper, the help
    found = {str(p.relative_to(ROOT)): lines for p in PACKAGE.rglob("*.py") if p not in allowed
             and (lines := spelled_programs(p.read_text(encoding="utf-8")))}
    assert found == {}
    templates = "".join(p.read_text(encoding="utf-8")
                        for p in (PACKAGE / "reporting" / "templates").rglob("*.html"))
    assert "python cli.py" not in templates and "{{ program }}" in templates
    assert spelled_programs('x = "run `python cli.py fit`"\ny = f"{a} python cli.py"\n') == [1, 2]


def test_errors_name_the_python_parameter_and_the_cli_flag(tmp_path):
    from pipeline.errors import StoreError, UsageError, opt

    err = StoreError(f"x exists; pass {opt('overwrite', 'True')} or another {opt('out_csv')}",
                     param="out_csv")
    assert str(err) == "x exists; pass overwrite=True (--overwrite) or another out_csv (--out-csv)"
    assert err.render({"out_csv": "--out"}) == "x exists; pass --overwrite or another --out"
    assert err.param == "out_csv" and isinstance(err, OSError)
    assert isinstance(UsageError("bad", param="layer"), ValueError)

    from conftest import make_folder

    import cli

    data = make_folder(tmp_path / "img", per_class=3)
    (tmp_path / "taken.csv").write_text("")
    runner = CliRunner()
    res = runner.invoke(cli.cli, ["predict", "--model", str(tmp_path / "nothing.joblib"),
                                  str(data), "--out", str(tmp_path / "taken.csv")])
    assert res.exit_code == 1 and "no fitted head" in res.output
    res = runner.invoke(cli.cli, ["extract", "--data", str(data), "--shard", "5/2",
                                  "--out", str(tmp_path / "f")])
    assert res.exit_code == 2 and "--shard '5/2' is not RANK/WORLD" in res.output
    assert "shard=" not in res.output                    # the CLI shows its flags only


def test_heads_saved_before_the_package_layout_still_load(tmp_path):
    """A head pickled when SoftmaxSGD lived in the module pipeline.heads loads now."""
    from pipeline.heads.sgd import SoftmaxSGD

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), np.repeat([0, 1], 20)
    model = SoftmaxSGD(alpha=1e-3, epochs=5).fit(X + y[:, None], y)
    SoftmaxSGD.__module__ = "pipeline.heads"   # how the class was named in old pickles
    try:
        blob = pickle.dumps(model)
    finally:
        SoftmaxSGD.__module__ = "pipeline.heads.sgd"
    assert b"pipeline.heads\n" in blob or b"pipeline.heads\x94" in blob
    loaded = pickle.loads(blob)
    assert type(loaded) is SoftmaxSGD
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_cli_choices_come_from_the_library_options():
    from pipeline import options
    from pipeline.cli.extract import extract
    from pipeline.cli.fit import fit
    from pipeline.heads import list_heads

    params = {p.name: p for p in extract.params}
    assert tuple(params["pool"].type.choices) == options.POOL_CHOICES   # auto + POOLINGS
    assert tuple(params["runtime"].type.choices) == options.RUNTIMES
    clf = {p.name: p for p in fit.params}["clf"].type.choices
    assert list(clf) == list_heads() == ["logreg", "svm", "linear-svm", "knn", "sgd-logreg"]
    assert not os.path.exists(PACKAGE / "names.py")


# ------------------------------------------------------------------ typed results

#: The protocols' names: written in records and parsed in pipeline/runs/protocol.py only.
PROTOCOL_NAMES = {"holdout", "cv"}


def protocol_name_checks(source: str) -> list[int]:
    """Lines of ``source`` (Python) that compare a value with a protocol's name (``==``,
    ``!=``, ``in``, ``not in``; also against a tuple, list or set of names)."""
    def names(node):
        if isinstance(node, ast.Constant):
            return {node.value} if isinstance(node.value, str) else set()
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return set().union(*[names(e) for e in node.elts] or [set()])
        return set()

    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Compare)
            and any(names(side) & PROTOCOL_NAMES for side in (node.left, *node.comparators))]


def test_protocol_names_are_compared_only_where_the_protocol_object_is_defined():
    """The holdout/cv decision is one object that is asked (pipeline.runs.protocol), not a
    string compared in the workflows, the report or the CLI."""
    files = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "runs" / "protocol.py"]
    found = {str(p.relative_to(ROOT)): lines for p in [*files, ROOT / "cli.py"]
             if (lines := protocol_name_checks(p.read_text(encoding="utf-8")))}
    assert found == {}
    template = (PACKAGE / "reporting" / "templates" / "report.html").read_text(encoding="utf-8")
    assert re.findall(r"""(?:==|!=)\s*["'](?:cv|holdout)["']""", template) == []
    # the checker sees what it is for
    planted = ('if record.get("protocol") == "cv":\n    pass\n'
               'x = "a" if p != "holdout" else "b"\n'
               'y = name in ("cv", "other")\nz = kind == "frozen"\n')
    assert sorted(protocol_name_checks(planted)) == [1, 3, 4]


def test_the_report_and_the_tables_read_records_by_attribute(tmp_path, monkeypatch, capsys):
    """Built with the record's JSON view (``record["metrics"]``) switched off: the package
    reads the typed fields, never string keys of a record."""
    import shutil

    from pipeline.api import Run
    from pipeline.cli.tables import print_rows, selection_note
    from pipeline.runs.records import RunRecord, load_records
    from pipeline.workflows.demo import summary_rows
    from pipeline.workflows.fit import summary_line
    from pipeline.workflows.ladder import summarise_group
    from pipeline.workflows.report import build_report

    runs = tmp_path / "runs"
    runs.mkdir()
    for f in (ROOT / "tests" / "data" / "records").glob("schema1-*.json"):
        shutil.copy(f, runs / f.name)

    def no_key_lookups(self, *args):
        raise AssertionError("a run record was read by key, not by attribute")

    monkeypatch.setattr(RunRecord, "__getitem__", no_key_lookups)
    monkeypatch.setattr(RunRecord, "__iter__", no_key_lookups)
    records = load_records(runs)
    html = build_report(runs, tmp_path / "report.html", efficiency_budget=0).read_text()
    assert "cross-validated accuracy" in html or "test accuracy" in html
    rows = summary_rows(records)
    print_rows(rows, rows[0]["metric"], False, records[0].protocol)
    for rec in records:
        assert summarise_group([rec]).protocol == rec.protocol.name
        assert summary_line(rec) and selection_note(rec)
        assert repr(Run(rec)).startswith("Run(")
    assert "ranked by" in capsys.readouterr().out


def bash_blocks(path: Path) -> list[str]:
    """The ```bash blocks of a Markdown file, as written."""
    return re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def test_ci_runs_exactly_the_readme_test_command_and_builds_the_docs():
    """.ci/run's command is the README's test command and the docs' (Getting started):
    lint, the documentation site with --strict, then the tests."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert "pip install -e '.[test]'" in ci and "ruff check . && mkdocs build --strict && " \
        "python -m pytest" in ci
    for page in (ROOT / "README.md", ROOT / "docs" / "getting-started.md"):
        assert ci + "\n" in bash_blocks(page), f"{page.name} shows another test command"


def test_readme_links_point_to_files_that_exist():
    """The README's relative links (docs pages, the photos' attribution) resolve on GitHub."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [m for m in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
             if "://" not in m]
    assert any(link.startswith("docs/") for link in links)
    assert [link for link in links if not (ROOT / link).exists()] == []
