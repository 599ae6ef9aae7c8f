"""Import runs produced elsewhere, and export a sweep as one long table.

The file format (both directions) is one row per (run, step):
- required: ``gamma, eta, seed, step, loss``;
- optional run columns: ``model, depth, width, dataset, loss_fn, batch_size, optimizer``;
- every other numeric column is a per-step metric of that name; ``NAME.lK`` is layer K of metric NAME
  (e.g. ``weight_change.l2``). An empty cell is "not logged at this step"; NaN is a logged NaN.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

import polars as pl

from gammadb.errors import InvalidSpecError
from gammadb import import_stream
from gammadb.import_stream import Repeat, SeenSteps, open_batches
from gammadb.metrics import LOSS, MetricKey, column_name, metric_key  # noqa: F401 (re-exported)
from gammadb.records import POINT_COLUMNS, RUN_COLUMNS, RunSpec
from gammadb.store import Store
from gammadb.store.imports import ImportBatch, ValueConflictError, import_batches

REQUIRED = ("gamma", "eta", "seed", "step", "loss")
IGNORED = ("run_id", "sweep", "status", "point_key")
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


def import_frame(store: Store, df: pl.DataFrame, sweep: str, *, source: str = "import",
                 replace: bool = False) -> ImportReport:
    """Load a (run, step) frame into ``sweep``, all or nothing (one transaction).

    A run is identified by its hyper-parameters and seed (its point key), not by the file: a frame
    with later steps extends the runs, and the same rows twice (or from a copy in another format)
    change nothing. A value the store already holds with another value at that (run, metric, step)
    is refused, unless ``replace`` lets the frame win. Every value the schema cannot hold is refused
    and nothing is written, naming its row (counted from 1, header excluded) and column.
    """
    rows = max(1, import_stream.BATCH_CELLS // max(1, df.width))
    return _import(store, df.schema, df.iter_slices(rows), sweep, source=source, replace=replace)


def import_file(store: Store, path: Path, sweep: str, *, replace: bool = False) -> ImportReport:
    """:func:`import_frame` of a .parquet or .csv file (gzip-compressed or not; a FIFO streams too),
    read and written batch by batch in one transaction: memory holds a batch, not the file."""
    src = open_batches(path)
    return _import(store, src.schema, src.frames, sweep, source=path.name, replace=replace)


def _import(store: Store, schema: pl.Schema, frames: Iterable[pl.DataFrame], sweep: str, *, source: str,
            replace: bool) -> ImportReport:
    rows = _FileRows(schema, frames, source)
    try:
        res = import_batches(store, sweep, {"source": source, "imported": True}, rows.batches(), replace=replace)
    except ValueConflictError as exc:
        raise InvalidSpecError(
            f"{source} row {exc.row}, column {column_name(exc.key)!r}: step {exc.step} of this run is "
            f"{exc.stored!r} in the store and {exc.incoming!r} here ({exc.count} of the file's values "
            f"{'differs' if exc.count == 1 else 'differ'} from the store); nothing was imported: pass --replace "
            f"to let the file win"
        ) from None
    return ImportReport(
        sweep=sweep, runs=len(res.run_ids), new_runs=res.new_runs, rows=rows.rows, values=res.values,
        replaced=res.replaced, diverged=res.diverged, metrics=tuple(rows.value_cols),
    )


class _FileRows:
    """An import file's rows batch by batch: checked against the format (the columns when built,
    each row as its batch comes), numbered, given to runs (new runs as they appear), and searched
    for a run's step given twice anywhere in the file.

    After a bad row or a repeated step nothing more is handed on, but the rest of the file is still
    checked, so the error (raised at the end) is the one a check of the whole file gives: the first
    rule broken in rule order, at its first row, with the count of rows like it."""

    def __init__(self, schema: pl.Schema, frames: Iterable[pl.DataFrame], source: str) -> None:
        self.source = source
        missing = [c for c in REQUIRED if c not in schema]
        if missing:
            raise InvalidSpecError(f"import needs columns {', '.join(REQUIRED)}; missing: {', '.join(missing)}")
        self._frames = iter(frames)
        self._head = next((f for f in self._frames if not f.is_empty()), None)
        if self._head is None:
            raise InvalidSpecError("import file has no rows")
        metric_cols = _metric_columns(schema, source)
        self.value_cols = ["loss", *metric_cols]
        self.keys = [metric_key(c) for c in self.value_cols]
        self.checks = _row_checks(schema)
        self.rows = 0
        self.hits: dict[int, list[Any]] = {}  # check index -> [first row, its value, rows]
        self.repeat: Optional[Repeat] = None
        self.seen = SeenSteps()
        self.points: Optional[pl.DataFrame] = None  # POINT_COLUMNS and _RUN of the runs met so far

    def batches(self) -> Iterator[ImportBatch]:
        keys = self.keys
        assert self._head is not None
        for frame in itertools.chain([self._head], self._frames):
            if frame.is_empty():
                continue
            offset, self.rows = self.rows, self.rows + frame.height
            self._check(frame, offset)
            if self.hits:  # only the checks run past a bad row
                continue
            frame = _typed(frame, offset)
            specs, frame = self._with_runs(frame)
            repeat = self.seen.add(frame[_RUN].to_numpy(), frame["step"].to_numpy(), frame[_ROW].to_numpy())
            if repeat is not None and (self.repeat is None or repeat < self.repeat):
                self.repeat = repeat
            if self.repeat is None:
                yield ImportBatch(specs, keys, self._values(frame))
                keys = []
        self._raise_first_problem()

    def _check(self, frame: pl.DataFrame, offset: int) -> None:
        bad = frame.select(*(m.fill_null(False).alias(str(i)) for i, (_, m, _) in enumerate(self.checks)))
        for i, (c, _, _) in enumerate(self.checks):
            hits = bad[str(i)]
            if not hits.any():
                continue
            if i not in self.hits:
                at = int(hits.arg_true()[0])
                self.hits[i] = [offset + at + 1, frame[c][at], 0]
            self.hits[i][2] += int(hits.sum())

    def _with_runs(self, frame: pl.DataFrame) -> tuple[list[RunSpec], pl.DataFrame]:
        """The batch's new runs (numbered on from the runs met before), and the batch with _RUN."""
        # Rows come in stretches of one run (a file sorted by run: one stretch per run and batch):
        # runs are looked up per stretch, not per row.
        key = list(POINT_COLUMNS)
        starts = (pl.int_range(pl.len()) == 0) | pl.any_horizontal(pl.col(c).ne_missing(pl.col(c).shift(1)) for c in key)
        stretch = frame.select(starts.cum_sum().cast(pl.Int64) - 1)[:, 0].to_numpy()
        firsts = frame.filter(starts).select(key)
        groups = firsts.unique(maintain_order=True)
        start = 0 if self.points is None else self.points.height
        if self.points is not None:
            groups = groups.join(self.points, on=key, how="anti", nulls_equal=True, maintain_order="left")
        new = groups.with_row_index(_RUN, offset=start).with_columns(pl.col(_RUN).cast(pl.Int64))
        self.points = new if self.points is None else pl.concat([self.points, new])
        run_of = firsts.join(self.points, on=key, how="left", nulls_equal=True, maintain_order="left")[_RUN]
        frame = frame.with_columns(pl.Series(_RUN, run_of.to_numpy()[stretch]))
        if new.is_empty():
            return [], frame
        last_step = dict(frame.filter(pl.col(_RUN) >= start).group_by(_RUN).agg(pl.col("step").max()).iter_rows())
        specs = []
        for g in new.iter_rows(named=True):
            cols = {c: g[c] for c in RUN_COLUMNS}
            config = {**cols, "gamma": g["gamma"], "eta": g["eta"], "seed": g["seed"]}
            # steps_planned: the last step seen so far; the import's end raises it to the run's last step
            specs.append(RunSpec(**cols, gamma=g["gamma"], eta=g["eta"], seed=g["seed"], dtype="unknown",
                                 steps_planned=int(last_step[g[_RUN]]), config=config, device="imported"))
        return specs, frame

    def _values(self, frame: pl.DataFrame) -> pl.DataFrame:
        return pl.concat([
            frame.select(pl.col(_ROW).alias("row"), pl.col(_RUN).alias("run_idx"), pl.lit(i, pl.Int32).alias("key_idx"),
                         "step", pl.col(c).cast(pl.Float64).alias("value")).filter(pl.col("value").is_not_null())
            for i, c in enumerate(self.value_cols)
        ])

    def _raise_first_problem(self) -> None:
        if self.hits:
            i = min(self.hits)
            c, _, what = self.checks[i]
            row, value, n = self.hits[i]
            got = "" if value is None else f", got {value!r}"
            raise InvalidSpecError(f"{self.source} row {row}, column {c!r}: {what}{got}"
                                   + (f"; {n - 1} more rows like it" if n > 1 else ""))
        if self.repeat is not None:
            assert self.points is not None
            run = self.points.row(self.repeat.run, named=True)
            raise InvalidSpecError(
                f"{self.source} rows {self.repeat.first_row} and {self.repeat.row} repeat step {self.repeat.step} "
                f"of the run gamma={run['gamma']}, eta={run['eta']}, seed={run['seed']}: each run's step must "
                f"appear once"
            )


