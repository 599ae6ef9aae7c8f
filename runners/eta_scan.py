"""The authors' eta-scan rule, pure: which eta levels a per-gamma scan visits and which one it returns
as the largest convergent eta.

Per (group, gamma) the levels are visited largest eta first, all seeds at each. The first level with no
diverged seed anchors the scan, which then goes ``decades_below`` decades below the anchor and stops. A
diverged seed at a later level (below the anchor, within its range) restarts the search: the anchor is
dropped and the next level with no diverged seed becomes the new one, so the scan returns the first
convergent eta below the last divergence it met. With cross-entropy at gamma < 1 the scan never stops
early (it runs down the whole grid). Pehlevan-Group/Richness_Sweep, ``vision_tasks.py``:
``process_chunk``; docs/fidelity.md, "The eta scan".

The adaptive scan (:mod:`gammadb.runners.adaptive`) drives training with :class:`ScanRange`; the
analyses replay the same rule on stored runs with :func:`replay`. No torch here: the analyses import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Optional

from gammadb.records import same_value

#: The authors' ``range_below_max_eta0``: decades scanned below the largest convergent eta.
AUTHORS_DECADES_BELOW = 3.0


def whole_grid(loss_fn: Optional[str], gamma: float) -> bool:
    """Whether the scan of this (loss, gamma) runs the whole eta grid: cross-entropy with gamma < 1."""
    return loss_fn == "xent" and gamma < 1.0


@dataclasses.dataclass
class ScanRange:
    """The state of one (group, gamma) scan: its anchor (the largest convergent eta so far)."""

    decades_below: float
    whole_grid: bool = False
    largest_convergent: Optional[float] = None

    def below(self, eta: float) -> bool:
        """Whether ``eta`` lies below the scan's range (the scan stops before it). The lower end itself
        is inside (as ``eta < 10**terminal`` is the authors' stop)."""
        if self.largest_convergent is None or self.whole_grid:
            return False
        lowest = self.largest_convergent * 10 ** (-self.decades_below)
        return eta < lowest and not same_value(eta, lowest)

    def record(self, eta: float, diverged: bool) -> bool:
        """Record the level at ``eta`` (levels in descending eta order); ``diverged``: any seed diverged.
        A level below the range is not part of the scan and changes nothing; returns whether it counted."""
        if self.below(eta):
            return False
        if diverged:
            self.largest_convergent = None  # restart: the range is re-anchored further down
        elif self.largest_convergent is None:
            self.largest_convergent = eta
        return True


def replay(levels: Iterable[tuple[float, bool]], decades_below: float = AUTHORS_DECADES_BELOW,
           whole: bool = False) -> Optional[float]:
    """The largest convergent eta the scan returns on ``levels`` ((eta, any seed diverged), in any
    order): visited largest first, stopping below the range. None when the last level it visited
    diverged (or there are none)."""
    scan = ScanRange(decades_below, whole)
    for eta, diverged in sorted(levels, key=lambda level: -level[0]):
        if not scan.record(eta, diverged):
            break
    return scan.largest_convergent
