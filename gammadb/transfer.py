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
from gammadb.records import POINT_COLUMNS, RUN_COLUMNS, RunSpec
from gammadb.schema import Metric, Run
from gammadb.store import Store
from gammadb.store.imports import ValueConflictError

REQUIRED = ("gamma", "eta", "seed", "step", "loss")
IGNORED = ("run_id", "sweep", "status", "point_key")
_LAYER = re.compile(r"^(?P<name>.+)\.l(?P<layer>\d+)$")
_RUN_DEFAULTS: dict[str, Any] = {"model": "unknown", "dataset": "unknown", "loss_fn": "mse",
                                 "optimizer": "sgd", "depth": None, "width": None, "batch_size": None}
_RUN_INTS = ("depth", "width", "batch_size")
_RUN_STRINGS = ("model", "dataset", "loss_fn", "optimizer")
# The narrowest column each number lands in on either backend (gammadb.schema): a step also fills
# runs.steps_done / diverged_at and run_summaries.final_step, INTEGER (4 bytes on PostgreSQL), as do
# seed, depth, width and batch_size; a layer fills metrics.layer, SMALLINT.
INT_MAX = 2**31 - 1
LAYER_MAX = 2**15 - 1
_ROW = "__gammadb_row"  # internal columns, named so that no metric column can clash
_RUN = "__gammadb_run"


@dataclasses.dataclass(frozen=True)
class ImportReport:
    sweep: str
    runs: int
    new_runs: int
    rows: int
    values: int
    replaced: int
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


def import_frame(store: Store, df: pl.DataFrame, sweep: str, *, source: str = "import",
                 replace: bool = False) -> ImportReport:
    """Load a (run, step) frame into ``sweep``, all or nothing (one transaction).

    A run is identified by its hyper-parameters and seed (its point key), not by the file: a frame
    with later steps extends the runs, and the same rows twice (or from a copy in another format)
    change nothing. A value the store already holds with another value at that (run, metric, step)
    is refused, unless ``replace`` lets the frame win. Every value the schema cannot hold is refused
    before anything is written, naming its row (counted from 1, header excluded) and column.
    """
    df, metric_cols = _validated(df, source)
    groups = df.select(POINT_COLUMNS).unique(maintain_order=True).with_row_index(_RUN)
    df = df.join(groups, on=list(POINT_COLUMNS), how="left", nulls_equal=True, maintain_order="left")
    last_step = dict(df.group_by(_RUN).agg(pl.col("step").max()).iter_rows())
    specs = []
    for g in groups.iter_rows(named=True):
        cols = {c: g[c] for c in RUN_COLUMNS}
        config = {**cols, "gamma": g["gamma"], "eta": g["eta"], "seed": g["seed"]}
        specs.append(RunSpec(**cols, gamma=g["gamma"], eta=g["eta"], seed=g["seed"], dtype="unknown",
                             steps_planned=int(last_step[g[_RUN]]), config=config, device="imported"))

    value_cols = ["loss", *metric_cols]
    values = pl.concat([
        df.select(pl.col(_ROW).alias("row"), pl.col(_RUN).alias("run_idx"), pl.lit(i, pl.Int32).alias("key_idx"),
                  "step", pl.col(c).cast(pl.Float64).alias("value")).filter(pl.col("value").is_not_null())
        for i, c in enumerate(value_cols)
    ])
    keys = [metric_key(c) for c in value_cols]
    try:
        res = store.import_runs(sweep, {"source": source, "imported": True}, specs, keys, values, replace=replace)
    except ValueConflictError as exc:
        raise InvalidSpecError(
            f"{source} row {exc.row}, column {column_name(exc.key)!r}: step {exc.step} of this run is "
            f"{exc.stored!r} in the store and {exc.incoming!r} here ({exc.count} of the file's values "
            f"{'differs' if exc.count == 1 else 'differ'} from the store); nothing was imported: pass --replace "
            f"to let the file win"
        ) from None
    return ImportReport(
        sweep=sweep, runs=len(specs), new_runs=res.new_runs, rows=df.height, values=res.values,
        replaced=res.replaced, diverged=res.diverged, metrics=tuple(value_cols),
    )


def import_file(store: Store, path: Path, sweep: str, *, replace: bool = False) -> ImportReport:
    return import_frame(store, read_table(path), sweep, source=path.name, replace=replace)


