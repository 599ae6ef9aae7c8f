"""Import runs produced elsewhere, and export a sweep as one long table.

The file format (both directions) is one row per (run, step):
- required: ``gamma, eta, seed, step, loss``;
- optional run columns: ``model, depth, width, dataset, loss_fn, batch_size, optimizer``;
- every other numeric column is a per-step metric of that name; ``NAME.lK`` is layer K of metric NAME
  (e.g. ``weight_change.l2``). An empty cell is "not logged at this step"; NaN is a logged NaN.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import polars as pl

from gammadb.errors import InvalidSpecError, NotFoundError
from gammadb.metrics import LOSS, MetricKey
from gammadb.records import RUN_COLUMNS, RunSpec
from gammadb.schema import RunStatus
from gammadb.store import Store

REQUIRED = ("gamma", "eta", "seed", "step", "loss")
IGNORED = ("run_id", "sweep", "status", "point_key")
_LAYER = re.compile(r"^(?P<name>.+)\.l(?P<layer>\d+)$")
_RUN_DEFAULTS: dict[str, Any] = {"model": "unknown", "dataset": "unknown", "loss_fn": "mse",
                                 "optimizer": "sgd", "depth": None, "width": None, "batch_size": None}


@dataclasses.dataclass(frozen=True)
class ImportReport:
    sweep: str
    runs: int
    new_runs: int
    rows: int
    values: int
    diverged: int
    metrics: tuple[str, ...]


def read_table(path: Path) -> pl.DataFrame:
    if not path.exists():
        raise NotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".csv", ".gz"):
            return pl.read_csv(path, infer_schema_length=10_000)
    except Exception as exc:
        raise InvalidSpecError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    raise InvalidSpecError(f"{path}: unsupported format {suffix!r} (use .parquet or .csv)")


def metric_key(column: str) -> MetricKey:
    m = _LAYER.match(column)
    return MetricKey(m["name"], int(m["layer"])) if m else MetricKey(column, 0)


def column_name(key: MetricKey) -> str:
    return key.name if key.layer == 0 else f"{key.name}.l{key.layer}"


def import_frame(store: Store, df: pl.DataFrame, sweep: str, *, source: str = "import") -> ImportReport:
    """Load a (run, step) frame into ``sweep``. Idempotent: the same rows twice change nothing."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InvalidSpecError(f"import needs columns {', '.join(REQUIRED)}; missing: {', '.join(missing)}")
    if df.is_empty():
        raise InvalidSpecError("import file has no rows")
    run_cols = [c for c in RUN_COLUMNS if c in df.columns]
    numeric = {c for c, t in df.schema.items() if t.is_numeric()}
    for c in ("gamma", "eta", "seed", "step", "loss"):
        if c not in numeric:
            raise InvalidSpecError(f"import column {c!r} must be numeric (got {df.schema[c]})")
    metric_cols = [c for c in df.columns
                   if c not in (*REQUIRED, *RUN_COLUMNS, *IGNORED) and c in numeric]
    key_cols = [*run_cols, "gamma", "eta", "seed"]
    df = df.with_columns(
        pl.col("gamma").cast(pl.Float64), pl.col("eta").cast(pl.Float64),
        pl.col("seed").cast(pl.Int64), pl.col("step").cast(pl.Int64), pl.col("loss").cast(pl.Float64),
    )
    bad = df.filter(pl.any_horizontal(pl.col("gamma").is_null(), pl.col("eta").is_null(),
                                      pl.col("seed").is_null(), pl.col("step").is_null()))
    if not bad.is_empty():
        raise InvalidSpecError(f"{bad.height} rows have an empty gamma, eta, seed or step")
    if df.filter((pl.col("gamma") <= 0) | (pl.col("eta") <= 0)).height:
        raise InvalidSpecError("gamma and eta must be > 0 in every row")
    dup = df.select(key_cols + ["step"]).is_duplicated()
    if dup.any():
        raise InvalidSpecError(f"{int(dup.sum())} rows repeat a (run, step): each run's step must appear once")

    groups = df.select(key_cols).unique(maintain_order=True).with_row_index("run_idx")
    df = df.join(groups, on=key_cols, how="left", nulls_equal=True)
    per_run = (
        df.sort("step").group_by("run_idx", maintain_order=True).agg(
            pl.col("step").max().alias("max_step"),
            pl.col("step").filter(~pl.col("loss").is_finite() & pl.col("loss").is_not_null())
            .min().alias("diverged_at"),
        ).sort("run_idx")
    )
    specs = []
    for g, p in zip(groups.iter_rows(named=True), per_run.iter_rows(named=True)):
        cols = {**_RUN_DEFAULTS, **{c: g[c] for c in run_cols}}
        for c in ("depth", "width", "batch_size"):
            cols[c] = None if cols[c] is None else int(cols[c])
        for c in ("model", "dataset", "loss_fn", "optimizer"):
            cols[c] = str(cols[c])
        config = {**cols, "gamma": g["gamma"], "eta": g["eta"], "seed": int(g["seed"]), "source": source}
        specs.append(RunSpec(**cols, gamma=g["gamma"], eta=g["eta"], seed=int(g["seed"]), dtype="unknown",
                             steps_planned=int(p["max_step"]), config=config, device="imported"))
    sweep_rec = store.ensure_sweep(sweep, {"source": source, "imported": True})
    before = {r.id for r in store.runs(sweep=sweep)}
    records = store.ensure_runs(sweep_rec.id, specs)
    run_ids = pl.DataFrame({"run_idx": groups["run_idx"], "run_id": [r.id for r in records]},
                           schema={"run_idx": pl.UInt32, "run_id": pl.Int64})

    value_cols = ["loss", *metric_cols]
    keys = {c: metric_key(c) for c in value_cols}
    ids = store.metric_ids(keys.values())
    long = (
        df.select("run_idx", "step", *[pl.col(c).cast(pl.Float64) for c in value_cols])
        .unpivot(index=["run_idx", "step"], variable_name="column", value_name="value")
        .filter(pl.col("value").is_not_null())
        .join(run_ids, on="run_idx")
        .join(pl.DataFrame({"column": list(keys), "metric_id": [ids[keys[c]] for c in keys]}), on="column")
        .select("run_id", "metric_id", "step", "value")
    )
    with store.writer(batch_rows=200_000, background=False) as w:
        w.write_rows(long.iter_rows())
    store.finish_runs([
        (rec.id, RunStatus.DIVERGED if p["diverged_at"] is not None else RunStatus.COMPLETED,
         int(p["max_step"]), p["diverged_at"])
        for rec, p in zip(records, per_run.iter_rows(named=True))
    ])
    store.rebuild_summaries(run_ids=[r.id for r in records])
    return ImportReport(
        sweep=sweep, runs=len(records), new_runs=len({r.id for r in records} - before), rows=df.height,
        values=long.height, diverged=int(per_run["diverged_at"].is_not_null().sum()),
        metrics=tuple(value_cols),
    )


