"""PostgreSQL reader roles: a LOGIN role that can read every table and view of a store and write none.

The grants are the barrier, so a reader's `gammadb sql`, notebook or psql session cannot write
whatever it sends: CONNECT on the database, USAGE on schema public, SELECT on every table and view
there, and default privileges so the tables later migrations create are readable too. The role also
gets ``default_transaction_read_only`` in this database, and any write grant it held on the store's
tables is revoked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gammadb.errors import GammadbError, InvalidSpecError
from gammadb.store import Store

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

# Can this existing role write to the store by other means than table grants? Then making it a
# "reader" would be a lie: refuse.
_CAN_WRITE = """
SELECT r.rolsuper OR r.rolcreaterole
  OR EXISTS (SELECT 1 FROM pg_roles w WHERE w.rolname = 'pg_write_all_data'
             AND pg_has_role(r.oid, w.oid, 'MEMBER'))
  OR EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND pg_has_role(r.oid, c.relowner, 'MEMBER'))
FROM pg_roles r WHERE r.rolname = %s
"""
# Default privileges belong to the role that will create the tables: the store's owner.
_STORE_OWNER = """
SELECT COALESCE((SELECT tableowner FROM pg_tables
                 WHERE schemaname = 'public' AND tablename = 'alembic_version'), current_user),
       current_database()
"""


@dataclass(frozen=True)
class ReaderRole:
    name: str
    url: str  # the store URL as this role, password included when one was given: mask() to print
    created: bool  # False: the role existed and was (re)granted


def create_reader_role(store: Store, name: str, password: str | None = None) -> ReaderRole:
    """Create (or bring up to date) a LOGIN role ``name`` that may read the store and write nothing.

    Idempotent; run it again after `gammadb db upgrade` by another role than the store's owner. A
    password, when given, is set (or replaced); without one the role logs in however pg_hba.conf
    allows. Needs CREATEROLE (or a superuser) and membership in the role that owns the store.
    """
    if store.backend != "postgresql":
        raise InvalidSpecError(
            "reader roles are a PostgreSQL feature: an SQLite store is read-only for anyone given "
            "only read permission on its file (and `gammadb sql` opens it read-only)"
        )
    if not _NAME.fullmatch(name):
        raise InvalidSpecError(
            f"bad role name {name!r}: use 1-63 letters, digits and _, not starting with a digit"
        )
    if name.lower().startswith("pg_"):
        raise InvalidSpecError(f"bad role name {name!r}: names starting with pg_ are reserved")
    from psycopg import sql

    role = sql.Identifier(name)
    conn = store.raw_connection()
    try:
        try:
            cur = conn.cursor()
            cur.execute(_CAN_WRITE, (name,))
            row = cur.fetchone()
            if row is not None and row[0]:
                raise InvalidSpecError(
                    f"role {name!r} exists and can write to the store (superuser, CREATEROLE, "
                    "pg_write_all_data or owner of its tables): choose another name"
                )
            pw = sql.SQL(" PASSWORD {}").format(sql.Literal(password)) if password is not None else sql.SQL("")
            upsert = sql.SQL("CREATE ROLE {} LOGIN{}") if row is None else sql.SQL("ALTER ROLE {} LOGIN{}")
            cur.execute(upsert.format(role, pw))
            cur.execute(_STORE_OWNER)
            owner, database = cur.fetchone()
            db = sql.Identifier(database)
            for stmt in (
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, role),
                sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role),
                sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(role),
                sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER "
                        "ON ALL TABLES IN SCHEMA public FROM {}").format(role),
                sql.SQL("REVOKE USAGE, UPDATE ON ALL SEQUENCES IN SCHEMA public FROM {}").format(role),
                sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(role),
                sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT SELECT ON TABLES TO {}")
                .format(sql.Identifier(owner), role),
                sql.SQL("ALTER ROLE {} IN DATABASE {} SET default_transaction_read_only = on").format(role, db),
            ):
                cur.execute(stmt)
            conn.commit()
        except GammadbError:
            conn.rollback()
            raise
        except Exception as exc:
            conn.rollback()
            text = str(exc).strip()
            raise GammadbError(
                f"cannot set up reader role {name!r}: {text.splitlines()[0] if text else type(exc).__name__}"
            ) from None
    finally:
        conn.close()
    url = store.url.set(username=name, password=password).render_as_string(hide_password=False)
    return ReaderRole(name=name, url=url, created=row is None)
