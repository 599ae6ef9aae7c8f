"""Runs stored before the summed test loss say so: config test_reduction 'mean' where absent.

Until RunConfig.test_reduction existed, TEST_LOSS was the criterion averaged over the outputs; now a
config without the field reads as 'sum' (the authors' definition, C times larger for MSE with C
outputs). This marks every run whose config lacks the key with ``"test_reduction": "mean"``, so the
analyses put its test loss on the training loss's scale correctly. point_key is left as it is (a
re-submitted point still finds its run). Configs that already hold the key are untouched. A run
stored by a gammadb that had the field but not this revision, with the default 'sum' (key left out),
cannot be told apart and is marked 'mean' too.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

KEY = "test_reduction"
LEGACY = "mean"
BATCH = 1000

# A frozen view of the table, not the live model: later schema changes must not change this step.
runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("config", sa.JSON))


def upgrade() -> None:
    conn = op.get_bind()
    update = runs.update().where(runs.c.id == sa.bindparam("run_id")).values(config=sa.bindparam("new_config"))
    last = 0
    while True:  # keyset batches: memory stays bounded on stores of any size
        rows = conn.execute(
            sa.select(runs.c.id, runs.c.config).where(runs.c.id > last).order_by(runs.c.id).limit(BATCH)
        ).all()
        if not rows:
            break
        last = rows[-1].id
        changed = [{"run_id": r.id, "new_config": {**r.config, KEY: LEGACY}}
                   for r in rows if isinstance(r.config, dict) and KEY not in r.config]
        if changed:
            conn.execute(update, changed)


def downgrade() -> None:
    """Leaves the configs as they are, on purpose: this is the correct inverse, not a skipped one.

    The keys the upgrade added cannot be told from ones a user set to 'mean', and every one of them is
    true of its run (its test loss is the mean over the outputs), at revision 0002 as at 0003.
    Removing them would make those runs read as 'sum'. The schema is the same at both revisions.
    """