def import_file(store: Store, path: Path, sweep: str) -> ImportReport:
    return import_frame(store, read_table(path), sweep, source=path.name)


def export_frame(store: Store, sweep: str) -> pl.DataFrame:
    """One row per (run, step): the run's hyper-parameters joined to every per-step metric."""
    store.get_sweep(sweep)
    sql = (
        "SELECT r.id AS run_id, r.model, r.dataset, r.loss_fn, r.optimizer, r.depth, r.width, "
        "r.batch_size, r.gamma, r.eta, r.seed, v.step, m.name, m.layer, v.value "
        "FROM metric_values v JOIN metrics m ON m.id = v.metric_id "
        "JOIN runs r ON r.id = v.run_id JOIN sweeps s ON s.id = r.sweep_id WHERE s.name = ?"
    )
    long = store.read(sql, [sweep])
    index = ["run_id", *RUN_COLUMNS, "gamma", "eta", "seed", "step"]
    if long.is_empty():
        return pl.DataFrame(schema={c: pl.Float64 for c in [*index, LOSS]})
    long = long.with_columns(
        pl.col("value").cast(pl.Float64).fill_null(math.nan),
        pl.when(pl.col("layer") == 0).then(pl.col("name"))
        .otherwise(pl.col("name") + ".l" + pl.col("layer").cast(pl.String)).alias("column"),
        *(pl.col(c).cast(pl.Int64) for c in ("run_id", "step", "seed", "depth", "width", "batch_size")),
        *(pl.col(c).cast(pl.Float64) for c in ("gamma", "eta")),
    )
    wide = long.pivot(on="column", index=index, values="value", aggregate_function="first")
    metrics = sorted(c for c in wide.columns if c not in index and c != LOSS)
    return wide.select(*index, LOSS, *metrics).sort("run_id", "step")


def export_sweep(store: Store, sweep: str, out: Path) -> int:
    df = export_frame(store, sweep)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise InvalidSpecError(f"{out}: export writes .parquet or .csv")
    tmp = out.with_name(out.name + ".tmp")
    if suffix == ".parquet":
        df.write_parquet(tmp)
    else:
        df.write_csv(tmp)
    tmp.replace(out)  # atomic: a reader never sees half a file
    return df.height
