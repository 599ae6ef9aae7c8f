"""Per-run summaries and SQL views for hand-written queries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# Views for hand-written SQL. They decode nothing: on SQLite a NaN value reads as NULL.
VIEWS = {
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
    "run_overview": """
        SELECT r.id AS run_id, s.name AS sweep, r.model, r.dataset, r.loss_fn, r.optimizer,
               r.depth, r.width, r.batch_size, r.gamma, r.eta, r.seed, r.status,
               r.steps_planned, r.steps_done, r.diverged_at,
               u.initial_loss, u.final_loss, u.min_loss, u.min_loss_step, u.tail_mean_loss
        FROM runs r
        JOIN sweeps s ON s.id = r.sweep_id
        LEFT JOIN run_summaries u ON u.run_id = r.id""",
}


def upgrade() -> None:
    op.create_table('run_summaries',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('initial_loss', sa.Double(), nullable=True),
    sa.Column('final_loss', sa.Double(), nullable=True),
    sa.Column('final_step', sa.Integer(), nullable=True),
    sa.Column('min_loss', sa.Double(), nullable=True),
    sa.Column('min_loss_step', sa.Integer(), nullable=True),
    sa.Column('tail_mean_loss', sa.Double(), nullable=True),
    sa.Column('diverged', sa.Boolean(), nullable=False),
    sa.Column('steps_logged', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_summaries_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', name=op.f('pk_run_summaries'))
    )

    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_table('run_summaries')
