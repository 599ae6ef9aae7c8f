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


def test_read_only_commands_never_import_the_orm(tmp_path) -> None:
    """A report, a chart and the analyses read through SQLAlchemy Core and the drivers: the ORM (its
    import and mapper set-up, 0.1-0.15 s of every such command) is left to the commands that write."""
    import math

    import polars as pl

    from gammadb.store import Store
    from gammadb.transfer import import_frame

    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    rows = [{"gamma": g, "eta": e, "seed": s, "step": t, "loss": math.exp(-e * t / g) + 0.01 * s}
            for g in (0.1, 1.0, 10.0) for e in (0.01, 0.1, 1.0) for s in (0, 1) for t in range(0, 200)]
    with Store.open(url) as store:
        import_frame(store, pl.DataFrame(rows), "tiny")
    check = ("import atexit, runpy, sys; "
             "atexit.register(lambda: print('ORM' if 'sqlalchemy.orm' in sys.modules else 'no ORM', file=sys.stderr)); "
             "sys.argv = ['gammadb', *sys.argv[1:]]; runpy.run_module('gammadb', run_name='__main__')")
    for args in (["report", "--sweep", "tiny", "--out", str(tmp_path / "r.html")],
                 ["plot", "curves", "--sweep", "tiny", "--out", str(tmp_path / "c.html")],
                 ["analyze", "optimal-lr", "--sweep", "tiny"], ["analyze", "phase", "--sweep", "tiny"],
                 ["analyze", "claims", "--sweep", "tiny"], ["runs", "ls", "--sweep", "tiny"]):
        out = subprocess.run([sys.executable, "-c", check, *args, "--url", url], capture_output=True, text=True)
        assert out.stderr.strip().splitlines()[-1] == "no ORM", (args, out.returncode, out.stderr[-2000:])
    # and a command that writes still does, through the ORM
    out = subprocess.run([sys.executable, "-c", check, "runs", "requeue", "--sweep", "tiny", "--url", url],
                         capture_output=True, text=True)
    assert out.stderr.strip().splitlines()[-1] == "ORM", out.stderr[-2000:]


def test_the_process_ends_without_the_collector_and_keeps_its_exit_status() -> None:
    """main() leaves the exit's garbage collection out (0.3-0.4 s after a report), only at exit:
    a caller that catches its SystemExit keeps a working collector, and exit statuses are unchanged."""
    code = ("import atexit, gc, sys; from gammadb.cli import main; "
            "atexit.register(lambda: print('at exit: collector', 'on' if gc.isenabled() else 'off', "
            "'frozen' if gc.get_freeze_count() else 'not frozen')); "
            "sys.argv = ['gammadb', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n"
            "    print('caught', exc.code, 'collector', 'on' if gc.isenabled() else 'off'); raise")
    ok = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True)
    assert ok.returncode == 0 and "caught 0 collector on" in ok.stdout, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith("at exit: collector off frozen"), ok.stdout
    bad = subprocess.run([sys.executable, "-c", code, "no-such-command"], capture_output=True, text=True)
    assert bad.returncode == 2 and "No such command" in bad.stderr, bad.stdout + bad.stderr
