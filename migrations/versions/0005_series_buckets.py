"""A cache of log-bucketed series that knows when it is stale.

``run_versions`` counts the writes to each run's series: triggers on ``metric_chunks`` bump it on
every insert, update and delete, whatever writes them (the writer, a resume, an import, hand-written
SQL). ``series_buckets`` holds a series reduced onto a log-spaced step grid (one packed blob per run,
metric and grid, see ``gammadb/analysis/downsample.py``) together with the run's version it was
computed from: a row whose version is not the run's current one is stale and never read. The cache
is derived data: dropping its rows loses nothing.

The version is per run, not per series: a training step writes every series of a run at once, and a
run's K x 5 series bumped as one row cost the writer a fifth of the bumps. On SQLite the triggers
are one per event, per row. On PostgreSQL they are per statement, over the statement's transition
table, so a COPY of thousands of chunks bumps each run once.

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

# One upsert (an outer INSERT OR REPLACE / OR IGNORE does not change an upsert's DO UPDATE, unlike a
# trigger statement's own OR clause, which the outer statement's would replace).
_SQLITE_BUMP = """
    INSERT INTO run_versions (run_id, version) VALUES ({r}.run_id, 1)
        ON CONFLICT (run_id) DO UPDATE SET version = version + 1;"""
# A deleted chunk only bumps an existing version: its run may be going (a cascade), and a run whose
# series lost their chunks keeps counting, so an old cache row never matches again.
_SQLITE_BUMP_OLD = """
    UPDATE run_versions SET version = version + 1 WHERE run_id = OLD.run_id;"""

_PG_FUNCTION = """
CREATE FUNCTION gammadb_series_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE run_versions v SET version = v.version + 1
        FROM (SELECT DISTINCT run_id FROM old_rows) o WHERE v.run_id = o.run_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO run_versions (run_id, version)
        SELECT DISTINCT run_id, 1 FROM new_rows ORDER BY 1
        ON CONFLICT (run_id) DO UPDATE SET version = run_versions.version + 1;
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
    op.create_table('run_versions',
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_versions_run_id_runs'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('run_id', name=op.f('pk_run_versions')),
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
    op.execute("INSERT INTO run_versions (run_id, version) SELECT DISTINCT run_id, 1 FROM metric_chunks")
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
    op.drop_table('run_versions')
