"""A cache of log-bucketed series that knows when it is stale.

``series_versions`` counts the writes to each (run, metric) series: triggers on ``metric_chunks``
bump it on every insert, update and delete, whatever writes them (the writer, a resume, an import,
hand-written SQL). ``series_buckets`` holds a series reduced onto a log-spaced step grid (one packed
blob per run, metric and grid, see ``gammadb/analysis/downsample.py``) together with the version it
was computed from: a row whose version is not the series' current one is stale and never read. The
cache is derived data: dropping its rows loses nothing.

On SQLite the triggers are one per event, per row. On PostgreSQL they are per statement, over the
statement's transition table, so a COPY of thousands of chunks bumps each series once.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_SQLITE_BUMP = """
    UPDATE series_versions SET version = version + 1 WHERE run_id = {r}.run_id AND metric_id = {r}.metric_id;
    INSERT INTO series_versions (run_id, metric_id, version)
        SELECT {r}.run_id, {r}.metric_id, 1
        WHERE NOT EXISTS (SELECT 1 FROM series_versions WHERE run_id = {r}.run_id AND metric_id = {r}.metric_id);"""
# A deleted chunk only bumps an existing version: its run may be going (a cascade), and a series
# that lost its chunks keeps counting, so an old cache row never matches again.
_SQLITE_BUMP_OLD = """
    UPDATE series_versions SET version = version + 1 WHERE run_id = OLD.run_id AND metric_id = OLD.metric_id;"""

_PG_FUNCTION = """
CREATE FUNCTION gammadb_series_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE series_versions v SET version = v.version + 1
        FROM (SELECT DISTINCT run_id, metric_id FROM old_rows) o
        WHERE v.run_id = o.run_id AND v.metric_id = o.metric_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO series_versions (run_id, metric_id, version)
        SELECT DISTINCT run_id, metric_id, 1 FROM new_rows ORDER BY 1, 2
        ON CONFLICT (run_id, metric_id) DO UPDATE SET version = series_versions.version + 1;
    END IF;
    RETURN NULL;
END $$"""
_PG_TRIGGERS = {
    "series_written_insert": "AFTER INSERT ON metric_chunks REFERENCING NEW TABLE AS new_rows",
    "series_written_update": "AFTER UPDATE ON metric_chunks REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "series_written_delete": "AFTER DELETE ON metric_chunks REFERENCING OLD TABLE AS old_rows",
}
_SQLITE_TRIGGERS = {
    "series_written_insert": ("AFTER INSERT ON metric_chunks", _SQLITE_BUMP.format(r="NEW")),
    "series_written_update": ("AFTER UPDATE ON metric_chunks", _SQLITE_BUMP_OLD + _SQLITE_BUMP.format(r="NEW")),
    "series_written_delete": ("AFTER DELETE ON metric_chunks", _SQLITE_BUMP_OLD),
}


def upgrade() -> None:
    op.create_table('series_versions',
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('metric_id', sa.SmallInteger(), nullable=False),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_series_versions_run_id_runs'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['metric_id'], ['metrics.id'], name=op.f('fk_series_versions_metric_id_metrics')),
        sa.PrimaryKeyConstraint('run_id', 'metric_id', name=op.f('pk_series_versions')),
    )
    op.create_table('series_buckets',
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('metric_id', sa.SmallInteger(), nullable=False),
        sa.Column('per_decade', sa.SmallInteger(), nullable=False),
        sa.Column('layout', sa.SmallInteger(), nullable=False),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.Column('buckets', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_series_buckets_run_id_runs'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['metric_id'], ['metrics.id'], name=op.f('fk_series_buckets_metric_id_metrics')),
        sa.PrimaryKeyConstraint('run_id', 'metric_id', 'per_decade', name=op.f('pk_series_buckets')),
    )
    op.execute("INSERT INTO series_versions (run_id, metric_id, version) "
               "SELECT DISTINCT run_id, metric_id, 1 FROM metric_chunks")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        for name, when in _PG_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {when} FOR EACH STATEMENT EXECUTE FUNCTION gammadb_series_written()")
    else:
        for name, (when, body) in _SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {when} FOR EACH ROW BEGIN {body}\nEND")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name in _PG_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (" ON metric_chunks" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS gammadb_series_written()")
    op.drop_table('series_buckets')
    op.drop_table('series_versions')
