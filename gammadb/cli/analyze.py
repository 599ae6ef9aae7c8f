"""gammadb analyze (being built: see the analyze issue)."""

from __future__ import annotations

from gammadb.cli.common import new_app

app = new_app("analyze")
