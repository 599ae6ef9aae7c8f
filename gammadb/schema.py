"""ORM models: tables only. The store (gammadb.store) is the only code that opens a Session.

Layout, and why:
- ``metric_chunks`` holds every per-step value, a blob of float64 per (run, metric, run of up to 1,024
  consecutive steps), keyed by integers ``(run_id, metric_id, first_step)``, so one series is one range
  scan and about 8.5 bytes a value (see :mod:`gammadb.store.chunks`); the view ``metric_values``
  decodes it to one row per value.
- ``metrics`` is the dictionary of series names: (name, layer), layer 0 = whole model.
- ``run_summaries`` caches per-run aggregates so sweep-wide questions need not scan every step.
- ``series_buckets`` caches series reduced onto log-spaced step grids (what charts and the plateau
  analysis read), checked against ``run_versions``, which triggers bump on every write of a run's series.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from gammadb.records import RunStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


IntPk = Annotated[int, mapped_column(Integer, primary_key=True, autoincrement=True)]
Name = Annotated[str, mapped_column(String(200))]
Timestamp = Annotated[dt.datetime, mapped_column(DateTime(timezone=True), server_default=func.now())]
MaybeTimestamp = Annotated[Optional[dt.datetime], mapped_column(DateTime(timezone=True))]
Real = Annotated[float, mapped_column(Double)]
JsonDoc = Annotated[dict[str, Any], mapped_column(JSON)]


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[IntPk]
    name: Mapped[Name] = mapped_column(unique=True)
    spec: Mapped[JsonDoc]
    code_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[Timestamp]


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        # A run is unique by (sweep, hyper-parameters, seed): point_key is a canonical digest of them,
        # so no float takes part in a key.
        UniqueConstraint("sweep_id", "point_key"),
        Index("ix_runs_sweep_status", "sweep_id", "status"),
        Index("ix_runs_sweep_gamma_eta", "sweep_id", "gamma", "eta"),
    )

    id: Mapped[IntPk]
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    point_key: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(32))
    dataset: Mapped[str] = mapped_column(String(64))
    loss_fn: Mapped[str] = mapped_column(String(16))
    optimizer: Mapped[str] = mapped_column(String(16))
    depth: Mapped[Optional[int]]  # NULL: not recorded (e.g. imported without a depth column)
    width: Mapped[Optional[int]]
    batch_size: Mapped[Optional[int]]
    gamma: Mapped[Real]
    eta: Mapped[Real]
    seed: Mapped[int]
    dtype: Mapped[str] = mapped_column(String(16))
    device: Mapped[str] = mapped_column(String(32))
    config: Mapped[JsonDoc]
    status: Mapped[RunStatus] = mapped_column(
        Enum(RunStatus, name="run_status", native_enum=False, length=16,
             values_callable=lambda e: [m.value for m in e]),
        default=RunStatus.PENDING,
    )
    steps_planned: Mapped[int]
    steps_done: Mapped[int] = mapped_column(default=0)
    diverged_at: Mapped[Optional[int]]
    error: Mapped[Optional[str]] = mapped_column(Text)
    worker: Mapped[Optional[str]] = mapped_column(String(200))
    heartbeat_at: Mapped[MaybeTimestamp]
    created_at: Mapped[Timestamp]
    started_at: Mapped[MaybeTimestamp]
    finished_at: Mapped[MaybeTimestamp]


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("name", "layer"),)

    # INTEGER on SQLite so the key aliases the rowid and autoincrements.
    id: Mapped[int] = mapped_column(
        SmallInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    name: Mapped[str] = mapped_column(String(100))
    layer: Mapped[int] = mapped_column(SmallInteger, default=0)  # 0: whole model; 1..L: W_1..W_L
    kind: Mapped[str] = mapped_column(String(16))  # gammadb.metrics.MetricKind value


class MetricChunk(Base):
    """Consecutive steps ``first_step .. first_step + n - 1`` of one series, as one blob of
    little-endian float64 (NaN and +-inf as they are), never crossing an aligned window of
    :data:`gammadb.store.chunks.CHUNK_STEPS` steps. The view ``metric_values`` decodes them to one
    row per value (run_id, metric_id, step, value) for hand-written SQL."""

    __tablename__ = "metric_chunks"
    __table_args__ = (
        # A row the readers can decode: 1..1,024 values, within one window, 8 bytes each.
        CheckConstraint("n >= 1 AND n <= 1024 AND first_step >= 0 AND first_step / 1024 = (first_step + n - 1) / 1024 "
                        "AND length(vals) = 8 * n", name="chunk_shape"),
        {"sqlite_with_rowid": False},
    )

    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    metric_id: Mapped[int] = mapped_column(SmallInteger, ForeignKey("metrics.id"), primary_key=True)
    first_step: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    n: Mapped[int]
    vals: Mapped[bytes] = mapped_column(LargeBinary)


class ChunkOffset(Base):
    """0 .. CHUNK_STEPS - 1: the offsets the ``metric_values`` view expands a chunk into (constant)."""

    __tablename__ = "chunk_offsets"

    i: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


class FloatScale(Base):
    """2^(max(e, 1) - 1075) for each float64 exponent e (0..2047): the view's decoder multiplies the mantissa by
    it (constant; plain SQL has no power function on every SQLite build)."""

    __tablename__ = "float_scales"

    e: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    scale: Mapped[float] = mapped_column(Double)


class RunVersion(Base):
    """How many times a run's series have been written: triggers on ``metric_chunks`` (migration 0005)
    bump it on every insert, update and delete, so a derived cache can tell when it is stale."""

    __tablename__ = "run_versions"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True,
                                        autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)


class SeriesBuckets(Base):
    """A cache: one series of one run reduced onto a log-spaced grid of ``per_decade`` buckets a decade,
    packed (``layout``: see :mod:`gammadb.analysis.downsample`), computed from the series when the
    run was at ``version``; a row whose version is not the run's current one is stale and never read."""

    __tablename__ = "series_buckets"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    metric_id: Mapped[int] = mapped_column(SmallInteger, ForeignKey("metrics.id"), primary_key=True)
    per_decade: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    layout: Mapped[int] = mapped_column(SmallInteger)
    version: Mapped[int] = mapped_column(BigInteger)
    buckets: Mapped[bytes] = mapped_column(LargeBinary)


class RunSummary(Base):
    """Per-run aggregates of the training loss, filled when a run ends; rebuildable on demand."""

    __tablename__ = "run_summaries"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    initial_loss: Mapped[Optional[float]] = mapped_column(Double)
    final_loss: Mapped[Optional[float]] = mapped_column(Double)
    final_step: Mapped[Optional[int]]
    min_loss: Mapped[Optional[float]] = mapped_column(Double)
    min_loss_step: Mapped[Optional[int]]
    max_loss: Mapped[Optional[float]] = mapped_column(Double)  # largest finite loss (migration 0006)
    tail_mean_loss: Mapped[Optional[float]] = mapped_column(Double)  # mean over the last 10% of steps
    diverged: Mapped[bool]
    steps_logged: Mapped[int]
    updated_at: Mapped[Timestamp]
