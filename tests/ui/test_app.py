"""gammadb ui: every route through Starlette's TestClient against a real store (SQLite and PostgreSQL)
holding a small imported sweep; the live endpoint against runs that change under it; the page in a
real headless Chromium, with its charts drawn."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")  # starlette.testclient

with warnings.catch_warnings():  # starlette >= 0.47 prefers httpx2 and says so at import
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from gammadb.cli import app as cli_app  # noqa: E402
from gammadb.records import RunRecord, RunSpec, RunStatus  # noqa: E402
from gammadb.store import Store  # noqa: E402
from gammadb.transfer import import_frame  # noqa: E402
from gammadb.ui import views  # noqa: E402
from gammadb.ui.app import create_app, is_loopback, serve  # noqa: E402
from tests.store.test_imports import synthetic  # noqa: E402

SWEEP = "syn"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ui_url(store_url: str) -> str:
    """A store holding sweep ``syn``: 12 imported runs (gamma 0.1, 1, 10 x eta 0.01, 0.1 x 2 seeds,
    50 steps; the two at gamma 10, eta 0.1 diverge at step 30)."""
    with Store.open(store_url) as store:
        import_frame(store, synthetic(), SWEEP)
    return store_url


@pytest.fixture
def client(ui_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(ui_url)) as c:
        yield c


def _scripts(html: str) -> list[str]:
    return re.findall(r"<script[^>]*\bsrc=[\"']([^\"']+)", html) + re.findall(r"<link[^>]*\bhref=[\"']([^\"']+)", html)


def test_pages_show_the_sweep_and_its_runs(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert f'href="/sweeps/{SWEEP}"' in r.text
    assert "10 completed" in r.text and "2 diverged" in r.text and "0 running" in r.text
    assert "no worker holds a run" in r.text

    r = client.get(f"/sweeps/{SWEEP}")
    assert r.status_code == 200
    assert f"Sweep {SWEEP}" in r.text
    ids = re.findall(r'<a href="/runs/(\d+)">', r.text)
    assert len(ids) == 12
    for kind in views.SWEEP_CHARTS:
        assert f'data-chart-src="/api/sweeps/{SWEEP}/charts/{kind}"' in r.text

    run_id = int(ids[0])
    r = client.get(f"/runs/{run_id}")
    assert r.status_code == 200
    assert f"Run {run_id}" in r.text and f'href="/sweeps/{SWEEP}"' in r.text
    assert '"gamma": 0.1' in r.text  # the config, verbatim
    assert re.search(r"<b id=\"run-status\" class=\"st-completed\">completed</b>", r.text)
    assert f'data-charts-src="/api/runs/{run_id}/charts"' in r.text


def test_json_endpoints_count_runs_and_steps(client: TestClient) -> None:
    doc = client.get(f"/api/sweeps/{SWEEP}").json()
    assert doc["counts"] == {"pending": 0, "running": 0, "completed": 10, "diverged": 2, "failed": 0}
    assert (doc["runs"], doc["finished"], doc["steps_planned"], doc["steps_done"]) == (12, 12, 600, 600)
    assert doc["progress"] == 1.0 and doc["workers"] == [] and doc["stale"] == []
    assert len(doc["run_steps"]) == 12 and {s for _, _, s in doc["run_steps"]} == {50}
    assert sorted(st for _, st, _ in doc["run_steps"]).count("diverged") == 2

    (sweep,) = client.get("/api/sweeps").json()["sweeps"]
    assert sweep["name"] == SWEEP and sweep["counts"]["diverged"] == 2 and sweep["progress"] == 1.0

    run_id = doc["run_steps"][0][0]
    run = client.get(f"/api/runs/{run_id}").json()
    assert (run["run_id"], run["sweep"], run["status"], run["steps_done"], run["stale"]) == (run_id, SWEEP, "completed", 50, False)


def test_charts_come_from_the_analysis_builders(client: TestClient) -> None:
    lr = client.get(f"/api/sweeps/{SWEEP}/charts/optimal-lr").json()
    assert lr["spec"]["$schema"].startswith("https://vega.github.io/schema/vega-lite/")  # a spec, not a script
    assert "eta*" in json.dumps(lr["spec"]) and "budget step 50" in lr["caption"]
    phase = client.get(f"/api/sweeps/{SWEEP}/charts/phase").json()
    assert "phase" in json.dumps(phase["spec"]) and "step 50" in phase["caption"]
    curves = client.get(f"/api/sweeps/{SWEEP}/charts/curves").json()
    layer = curves["spec"]["layer"][1]
    assert layer["encoding"]["stroke"]["field"] == "gamma" and layer["encoding"]["x"]["scale"]["type"] == "log"
    assert any("bind" in p for p in curves["spec"].get("params", []) + layer.get("params", []))  # zoomable

    run_id = client.get(f"/api/sweeps/{SWEEP}").json()["run_steps"][0][0]
    charts = client.get(f"/api/runs/{run_id}/charts").json()
    assert [c["title"] for c in charts["charts"]] == ["loss", "ntk_alignment", "weight_change"]
    assert all(c["spec"] is not None for c in charts["charts"]) and charts["steps_done"] == 50


def test_claims_fragment_holds_the_verdict(client: TestClient) -> None:
    r = client.get(f"/sweeps/{SWEEP}/claims")
    assert r.status_code == 200
    assert "eta* ~ gamma^2" in r.text and "not testable here" in r.text


@pytest.mark.parametrize("cache", ["as the import left it", "emptied"])
def test_the_charts_of_one_state_of_a_sweep_share_their_reads(ui_url: str, cache: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Curves, claims (plateaus of the runs the scaling fits, collapse of some) and the other charts,
    requested one by one as a page does, read each run's loss series once and the finished runs once;
    with the store's cache as the import left it (each run's loss bucketed), no loss series at all."""
    from sqlalchemy import text

    if cache == "emptied":
        with Store.open(ui_url) as rw, rw.engine.begin() as conn:
            conn.execute(text("DELETE FROM series_buckets"))
    with TestClient(create_app(ui_url)) as client:
        _one_read_each(client, monkeypatch, cold=cache == "emptied")


