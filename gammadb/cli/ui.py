"""gammadb ui: the live dashboard of a store, in a browser."""

from __future__ import annotations

from typing import Annotated

import typer

from gammadb.cli.common import UrlOpt, echo


def ui(
    url: UrlOpt = None,
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8765,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on; anything but 127.0.0.1 / localhost makes the store readable "
                       "from the network.")] = "127.0.0.1",
) -> None:
    """Serve a read-only dashboard of the store: every sweep with its progress and workers, a
    sweep's phase portrait, eta* fits, loss curves and claims, a run's per-step metrics. Open pages
    update by themselves while workers write. Works offline. Ctrl-C stops it.

    Example: gammadb ui --url sqlite:///runs.sqlite --port 8765
    """
    from gammadb.ui.app import serve

    serve(url, host=host, port=port, say=echo, warn=lambda text: typer.echo(text, err=True))