def _metric_columns(schema: pl.Schema, source: str) -> list[str]:
    """The file's metric columns (numeric, not a run column); or an InvalidSpecError naming the
    first bad column."""
    from gammadb.schema import Metric

    numeric = {c for c, t in schema.items() if t.is_numeric()}
    for c in (*REQUIRED, *(c for c in _RUN_INTS if c in schema)):
        if c not in numeric:
            raise InvalidSpecError(f"{source} column {c!r} must be numeric (got {schema[c]})")
    metric_cols = [c for c in schema if c not in (*REQUIRED, *RUN_COLUMNS, *IGNORED) and c in numeric]
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
    return metric_cols


def _row_checks(schema: pl.Schema) -> list[tuple[str, pl.Expr, str]]:
    """(column, true where a row breaks the rule, the rule), in the order they are reported."""
    from gammadb.schema import Run

    checks: list[tuple[str, pl.Expr, str]] = []
    for c in ("gamma", "eta"):
        x = pl.col(c).cast(pl.Float64)
        checks += [(c, x.is_null(), "must not be empty"),
                   (c, ~(x.is_finite() & (x > 0)), "must be a finite number > 0")]
    ints = [("seed", -INT_MAX - 1), ("step", 0), *((c, 0) for c in _RUN_INTS if c in schema)]
    for c, low in ints:
        x = pl.col(c).cast(pl.Float64)
        if c in ("seed", "step"):
            checks.append((c, x.is_null(), "must not be empty"))
        checks += [(c, ~x.is_finite() | (x != x.floor()), "must be a whole number"),
                   (c, (x < low) | (x > INT_MAX), f"must be between {low} and {INT_MAX}")]
    for c in (c for c in _RUN_STRINGS if c in schema):
        n = Run.__table__.c[c].type.length
        checks.append((c, pl.col(c).cast(pl.String).str.len_chars() > n, f"must have at most {n} characters"))
    return checks