def _one_read_each(client: TestClient, monkeypatch: pytest.MonkeyPatch, *, cold: bool) -> None:
    from gammadb.analysis.plateaus import scaling_run_ids

    st = client.app.state.store  # type: ignore[attr-defined]
    loss = st.metric_id("loss")
    series: list[int] = []
    finished: list[str] = []
    real_values, real_finished = st.values_frame, st.finished_runs_with_loss_ends

    def values_frame(run_ids, metric, *, lo=None, hi=None):  # type: ignore[no-untyped-def]
        if metric == loss and hi is None:  # whole series (the initial loss reads a first step)
            series.extend(int(r) for r in run_ids)
        return real_values(run_ids, metric, lo=lo, hi=hi)

    monkeypatch.setattr(st, "values_frame", values_frame)
    monkeypatch.setattr(st, "finished_runs_with_loss_ends",
                        lambda sweep: finished.append(sweep) or real_finished(sweep))
    for path in ("charts/curves", "claims", "charts/optimal-lr", "charts/phase"):
        prefix = "/sweeps" if path == "claims" else "/api/sweeps"
        assert client.get(f"{prefix}/{SWEEP}/{path}").status_code == 200
    assert finished == [SWEEP]
    if not cold:
        assert series == []
        return
    assert sorted(series) == sorted(set(series)) and len(series) == 8
    # the eta* family the curves draw (6), which holds the runs the plateau scaling fits, and the
    # collapse's runs at one eta: the claims no longer read the plateaus of all 12 runs
    assert set(scaling_run_ids(st.runs_frame(SWEEP))) < set(series)


def test_missing_sweep_run_and_chart_are_404(client: TestClient) -> None:
    r = client.get("/sweeps/nope")
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]
    assert "no sweep named &#39;nope&#39; (sweeps: syn)" in r.text
    assert client.get("/api/sweeps/nope").json() == {"error": "no sweep named 'nope' (sweeps: syn)"}
    r = client.get("/runs/99999")
    assert r.status_code == 404 and "no run with id 99999" in r.text
    assert client.get("/api/runs/99999").status_code == 404
    r = client.get(f"/api/sweeps/{SWEEP}/charts/bogus")
    assert r.status_code == 404 and "no chart 'bogus'" in r.json()["error"]
    assert client.get("/no/such/page").status_code == 404


