"""What each page of ``gammadb ui`` shows, as plain dicts and Vega-Lite specs: built from the store's
named reads (``sweeps_frame``, ``runs_frame``, ``runs``, ``get_run``, ``summaries``) and the analysis
chart builders that ``gammadb report`` and ``gammadb plot`` use, called as they are. No SQL here, and
nothing here writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import polars as pl

from gammadb.errors import GammadbError, InvalidSpecError, StoreUnavailableError
from gammadb.metrics import LOSS
from gammadb.records import FINISHED, RUN_COLUMNS, RunRecord, RunStatus

if TYPE_CHECKING:
    from gammadb.store import Store

#: A running run whose last heartbeat is older than this is flagged stale: the default ``--grace`` of
#: ``gammadb worker`` and ``gammadb runs requeue``, after which a worker takes it back.
STALE_AFTER_S = 300.0
STATUSES = tuple(s.value for s in RunStatus)
#: The sweep page's charts, in page order: kind -> title.
SWEEP_CHARTS = {
    "optimal-lr": "Phase portrait and eta* against gamma",
    "phase": "Phases: diverged, trained, under-trained, catapult",
    "curves": "Loss curves",
}
RUN_TABLE_COLUMNS = ("run_id", "gamma", "eta", "seed", "status", "steps_done", "steps_planned", "diverged_at",
                     "final_loss", "min_loss")


def open_store(url: Optional[str]) -> "Store":
    """The store at ``url``, opened for reading: a store that does not exist is an error (never
    created), and so is one at another schema revision (never upgraded)."""
    from gammadb.store import Store
    from gammadb.urls import parse_url, resolve_url, sqlite_path

    parsed = parse_url(resolve_url(url))
    if parsed.get_backend_name() == "sqlite" and not sqlite_path(parsed).is_file():
        raise StoreUnavailableError(f"no store at {sqlite_path(parsed)}: point --url at an existing gammadb store "
                                    "(`gammadb ui` never creates one)")
    return Store.open(url, create=False, read_only=True)


# ---------------------------------------------------------------------------------------- progress
def _utc(at: Optional[dt.datetime]) -> Optional[dt.datetime]:
    """Stored times are UTC; SQLite hands them back without a zone."""
    return at.replace(tzinfo=dt.timezone.utc) if at is not None and at.tzinfo is None else at


def _age_s(at: Optional[dt.datetime], now: dt.datetime) -> Optional[float]:
    at = _utc(at)
    return None if at is None else max(0.0, (now - at).total_seconds())


def workers(running: Sequence[RunRecord], now: dt.datetime) -> list[dict[str, Any]]:
    """The workers holding ``running`` runs: worker, runs (ids), last heartbeat (ISO), its age in
    seconds, and stale (no heartbeat for ``STALE_AFTER_S``)."""
    by: dict[str, list[RunRecord]] = {}
    for r in running:
        by.setdefault(r.worker or "?", []).append(r)
    out = []
    for name, recs in sorted(by.items()):
        beats = [_utc(r.heartbeat_at) for r in recs if r.heartbeat_at is not None]
        last = max(beats) if beats else None
        age = _age_s(last, now)
        out.append({"worker": name, "runs": sorted(r.id for r in recs),
                    "last_heartbeat": last.isoformat(timespec="seconds") if last else None,
                    "age_s": None if age is None else round(age, 1),
                    "stale": age is None or age > STALE_AFTER_S})
    return out


def stale_runs(running: Sequence[RunRecord], now: dt.datetime) -> list[int]:
    """Running runs without a heartbeat for ``STALE_AFTER_S`` seconds."""
    ages = ((r.id, _age_s(r.heartbeat_at, now)) for r in running)
    return sorted(i for i, a in ages if a is None or a > STALE_AFTER_S)


def _progress_numbers(runs: pl.DataFrame) -> dict[str, Any]:
    """Counts by status and the fraction of planned steps done (a finished run counts as done: a
    diverged run stops early on purpose)."""
    counts = dict.fromkeys(STATUSES, 0)
    if runs.height:
        for status, n in runs.group_by("status").agg(pl.len()).iter_rows():
            counts[str(status)] = int(n)
        planned = runs["steps_planned"].cast(pl.Int64)
        done = pl.select(
            pl.when(runs["status"].is_in(FINISHED)).then(planned)
            .otherwise(pl.min_horizontal(runs["steps_done"].cast(pl.Int64), planned))).to_series()
        total, got = int(planned.sum()), int(done.sum())
    else:
        total = got = 0
    return {"runs": runs.height, "counts": counts, "finished": counts["completed"] + counts["diverged"],
            "steps_done": got, "steps_planned": total, "progress": got / total if total else 0.0}


def sweeps_overview(store: "Store", now: Optional[dt.datetime] = None) -> list[dict[str, Any]]:
    """Every sweep: name, created_at, code_version, the progress numbers, workers and stale runs."""
    now = now or dt.datetime.now(dt.timezone.utc)
    sweeps = store.sweeps_frame()
    runs = store.runs_frame()
    running = store.runs(status=RunStatus.RUNNING)
    out = []
    for s in sweeps.iter_rows(named=True):
        mine = [r for r in running if r.sweep == s["name"]]
        created = s["created_at"]
        out.append({"name": s["name"], "code_version": s["code_version"],
                    "created_at": created.strftime("%Y-%m-%d %H:%M") if hasattr(created, "strftime") else str(created)[:16],
                    **_progress_numbers(runs.filter(pl.col("sweep") == s["name"])),
                    "workers": workers(mine, now), "stale": stale_runs(mine, now)})
    return out


def sweep_progress(store: "Store", sweep: str, now: Optional[dt.datetime] = None) -> dict[str, Any]:
    """What the sweep page polls: the progress numbers, workers, stale runs and each run's
    [run_id, status, steps_done] (no series is read)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    runs = store.runs_frame(sweep)  # NotFoundError for an unknown sweep
    running = store.runs(sweep, RunStatus.RUNNING)
    return {"sweep": sweep, "name": sweep, **_progress_numbers(runs), "workers": workers(running, now),
            "stale": stale_runs(running, now),
            "run_steps": [[int(i), str(st), int(d)] for i, st, d in
                          runs.select("run_id", "status", "steps_done").iter_rows()]}


