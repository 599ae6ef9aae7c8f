"""One report build does each analysis once (gammadb.analysis.shared), and its tables and charts are
those of the analyses run on their own, outside any shared scope.

A synthetic sweep with an interior eta*, diverged cells and two seeds (so the bootstrap intervals
matter) goes through `gammadb import` into a real store (SQLite and, with GAMMADB_TEST_PG_URL,
PostgreSQL); the analyses are counted by wrapping them, each call going through to the real one.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gammadb.analysis import _common, charts_lr, claims_plan, collapse, optimal_lr, phase, plateaus
from gammadb.analysis.claims import verdict
from gammadb.analysis.fits import DEFAULT_BOOT
from gammadb.analysis.report import build_report
from gammadb.analysis.report_html import Page
from gammadb.analysis.shared import Scope, shared_call, shared_reads
from gammadb.store import Store
from gammadb.transfer import import_frame
from tests.analysis.test_claims import claims_sweep
from tests.conftest import BACKENDS, _pg_database

SWEEP = "share"


@pytest.fixture(scope="module", params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """40 runs: 4 gammas x 5 etas x 2 seeds, ~90 logged steps each (read-only tests)."""
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path_factory.mktemp('share') / 'store.sqlite'}"])
    else:
        urls = _pg_database()
    st = Store.open(next(urls))
    import_frame(st, claims_sweep([1e-2, 0.1, 10.0, 100.0], seeds=(0, 1), steps=1000, per_decade=2), SWEEP)
    try:
        yield st
    finally:
        st.close()
        next(urls, None)


def _count(monkeypatch: pytest.MonkeyPatch, calls: Counter, mod: Any, name: str,
           what: Any = None) -> None:
    """Wrap ``mod.name`` to count its calls (``what(*args, **kwargs)`` names the call); it still runs."""
    real = getattr(mod, name)

    @functools.wraps(real)
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[what(*args, **kwargs) if what else name] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, name, counted)


def test_one_report_build_runs_each_analysis_once(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: Counter = Counter()
    # the optimal-lr analysis once: the claims ask for the page's settings (the CLI's and the
    # dashboard's: the same verdict everywhere), so the eta*, U-curve and eta* section share theirs
    _count(monkeypatch, calls, optimal_lr, "analyze_runs", lambda t, s, settings=None, grid=None:
           f"analyze_runs n_boot={settings.n_boot}")
    _count(monkeypatch, calls, optimal_lr, "with_fills")
    _count(monkeypatch, calls, _common, "_load_runs", lambda store, sweep, **k: f"load_runs want_max={k['want_max']}")
    _count(monkeypatch, calls, phase, "phase_map")
    _count(monkeypatch, calls, collapse, "collapse_frame")
    _count(monkeypatch, calls, plateaus, "detect_plateaus")
    real_grid = claims_plan.SweepGrid.read.__func__
    monkeypatch.setattr(claims_plan.SweepGrid, "read",
                        classmethod(lambda cls, *a: calls.update(["SweepGrid.read"]) or real_grid(cls, *a)))
    text, sections = build_report(store, SWEEP)
    assert all(s.ok for s in sections if s.id != "metrics"), [(s.id, s.notes) for s in sections]
    assert calls == Counter({f"analyze_runs n_boot={DEFAULT_BOOT}": 1,
                             "with_fills": 1, "load_runs want_max=False": 1, "load_runs want_max=True": 1,
                             "phase_map": 1, "collapse_frame": 1, "detect_plateaus": 1, "SweepGrid.read": 1})
    calls.clear()
    build_report(store, SWEEP)  # the next page computes afresh: nothing is kept between pages
    assert calls[f"analyze_runs n_boot={DEFAULT_BOOT}"] == 1 and calls["phase_map"] == 1 and calls["load_runs want_max=True"] == 1


def test_the_report_shows_what_the_analyses_give_on_their_own(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    tables: list[tuple[str, str, pl.DataFrame]] = []
    charts: list[tuple[str, str, dict]] = []
    real_table, real_chart = Page.table, Page.chart

    def table(self: Page, sec: Any, df: pl.DataFrame, title: str = "", *a: Any, **k: Any) -> None:
        tables.append((sec.id, title, df))
        real_table(self, sec, df, title, *a, **k)

    def chart(self: Page, sec: Any, ch: Any, caption: str = "") -> None:
        charts.append((sec.id, caption, ch.to_dict()))
        real_chart(self, sec, ch, caption)

    monkeypatch.setattr(Page, "table", table)
    monkeypatch.setattr(Page, "chart", chart)
    build_report(store, SWEEP)
    monkeypatch.undo()
    got = {(sid, title): df for sid, title, df in tables}

    # the analyses on their own, each reading the store afresh (no shared scope), as before sharing
    lr = optimal_lr.analyze(store, SWEEP)
    assert lr.points["eta_star_lo"].is_not_null().any()  # intervals: the bootstrap is exercised
    for title, df in optimal_lr.report_tables(lr):
        if not title.startswith("smoothly broken"):
            assert_frame_equal(got[("optimal-lr", title)], df)
    pm = phase.analyze(store, SWEEP)
    for title, df in phase.report_tables(pm):
        assert_frame_equal(got[("phases", title)], df)
    assert_frame_equal(got[("summary", "claims verdict")], verdict(store, SWEEP).table())
    rep = collapse.analyze_collapse(store, SWEEP, along="fixed", gamma_min=1.0)
    assert_frame_equal(got[("collapse", "per run")], rep.runs)

    # the U-curve as lr_curve_figure drew it before it shared the page's analysis: its own load and
    # analysis with the default settings (eta_conv's window 3 decades, not the sweep's)
    table = _common.load_runs(store, SWEEP)
    own = optimal_lr.analyze_runs(table, SWEEP, optimal_lr.Settings())
    seeds = optimal_lr.with_value(table.frame, own.settings.criterion).select("gamma", "eta", "value", "diverged")
    gi = charts_lr._largest_group(own)
    by_caption = {(sid, cap.split(" ")[0]): spec for sid, cap, spec in charts}
    summary = [spec for sid, cap, spec in charts if sid == "summary"]
    assert summary == [charts_lr.eta_vs_gamma(lr, gi).to_dict(), charts_lr.lr_curve_chart(own, seeds, gi).to_dict()]
    assert by_caption[("optimal-lr", "loss")] == charts_lr.phase_portrait(lr, gi).to_dict()
    assert by_caption[("phases", "phase")] == charts_lr.phase_chart(pm).to_dict()


def test_the_claims_on_a_dashboard_share_the_eta_star_chart_analysis(store: Store,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard's claims (default bootstrap) and its eta* chart ask for the same analysis."""
    calls: Counter = Counter()
    _count(monkeypatch, calls, optimal_lr, "analyze_runs")
    alone = verdict(store, SWEEP)
    calls.clear()
    with shared_reads(store, Scope(store)):
        res = optimal_lr.analyze(store, SWEEP)
        shared = verdict(store, SWEEP)
        chart, info = charts_lr.lr_curve_figure(store, SWEEP)
    assert calls == Counter({"analyze_runs": 1})
    assert shared == alone and info["budget_step"] == res.budget_step


