"""gammadb vs MLflow (SQLite backend, its fastest logging path `log_batch`), in one process run.

The same 20 runs x 10,000 steps x 10 metrics (2 M values) are logged into each; then every series is
read back, and eta* (the eta with the lowest mean loss over the last 10% of steps, per gamma) is found
for the synthetic 4-gamma x 5-eta sweep with each tool's own API. Prints rows/s, read rows/s, bytes per
value and the ratios gammadb / MLflow.

mlflow is a benchmark-only dependency: pip install 'gammadb[bench]' (or mlflow into a separate venv
together with gammadb). Usage: python benchmarks/vs_mlflow.py [--steps 10000] [--runs 20]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

GAMMAS = (0.1, 1.0, 10.0, 100.0)
ETAS = (0.01, 0.03, 0.1, 0.3, 1.0)
METRICS = ["loss", "feature_alignment", "ntk_alignment", "test_loss", "test_accuracy",
           "weight_change_1", "weight_change_2", "weight_change_3", "sharpness", "grad_norm"]


def synthetic(run: int, step: int, steps: int) -> list[float]:
    gamma, eta = GAMMAS[run // len(ETAS) % len(GAMMAS)], ETAS[run % len(ETAS)]
    eta_star = 0.1 * gamma ** 0.5
    loss = (1 + math.log10(eta / eta_star) ** 2) * (0.5 + 0.5 / (1 + step / 100)) + 0.01 * math.sin(step)
    return [loss] + [0.5 + 0.1 * i + 1e-6 * step for i in range(len(METRICS) - 1)]


def bench_mlflow(tmp: Path, runs: int, steps: int) -> dict[str, float]:
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    db = tmp / "mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    client = MlflowClient()
    exp = client.create_experiment("bench", artifact_location=str(tmp / "artifacts"))
    run_ids = []
    t0 = time.perf_counter()
    for r in range(runs):
        gamma, eta = GAMMAS[r // len(ETAS) % len(GAMMAS)], ETAS[r % len(ETAS)]
        run = client.create_run(exp)
        client.log_param(run.info.run_id, "gamma", gamma)
        client.log_param(run.info.run_id, "eta", eta)
        run_ids.append(run.info.run_id)
        batch: list = []
        ts = int(time.time() * 1000)
        for step in range(1, steps + 1):
            for k, v in zip(METRICS, synthetic(r, step, steps)):
                batch.append(Metric(k, v, ts, step))
            if len(batch) >= 1000:  # MLflow's limit per log_batch call
                client.log_batch(run.info.run_id, metrics=batch)
                batch = []
        if batch:
            client.log_batch(run.info.run_id, metrics=batch)
        client.set_terminated(run.info.run_id)
    write_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_read = 0
    for rid in run_ids:
        for k in METRICS:
            n_read += len(client.get_metric_history(rid, k))
    read_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    best: dict[float, tuple[float, float]] = {}
    for run in client.search_runs([exp], max_results=10_000):
        gamma, eta = float(run.data.params["gamma"]), float(run.data.params["eta"])
        hist = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
        tail = hist[-max(1, len(hist) // 10):]
        score = sum(m.value for m in tail) / len(tail)
        if gamma not in best or score < best[gamma][1]:
            best[gamma] = (eta, score)
    eta_s = time.perf_counter() - t0
    values = runs * steps * len(METRICS)
    return dict(write=values / write_s, read=n_read / read_s, bytes=db.stat().st_size / values, eta_s=eta_s,
                eta_star={g: e for g, (e, _) in sorted(best.items())})


def bench_gammadb(tmp: Path, runs: int, steps: int) -> dict[str, float]:

    from gammadb.metrics import MetricKey
    from gammadb.records import RunSpec
    from gammadb.store import Store

    path = tmp / "gammadb.sqlite"
    store = Store.open(f"sqlite:///{path}")
    sweep = store.ensure_sweep("bench", {})
    keys = [MetricKey(k) for k in METRICS]
    t0 = time.perf_counter()
    specs = [RunSpec("mlp", "synthetic", "mse", "sgd", 3, 64, 32, GAMMAS[r // len(ETAS) % len(GAMMAS)],
                     ETAS[r % len(ETAS)], 0, "float64", steps, {"r": r}) for r in range(runs)]
    records = store.ensure_runs(sweep.id, specs)
    with store.writer() as w:
        for r, rec in enumerate(records):
            for step in range(1, steps + 1):
                w.log(rec.id, step, dict(zip(keys, synthetic(r, step, steps))))
    from gammadb.records import RunStatus

    for rec in records:
        store.finish_run(rec.id, RunStatus.COMPLETED, steps_done=steps)
    write_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_read = store.series([r.id for r in records], metrics=METRICS).height
    read_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    # eta*: the run summaries carry the tail mean; one SQL query answers it.
    df = store.read("SELECT gamma, eta, tail_mean_loss FROM run_overview WHERE sweep = ?", ["bench"])
    best = df.sort("tail_mean_loss").group_by("gamma", maintain_order=True).first().sort("gamma")
    eta_s = time.perf_counter() - t0
    store.close()
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    values = runs * steps * len(METRICS)
    size = sum(p.stat().st_size for p in tmp.glob("gammadb.sqlite*"))
    return dict(write=values / write_s, read=n_read / read_s, bytes=size / values, eta_s=eta_s,
                eta_star=dict(zip(best["gamma"].to_list(), best["eta"].to_list())))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise SystemExit("mlflow is not installed: pip install 'gammadb[bench]'")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as d:
        g = bench_gammadb(Path(d), args.runs, args.steps)
        m = bench_mlflow(Path(d), args.runs, args.steps)
    assert g["eta_star"] == m["eta_star"], (g["eta_star"], m["eta_star"])
    print(f"{args.runs} runs x {args.steps} steps x {len(METRICS)} metrics = "
          f"{args.runs * args.steps * len(METRICS):,} values; eta* agrees: {g['eta_star']}")
    print(f"{'':22s}{'gammadb':>14s}{'MLflow':>14s}{'ratio':>10s}")
    for label, key, better in (("write values/s", "write", "high"), ("read values/s", "read", "high"),
                               ("bytes per value", "bytes", "low"), ("eta* seconds", "eta_s", "low")):
        print(f"{label:22s}{g[key]:14,.4g}{m[key]:14,.4g}{g[key] / m[key]:10.3g}")


if __name__ == "__main__":
    main()
