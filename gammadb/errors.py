"""The gammadb error hierarchy. Messages say what to do; the CLI prints them as one line.

Exit codes (documented in README.md):
  1  GammadbError (generic), SQL errors
  2  InvalidSpecError (bad input: options, spec files, import files)
  3  NotFoundError (unknown sweep, run, file)
  4  SchemaOutOfDateError / SchemaTooNewError (run the command the message names)
  5  StoreUnavailableError (cannot connect, wrong password, read-only or full disk)
  6  ReadOnlyViolationError (a write without --write)
"""

from __future__ import annotations


class GammadbError(Exception):
    exit_code = 1


class InvalidSpecError(GammadbError):
    exit_code = 2


class NotFoundError(GammadbError):
    exit_code = 3


class SchemaOutOfDateError(GammadbError):
    exit_code = 4


class SchemaTooNewError(SchemaOutOfDateError):
    exit_code = 4


class StoreUnavailableError(GammadbError):
    exit_code = 5


class ReadOnlyViolationError(GammadbError):
    exit_code = 6


class AnalysisError(GammadbError):
    """The data cannot support the requested analysis (too few points, all diverged...)."""

    exit_code = 2
