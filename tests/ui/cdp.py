"""A small Chrome DevTools Protocol client for the browser tests: start headless Chromium, open
pages, read their DOM with JavaScript, and collect every error a page reports (uncaught exceptions,
``console.error``, failed resource loads), over the whole life of the page.

``chromium --dump-dom`` sees one moment of a page and none of its console; this watches a page over
time without reloading it. One websocket to the browser carries every page, as a flat session
(``Target.attachToTarget(flatten=True)``); the client is synchronous: events that arrive while it
waits for a reply are filed on their page.

    with Browser(find_chromium(), tmp_path / "chrome") as browser:
        page = browser.new_page("http://127.0.0.1:8765/")
        page.wait_for("document.querySelectorAll('svg').length > 0", timeout=60)
        assert page.errors == []
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import websocket  # websocket-client (the dev extras)

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
         "--disable-component-update", "--mute-audio", "--remote-debugging-port=0")
LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def find_chromium() -> Optional[str]:
    """The path of a Chromium or Chrome on PATH, or None."""
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _die_with_parent() -> None:
    """In the browser's process before exec (Linux): SIGKILL when the test process dies, even by a
    crash that runs no ``finally``, so no headless browser outlives its test."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class CDPError(RuntimeError):
    """The browser answered a command with an error, or JavaScript evaluated in a page threw."""


@dataclass(frozen=True)
class PageError:
    """One error a page reported. ``kind``: "exception" (uncaught, Runtime.exceptionThrown),
    "console" (console.error / console.assert) or "log" (Log.entryAdded at level error: failed
    resource loads, network and security errors)."""

    kind: str
    text: str
    url: str = ""


class Browser:
    """A headless Chromium started with ``--remote-debugging-port=0`` and driven over the websocket
    it names on stderr. A context manager: :meth:`close` ends it (and its child processes) always."""

    def __init__(self, exe: str, profile: Path, *, start_timeout: float = 60.0,
                 window: tuple[int, int] = (1280, 1600)) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self.stderr_path = profile / "stderr.log"
        self._stderr = self.stderr_path.open("wb")
        # A session of its own: close() can then end the renderers and helpers with the browser.
        self._proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr, start_new_session=True,
            preexec_fn=_die_with_parent)
        self._ws: Any = None
        self._next_id = 0
        self._pages: dict[str, Page] = {}
        try:
            self._ws = websocket.create_connection(self._ws_url(start_timeout), timeout=start_timeout,
                                                   suppress_origin=True, enable_multithread=False)
        except BaseException:
            self.close()
            raise

    def _ws_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            m = LISTENING.search(self.stderr_path.read_text(errors="replace"))
            if m:
                return m.group(1)
            if self._proc.poll() is not None:
                raise CDPError(f"chromium exited with {self._proc.returncode} before it listened: {self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise CDPError(f"chromium did not print its DevTools address in {timeout:.0f} s: {self.stderr_tail()}")
            time.sleep(0.05)

    def stderr_tail(self, chars: int = 2000) -> str:
        """The end of the browser's own log (for failure messages)."""
        return self.stderr_path.read_text(errors="replace")[-chars:] if self.stderr_path.exists() else ""

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Ask the browser to quit, then kill whatever of its process group is left."""
        if self._ws is not None:
            try:
                self.call("Browser.close", timeout=5)
            except Exception:  # it may exit before it answers
                pass
            try:
                self._ws.close()
            except Exception:
                pass
            self._ws = None
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)  # our own session: the browser and its children
        except (ProcessLookupError, PermissionError):
            pass
        if self._proc.poll() is None:
            self._proc.wait(timeout=10)
        self._stderr.close()

    # ------------------------------------------------------------------ protocol
    def call(self, method: str, params: Optional[dict[str, Any]] = None, *, session: Optional[str] = None,
             timeout: float = 60.0) -> dict[str, Any]:
        """Send one command (to a page when ``session`` is given) and return its result; events that
        arrive meanwhile are filed on their pages. CDPError when the browser answers an error."""
        if self._ws is None:
            raise CDPError(f"{method}: the browser is closed")
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        self._ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline, method)
            if reply.get("id") == msg["id"]:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}".strip())
                return dict(reply.get("result", {}))
            self._file(reply)

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer to {waiting_for} from the browser in time")
        self._ws.settimeout(left)
        try:
            return dict(json.loads(self._ws.recv()))
        except websocket.WebSocketTimeoutException:
            raise TimeoutError(f"no answer to {waiting_for} from the browser in time") from None

    def _file(self, event: dict[str, Any]) -> None:
        page = self._pages.get(event.get("sessionId", ""))
        if page is not None and "method" in event:
            page._on_event(event["method"], event.get("params", {}))

    def new_page(self, url: str, *, timeout: float = 90.0) -> "Page":
        """A new tab that listens for errors from its first byte, then loads ``url`` (until its load
        event)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        self._pages[session] = page
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable", session=session)
        page.goto(url, timeout=timeout)
        return page


class Page:
    """One tab of a :class:`Browser`. ``errors`` grows with every error the page reports."""

    def __init__(self, browser: Browser, target_id: str, session_id: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id
        self.errors: list[PageError] = []

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            text = d.get("exception", {}).get("description") or d.get("text", "")
            self.errors.append(PageError("exception", str(text), d.get("url", "")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
            self.errors.append(PageError("console", " ".join(str(a) for a in args)))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            e = params["entry"]
            self.errors.append(PageError("log", f"{e.get('source', '')}: {e.get('text', '')}", e.get("url", "")))

    def call(self, method: str, params: Optional[dict[str, Any]] = None, *, timeout: float = 60.0) -> dict[str, Any]:
        """A command to this page (see :meth:`Browser.call`)."""
        return self.browser.call(method, params, session=self.session_id, timeout=timeout)

    def goto(self, url: str, *, timeout: float = 90.0) -> None:
        """Load ``url`` in this tab and wait until the document is complete (its load event)."""
        nav = self.call("Page.navigate", {"url": url}, timeout=timeout)
        if nav.get("errorText"):
            raise CDPError(f"cannot load {url}: {nav['errorText']}")
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
                      timeout=timeout, what=f"{url} to load")

    def evaluate(self, expression: str, *, timeout: float = 60.0) -> Any:
        """The value (as JSON) of a JavaScript expression in the page; a promise is awaited.
        CDPError when it throws (evaluation errors are not counted in ``errors``)."""
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                        timeout=timeout)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise CDPError(f"{expression[:80]!r} threw: {d.get('exception', {}).get('description') or d.get('text')}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout: float, interval: float = 0.25, what: str = "") -> Any:
        """Evaluate ``expression`` every ``interval`` seconds until it is truthy and return that value;
        TimeoutError (with the last value) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while True:
            value = self.evaluate(expression, timeout=max(5.0, deadline - time.monotonic()))
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {what or expression!r}; last value {value!r}")
            time.sleep(interval)
