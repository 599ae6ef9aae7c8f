"""gammadb ui in a real headless Chromium, driven over the DevTools protocol (tests/ui/cdp.py), on a
sweep that a running ``gammadb run`` subprocess is writing into an SQLite store: the sweep page and a
run page load while the sweep trains; the run's step count grows on both, by the pages' own polling
(no reload); every chart ends up drawn; neither page reports a console error; the UI never writes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gammadb.errors import GammadbError
from gammadb.ui import app as ui_app
from tests.ui.cdp import Browser, Page, find_chromium

ROOT = Path(__file__).resolve().parents[2]
SWEEP = "live"
STEPS = 6000
RUNS = 9
# 3 gammas x 3 etas, one seed, one run at a time (no ensemble, so runs finish one by one): 4.5-6 s a
# run alone on a CPU core, 40-60 s for the sweep here; the writer commits progress every 2 s, so a run
# shows a step count between 0 and STEPS while it trains. (3,000 steps took 2.2-3.0 s: the one commit
# inside a run could come too late for the pages' polls to show, and the test failed 2 times in 4.)
RUN_ARGS = ["--name", SWEEP, "--model", "mlp", "--task", "teacher", "--depth", "3", "--width", "16",
            "--gamma", "0.1,1,10", "--eta", "0.01,0.1,1", "--seeds", "1", "--steps", str(STEPS), "--full-grid",
            "--ensemble", "1", "--device", "cpu", "--threads", "1", "--quiet"]
POLL_MS = 250  # the pages' polling interval here (3 s in use)
TERMINAL = ("completed", "diverged", "failed")
WRITES = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|VACUUM|REINDEX)\b", re.I)

# (status, steps) of a run as the run page shows it, and as its row in the sweep page's table does
RUN_STEPS_JS = "['run-status', 'run-steps'].map(id => document.getElementById(id).textContent.trim())"
ROW_STEPS_JS = """['status', 'steps_done'].map(f =>
  document.querySelector('tr[data-run="%d"] [data-field="' + f + '"]').textContent.trim())"""
CHARTS_JS = """[...document.querySelectorAll('[data-chart-src]')].map(el => ({id: el.id,
  svg: el.querySelector('svg') !== null, failed: el.classList.contains('failed'), text: el.textContent.slice(0, 200)}))"""
RUN_CHARTS_JS = """(() => { const box = document.getElementById('run-charts');
  return {steps: box.dataset.steps || null, text: box.textContent.slice(0, 300),
          charts: [...box.querySelectorAll('figure.chart')].map(f => ({title: f.querySelector('h3').textContent,
            svg: f.querySelector('.vis svg') !== null, failed: f.querySelector('.vis').classList.contains('failed')}))};
})()"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spy_sqlite(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    """Every SQLite connection this process opens (the UI's: the trainer is another process) and
    every statement run on them."""
    opened: list[str] = []
    statements: list[str] = []
    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(*args, **kwargs)
        opened.append(str(args[0] if args else kwargs.get("database")))
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    return opened, statements


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _until(check: Callable[[], Any], *, timeout: float, what: str, alive: subprocess.Popen[bytes]) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` s, or at once when the
    trainer died."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert alive.poll() in (None, 0), f"gammadb run exited with {alive.returncode} while waiting for {what}"
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.2)


@contextlib.contextmanager
def _serve(url: str, trainer: subprocess.Popen[bytes]) -> Iterator[str]:
    """uvicorn serving the dashboard of ``url`` on a free local port, in a thread, once the trainer
    has created the store (the UI never creates one)."""
    import uvicorn

    def app() -> Any:
        try:
            return ui_app.create_app(url)
        except GammadbError:  # not there yet, or mid-migration
            return None

    server = uvicorn.Server(uvicorn.Config(_until(app, timeout=120, what="the store", alive=trainer),
                                          host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _until(lambda: server.started or not thread.is_alive(), timeout=30, what="uvicorn", alive=trainer)
        assert thread.is_alive(), "uvicorn did not start"
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(15)


def _sweep_ready(base: str) -> bool:
    try:
        return bool(_get_json(f"{base}/api/sweeps/{SWEEP}")["runs"] == RUNS)
    except urllib.error.HTTPError:  # 404 until the trainer has added the sweep
        return False


def _settled(page: Page, expression: str, ok: Callable[[Any], bool], *, timeout: float, what: str) -> Any:
    """The value of ``expression`` once ``ok`` holds for it on three reads in a row (2 s apart at
    least) with the same value: a chart is not caught between two drawings."""
    deadline = time.monotonic() + timeout
    last, streak = None, 0
    while True:
        value = page.evaluate(expression)
        streak = (streak + 1 if value == last else 1) if ok(value) else 0
        last = value
        if streak == 3:
            return value
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}; last {value!r}"
        time.sleep(1.0)


def _grew_while_running(samples: list[tuple[str, int]]) -> bool:
    """Whether a count seen while the run was running was followed, on the same page, by a larger one."""
    return any(st == "running" and any(later > steps for _, later in samples[i + 1:])
               for i, (st, steps) in enumerate(samples))


@pytest.mark.timeout(300)
@pytest.mark.skipif(find_chromium() is None, reason="no Chromium on PATH (apt-get install chromium): the live "
                                                    "browser test drives a real headless browser")
def test_pages_of_a_running_sweep_update_live_in_a_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ui_app, "POLL_MS", POLL_MS)
    opened, statements = _spy_sqlite(monkeypatch)
    url = f"sqlite:///{tmp_path / 'live.sqlite'}"
    exe = find_chromium()
    assert exe is not None
    log_path = tmp_path / "run.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log_path.open("wb") as log:
        trainer = subprocess.Popen([sys.executable, "-m", "gammadb", "run", "--url", url, *RUN_ARGS], cwd=ROOT, env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        with _serve(url, trainer) as base, Browser(exe, tmp_path / "chrome") as browser:
            _until(lambda: _sweep_ready(base), timeout=120, what=f"sweep {SWEEP} with {RUNS} runs", alive=trainer)

            sweep = browser.new_page(f"{base}/sweeps/{SWEEP}")
            rows = sweep.evaluate("""[...document.querySelectorAll('tr[data-run]')].map(tr =>
                [Number(tr.dataset.run), tr.querySelector('[data-field="status"]').textContent.trim()])""")
            assert len(rows) == RUNS, rows
            left = [rid for rid, st in rows if st in ("pending", "running")]
            assert left, f"the sweep had finished before its page loaded (make it longer): {rows}"
            watched = max(left)  # the last to train: its page is open before it starts
            run = browser.new_page(f"{base}/runs/{watched}")
            assert run.evaluate("document.getElementById('run-steps') !== null"), run.evaluate("document.body.innerText")
            for page in (sweep, run):  # gone if the page reloads
                page.evaluate("window.__sameDocument = true")

            # (c) the watched run's steps, as both pages show them, until it ended and the trainer exited
            on_run: list[tuple[str, int]] = []
            on_sweep: list[tuple[str, int]] = []

            def sample() -> bool:
                for page, seen, js in ((run, on_run, RUN_STEPS_JS), (sweep, on_sweep, ROW_STEPS_JS % watched)):
                    st, steps = page.evaluate(js)
                    if not seen or seen[-1] != (st, int(steps)):
                        seen.append((st, int(steps)))
                return on_run[-1][0] in TERMINAL and on_sweep[-1][0] in TERMINAL and trainer.poll() is not None

            _until(sample, timeout=200, what=f"run {watched} to finish on both pages", alive=trainer)
            assert trainer.returncode == 0, log_path.read_text()[-3000:]
            for seen in (on_run, on_sweep):
                assert seen[-1] == ("completed", STEPS), seen
                assert _grew_while_running(seen), seen
                assert any(st == "running" and 0 < steps < STEPS for st, steps in seen), seen  # mid-run progress
            assert on_run[0][0] in ("pending", "running") and on_sweep[0][0] in ("pending", "running")

            # (a) every chart drawn: the sweep page redrew its charts itself once the last run finished
            sweep.wait_for(f"document.body.dataset.finished === '{RUNS}'", timeout=60, what="all runs finished")
            charts = _settled(sweep, CHARTS_JS, lambda cs: len(cs) == 3 and all(c["svg"] for c in cs),
                              timeout=120, what="the sweep page's charts")
            assert [c["id"] for c in charts] == ["chart-optimal-lr", "chart-phase", "chart-curves"]
            assert not any(c["failed"] or re.search("chart failed to render|could not load", c["text"])
                           for c in charts), charts  # ui.js's words when a chart does not draw
            assert f"{RUNS} runs finished" in sweep.evaluate("document.getElementById('refresh-note').textContent")
            drawn = _settled(run, RUN_CHARTS_JS, lambda d: d["steps"] == str(STEPS) and len(d["charts"]) > 0
                             and all(c["svg"] for c in d["charts"]), timeout=120, what="the run page's charts")
            assert drawn["charts"][0]["title"] == "loss" and len(drawn["charts"]) >= 2, drawn
            assert not any(c["failed"] for c in drawn["charts"]) and "could not" not in drawn["text"], drawn

            # (b) no console errors over the pages' whole life, and no reload
            for page in (sweep, run):
                assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
                assert page.evaluate("document.getElementById('live').className") == "live"
                assert page.errors == [], page.errors
    finally:
        if trainer.poll() is None:
            trainer.kill()
        trainer.wait(30)

    # the UI only read: every connection it opened was read-only, and none ran a write
    assert opened and all("mode=ro" in o for o in opened), opened
    assert statements and not [s for s in statements if WRITES.match(s)], [s for s in statements if WRITES.match(s)][:5]
