"""Progress of a sweep for the person watching it: nothing, a line per run, or a progress bar.

Reporters only print; the store is the record. The claim loops call ``run_started`` and
``run_finished`` around each run and the store sinks call ``step`` every ~1/200 of a run.
"""

from __future__ import annotations

import sys
from typing import Optional, Protocol

from gammadb.records import RunRecord, RunStatus


class Reporter(Protocol):
    def run_started(self, run: RunRecord, index: int, total: int) -> None: ...
    def step(self, run_id: int, step: int, total: int) -> None: ...
    def run_finished(self, run: RunRecord, status: RunStatus, steps: int, final_loss: Optional[float]) -> None: ...


class NullReporter:
    def __enter__(self) -> "NullReporter":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run_started(self, run: RunRecord, index: int, total: int) -> None:
        pass

    def step(self, run_id: int, step: int, total: int) -> None:
        pass

    def run_finished(self, run: RunRecord, status: RunStatus, steps: int, final_loss: Optional[float]) -> None:
        pass


class LineReporter:
    """One line per finished run on stderr (no terminal needed)."""

    def __enter__(self) -> "LineReporter":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run_started(self, run: RunRecord, index: int, total: int) -> None:
        self._index, self._total = index, total

    def step(self, run_id: int, step: int, total: int) -> None:
        pass

    def run_finished(self, run: RunRecord, status: RunStatus, steps: int, final_loss: Optional[float]) -> None:
        where = f"[{self._index}/{self._total}] " if getattr(self, "_total", 0) else ""
        loss = f"{final_loss:.4g}" if final_loss is not None else "-"
        print(f"{where}run {run.id} gamma={run.gamma:g} eta={run.eta:g} seed={run.seed}: {status.value} "
              f"after {steps} steps, loss {loss}", file=sys.stderr, flush=True)


class RichReporter(LineReporter):
    """A progress bar (runs done / total with ETA; the current run's steps) and a line per run."""

    def __enter__(self) -> "RichReporter":
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self._progress.__enter__()
        self._runs = self._progress.add_task("runs", total=None)
        self._steps = self._progress.add_task("steps", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def run_started(self, run: RunRecord, index: int, total: int) -> None:
        super().run_started(run, index, total)
        self._progress.update(self._runs, total=total, completed=index - 1)
        self._progress.update(self._steps, total=run.steps_planned, completed=0,
                              description=f"run {run.id} gamma={run.gamma:g} eta={run.eta:g}")

    def step(self, run_id: int, step: int, total: int) -> None:
        self._progress.update(self._steps, completed=step)

    def run_finished(self, run: RunRecord, status: RunStatus, steps: int, final_loss: Optional[float]) -> None:
        self._progress.update(self._runs, advance=1)
        loss = f"{final_loss:.4g}" if final_loss is not None else "-"
        self._progress.console.print(f"run {run.id} gamma={run.gamma:g} eta={run.eta:g} seed={run.seed}: "
                                     f"{status.value} after {steps} steps, loss {loss}")
