"""The Starlette app of ``gammadb ui``: ``create_app(url)`` (pages, JSON endpoints, static files) and
``serve`` (uvicorn on a local port).

Pages are rendered on the server (Jinja2); charts arrive as Vega-Lite specs from ``/api/.../charts``
and are drawn by the Vega bundle vl-convert ships, served from ``/static/vega.js`` (nothing from a
CDN). Open pages poll ``/api/sweeps``, ``/api/sweeps/{name}`` or ``/api/runs/{id}`` every few seconds:
run counts, steps done and heartbeats only, never a series; charts are rebuilt only when a run of
theirs changed (cached under :func:`gammadb.ui.views.fingerprint`).
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import socket
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import quote

from gammadb.errors import AnalysisError, GammadbError, InvalidSpecError, NotFoundError, StoreUnavailableError
from gammadb.ui import views

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from gammadb.store import Store

POLL_MS = 3000  # how often an open page asks for progress
CACHE_ENTRIES = 64
READ_SCOPES = 4  # states of sweeps whose reads are kept for the next chart (a few MB each)
# Browsers ask every page's site for /favicon.ico; a 404 there is an error in each page's console.
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><text x="3" y="13" font-size="14" '
           'font-family="serif">&#947;</text></svg>')


class _Cache:
    """A small LRU of built charts, keyed by what they were built from."""

    def __init__(self, size: int = CACHE_ENTRIES) -> None:
        self._items: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = build()  # outside the lock: two builds of one key are harmless, a blocked page is not
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


def _templates() -> Any:
    import jinja2
    from starlette.templating import Jinja2Templates

    env = jinja2.Environment(loader=jinja2.PackageLoader("gammadb.ui", "templates"),
                             autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined)
    env.filters["num"] = _num
    return Jinja2Templates(env=env)


def _num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def create_app(url: Optional[str] = None, *, store: Optional["Store"] = None) -> "Starlette":
    """The dashboard of the store at ``url`` (opened read-only: see :func:`gammadb.ui.views.open_store`;
    or an already open ``store``, which the caller closes)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    owned = store is None
    st: "Store" = views.open_store(url) if store is None else store
    templates = _templates()
    cache = _Cache()
    reads = _Cache(READ_SCOPES)

    def sweep_built(kind: str, name: str, build: Callable[[], Any]) -> Any:
        """``build()`` cached under the sweep's fingerprint; the builds of one state of the sweep share
        their reads (the claims, the curves and the plateaus bucket the same loss series)."""
        from gammadb.analysis.shared import Scope, shared_reads

        fp = views.fingerprint(st, name)

        def shared_build() -> Any:
            with shared_reads(st, reads.get((name, fp), lambda: Scope(st))):
                return build()

        return cache.get((kind, name, fp), shared_build)

    def page(request: "Request", name: str, status_code: int = 200, **ctx: Any) -> "Response":
        ctx.setdefault("store_url", st.display_url)
        ctx.setdefault("poll_ms", POLL_MS)
        return templates.TemplateResponse(request, name, ctx, status_code=status_code)

    def sweeps_page(request: "Request") -> "Response":
        return page(request, "sweeps.html", title="Sweeps", sweeps=views.sweeps_overview(st),
                    stale_after_s=views.STALE_AFTER_S, statuses=views.STATUSES)

    def sweep_page(request: "Request") -> "Response":
        name = request.path_params["name"]
        return page(request, "sweep.html", title=f"Sweep {name}", p=views.sweep_page(st, name),
                    progress=views.sweep_progress(st, name), statuses=views.STATUSES,
                    stale_after_s=views.STALE_AFTER_S)

    def claims_fragment(request: "Request") -> "Response":
        name = request.path_params["name"]
        try:
            claims = sweep_built("claims", name, lambda: views.claims_table(st, name))
        except AnalysisError as exc:
            claims = {"available": True, "error": str(exc)}
        return page(request, "claims.html", claims=claims)

    def run_page(request: "Request") -> "Response":
        run_id = request.path_params["run_id"]
        return page(request, "run.html", title=f"Run {run_id}", p=views.run_page(st, run_id),
                    progress=views.run_progress(st, run_id))

    def api_sweeps(request: "Request") -> "Response":
        return JSONResponse(_jsonable({"sweeps": views.sweeps_overview(st)}))

    def api_sweep(request: "Request") -> "Response":
        return JSONResponse(_jsonable(views.sweep_progress(st, request.path_params["name"])))

    def api_sweep_chart(request: "Request") -> "Response":
        name, kind = request.path_params["name"], request.path_params["kind"]
        if kind not in views.SWEEP_CHARTS:
            raise NotFoundError(f"no chart {kind!r}: one of {', '.join(views.SWEEP_CHARTS)}")
        try:
            doc = sweep_built(kind, name, lambda: views.sweep_chart(st, name, kind))
        except (AnalysisError, InvalidSpecError) as exc:  # not enough data yet: say why, in the page
            doc = {"spec": None, "caption": str(exc)}
        return JSONResponse(_jsonable(doc))

    def _compared(request: "Request") -> tuple[list[str], dict[str, Any], dict[str, str]]:
        names = views.compare_names(request.query_params.getlist("sweep"))
        key = ("compare", views.compare_fingerprint(st, names))  # NotFoundError (404) for an unknown sweep
        return names, *cache.get(key, lambda: views.compare_analyses(st, names))

    def compare_page(request: "Request") -> "Response":
        names, results, failed = _compared(request)
        return page(request, "compare.html", title="Compare " + ", ".join(names),
                    p=views.compare_page(results, failed), query="&".join(f"sweep={quote(n)}" for n in names))

    def api_compare_chart(request: "Request") -> "Response":
        return JSONResponse(_jsonable(views.compare_chart(*_compared(request)[1:])))

    def api_run(request: "Request") -> "Response":
        return JSONResponse(_jsonable(views.run_progress(st, request.path_params["run_id"])))

    def api_run_charts(request: "Request") -> "Response":
        run_id = request.path_params["run_id"]
        r = st.get_run(run_id)
        charts = cache.get(("run", run_id, r.status.value, r.steps_done), lambda: views.run_charts(st, run_id))
        return JSONResponse(_jsonable({"run_id": run_id, "steps_done": r.steps_done, "charts": charts}))

    def vega_js(request: "Request") -> "Response":
        from gammadb.analysis.charts_export import vega_bundle

        return Response(vega_bundle(), media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})

    def favicon(request: "Request") -> "Response":
        return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})

    def _api(request: "Request") -> bool:
        return request.url.path.startswith("/api/")

    async def not_found(request: "Request", exc: Exception) -> "Response":
        msg = str(exc.detail) if isinstance(exc, HTTPException) else str(exc)
        if _api(request):
            return JSONResponse({"error": msg}, status_code=404)
        return page(request, "error.html", status_code=404, title="Not found", message=msg)

    async def gammadb_error(request: "Request", exc: Exception) -> "Response":
        from gammadb.urls import mask

        code = 503 if isinstance(exc, StoreUnavailableError) else 400 if isinstance(exc, InvalidSpecError) else 500
        if _api(request):
            return JSONResponse({"error": mask(str(exc))}, status_code=code)
        return page(request, "error.html", status_code=code, title="Error", message=mask(str(exc)))

    async def http_error(request: "Request", exc: Exception) -> "Response":
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return await not_found(request, exc)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        if owned:
            st.close()

    routes = [
        Route("/", sweeps_page, name="sweeps"),
        Route("/sweeps/{name}", sweep_page, name="sweep"),
        Route("/sweeps/{name}/claims", claims_fragment, name="claims"),
        Route("/runs/{run_id:int}", run_page, name="run"),
        Route("/compare", compare_page, name="compare"),
        Route("/api/compare/chart", api_compare_chart),
        Route("/api/sweeps", api_sweeps),
        Route("/api/sweeps/{name}", api_sweep),
        Route("/api/sweeps/{name}/charts/{kind}", api_sweep_chart),
        Route("/api/runs/{run_id:int}", api_run),
        Route("/api/runs/{run_id:int}/charts", api_run_charts),
        Route("/static/vega.js", vega_js),
        Route("/favicon.ico", favicon),
        Mount("/static", app=StaticFiles(packages=[("gammadb.ui", "static")]), name="static"),
    ]
    handlers = {NotFoundError: not_found, GammadbError: gammadb_error, HTTPException: http_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)  # type: ignore[arg-type]
    app.state.store = st
    return app