def test_served_pages_load_no_script_from_the_network(client: TestClient) -> None:
    run_id = client.get(f"/api/sweeps/{SWEEP}").json()["run_steps"][0][0]
    seen = set()
    for path in ("/", f"/sweeps/{SWEEP}", f"/runs/{run_id}", "/sweeps/nope"):
        html = client.get(path).text
        refs = _scripts(html)
        assert refs, path
        assert not [u for u in refs if re.match(r"(https?:)?//", u)], (path, refs)
        assert not re.search(r"\bimport\s*\(?\s*[\"']https?://", html)
        seen.update(refs)
    assert seen == {"/static/ui.css", "/static/ui.js", "/static/vega.js"}
    for ref in sorted(seen):
        r = client.get(ref)
        assert r.status_code == 200 and len(r.content) > 500, ref
    bundle = client.get("/static/vega.js").text
    assert "window.vegaEmbed=" in bundle and not re.search(r"\bimport\s*\(?\s*[\"']https?://", bundle)


def test_progress_follows_a_worker_writing(ui_url: str) -> None:
    """The polled endpoint shows what a worker writes, without a reload: a claim, heartbeats with
    steps, a run's end."""
    with Store.open(ui_url) as store, TestClient(create_app(ui_url)) as client:
        sweep = store.ensure_sweep("live", {"source": "test"})
        spec = RunSpec(model="mlp", dataset="teacher", loss_fn="mse", optimizer="sgd", depth=3, width=8,
                       batch_size=4, gamma=1.0, eta=0.1, seed=0, dtype="float32", steps_planned=100, config={})
        (run,) = store.ensure_runs(sweep.id, [spec])
        doc = client.get("/api/sweeps/live").json()
        assert doc["counts"]["pending"] == 1 and doc["run_steps"] == [[run.id, "pending", 0]] and doc["progress"] == 0

        store.mark_running(run.id, worker="node7:123")
        store.heartbeat(run.id, steps_done=40)
        doc = client.get("/api/sweeps/live").json()
        assert doc["counts"]["running"] == 1 and doc["run_steps"] == [[run.id, "running", 40]]
        assert doc["progress"] == pytest.approx(0.4)
        (w,) = doc["workers"]
        assert w["worker"] == "node7:123" and w["runs"] == [run.id] and not w["stale"] and w["age_s"] < 60
        assert client.get(f"/api/runs/{run.id}").json()["steps_done"] == 40

        store.heartbeat(run.id, steps_done=90)
        assert client.get("/api/sweeps/live").json()["run_steps"] == [[run.id, "running", 90]]
        overview = {s["name"]: s for s in client.get("/api/sweeps").json()["sweeps"]}
        assert overview["live"]["workers"][0]["runs"] == [run.id] and overview[SWEEP]["workers"] == []

        store.finish_run(run.id, RunStatus.FAILED, steps_done=95, error="boom")
        doc = client.get("/api/sweeps/live").json()
        assert doc["counts"]["failed"] == 1 and doc["workers"] == [] and doc["run_steps"] == [[run.id, "failed", 95]]
        page = client.get(f"/runs/{run.id}").text
        assert "boom" in page and "st-failed" in page


def _record(run_id: int, worker: str, beat: dt.datetime | None) -> RunRecord:
    now = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    return RunRecord(id=run_id, sweep_id=1, sweep="s", model="mlp", dataset="d", loss_fn="mse", optimizer="sgd",
                     depth=3, width=8, batch_size=4, gamma=1.0, eta=0.1, seed=0, dtype="float32", device="cpu",
                     config={}, status=RunStatus.RUNNING, steps_planned=10, steps_done=1, diverged_at=None, error=None,
                     worker=worker, heartbeat_at=beat, created_at=now, started_at=now, finished_at=None)


def test_stale_runs_and_workers_are_flagged() -> None:
    now = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc)
    fresh = now - dt.timedelta(seconds=views.STALE_AFTER_S - 1)
    old = now - dt.timedelta(seconds=views.STALE_AFTER_S + 1)
    recs = [_record(1, "a", fresh), _record(2, "b", old), _record(3, "b", old.replace(tzinfo=None)),
            _record(4, "c", None)]
    assert views.stale_runs(recs, now) == [2, 3, 4]
    got = {w["worker"]: (w["runs"], w["stale"], w["age_s"]) for w in views.workers(recs, now)}
    assert got == {"a": ([1], False, views.STALE_AFTER_S - 1), "b": ([2, 3], True, views.STALE_AFTER_S + 1),
                   "c": ([4], True, None)}


