"""`gammadb import` / `gammadb export`: idempotent import, exact round trip, clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gammadb.errors import InvalidSpecError, NotFoundError
from gammadb.store import Store
from gammadb.transfer import export_frame, import_file, import_frame


def synthetic(n_steps: int = 50) -> pl.DataFrame:
    rows = []
    for gamma in (0.1, 1.0, 10.0):
        for eta in (0.01, 0.1):
            for seed in (0, 1):
                for step in range(1, n_steps + 1):
                    loss = 1.0 / (1 + eta * step / gamma)
                    if gamma == 10.0 and eta == 0.1 and step >= 30:
                        loss = math.nan if step == 30 else math.inf
                    rows.append(dict(gamma=gamma, eta=eta, seed=seed, step=step, loss=loss, depth=3,
                                     model="mlp", **{"weight_change.l1": 0.01 * step, "ntk_alignment": 0.5}))
    return pl.DataFrame(rows)


def test_import_twice_equals_once_and_export_round_trips(store: Store, tmp_path: Path) -> None:
    df = synthetic()
    path = tmp_path / "runs.parquet"
    df.write_parquet(path)
    first = import_file(store, path, "imp")
    count = store.read("SELECT COUNT(*) AS n FROM metric_values")["n"][0]
    second = import_file(store, path, "imp")
    assert (first.runs, first.new_runs, second.new_runs) == (12, 12, 0)
    assert store.read("SELECT COUNT(*) AS n FROM metric_values")["n"][0] == count == 12 * 50 * 3
    assert first.diverged == 2

    out = export_frame(store, "imp")
    cols = df.columns
    got = out.select(cols).sort("gamma", "eta", "seed", "step")
    want = df.select(cols).sort("gamma", "eta", "seed", "step")
    assert_frame_equal(got, want, check_dtypes=False)


def test_diverged_at_first_nonfinite_step(store: Store) -> None:
    import_frame(store, synthetic(), "imp")
    runs = store.runs_frame("imp").filter(pl.col("status") == "diverged")
    assert runs.height == 2 and runs["diverged_at"].to_list() == [30, 30]
    assert all(g == 10.0 for g in runs["gamma"].to_list())


def test_csv_import_and_export(store: Store, tmp_path: Path) -> None:
    from gammadb.transfer import export_sweep

    path = tmp_path / "runs.csv"
    synthetic(10).write_csv(path)
    rep = import_file(store, path, "csv")
    assert rep.runs == 12
    out = tmp_path / "out.csv"
    assert export_sweep(store, "csv", out) == 120
    back = pl.read_csv(out)
    assert back.height == 120 and math.isnan(back.filter(pl.col("step") == 10)["loss"].max()) is False


@pytest.mark.parametrize("mutate, message", [
    (lambda df: df.drop("eta"), "missing: eta"),
    (lambda df: df.with_columns(pl.lit(-1.0).alias("gamma")), "must be > 0"),
    (lambda df: pl.concat([df, df.head(1)]), "repeat a"),
    (lambda df: df.head(0), "no rows"),
], ids=["missing-column", "negative-gamma", "duplicate-step", "empty"])
def test_bad_files_are_refused_before_writing(store: Store, mutate, message: str) -> None:
    with pytest.raises(InvalidSpecError, match=message):
        import_frame(store, mutate(synthetic(5)), "bad")
    assert store.read("SELECT COUNT(*) AS n FROM runs")["n"][0] == 0


def test_missing_file(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        import_file(store, tmp_path / "nope.parquet", "x")
