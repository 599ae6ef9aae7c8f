"""Per-step series in chunks: ``metric_chunks`` replaces the row-per-value ``metric_values`` table.

A row of ``metric_chunks`` holds consecutive steps ``first_step .. first_step + n - 1`` of one (run,
metric) as one blob of little-endian float64, never crossing an aligned window of 1,024 steps (see
``gammadb/store/chunks.py``). ``metric_values`` becomes a view with the old columns, decoding the blobs
in plain SQL through two small constant tables (``chunk_offsets``: 0..1023; ``float_scales``: the
power of two of each float64 exponent), so ``loss_curves``, ``metric_series`` and hand-written
queries return the same rows as before, in the ``sqlite3`` shell and in ``psql``. As before a NaN
reads as NULL on SQLite (which cannot hold one) and as NaN on PostgreSQL.

The upgrade moves every value, run by run in keyset batches (memory bounded by a batch); the
downgrade moves them back to one row per value.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

CHUNK_STEPS = 1024  # frozen here: the layout this revision writes
RUN_BATCH = 200
# A row the readers can decode: 1..1,024 values, within one window, 8 bytes each.
CHUNK_SHAPE = ("n >= 1 AND n <= 1024 AND first_step >= 0 AND first_step / 1024 = (first_step + n - 1) / 1024 "
               "AND length(vals) = 8 * n")

# 0002's views over metric_values, unchanged: they now read the decoding view of that name.
SERIES_VIEWS = {
    "loss_curves": """
        SELECT r.id AS run_id, s.name AS sweep, r.model, r.dataset, r.loss_fn, r.optimizer,
               r.depth, r.width, r.batch_size, r.gamma, r.eta, r.seed, v.step, v.value AS loss
        FROM metric_values v
        JOIN metrics m ON m.id = v.metric_id AND m.name = 'loss' AND m.layer = 0
        JOIN runs r ON r.id = v.run_id
        JOIN sweeps s ON s.id = r.sweep_id""",
    "metric_series": """
        SELECT r.id AS run_id, s.name AS sweep, r.gamma, r.eta, r.seed, r.depth, r.width,
               m.name AS metric, m.layer, v.step, v.value
        FROM metric_values v
        JOIN metrics m ON m.id = v.metric_id
        JOIN runs r ON r.id = v.run_id
        JOIN sweeps s ON s.id = r.sweep_id""",
}


def decode_view(dialect: str) -> str:
    """``metric_values`` over the chunks: one row per (chunk, offset), the float64 at that offset
    rebuilt from its sign, exponent and mantissa bits (exact: an integer below 2^53 times a power of
    two). SQLite reads the bytes through hex(); PostgreSQL through get_byte()."""
    if dialect == "sqlite":
        h = "hex(substr(c.vals, 8 * o.i + 1, 8))"

        def nib(p: int) -> str:  # the p-th hex digit (1-based), little-endian bytes
            return f"(instr('0123456789ABCDEF', substr({h}, {p}, 1)) - 1)"

        sign = f"({nib(15)} >= 8)"
        exp = f"((({nib(15)} & 7) << 8) | ({nib(16)} << 4) | {nib(13)})"
        shifts = [(14, 48), (11, 44), (12, 40), (9, 36), (10, 32), (7, 28), (8, 24), (5, 20), (6, 16),
                  (3, 12), (4, 8), (1, 4), (2, 0)]
        mant = "(" + " | ".join(f"({nib(p)} << {s})" for p, s in shifts) + ")"
        nan, inf, real = "NULL", "9e999", ""
    else:
        def byte(j: int) -> str:
            return f"get_byte(c.vals, 8 * o.i + {j})"

        sign = f"({byte(7)} >= 128)"
        exp = f"((({byte(7)} & 127) << 4) | ({byte(6)} >> 4))"
        mant = (f"((({byte(6)} & 15)::int8 << 48) | " + " | ".join(f"({byte(j)}::int8 << {8 * j})" for j in range(5, -1, -1))
                + ")")
        nan, inf, real = "'NaN'::float8", "'Infinity'::float8", "::float8"
    value = (f"CASE WHEN {exp} = 2047 THEN (CASE WHEN {mant} <> 0 THEN {nan} WHEN {sign} THEN -{inf} ELSE {inf} END) "
             f"ELSE (CASE WHEN {sign} THEN -1.0 ELSE 1.0 END) * "
             f"({mant} + CASE WHEN {exp} = 0 THEN 0 ELSE 4503599627370496 END){real} * p.scale END")
    return (f"SELECT c.run_id AS run_id, c.metric_id AS metric_id, c.first_step + o.i AS step, {value} AS value "
            "FROM metric_chunks c JOIN chunk_offsets o ON o.i < c.n "
            f"JOIN float_scales p ON p.e = {exp}")


def _create_layout() -> None:
    op.create_table('chunk_offsets',
    sa.Column('i', sa.Integer(), autoincrement=False, nullable=False),
    sa.PrimaryKeyConstraint('i', name=op.f('pk_chunk_offsets'))
    )
    op.create_table('float_scales',
    sa.Column('e', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('scale', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('e', name=op.f('pk_float_scales'))
    )
    op.create_table('metric_chunks',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('metric_id', sa.SmallInteger(), nullable=False),
    sa.Column('first_step', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('vals', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['metric_id'], ['metrics.id'], name=op.f('fk_metric_chunks_metric_id_metrics')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_metric_chunks_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'metric_id', 'first_step', name=op.f('pk_metric_chunks')),
    sa.CheckConstraint(CHUNK_SHAPE, name=op.f('ck_metric_chunks_chunk_shape')),
    sqlite_with_rowid=False
    )
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":  # random floats do not compress: skip pglz's attempt
        op.execute("ALTER TABLE metric_chunks ALTER COLUMN vals SET STORAGE EXTERNAL")
    conn.execute(sa.text("INSERT INTO chunk_offsets (i) VALUES (:i)"), [{"i": i} for i in range(CHUNK_STEPS)])
    conn.execute(sa.text("INSERT INTO float_scales (e, scale) VALUES (:e, :s)"),
                 [{"e": e, "s": math.ldexp(1.0, max(e, 1) - 1075)} for e in range(2048)])


def _run_batches(conn: Any) -> Any:
    last = 0
    while True:
        ids = [r[0] for r in conn.execute(sa.text("SELECT id FROM runs WHERE id > :last ORDER BY id LIMIT :n"),
                                          {"last": last, "n": RUN_BATCH})]
        if not ids:
            return
        last = ids[-1]
        yield ids


def _raw(conn: Any) -> Any:
    return conn.connection.dbapi_connection


def upgrade() -> None:
    conn = op.get_bind()
    dialect = conn.dialect.name
    for name in SERIES_VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    _create_layout()
    p = "?" if dialect == "sqlite" else "%s"
    raw = _raw(conn)
    for ids in _run_batches(conn):
        cur = raw.cursor()
        cur.execute(f"SELECT run_id, metric_id, step, value FROM metric_values WHERE run_id >= {p} AND run_id <= {p} "
                    "ORDER BY run_id, metric_id, step", (ids[0], ids[-1]))
        rows = cur.fetchall()
        if rows:
            keys = np.array([(r, m, s) for r, m, s, _ in rows], dtype=np.int64)
            vals = np.array([math.nan if v is None else v for *_, v in rows], dtype="<f8")
            # A new chunk where the series changes, a step is skipped, or a window begins.
            new = np.ones(len(rows), dtype=bool)
            new[1:] = ((keys[1:, 0] != keys[:-1, 0]) | (keys[1:, 1] != keys[:-1, 1])
                       | (keys[1:, 2] != keys[:-1, 2] + 1) | (keys[1:, 2] // CHUNK_STEPS != keys[:-1, 2] // CHUNK_STEPS))
            starts = np.flatnonzero(new)
            ends = np.append(starts[1:], len(rows))
            out = [(int(keys[a, 0]), int(keys[a, 1]), int(keys[a, 2]), int(b - a), vals[a:b].tobytes())
                   for a, b in zip(starts, ends)]
            cur.executemany(f"INSERT INTO metric_chunks (run_id, metric_id, first_step, n, vals) VALUES ({p}, {p}, {p}, {p}, {p})",
                            out)
        cur.close()
    op.drop_table('metric_values')
    op.execute(f"CREATE VIEW metric_values AS {decode_view(dialect)}")
    for name, body in SERIES_VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    conn = op.get_bind()
    dialect = conn.dialect.name
    for name in (*SERIES_VIEWS, "metric_values"):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.create_table('metric_values',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('metric_id', sa.SmallInteger(), nullable=False),
    sa.Column('step', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('value', sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(['metric_id'], ['metrics.id'], name=op.f('fk_metric_values_metric_id_metrics')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_metric_values_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'metric_id', 'step', name=op.f('pk_metric_values')),
    sqlite_with_rowid=False
    )
    p = "?" if dialect == "sqlite" else "%s"
    raw = _raw(conn)
    for ids in _run_batches(conn):
        cur = raw.cursor()
        cur.execute(f"SELECT run_id, metric_id, first_step, n, vals FROM metric_chunks WHERE run_id >= {p} "
                    f"AND run_id <= {p} ORDER BY run_id, metric_id, first_step", (ids[0], ids[-1]))
        out = []
        for run_id, metric_id, first, n, blob in cur.fetchall():
            values = np.frombuffer(bytes(blob), dtype="<f8")
            out.extend((run_id, metric_id, first + i, None if (dialect == "sqlite" and math.isnan(v)) else float(v))
                       for i, v in enumerate(values.tolist()))
        if out:
            cur.executemany(f"INSERT INTO metric_values (run_id, metric_id, step, value) VALUES ({p}, {p}, {p}, {p})", out)
        cur.close()
    op.drop_table('metric_chunks')
    op.drop_table('float_scales')
    op.drop_table('chunk_offsets')
    for name, body in SERIES_VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")
