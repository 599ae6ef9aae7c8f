"""``gammadb ui``: a local, read-only web dashboard of a store, live while sweeps run.

Why this stack: Starlette is a small, well-kept ASGI toolkit (routing, responses, static files and a
``TestClient`` built in, so every route is tested in-process against a real store); uvicorn is the
reference ASGI server; Jinja2 renders the pages on the server, so the browser only runs the Vega
bundle that vl-convert ships (no CDN, no build step) and one small script that polls a JSON endpoint.
All three are imported only by ``gammadb ui`` and the tests, so ``gammadb --help`` stays fast.

Rooms: :mod:`gammadb.ui.views` (what each page shows, from the store's named reads and the analysis
chart builders; no SQL), :mod:`gammadb.ui.app` (the Starlette app factory ``create_app(url)``, the
routes, ``serve``), ``templates/`` and ``static/``.
"""

from __future__ import annotations