def test_the_ui_never_writes_to_the_store(tmp_path: Path, sqlite_url: str) -> None:
    with Store.open(sqlite_url) as store:
        import_frame(store, synthetic(), SWEEP)
    path = sqlite_url.removeprefix("sqlite:///")

    def dump() -> list[str]:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return list(conn.iterdump())
        finally:
            conn.close()

    before = dump()
    with TestClient(create_app(sqlite_url)) as client:
        run_id = client.get(f"/api/sweeps/{SWEEP}").json()["run_steps"][0][0]
        for p in ("/", f"/sweeps/{SWEEP}", f"/sweeps/{SWEEP}/claims", f"/runs/{run_id}", f"/api/runs/{run_id}/charts",
                  *(f"/api/sweeps/{SWEEP}/charts/{k}" for k in views.SWEEP_CHARTS), "/sweeps/nope"):
            client.get(p)
    assert dump() == before


runner = CliRunner()


def test_cli_refuses_a_missing_store_and_a_taken_port(tmp_path: Path, sqlite_url: str) -> None:
    missing = tmp_path / "none.sqlite"
    r = runner.invoke(cli_app, ["ui", "--url", f"sqlite:///{missing}"])
    assert r.exit_code == 5 and r.output.startswith(f"error: no store at {missing}")
    assert not missing.exists()  # never created

    Store.open(sqlite_url).close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = runner.invoke(cli_app, ["ui", "--url", sqlite_url, "--port", str(port)])
    assert r.exit_code == 2 and r.output.startswith(f"error: cannot listen on 127.0.0.1:{port}")


def test_serve_binds_loopback_and_warns_for_another_host(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    import uvicorn

    Store.open(sqlite_url).close()
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))  # serve up to the server loop
    said: list[str] = []
    warned: list[str] = []
    port = _free_port()
    serve(sqlite_url, port=port, say=said.append, warn=warned.append)
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == port
    assert said[0].startswith(f"gammadb ui: http://127.0.0.1:{port}/ ") and "read-only" in said[0] and warned == []
    serve(sqlite_url, host="0.0.0.0", port=port, say=said.append, warn=warned.append)
    assert calls[-1]["host"] == "0.0.0.0" and warned[0].startswith("warning: --host 0.0.0.0")
    assert "can read the store" in warned[0]
    assert [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "10.1.2.3", "myhost")] == [
        True, True, True, False, False, False]


