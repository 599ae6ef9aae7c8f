"""The store's schema version: Alembic's configuration and revisions, the check whenever a store opens,
the schema lock, and upgrade / downgrade / current revision."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import text

from gammadb import __version__
from gammadb.errors import (
    GammadbError,
    InvalidSpecError,
    SchemaOutOfDateError,
    SchemaTooNewError,
    StoreUnavailableError,
)
from gammadb.store.engine import _one_line
from gammadb.urls import sqlite_path

_PG_LOCK_KEY = 0x67616D6D  # pg_advisory_lock key for schema changes ("gamm")


def migrations_dir() -> Path:
    import gammadb.migrations as migrations

    return Path(migrations.__file__).parent


def _alembic_config(connection=None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
    if len(heads) != 1:  # pragma: no cover - a packaging defect, guarded by tests
        raise GammadbError(f"migrations have {len(heads)} heads; expected one")
    return heads[0]


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}


class VersioningMixin:
    """Schema checks and migrations of :class:`gammadb.store.Store`."""

    def current_revision(self) -> Optional[str]:
        from alembic.runtime.migration import MigrationContext

        with self._connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def revision_status(self) -> str:
        """One line for ``gammadb db current``: the store's revision, the head, and what to do."""
        current, head = self.current_revision(), head_revision()
        if current == head:
            state = "up to date"
        elif current is None:
            with self._connect() as conn:
                foreign = _foreign_tables(conn)
            state = f"not a gammadb store: it holds other tables ({_few(foreign)})" if foreign else "empty"
        elif current not in _known_revisions():
            state = f"newer than this gammadb {__version__} knows: upgrade gammadb (pip install -U gammadb)"
        else:
            state = "run `gammadb db upgrade`"
        return f"{current or 'none'} (head {head}: {state})"

    def _stored_revision(self) -> Optional[str]:
        """The store's revision by one plain query (None where there is no alembic_version table or
        it cannot be read): the fast path of :meth:`_check_schema`, without importing alembic."""
        from sqlalchemy.exc import DBAPIError

        with self._connect() as conn:  # a store that cannot be reached says so here, once
            try:
                row = conn.exec_driver_sql("SELECT version_num FROM alembic_version").fetchall()
            except DBAPIError:  # no such table, or not a database: the full check says which
                return None
        return str(row[0][0]) if len(row) == 1 else None

    def _check_schema(self, *, create: bool) -> None:
        from gammadb.migrations import HEAD_REVISION

        if self._stored_revision() == HEAD_REVISION:
            return
        current = self.current_revision()
        head = head_revision()
        if current == head:
            return
        if current is None:
            with self._connect() as conn:
                self._refuse_foreign(conn)
        if current is None and create:
            # Decided again under the schema lock: another process may be creating it right now
            # (its tables can be visible before its revision is).
            self.upgrade(only_if_empty=True)
            return
        if current is not None and current not in _known_revisions():
            raise self._too_new(current)
        raise SchemaOutOfDateError(
            f"store {self.display_url} is at revision {current or 'none'}, gammadb needs {head}: "
            f"run `gammadb db upgrade --url {self.display_url}`"
        )

    def _too_new(self, current: str) -> SchemaTooNewError:
        return SchemaTooNewError(
            f"store {self.display_url} is at revision {current}, newer than this gammadb {__version__} "
            f"knows (its newest is {head_revision()}): upgrade gammadb (pip install -U gammadb)"
        )

    def _refuse_foreign(self, conn: Any) -> None:
        """Refuse a database without a gammadb schema that holds another program's tables: gammadb
        never adds its tables beside them unasked (``gammadb db upgrade --force`` does)."""
        foreign = _foreign_tables(conn)
        if foreign:
            raise StoreUnavailableError(
                f"store {self.display_url} holds tables that are not gammadb's ({_few(foreign)}) and no "
                "gammadb schema: point --url at a gammadb store or a new file or database, or add "
                f"gammadb's tables beside them with `gammadb db upgrade --force --url {self.display_url}`"
            )

    @contextlib.contextmanager
    def _schema_lock(self) -> Iterator[Any]:
        """Serialise schema changes: a file lock beside SQLite, pg_advisory_lock on PostgreSQL."""
        if self.backend == "sqlite":
            from filelock import FileLock

            lock = str(sqlite_path(self.url)) + ".lock"
            try:  # an unwritable directory: FileLock would raise a PermissionError or retry for 600 s
                os.close(os.open(lock, os.O_RDWR | os.O_CREAT, 0o666))
            except OSError as exc:
                raise StoreUnavailableError(
                    f"cannot create or change store {self.display_url}: cannot write its lock file {lock} "
                    f"({exc.strerror}); the store's directory must be writable"
                ) from None
            with FileLock(lock, timeout=600):
                with self._connect() as conn:
                    yield conn
        else:
            with self._connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()
                try:
                    yield conn
                finally:
                    conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                    conn.commit()

    def upgrade(self, revision: str = "head", *, only_if_empty: bool = False,
                force: bool = False) -> tuple[Optional[str], str]:
        """Upgrade the schema to ``revision`` under the schema lock. Returns (before, after).

        Refuses a store from a newer gammadb (SchemaTooNewError), an unknown revision
        (InvalidSpecError) and, unless ``force``, a database that holds another program's tables and
        no gammadb schema (StoreUnavailableError).
        """
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        with self._schema_lock() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
            if before is None and not force:
                self._refuse_foreign(conn)
            if only_if_empty and (before is not None or _has_tables(conn)):
                conn.rollback()  # another process created it meanwhile, or it is not empty
                self._check_schema(create=False)
                return before, before or "none"
            if before is not None and before not in _known_revisions():
                raise self._too_new(before)
            # The lock connection itself runs the migrations (on SQLite a second connection would
            # wait on the first). Its autobegun transaction is committed by alembic's context.
            cfg = _alembic_config(conn)
            with self._revision_errors("upgrade", revision):
                command.upgrade(cfg, revision)
            conn.commit()
            after = MigrationContext.configure(conn).get_current_revision()
        return before, after or "base"

    def downgrade(self, revision: str) -> None:
        """Downgrade the schema to ``revision`` under the schema lock; refuses a store from a newer
        gammadb, an unknown revision and a database without a gammadb schema."""
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        with self._schema_lock() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            if current is None:
                self._refuse_foreign(conn)
            elif current not in _known_revisions():
                raise self._too_new(current)
            with self._revision_errors("downgrade", revision):
                command.downgrade(_alembic_config(conn), revision)
            conn.commit()

    @contextlib.contextmanager
    def _revision_errors(self, verb: str, revision: str) -> Iterator[None]:
        """Alembic's CommandError (an unknown or unreachable revision) as one InvalidSpecError line;
        a migration the database refuses (a table it expects is gone: a store edited by hand) as one
        GammadbError line. The migration's transaction is rolled back: the store stays at its revision."""
        from alembic.util import CommandError
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield
        except CommandError as exc:
            known = ", ".join(["base", *sorted(_known_revisions()), "head"])
            raise InvalidSpecError(
                f"cannot {verb} {self.display_url} to {revision!r}: {_one_line(exc)} (revisions: {known})"
            ) from None
        except SQLAlchemyError as exc:
            raise GammadbError(
                f"cannot {verb} {self.display_url} to {revision!r}: the database refused a migration step "
                f"({_one_line(exc)}); nothing was changed. Was the schema edited by hand?"
            ) from None


def _has_tables(conn: Any) -> bool:
    from sqlalchemy import inspect

    return bool(inspect(conn).get_table_names())


def _foreign_tables(conn: Any) -> list[str]:
    """The tables in the database that are neither gammadb's nor alembic's, sorted."""
    from sqlalchemy import inspect

    from gammadb.schema import Run

    ours = set(Run.metadata.tables) | {"alembic_version"}
    return sorted(set(inspect(conn).get_table_names()) - ours)


def _few(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
