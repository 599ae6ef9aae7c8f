"""One import name: runners/, analysis/ and migrations/ install as gammadb.runners, gammadb.analysis and
gammadb.migrations, so another project's `analysis/` or `migrations/` folder cannot shadow them."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BARE = ("runners", "analysis", "migrations")


def test_every_module_imports_under_gammadb_and_no_bare_package_is_loaded() -> None:
    names = []
    for pkg in ("gammadb", "gammadb.runners", "gammadb.analysis", "gammadb.migrations"):
        module = importlib.import_module(pkg)
        names += [m.name for m in pkgutil.walk_packages(module.__path__, f"{pkg}.")]
    assert {"gammadb.runners.models", "gammadb.analysis.optimal_lr", "gammadb.migrations.env"} - set(names) == set()
    for name in names:
        if name in ("gammadb.migrations.env", "gammadb.__main__"):  # entry points: alembic's, `python -m`
            continue
        importlib.import_module(name)
    bare = sorted(m for m in sys.modules if m.split(".")[0] in BARE)
    assert bare == [], f"bare top-level packages imported: {bare}"


def test_a_foreign_analysis_folder_does_not_shadow_gammadb(tmp_path: Path) -> None:
    # A Django-like project with its own analysis/ and migrations/ packages, as the working directory.
    for pkg in BARE:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("raise ImportError('the wrong package')\n")
    code = "import gammadb.analysis.optimal_lr, gammadb.migrations, gammadb.runners.models; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_wheel_holds_only_gammadb_and_its_migrations_work(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(ROOT)], capture_output=True, text=True)
    if built.returncode != 0 and "No module named" in built.stderr:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("gammadb-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "site")
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"gammadb"}
    assert "gammadb/migrations/script.py.mako" in names
    assert "gammadb/migrations/versions/0001_core_tables.py" in names
    assert "gammadb/runners/models.py" in names and "gammadb/analysis/optimal_lr.py" in names
    (info,) = [t for t in top if t.endswith(".dist-info")]
    if f"{info}/top_level.txt" in names:
        assert (tmp_path / "site" / info / "top_level.txt").read_text().split() == ["gammadb"]

    # The unpacked wheel first on the path (the editable install's finder comes after it).
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    where = subprocess.run([sys.executable, "-c", "import gammadb.migrations as m; print(m.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(tmp_path / "site"))
    up = subprocess.run([sys.executable, "-m", "gammadb", "db", "upgrade", "--url", url],
                        cwd=tmp_path, env=env, capture_output=True, text=True)
    assert up.returncode == 0, up.stdout + up.stderr
    cur = subprocess.run([sys.executable, "-m", "gammadb", "db", "current", "--url", url],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert cur.returncode == 0 and "(head " in cur.stdout and "up to date" in cur.stdout, cur.stdout + cur.stderr


# The layers of docs/architecture.md: what each may import of gammadb's (relative to the repository)
_BELOW = {
    "shared": ("gammadb.errors", "gammadb.records", "gammadb.metrics", "gammadb.urls", "gammadb.buckets"),
    "store": ("gammadb.store", "gammadb.schema", "gammadb.migrations"),
}
_LAYERS = {
    **{f"gammadb/{m.split('.')[1]}.py": _BELOW["shared"] for m in _BELOW["shared"]},
    "gammadb/store": _BELOW["shared"] + _BELOW["store"],
    "gammadb/schema.py": _BELOW["shared"],
}


def _gammadb_imports(path: Path) -> set[str]:
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n == "gammadb" or n.startswith("gammadb.")}


@pytest.mark.parametrize("room", sorted(_LAYERS))
def test_data_flows_one_way_the_store_and_the_shared_modules_import_nothing_above_them(room: str) -> None:
    allowed = _LAYERS[room]
    files = sorted((ROOT / room).glob("*.py")) if (ROOT / room).is_dir() else [ROOT / room]
    assert files
    for path in files:
        above = {n for n in _gammadb_imports(path)
                 if n != "gammadb" and not any(n == a or n.startswith(f"{a}.") for a in allowed)}
        assert not above, f"{path.relative_to(ROOT)} imports {sorted(above)}, above its layer"
