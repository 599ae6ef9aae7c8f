"""The loss thresholds of the eta families and the phases (:mod:`gammadb.analysis.etas` uses them;
the CLI shows them as option defaults). Plain numbers in a module of their own: a command's help and
start-up need them without the analysis stack (polars, numpy)."""

from __future__ import annotations

#: eta_max: a run "trained" when its loss at the budget is at most this fraction of its initial loss.
CONVERGED = 0.1
#: eta_min and the phases: a run "left the plateau" when its loss at the budget is below this fraction
#: of its initial loss.
LEFT_PLATEAU = 0.9
