"""gammadb db: create, upgrade and inspect the store's schema."""

from __future__ import annotations

from typing import Annotated

import typer

from gammadb.cli.common import UrlOpt, echo, new_app

app = new_app("Create, upgrade and inspect the store's schema.")


@app.command("upgrade")
def upgrade(url: UrlOpt = None,
            revision: Annotated[str, typer.Option(help="Target revision.")] = "head") -> None:
    """Create the store or upgrade its schema to the newest revision (under a lock).

    Example: gammadb db upgrade --url postgresql+psycopg://postgres@127.0.0.1/gammadb
    """
    from gammadb.store import Store

    with Store.open(url, check=False) as store:
        before, after = store.upgrade(revision)
        echo(f"{store.display_url}: {before or 'empty'} -> {after}")


@app.command("current")
def current(url: UrlOpt = None) -> None:
    """Print the store's schema revision and the newest one this gammadb knows.

    Example: gammadb db current
    """
    from gammadb.store import Store, head_revision

    with Store.open(url, check=False) as store:
        rev = store.current_revision()
        head = head_revision()
        state = "up to date" if rev == head else "run `gammadb db upgrade`" if rev else "empty"
        echo(f"{rev or 'none'} (head {head}: {state})")


@app.command("downgrade")
def downgrade(revision: Annotated[str, typer.Argument(help="Target revision, e.g. 0001 or base.")],
              url: UrlOpt = None) -> None:
    """Downgrade the schema to an older revision (drops what later revisions added).

    Example: gammadb db downgrade 0001
    """
    from gammadb.store import Store

    with Store.open(url, check=False) as store:
        store.downgrade(revision)
        echo(f"{store.display_url}: now at {store.current_revision() or 'base'}")


@app.command("summarize")
def summarize(url: UrlOpt = None,
              sweep: Annotated[str | None, typer.Option("--sweep", "-s", help="Only this sweep.")] = None) -> None:
    """Rebuild the per-run summaries from the stored loss series.

    Example: gammadb db summarize --sweep quick
    """
    from gammadb.store import Store

    with Store.open(url) as store:
        echo(f"summarised {store.rebuild_summaries(sweep=sweep)} runs")