def test_shared_call_keys_on_the_arguments_with_defaults_filled(store: Store) -> None:
    seen: list[tuple] = []

    def f(st: Store, sweep: str, *, along: str = "fixed", ids: Any = None) -> tuple:
        seen.append((sweep, along, ids))
        return sweep, along

    f.__qualname__ = "f_for_test"
    assert shared_call(f, store, "s") == shared_call(f, store, "s") and len(seen) == 2  # no block: each time
    seen.clear()
    with shared_reads(store):
        assert shared_call(f, store, "s") is shared_call(f, store, "s", along="fixed")
        shared_call(f, store, "s", along="all")
        shared_call(f, store, "t")
        assert len(seen) == 3
        shared_call(f, store, "s", ids=[1, 2])  # a list cannot be a key: computed, not kept
        shared_call(f, store, "s", ids=[1, 2])
        assert len(seen) == 5


def test_cell_rects_keep_the_cells_order() -> None:
    """The phase portrait's data is the same from one page to the next: it came out of joins in any
    order (here, cells in no particular order come back in that order)."""
    gammas = [10.0 ** (k / 4) for k in range(-12, 13)]
    cells = pl.DataFrame([{"gamma": g, "eta": g * 10.0 ** (j / 4), "value": float(i * 100 + j)}
                          for i, g in enumerate(gammas) for j in range(-10, 11)]).sample(fraction=1.0, shuffle=True,
                                                                                         seed=0)
    out = charts_lr.cell_rects(cells)
    assert_frame_equal(out.select(cells.columns), cells)
    assert (out["eta_lo"] < out["eta"]).all() and (out["eta"] < out["eta_hi"]).all()
    assert (out["gamma_lo"] < out["gamma"]).all() and (out["gamma"] < out["gamma_hi"]).all()
