"""The chunked layout of per-step series (`gammadb.store.chunks`, migration 0004): the codec and the
merge rules, what the writer stores on both backends (exactly-once steps, NaN and +-inf, sparse
series, rewrites and truncation across chunk boundaries), and the views that decode it in SQL."""

from __future__ import annotations

import math
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gammadb.metrics import MetricKey
from gammadb.records import RunSpec
from gammadb.store import Store, chunks
from gammadb.store.chunks import CHUNK_STEPS, Series

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "store_0003.sqlite"
SPECIALS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324, -2.2250738585072014e-308, 1.7976931348623157e308,
            1.0 / 3.0, -123.456e-200]


# ---------------------------------------------------------------------------------------------- codec
def test_split_cuts_at_gaps_and_windows_and_expand_inverts_it() -> None:
    steps = np.array([0, 1, 2, 5, 6, 1022, 1023, 1024, 1025, 3000], dtype=np.int64)
    values = np.arange(steps.size, dtype=np.float64) / 7
    rows = chunks.split(Series(steps, values))
    assert [(f, n) for f, n, _ in rows] == [(0, 3), (5, 2), (1022, 2), (1024, 2), (3000, 1)]
    got_steps, got_values = chunks.expand(*zip(*rows))
    assert got_steps.tolist() == steps.tolist() and got_values.tobytes() == values.tobytes()
    # rows of several series one after another (as a read returns them): the steps fall back to the
    # next series' first step; each row's steps are its first step onwards, whatever came before
    rng = np.random.default_rng(7)
    many = [(int(rng.integers(0, 5000)), int(rng.integers(1, 1025)), b"") for _ in range(300)]
    many = [(f, n, np.full(n, f, dtype="<f8").tobytes()) for f, n, _ in many]
    got_steps, got_values = chunks.expand(*zip(*many))
    assert got_steps.tolist() == [f + i for f, n, _ in many for i in range(n)]
    assert got_values.tolist() == [float(f) for f, n, _ in many for _ in range(n)]
    assert chunks.expand([42], [1], [b"\0" * 8])[0].tolist() == [42]


