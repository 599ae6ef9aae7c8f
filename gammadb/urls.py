"""Store URLs: resolution order, backend detection, masking of credentials."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from gammadb.errors import InvalidSpecError

if TYPE_CHECKING:  # SQLAlchemy is imported where a URL is parsed: not at every command's start-up
    from sqlalchemy.engine import URL

DEFAULT_URL = "sqlite:///gammadb.sqlite"
ENV_VAR = "GAMMADB_URL"


def resolve_url(url: str | None = None) -> str:
    """--url, else $GAMMADB_URL, else the embedded SQLite file ./gammadb.sqlite."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


_EXAMPLES = "expected e.g. sqlite:///path.sqlite or postgresql+psycopg://user@host/db"
_DRIVERS = {"sqlite": ("pysqlite",), "postgresql": ("psycopg",)}  # the drivers gammadb's code speaks


def parse_url(url: str) -> URL:
    """A parsed, validated store URL; InvalidSpecError (password masked) for anything else."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidSpecError(f"not a database URL: {mask(url)!r} ({_EXAMPLES})") from None
    except ValueError:  # SQLAlchemy's int() of the port is the only ValueError it raises
        raise InvalidSpecError(f"bad port in database URL {mask(url)!r}: the port must be a number, "
                               "e.g. postgresql+psycopg://user@host:5432/db") from None
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise InvalidSpecError(f"bad port in database URL {mask(url)!r}: {parsed.port} is not 1 to 65535")
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend not in _DRIVERS:
        raise InvalidSpecError(f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://")
    driver = parsed.get_driver_name()
    if "+" in parsed.drivername and driver not in _DRIVERS[backend]:
        raise InvalidSpecError(
            f"unsupported driver {driver!r} in {mask(url)!r}: use "
            f"{'sqlite:///' if backend == 'sqlite' else 'postgresql+psycopg://'}"
        )
    return parsed


def sqlite_path(url: URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise InvalidSpecError("an in-memory SQLite store cannot be shared: give a file, sqlite:///path.sqlite")
    return Path(url.database)


def libpq_uri(url: URL) -> str:
    """postgresql+psycopg://... -> postgresql://... for libpq clients (psycopg, ADBC)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")


def mask(text: str) -> str:
    """Hide any password embedded in a URL inside ``text`` (for messages and logs)."""
    return _PASSWORD_IN_URL.sub(r"\1***\3", text)