def _typed(df: pl.DataFrame, offset: int) -> pl.DataFrame:
    """A checked batch with typed point columns (run columns defaulted) and its file row numbers."""
    return df.with_row_index(_ROW, offset=offset + 1).with_columns(
        pl.col(_ROW).cast(pl.Int64),
        pl.col("gamma").cast(pl.Float64), pl.col("eta").cast(pl.Float64),
        pl.col("seed").cast(pl.Int64), pl.col("step").cast(pl.Int64),
        *((pl.col(c).cast(pl.String) if c in df.columns else pl.lit(None, pl.String))
          .fill_null(_RUN_DEFAULTS[c]).alias(c) for c in _RUN_STRINGS),
        *((pl.col(c).cast(pl.Int64) if c in df.columns else pl.lit(None, pl.Int64)).alias(c) for c in _RUN_INTS),
    )


def export_frame(store: Store, sweep: str) -> pl.DataFrame:
    """One row per (run, step): the run's hyper-parameters joined to every per-step metric."""
    store.get_sweep(sweep)
    runs = store.read(
        "SELECT r.id AS run_id, r.model, r.dataset, r.loss_fn, r.optimizer, r.depth, r.width, "
        "r.batch_size, r.gamma, r.eta, r.seed FROM runs r JOIN sweeps s ON s.id = r.sweep_id WHERE s.name = ?",
        [sweep])
    index = ["run_id", *RUN_COLUMNS, "gamma", "eta", "seed", "step"]
    series = store.series(runs["run_id"].to_list(), metrics=()) if not runs.is_empty() else runs
    if series.is_empty():
        return pl.DataFrame(schema={c: pl.Float64 for c in [*index, LOSS]})
    long = series.rename({"metric": "name"}).join(runs.with_columns(pl.col("run_id").cast(pl.Int64)), on="run_id")
    long = long.with_columns(
        pl.col("value").cast(pl.Float64),
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
