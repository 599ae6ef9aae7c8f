"""Start-up of the CLI: every command, --version and --help included, loads the command tree first;
the analysis stack (polars, numpy, SQLAlchemy) is imported by the commands that use it, not there."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_command_tree_imports_no_analysis_stack() -> None:
    code = ("import json, sys; import gammadb.cli.app; "
            "print(json.dumps(sorted(m for m in ('polars', 'numpy', 'sqlalchemy', 'gammadb.analysis.etas') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_option_defaults_are_the_eta_family_thresholds() -> None:
    """The CLI shows the thresholds from their light home; the analyses use the same numbers."""
    from gammadb.analysis import etas, thresholds

    assert (etas.CONVERGED, etas.LEFT_PLATEAU) == (thresholds.CONVERGED, thresholds.LEFT_PLATEAU) == (0.1, 0.9)
