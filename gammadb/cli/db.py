"""gammadb db: create, upgrade and inspect the store's schema."""

from __future__ import annotations

from typing import Annotated

import typer

from gammadb.cli.common import UrlOpt, echo, new_app

app = new_app("Create, upgrade and inspect the store's schema.")


@app.command("upgrade")
def upgrade(url: UrlOpt = None,
            revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
            force: Annotated[bool, typer.Option(
                "--force", help="Add gammadb's tables to a database that holds another program's tables.")] = False,
            ) -> None:
    """Create the store or upgrade its schema to the newest revision (under a lock).

    Example: gammadb db upgrade --url postgresql+psycopg://postgres@127.0.0.1/gammadb
    """
    from gammadb.store import Store

    with Store.open(url, check=False) as store:
        before, after = store.upgrade(revision, force=force)
        echo(f"{store.display_url}: {before or 'empty'} -> {after}")


@app.command("current")
def current(url: UrlOpt = None) -> None:
    """Print the store's schema revision and the newest one this gammadb knows.

    Example: gammadb db current
    """
    from gammadb.store import Store

    with Store.open(url, create=False, check=False) as store:
        echo(store.revision_status())


@app.command("downgrade")
def downgrade(revision: Annotated[str, typer.Argument(help="Target revision, e.g. 0001 or base.")],
              url: UrlOpt = None) -> None:
    """Downgrade the schema to an older revision (drops what later revisions added).

    Example: gammadb db downgrade 0001
    """
    from gammadb.store import Store

    with Store.open(url, create=False, check=False) as store:
        store.downgrade(revision)
        echo(f"{store.display_url}: now at {store.current_revision() or 'base'}")


@app.command("reader-role")
def reader_role(name: Annotated[str, typer.Argument(help="Name of the LOGIN role to create or update.")],
                url: UrlOpt = None,
                password: Annotated[str | None, typer.Option(
                    envvar="GAMMADB_READER_PASSWORD",
                    help="Its password (or $GAMMADB_READER_PASSWORD, which keeps it out of `ps`).")] = None) -> None:
    """PostgreSQL: create (idempotently) a role that can read every table and view and write none,
    and print the URL a reader uses.

    Example: GAMMADB_READER_PASSWORD=s3cret gammadb db reader-role analyst
    """
    from gammadb.roles import create_reader_role
    from gammadb.store import Store
    from gammadb.urls import mask

    with Store.open(url, create=False) as store:
        role = create_reader_role(store, name, password)
    echo(f"{'created' if role.created else 'updated'} reader role {role.name}: {mask(role.url)}")


@app.command("summarize")
def summarize(url: UrlOpt = None,
              sweep: Annotated[str | None, typer.Option("--sweep", "-s", help="Only this sweep.")] = None) -> None:
    """Rebuild the per-run summaries from the stored loss series, and bucket each run's loss into
    the store's cache of chart grids where it is missing (as a run's end does).

    Example: gammadb db summarize --sweep quick
    """
    from gammadb.store import Store

    with Store.open(url, create=False) as store:
        echo(f"summarised {store.rebuild_summaries(sweep=sweep)} runs")