def run_progress(store: "Store", run_id: int, now: Optional[dt.datetime] = None) -> dict[str, Any]:
    """What the run page polls: status, steps, worker, heartbeat age, error."""
    now = now or dt.datetime.now(dt.timezone.utc)
    r = store.get_run(run_id)  # NotFoundError
    beat = _utc(r.heartbeat_at)
    age = _age_s(beat, now)
    return {"run_id": r.id, "sweep": r.sweep, "status": r.status.value, "steps_done": r.steps_done,
            "steps_planned": r.steps_planned, "worker": r.worker,
            "last_heartbeat": beat.isoformat(timespec="seconds") if beat else None,
            "age_s": None if age is None else round(age, 1),
            "stale": r.status == RunStatus.RUNNING and (age is None or age > STALE_AFTER_S), "error": r.error}


def fingerprint(store: "Store", sweep: str) -> tuple[Any, ...]:
    """Changes whenever a run of the sweep changes status or logs steps: the key under which the
    sweep's charts are cached."""
    runs = store.runs_frame(sweep)
    return tuple(runs.select("run_id", "status", "steps_done").iter_rows())


# ---------------------------------------------------------------------------------------- pages
def varying_columns(runs: pl.DataFrame) -> list[str]:
    """The run columns (model, depth, ...) that differ between runs of the sweep."""
    return [c for c in RUN_COLUMNS if c in runs.columns and runs[c].n_unique() > 1]


def sweep_page(store: "Store", sweep: str) -> dict[str, Any]:
    """The sweep page: record, progress, grid, and its runs (the run columns that vary, then
    gamma, eta, seed, status, steps, losses)."""
    rec = store.get_sweep(sweep)  # NotFoundError
    runs = store.runs_frame(sweep)
    cols = [*varying_columns(runs), *RUN_TABLE_COLUMNS]
    table = runs.select([c for c in cols if c in runs.columns]).sort("run_id")
    fixed = {c: runs[c][0] for c in RUN_COLUMNS if c in runs.columns and runs.height and runs[c].n_unique() == 1}
    return {"sweep": rec.name, "created_at": rec.created_at.strftime("%Y-%m-%d %H:%M"),
            "code_version": rec.code_version, "spec": rec.spec, "fixed": fixed,
            "columns": table.columns, "rows": table.rows(), "charts": SWEEP_CHARTS,
            "grid": {"gamma": sorted(set(runs["gamma"].to_list())), "eta": sorted(set(runs["eta"].to_list())),
                     "seeds": runs["seed"].n_unique() if runs.height else 0}}


