"""Store sinks: where the trainer's per-step metrics go on their way into the store.

A sink adapts the trainer's ``log`` calls (or an ensemble's one ``log_block`` per step) to the batched
:class:`gammadb.store.writer.MetricWriter`, which only appends to a list, and notes the last step and
loss so a run's end (or failure) can be recorded and reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

from gammadb.metrics import MetricKey
from gammadb.store.writer import MetricWriter
from gammadb.runners.reporters import Reporter

_LOSS = MetricKey("loss")


class StoreSink:
    """Adapts the trainer's per-step calls to the batched writer (which only appends to a list)."""

    def __init__(self, writer: MetricWriter, run_id: int, total: int, reporter: Reporter) -> None:
        self.writer, self.run_id, self.total, self.reporter = writer, run_id, total, reporter
        self.last_step = 0
        self.last_loss: Optional[float] = None
        self._every = max(1, total // 200)

    def log(self, step: int, values: Mapping[MetricKey, float]) -> None:
        self.writer.log(self.run_id, step, values)
        self.logged(step, values.get(_LOSS, self.last_loss))

    def logged(self, step: int, loss: Optional[float]) -> None:
        """Note a step handed to the writer (by ``log`` or an ensemble's ``log_block``)."""
        self.last_step = step
        self.last_loss = loss
        if step % self._every == 0:
            self.reporter.step(self.run_id, step, self.total)


class StoreSinks(list):
    """An ensemble's member sinks, plus the one-call-per-step path into the writer (``log_block``)."""

    def log_block(self, step: int, members: Sequence[int], keys: Sequence[MetricKey],
                  rows: Sequence[Sequence[float]]) -> None:
        sinks = [self[i] for i in members]
        sinks[0].writer.log_block(step, [sink.run_id for sink in sinks], keys, rows)
        loss = keys.index(_LOSS) if _LOSS in keys else None
        for sink, row in zip(sinks, rows):
            sink.logged(step, row[loss] if loss is not None else sink.last_loss)
