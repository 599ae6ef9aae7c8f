"""gammadb plot (being built: see the plot issue)."""

from __future__ import annotations

from gammadb.cli.common import new_app

app = new_app("plot")