def run_page(store: "Store", run_id: int) -> dict[str, Any]:
    """The run page: every field of the run record, its summary, and the metrics it has."""
    r = store.get_run(run_id)  # NotFoundError
    summary = store.summaries([run_id]).get(run_id)
    fields = {k: v for k, v in dataclasses.asdict(r).items() if k not in ("config", "error")}
    fields["status"] = r.status.value
    return {"run": r, "fields": fields, "config": r.config, "error": r.error,
            "summary": dataclasses.asdict(summary) if summary else None}


# ---------------------------------------------------------------------------------------- charts
def _spec(chart: Any, zoom: bool = True) -> dict[str, Any]:
    from gammadb.analysis.charts_export import chart_spec

    if zoom:
        try:
            chart = chart.interactive()  # scroll to zoom, drag to pan (scales bound to the view)
        except (AttributeError, NotImplementedError, ValueError):
            pass  # a compound chart that cannot bind its scales stays as it is
    return chart_spec(chart)


def _eta_star_family(store: "Store", sweep: str) -> tuple[Optional[list[int]], str]:
    """Run ids along eta*(gamma) in the biggest group of finished runs (as ``gammadb report``), or
    None (every run) while no eta* is known yet; and a caption."""
    from gammadb.analysis.etas import group_columns, select_family

    runs = store.runs_frame(sweep)
    finished = runs.filter(pl.col("status").is_in(FINISHED))
    if finished.is_empty():
        return None, "every run, as it trains: seed mean (line) and min..max band, coloured by gamma"
    keys = group_columns(finished)
    biggest = sorted(finished.group_by(keys), key=lambda kg: -kg[1].height)[0][1]
    try:
        ids = select_family(biggest, "eta_star", None, keys)["run_id"].to_list()
    except GammadbError:
        return None, "every run: seed mean (line) and min..max band, coloured by gamma"
    return ids, "along eta*(gamma): each gamma at its best eta; seed mean (line) and min..max band"


def sweep_chart(store: "Store", sweep: str, kind: str) -> dict[str, Any]:
    """One chart of the sweep page: {"spec": Vega-Lite, "caption": text}. Raises GammadbError
    (AnalysisError while the sweep has too little to analyse) with the reason."""
    if kind == "optimal-lr":
        from gammadb.analysis import charts_lr, optimal_lr

        res = optimal_lr.analyze(store, sweep)
        return {"spec": _spec(charts_lr.optimal_lr_chart(res), zoom=False),
                "caption": f"loss at budget step {res.budget_step} over (gamma, eta); eta* with bootstrap "
                           "intervals, fitted power laws (solid) and theory slopes 2 and 2/L (dashed)"}
    if kind == "phase":
        from gammadb.analysis import charts_lr, phase

        pm = phase.analyze(store, sweep)
        return {"spec": _spec(charts_lr.phase_chart(pm), zoom=False),
                "caption": f"phase of every (gamma, eta) cell at step {pm.budget_step}"}
    if kind == "curves":
        from gammadb.analysis.charts_curves import curves_figure

        ids, caption = _eta_star_family(store, sweep)
        chart, info = curves_figure(store, sweep, run_ids=ids, max_rows=6_000)
        return {"spec": _spec(chart), "caption": f"{caption} ({info['runs']} runs); scroll to zoom, drag to pan"}
    raise InvalidSpecError(f"unknown chart {kind!r}: one of {', '.join(SWEEP_CHARTS)}")