# ---------------------------------------------------------------------------------------- browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture
def live_server(sqlite_url: str) -> Iterator[str]:
    """uvicorn serving the app of an SQLite store holding sweep ``syn`` on a free local port, in a
    thread (one backend: the routes are tested on both above)."""
    import uvicorn

    with Store.open(sqlite_url) as store:
        import_frame(store, synthetic(), SWEEP)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(sqlite_url), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _browser(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    exe = _chromium()
    assert exe is not None
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=20000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(240)
@pytest.mark.skipif(_chromium() is None, reason="no headless browser here (apt-get install chromium)")
def test_sweep_page_draws_its_charts_in_a_browser(live_server: str, tmp_path: Path) -> None:
    url = f"{live_server}/sweeps/{SWEEP}"
    out = _browser(["--dump-dom", url], tmp_path)
    dom = out.stdout
    assert "<main>" in dom, out.stderr[-2000:]
    for kind in views.SWEEP_CHARTS:
        m = re.search(rf'<div class="vis[^"]*" id="chart-{kind}"[^>]*>(.*?)</figure>', dom, flags=re.S)
        assert m is not None, kind
        assert "<svg" in m.group(1) and "failed" not in m.group(0), (kind, m.group(0)[:500])
    assert "consistent" in dom or "not testable here" in dom  # the claims fragment arrived
    assert re.search(r'id="live" class="live">live, updated', dom)  # the poller ran against the JSON endpoint

    shot = tmp_path / "ui-sweep.png"
    out = _browser([f"--screenshot={shot}", "--window-size=1280,1900", "--hide-scrollbars", url], tmp_path)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000, out.stderr[-2000:]
    if os.environ.get("GAMMADB_UI_SCREENSHOT"):  # refresh the README's picture: GAMMADB_UI_SCREENSHOT=docs/ui-sweep.png
        shutil.copy(shot, ROOT / os.environ["GAMMADB_UI_SCREENSHOT"])


@pytest.fixture
def compare_client(ui_url: str) -> Iterator[TestClient]:
    """``syn`` plus ``syn-deep`` (the same grid, squared losses) and ``tiny`` (one pending run: no
    finished run to analyse)."""
    import polars as pl

    with Store.open(ui_url) as store:
        deep = synthetic().with_columns(pl.lit(5).alias("depth"), (pl.col("loss") ** 2).alias("loss"))
        import_frame(store, deep, "syn-deep")
        tiny = store.ensure_sweep("tiny", {"source": "test"})
        store.ensure_runs(tiny.id, [RunSpec(model="mlp", dataset="teacher", loss_fn="mse", optimizer="sgd", depth=3,
                                            width=8, batch_size=4, gamma=1.0, eta=0.1, seed=0, dtype="float32",
                                            steps_planned=100, config={})])
    with TestClient(create_app(ui_url)) as c:
        yield c


def test_compare_overlays_two_sweeps(compare_client: TestClient) -> None:
    home = compare_client.get("/").text
    assert 'action="/compare"' in home and home.count('type="checkbox" name="sweep"') == 3

    r = compare_client.get("/compare", params=[("sweep", SWEEP), ("sweep", "syn-deep")])
    assert r.status_code == 200
    assert f'data-compared="{SWEEP}"' in r.text and 'data-compared="syn-deep"' in r.text
    assert "left out" not in r.text
    assert f'data-chart-src="/api/compare/chart?sweep={SWEEP}&amp;sweep=syn-deep"' in r.text

    doc = compare_client.get("/api/compare/chart", params=[("sweep", SWEEP), ("sweep", "syn-deep")]).json()
    spec = doc["spec"]
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
    left, right = spec["hconcat"]
    colours = [lay["encoding"]["color"] for lay in left["layer"]] + [right["encoding"]["color"]]
    assert all(c["field"] == "sweep" for c in colours)
    assert colours[0]["scale"]["domain"] == [SWEEP, "syn-deep"] and len(set(colours[0]["scale"]["range"])) == 2
    assert "eta* slope" in colours[0]["legend"]["labelExpr"] or "no eta* fit" in colours[0]["legend"]["labelExpr"]
    rows = [row for ds in spec["datasets"].values() for row in ds]
    curves = [row for row in rows if "loss" in row]
    # 3 gammas x 2 etas per sweep, minus the diverged cell (gamma 10, eta 0.1)
    assert sorted({row["sweep"] for row in curves}) == [SWEEP, "syn-deep"] and len(curves) == 10
    assert {row["sweep"] for row in rows if "loss" not in row and "eta" in row} == {SWEEP, "syn-deep"}
    deep = {(row["gamma"], row["eta"]): row["loss"] for row in curves if row["sweep"] == "syn-deep"}
    syn = {(row["gamma"], row["eta"]): row["loss"] for row in curves if row["sweep"] == SWEEP}
    assert deep.keys() == syn.keys() and all(deep[k] < syn[k] for k in syn)


def test_compare_names_a_sweep_it_cannot_analyse(compare_client: TestClient) -> None:
    r = compare_client.get("/compare", params=[("sweep", SWEEP), ("sweep", "tiny")])
    assert r.status_code == 200
    assert f'data-compared="{SWEEP}"' in r.text and 'data-left-out="tiny"' in r.text
    reason = re.search(r'data-left-out="tiny">.*?left out: ([^<]+)</td>', r.text, re.S)
    assert reason and "no finished (completed or diverged) runs" in reason.group(1)
    doc = compare_client.get("/api/compare/chart", params=[("sweep", SWEEP), ("sweep", "tiny")]).json()
    assert doc["spec"]["hconcat"][0]["layer"][0]["encoding"]["color"]["scale"]["domain"] == [SWEEP]
    assert "tiny left out:" in doc["caption"]


def test_compare_unknown_or_single_sweep(compare_client: TestClient) -> None:
    r = compare_client.get("/compare", params=[("sweep", SWEEP), ("sweep", "nope")])
    assert r.status_code == 404 and "nope" in r.text and "Not found" in r.text
    assert compare_client.get("/api/compare/chart", params=[("sweep", "nope"), ("sweep", SWEEP)]).status_code == 404
    r = compare_client.get("/compare", params=[("sweep", SWEEP)])
    assert r.status_code == 400 and "at least two sweeps" in r.text


def test_warm_up_loads_what_the_charts_need() -> None:
    """`gammadb ui` warms imports and the Vega bundle in a thread at start (so the first page does
    not pay for them); the warm-up itself never raises."""
    import sys

    from gammadb.analysis.charts_export import vega_bundle
    from gammadb.ui.app import warm_up

    warm_up()
    assert "altair" in sys.modules
    assert vega_bundle.cache_info().currsize == 1  # the bundle is in memory
