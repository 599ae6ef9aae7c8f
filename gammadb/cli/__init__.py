"""The `gammadb` command line. Each command parses options, calls one library function, prints."""

from __future__ import annotations

from gammadb.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