def run_charts(store: "Store", run_id: int) -> list[dict[str, Any]]:
    """Every per-step metric of one run as a zoomable chart: [{"title", "spec", "caption"}]; the
    loss through the curves builder (with its plateau marks), the others through the metric builder,
    every layer in one chart."""
    from gammadb.analysis.charts_curves import curves_figure, metric_figure

    r = store.get_run(run_id)
    out = []
    try:
        chart, info = curves_figure(store, r.sweep, run_ids=[run_id], max_rows=6_000)
        out.append({"title": LOSS, "spec": _spec(chart),
                    "caption": f"{info['rows']} log-spaced points; bar: initial plateau, triangles: drops"})
    except InvalidSpecError as exc:
        out.append({"title": LOSS, "spec": None, "caption": str(exc)})
    names = [n for n in dict.fromkeys(store.metric_keys()["name"].to_list()) if n != LOSS]
    for name in names:
        try:
            chart, info = metric_figure(store, r.sweep, metric=name, run_ids=[run_id], max_rows=6_000)
        except InvalidSpecError:
            continue  # this run does not record the metric
        layers = info["layers"]
        out.append({"title": name, "spec": _spec(chart),
                    "caption": f"layers {', '.join(map(str, layers))}" if layers != [0] else ""})
    return out


def claims_table(store: "Store", sweep: str) -> dict[str, Any]:
    """The claims verdict of :func:`gammadb.analysis.claims.verdict`: {"available", "columns",
    "rows", "lines", "rule", "counts"}; available is False in an installation without it."""
    try:
        from gammadb.analysis.claims import verdict
    except ImportError:
        return {"available": False}
    rep = verdict(store, sweep)
    table = rep.table()
    doc = rep.to_json()
    return {"available": True, "columns": table.columns, "rows": table.rows(), "lines": rep.lines(),
            "rule": rep.rule, "counts": doc["counts"], "budget_step": rep.budget_step}


# ---------------------------------------------------------------------------------------- compare
def compare_names(names: Sequence[str]) -> list[str]:
    """The sweeps to compare, in the order given, each once: at least two (InvalidSpecError)."""
    out = list(dict.fromkeys(n for n in names if n))
    if len(out) < 2:
        raise InvalidSpecError("compare needs at least two sweeps: pick them on the sweeps page "
                               "(/compare?sweep=a&sweep=b)")
    return out


def compare_fingerprint(store: "Store", names: Sequence[str]) -> tuple[Any, ...]:
    """The cache key of a comparison: each sweep's :func:`fingerprint` (NotFoundError for an unknown one)."""
    return tuple((n, fingerprint(store, n)) for n in names)


def compare_analyses(store: "Store", names: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each sweep's :func:`gammadb.analysis.optimal_lr.analyze` ({name: OptimalLr}, in order) and the
    sweeps it could not analyse ({name: reason})."""
    from gammadb.analysis import optimal_lr
    from gammadb.errors import AnalysisError

    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name in names:
        try:
            results[name] = optimal_lr.analyze(store, name)
        except (AnalysisError, InvalidSpecError) as exc:
            failed[name] = str(exc)
    return results, failed


def compare_page(results: dict[str, Any], failed: dict[str, str]) -> dict[str, Any]:
    """The compare page's table: per sweep analysed, its budget step, gammas, and fitted eta* slopes;
    and the sweeps left out with their reasons."""
    from gammadb.analysis.charts_lr import slope_text

    rows = [{"sweep": n, "budget_step": r.budget_step, "gammas": r.points["gamma"].n_unique(),
             "slopes": slope_text(r)} for n, r in results.items()]
    return {"rows": rows, "failed": failed}


def compare_chart(results: dict[str, Any], failed: dict[str, str]) -> dict[str, Any]:
    """The compare chart: {"spec": Vega-Lite or None, "caption": text}."""
    from gammadb.analysis import charts_lr

    left_out = "; ".join(f"{n} left out: {why}" for n, why in failed.items())
    if len(results) < 1:
        return {"spec": None, "caption": left_out or "no sweep to compare"}
    spec = _spec(charts_lr.compare_chart(results), zoom=False)
    caption = "one colour per sweep (its largest group of comparable runs); the legend gives each sweep's fitted eta* slopes"
    return {"spec": spec, "caption": caption + (f". {left_out}" if left_out else "")}