def _validated(df: pl.DataFrame, source: str) -> tuple[pl.DataFrame, list[str]]:
    """The frame with typed point columns and a row number, and its metric columns; or an
    InvalidSpecError naming the first bad column (and row)."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InvalidSpecError(f"import needs columns {', '.join(REQUIRED)}; missing: {', '.join(missing)}")
    if df.is_empty():
        raise InvalidSpecError("import file has no rows")
    numeric = {c for c, t in df.schema.items() if t.is_numeric()}
    for c in (*REQUIRED, *(c for c in _RUN_INTS if c in df.columns)):
        if c not in numeric:
            raise InvalidSpecError(f"{source} column {c!r} must be numeric (got {df.schema[c]})")
    metric_cols = [c for c in df.columns
                   if c not in (*REQUIRED, *RUN_COLUMNS, *IGNORED) and c in numeric]
    seen: dict[MetricKey, str] = {MetricKey(LOSS, 0): "loss"}
    for c in metric_cols:
        key = metric_key(c)
        if key.layer > LAYER_MAX:
            raise InvalidSpecError(f"{source} column {c!r}: layer {key.layer} is beyond {LAYER_MAX}")
        if len(key.name) > Metric.__table__.c.name.type.length:
            raise InvalidSpecError(f"{source} column {c!r}: a metric name has at most "
                                   f"{Metric.__table__.c.name.type.length} characters")
        if key in seen:
            raise InvalidSpecError(f"{source} columns {seen[key]!r} and {c!r} are the same metric")
        seen[key] = c

    checks: list[tuple[str, pl.Expr, str]] = []
    for c in ("gamma", "eta"):
        x = pl.col(c).cast(pl.Float64)
        checks += [(c, x.is_null(), "must not be empty"),
                   (c, ~(x.is_finite() & (x > 0)), "must be a finite number > 0")]
    ints = [("seed", -INT_MAX - 1), ("step", 0), *((c, 0) for c in _RUN_INTS if c in df.columns)]
    for c, low in ints:
        x = pl.col(c).cast(pl.Float64)
        if c in ("seed", "step"):
            checks.append((c, x.is_null(), "must not be empty"))
        checks += [(c, ~x.is_finite() | (x != x.floor()), "must be a whole number"),
                   (c, (x < low) | (x > INT_MAX), f"must be between {low} and {INT_MAX}")]
    for c in (c for c in _RUN_STRINGS if c in df.columns):
        n = Run.__table__.c[c].type.length
        checks.append((c, pl.col(c).cast(pl.String).str.len_chars() > n, f"must have at most {n} characters"))
    bad = df.select(*(m.fill_null(False).alias(str(i)) for i, (_, m, _) in enumerate(checks)))
    for i, (c, _, what) in enumerate(checks):
        hits = bad[str(i)]
        if hits.any():
            row = int(hits.arg_true()[0])
            more = int(hits.sum()) - 1
            got = "" if df[c][row] is None else f", got {df[c][row]!r}"
            raise InvalidSpecError(f"{source} row {row + 1}, column {c!r}: {what}{got}"
                                   + (f"; {more} more rows like it" if more else ""))

    df = df.with_row_index(_ROW, offset=1).with_columns(
        pl.col("gamma").cast(pl.Float64), pl.col("eta").cast(pl.Float64),
        pl.col("seed").cast(pl.Int64), pl.col("step").cast(pl.Int64),
        *((pl.col(c).cast(pl.String) if c in df.columns else pl.lit(None, pl.String))
          .fill_null(_RUN_DEFAULTS[c]).alias(c) for c in _RUN_STRINGS),
        *((pl.col(c).cast(pl.Int64) if c in df.columns else pl.lit(None, pl.Int64)).alias(c) for c in _RUN_INTS),
    )
    dup = df.select(*POINT_COLUMNS, "step").is_duplicated()
    if dup.any():
        first = df.filter(dup).head(1).row(0, named=True)
        twin = df.filter(dup & pl.all_horizontal(pl.col(c).eq_missing(first[c]) for c in (*POINT_COLUMNS, "step")))
        rows = twin[_ROW].to_list()
        raise InvalidSpecError(
            f"{source} rows {rows[0]} and {rows[1]} repeat step {first['step']} of the run gamma={first['gamma']}, "
            f"eta={first['eta']}, seed={first['seed']}: each run's step must appear once"
        )
    return df, metric_cols


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