def test_merge_and_last_wins() -> None:
    old = Series(np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0]))
    new = Series(np.array([3, 4]), np.array([30.0, 40.0]))
    m = chunks.merge(old, new)
    assert m.steps.tolist() == [1, 2, 3, 4] and m.values.tolist() == [1.0, 2.0, 30.0, 40.0]
    lw = chunks.last_wins(np.array([5, 1, 5, 2]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert lw.steps.tolist() == [1, 2, 5] and lw.values.tolist() == [2.0, 4.0, 3.0]
    nan_old = Series(np.array([1, 2]), np.array([math.nan, 1.0]))
    assert chunks.differing(nan_old, Series(np.array([1, 2]), np.array([math.nan, 1.0]))).size == 0  # NaN == NaN
    assert chunks.differing(nan_old, Series(np.array([2, 9]), np.array([1.5, 0.0]))).tolist() == [0]


# ---------------------------------------------------------------------------------------------- writer
def _runs(store: Store, n: int, steps: int = 5000) -> list[int]:
    sweep = store.ensure_sweep("c", {})
    specs = [RunSpec(model="mlp", dataset="teacher", loss_fn="mse", optimizer="sgd", depth=2, width=8, batch_size=4,
                     gamma=1.0, eta=0.1 * (i + 1), seed=0, dtype="float64", steps_planned=steps, config={})
             for i in range(n)]
    return [r.id for r in store.ensure_runs(sweep.id, specs)]


def _chunk_rows(store: Store) -> list[tuple[int, int, int, int]]:
    return [tuple(r) for r in store.read("SELECT run_id, metric_id, first_step, n FROM metric_chunks "
                                         "ORDER BY run_id, metric_id, first_step").iter_rows()]


def test_writer_round_trips_every_float_and_rewrites_steps_exactly_once(store: Store) -> None:
    """log_block and log over 2.5 chunk windows in small batches (each window written many times),
    special floats, a step rewritten in a later batch and across a window boundary: every step once,
    the last value written, bit for bit."""
    a, b, c = _runs(store, 3)
    keys = [MetricKey("loss"), MetricKey("weight_change", 1)]
    want: dict[tuple[int, str, int], float] = {}
    rng = np.random.default_rng(0)
    with store.writer(batch_rows=700) as w:
        for t in range(2600):
            rows = rng.standard_normal((2, 2))
            if t < len(SPECIALS):
                rows[0, 0] = SPECIALS[t]
            w.log_block(t, [a, b], keys, rows)
            for k, run in enumerate((a, b)):
                want[run, "loss", t] = rows[k, 0]
                want[run, "weight_change", t] = rows[k, 1]
        for t in (5, 1023, 1024, 2599):  # rewrites, the second batch after the first was committed
            w.log(a, t, {keys[0]: -float(t)})
            want[a, "loss", t] = -float(t)
        for t in range(0, 2600, 100):  # a sparse series: one row per value
            w.log(c, t, {MetricKey("test_loss"): 1.0 / (t + 1)})
            want[c, "test_loss", t] = 1.0 / (t + 1)
    got = store.series([a, b, c], metrics=["loss", "weight_change", "test_loss"])
    assert got.height == len(want)
    for run, metric, step, value in got.select("run_id", "metric", "step", "value").iter_rows():
        expect = want[run, metric, step]
        assert (math.isnan(expect) and math.isnan(value)) or np.float64(expect).tobytes() == np.float64(value).tobytes()
    rows = _chunk_rows(store)
    assert all(n <= CHUNK_STEPS and f // CHUNK_STEPS == (f + n - 1) // CHUNK_STEPS for _, _, f, n in rows)
    loss_id = store.metric_id("loss")
    assert [(f, n) for r, m, f, n in rows if r == a and m == loss_id] == [(0, 1024), (1024, 1024), (2048, 552)]
    assert sum(1 for r, *_ in rows if r == c) == 26  # cadence steps are not consecutive


def test_truncation_inside_a_chunk_then_resume(store: Store) -> None:
    (a,) = _runs(store, 1)
    key = MetricKey("loss")
    with store.writer() as w:
        for t in range(3000):
            w.log(a, t, {key: float(t)})
    store.delete_steps_after(a, 1500)  # mid-window: the chunk 1024..2047 is cut, later ones dropped
    assert store.series([a])["step"].max() == 1500
    with store.writer() as w:
        for t in range(1501, 2100):
            w.log(a, t, {key: -float(t)})
    s = store.series([a])
    assert s["step"].to_list() == list(range(2100))
    assert s["value"].to_list() == [float(t) for t in range(1501)] + [-float(t) for t in range(1501, 2100)]
    assert [(f, n) for _, _, f, n in _chunk_rows(store)] == [(0, 1024), (1024, 1024), (2048, 52)]


def test_bytes_per_value_on_sqlite(sqlite_url: str, tmp_path: Path) -> None:
    """A dense sweep costs about 8.5 bytes a value on disk (the row-per-value table took 22)."""
    store = Store.open(sqlite_url)
    ids = _runs(store, 20, 10_000)
    keys = [MetricKey("loss"), MetricKey("weight_change", 1)]
    block = np.linspace(0.0, 1.0, 40).reshape(20, 2)
    with store.writer(batch_rows=100_000) as w:
        for t in range(10_000):
            w.log_block(t, ids, keys, block + t)
    store.close()
    path = sqlite_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    conn.execute("VACUUM")
    conn.close()
    per_value = Path(path).stat().st_size / (20 * 10_000 * 2)
    assert 8.0 < per_value <= 10.0, per_value


# ---------------------------------------------------------------------------------------------- views
def test_views_decode_the_chunks_in_sql(store: Store) -> None:
    (a,) = _runs(store, 1)
    with store.writer() as w:
        for t, v in enumerate(SPECIALS * 150):  # 1,500 steps: two windows
            w.log(a, t, {MetricKey("loss"): v})
    got = store.read("SELECT step, loss FROM loss_curves WHERE run_id = ? ORDER BY step", [a])
    assert got["step"].to_list() == list(range(1500))
    for step, value in got.iter_rows():
        expect = SPECIALS[step % len(SPECIALS)]
        if math.isnan(expect):  # SQLite holds no NaN: NULL there, as before; NaN on PostgreSQL
            assert value is None or math.isnan(value)
        else:
            assert np.float64(expect).tobytes() == np.float64(value).tobytes(), (step, value)
    n = store.read("SELECT COUNT(*) AS n FROM metric_series WHERE run_id = ? AND metric = 'loss' AND step % 100 = 0", [a])
    assert n["n"][0] == 15


# ---------------------------------------------------------------------------------------------- migration
def _rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


SERIES_SQL = "SELECT * FROM metric_series ORDER BY run_id, metric, layer, step"
LOSS_SQL = "SELECT * FROM loss_curves ORDER BY run_id, step"
VALUES_SQL = "SELECT run_id, metric_id, step, value FROM metric_values ORDER BY run_id, metric_id, step"


def test_0004_moves_a_store_written_at_0003_and_back(tmp_path: Path) -> None:
    """tests/data/store_0003.sqlite was written by gammadb at revision 0003 (make_store_0003.py): NaN,
    +-inf, subnormal and -0.0 values, a diverged run, a resumed run, a cadence series. After the
    upgrade the views return the same rows, bit for bit; the downgrade gives back the same table."""
    path = tmp_path / "s.sqlite"
    shutil.copy(FIXTURE, path)
    before = {sql: _rows(path, sql) for sql in (SERIES_SQL, LOSS_SQL, VALUES_SQL)}
    assert len(before[VALUES_SQL]) == 5221 and any(r[3] is None for r in before[VALUES_SQL])
    store = Store.open(f"sqlite:///{path}", check=False)
    try:
        assert store.current_revision() == "0003"
        store.upgrade("0004")
        assert store.current_revision() == "0004"
        for sql, rows in before.items():
            assert _rows(path, sql) == rows, sql
        assert _rows(path, "SELECT COUNT(*) FROM metric_chunks") == [(24,)]
        loss = store.series([1])
        assert loss.height == 1501 and math.isnan(loss["value"][700]) and loss["value"][701] == math.inf
        assert store.series([3])["value"][400] == 2.0 - 0.4  # the resumed run's rewritten steps
        store.downgrade("0003")
        assert _rows(path, VALUES_SQL) == before[VALUES_SQL]
        assert _rows(path, SERIES_SQL) == before[SERIES_SQL]
    finally:
        store.close()


def test_0004_on_postgresql(pg_url: str) -> None:
    """The fixture's rows loaded into a PostgreSQL store at 0003 (NaN as NaN there), upgraded: the
    views return the same rows; downgraded: the same table."""
    store = Store.open(pg_url, check=False)
    try:
        store.upgrade("0003")
        src = sqlite3.connect(FIXTURE)
        conn = store.raw_connection()
        with conn.transaction():
            cur = conn.cursor()
            for table, cols in (("sweeps", "id, name, spec, code_version"),
                                ("runs", "id, sweep_id, point_key, model, dataset, loss_fn, optimizer, depth, width, "
                                         "batch_size, gamma, eta, seed, dtype, device, config, status, steps_planned, "
                                         "steps_done, diverged_at"),
                                ("metrics", "id, name, layer, kind"),
                                ("metric_values", "run_id, metric_id, step, value")):
                rows = src.execute(f"SELECT {cols} FROM {table}").fetchall()
                if table == "metric_values":
                    rows = [(r, m, s, math.nan if v is None else v) for r, m, s, v in rows]
                marks = ", ".join(["%s"] * len(cols.split(",")))
                cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)
        conn.close()
        src.close()

        def rows(sql: str) -> list[tuple]:
            return [tuple("nan" if isinstance(x, float) and math.isnan(x) else x for x in r)
                    for r in store.read(sql).iter_rows()]

        before = {sql: rows(sql) for sql in (SERIES_SQL, LOSS_SQL, VALUES_SQL)}
        assert len(before[VALUES_SQL]) == 5221
        store.upgrade("0004")
        for sql, want in before.items():
            assert rows(sql) == want, sql
        store.downgrade("0003")
        assert rows(VALUES_SQL) == before[VALUES_SQL]
    finally:
        store.close()


def test_sqlite3_shell_reads_the_views(tmp_path: Path, sqlite_url: str) -> None:
    """The README's queries run as they are in the sqlite3 shell (no gammadb function needed)."""
    import subprocess

    shell = shutil.which("sqlite3")
    if shell is None:
        pytest.skip("no sqlite3 shell here (apt-get install sqlite3)")
    store = Store.open(sqlite_url)
    (a,) = _runs(store, 1)
    with store.writer() as w:
        for t in range(1200):
            w.log(a, t, {MetricKey("loss"): 1.0 / (t + 1)})
    store.close()
    out = subprocess.run([shell, sqlite_url.removeprefix("sqlite:///"),
                          "SELECT step, loss = 1.0 / (step + 1) FROM loss_curves WHERE run_id = 1 AND step % 500 = 0 ORDER BY step"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0|1", "500|1", "1000|1"]  # the decoded values equal the logged ones exactly


def test_series_frame_types(store: Store) -> None:
    (a,) = _runs(store, 1)
    with store.writer() as w:
        w.log(a, 3, {MetricKey("loss"): 1.0})
    df = store.series([a])
    assert df.schema == pl.Schema({"run_id": pl.Int64, "metric": pl.String, "layer": pl.Int64, "step": pl.Int64,
                                   "value": pl.Float64})


def test_a_row_the_readers_cannot_decode_is_refused(store: Store) -> None:
    """The table's CHECK keeps every row decodable (n values of 8 bytes inside one window): a
    hand-written INSERT of a torn blob, an empty chunk or one crossing a window fails, on both
    backends, and the stored series is unchanged."""
    (a,) = _runs(store, 1)
    with store.writer() as w:
        w.log(a, 0, {MetricKey("loss"): 1.0})
    loss = store.metric_id("loss")
    conn = store.raw_connection()
    p = "?" if store.backend == "sqlite" else "%s"
    bad = [(a, loss, 10, 2, b"\x00" * 15), (a, loss, 20, 0, b""), (a, loss, 1020, 8, b"\x00" * 64),
           (a, loss, -5, 1, b"\x00" * 8), (a, loss, 3000, 1025, b"\x00" * 8200)]
    try:
        for row in bad:
            with pytest.raises(Exception, match="(?i)check|constraint"):
                if store.backend == "sqlite":
                    conn.execute(f"INSERT INTO metric_chunks VALUES ({p}, {p}, {p}, {p}, {p})", row)
                else:
                    with conn.transaction():
                        conn.execute(f"INSERT INTO metric_chunks VALUES ({p}, {p}, {p}, {p}, {p})", row)
    finally:
        conn.close()
    assert store.series([a])["value"].to_list() == [1.0]


def test_a_block_step_logged_twice_in_one_batch_keeps_its_last_values(store: Store) -> None:
    a, b = _runs(store, 2)
    keys = [MetricKey("loss")]
    with store.writer() as w:
        for t in (0, 1, 2, 1, 3):  # step 1 again (a resumed ensemble), before any commit
            w.log_block(t, [a, b], keys, np.array([[10.0 * t], [-10.0 * t]]))
        w.log_block(1, [a, b], keys, np.array([[7.0], [-7.0]]))
    s = store.series([a, b])
    assert s.filter(pl.col("run_id") == a)["value"].to_list() == [0.0, 7.0, 20.0, 30.0]
    assert s.filter(pl.col("run_id") == b)["value"].to_list() == [0.0, -7.0, -20.0, -30.0]