def _jsonable(obj: Any) -> Any:
    """Strict JSON: NaN and inf become null (a diverged run's loss), dates ISO strings."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    return obj


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """InvalidSpecError when ``port`` is out of range or already taken on ``host``."""
    if not 0 < port < 65536:
        raise InvalidSpecError(f"--port must be 1..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise InvalidSpecError(f"cannot listen on {host}:{port} ({exc.strerror}): pick another --port "
                                   "or --host") from None


def serve(url: Optional[str], *, host: str = "127.0.0.1", port: int = 8765,
          say: Callable[[str], None] = print, warn: Callable[[str], None] = print) -> None:
    """Open the store read-only, print the address, serve until interrupted."""
    import uvicorn

    check_port(host, port)
    app = create_app(url)
    if not is_loopback(host):
        warn(f"warning: --host {host} listens beyond this machine: anyone who can reach {host}:{port} can read "
             "the store (no authentication)")
    shown = f"[{host}]" if ":" in host else host
    say(f"gammadb ui: http://{shown}:{port}/ (store {app.state.store.display_url}, read-only; Ctrl-C stops)")
    threading.Thread(target=warm_up, name="gammadb-ui-warm-up", daemon=True).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")


def warm_up() -> None:
    """Import what the chart endpoints need (altair: about 0.5 s; the analyses need no scipy) and
    load the Vega bundle while the server waits for its first page, so that page does not pay for
    them. A server started by ``serve`` only: tests and embedders import on demand."""
    try:
        import altair  # noqa: F401

        from gammadb.analysis.charts_export import vega_bundle

        vega_bundle()
    except Exception:  # a warm-up must never stop the server: the request that needs it will say why
        pass
