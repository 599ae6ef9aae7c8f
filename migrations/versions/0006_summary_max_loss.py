"""Run summaries keep the largest finite training loss (``run_summaries.max_loss``).

The phase map tells a catapult (the loss rises above its start, then trains) by each run's largest
loss up to the budget step. Without it in the summary, every ``analyze phase`` and every report read
each run's whole loss series to take one maximum (4.4 M values, about 0.4 s, on a 500-run x
10,000-step sweep); with it, a budget at the runs' last step is answered from the summaries, as the
final, minimum and tail-mean losses already are.

The upgrade fills the column for every stored summary from the run's stored loss series (metric
'loss', layer 0): the largest finite value at any step, NULL where there is none, the same number
``gammadb db summarize`` computes. The downgrade drops the column.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

BATCH = 200  # runs per read: memory stays bounded by a batch's series, not the store's

# Frozen views of the tables, not the live models: later schema changes must not change this step.
summaries = sa.table("run_summaries", sa.column("run_id", sa.Integer), sa.column("max_loss", sa.Float))
chunks = sa.table("metric_chunks", sa.column("run_id", sa.Integer), sa.column("metric_id", sa.Integer),
                  sa.column("vals", sa.LargeBinary))
metrics = sa.table("metrics", sa.column("id", sa.Integer), sa.column("name", sa.String),
                   sa.column("layer", sa.Integer))


def upgrade() -> None:
    op.add_column("run_summaries", sa.Column("max_loss", sa.Double(), nullable=True))
    conn = op.get_bind()
    loss_id = conn.execute(sa.select(metrics.c.id).where(metrics.c.name == "loss", metrics.c.layer == 0)).scalar()
    if loss_id is None:
        return
    update = (summaries.update().where(summaries.c.run_id == sa.bindparam("rid"))
              .values(max_loss=sa.bindparam("value")))
    last = -1
    while True:  # keyset batches of the summarised runs
        ids = conn.execute(sa.select(summaries.c.run_id).where(summaries.c.run_id > last)
                           .order_by(summaries.c.run_id).limit(BATCH)).scalars().all()
        if not ids:
            return
        last = ids[-1]
        blobs: dict[int, list[bytes]] = {}
        for run_id, blob in conn.execute(sa.select(chunks.c.run_id, chunks.c.vals).where(
                chunks.c.metric_id == loss_id, chunks.c.run_id.in_(ids))):
            blobs.setdefault(int(run_id), []).append(bytes(blob))
        rows = []
        for run_id, parts in blobs.items():
            values = np.frombuffer(b"".join(parts), dtype="<f8")
            finite = values[np.isfinite(values)]
            if finite.size:
                rows.append({"rid": run_id, "value": float(finite.max())})
        if rows:
            conn.execute(update, rows)


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite >= 3.35): Alembic's batch mode would rebuild the table under the
    # views that read it (run_overview), which SQLite refuses.
    op.execute("ALTER TABLE run_summaries DROP COLUMN max_loss")
