"""Builds tests/data/store_0003.sqlite: a store written by gammadb at schema revision 0003 (one row
per value in ``metric_values``), the fixture of the migration to the chunked layout (0004).

Run with that gammadb on the path (e.g. ``pip install --no-deps --target /tmp/old <checkout of
d935e52>``, then ``PYTHONPATH=/tmp/old python tests/data/make_store_0003.py OUT``). It holds: a
completed run over two chunk windows (1,500 steps of loss and per-layer weight change), a cadence
series (test_loss every 100 steps), NaN, +inf and -inf values in the middle of a series, a diverged
run (NaN from step 40 on), a resumed run (steps after 300 dropped, then rewritten with other values)
and a pending run with no values.
"""

from __future__ import annotations

import math
import sys

from gammadb.metrics import MetricKey
from gammadb.records import RunSpec, RunStatus
from gammadb.store import Store


def main(path: str) -> None:
    store = Store.open(f"sqlite:///{path}")
    sweep = store.ensure_sweep("fixture", {"source": "make_store_0003"})

    def spec(gamma: float, eta: float, steps: int) -> RunSpec:
        return RunSpec(model="mlp", dataset="teacher", loss_fn="mse", optimizer="sgd", depth=2, width=8,
                       batch_size=4, gamma=gamma, eta=eta, seed=0, dtype="float64", steps_planned=steps,
                       config={"fixture": True})

    done, diverged, resumed, pending = store.ensure_runs(
        sweep.id, [spec(1.0, 0.1, 1500), spec(1.0, 10.0, 100), spec(0.1, 0.01, 600), spec(10.0, 1.0, 50)])
    loss, w1, w2, test = MetricKey("loss"), MetricKey("weight_change", 1), MetricKey("weight_change", 2), MetricKey("test_loss")
    specials = {700: math.nan, 701: math.inf, 702: -math.inf, 1023: 5e-324, 1024: -0.0, 1025: 1.7976931348623157e308}
    with store.writer() as w:
        for t in range(1501):
            v = specials.get(t, 1.0 / (1 + t) + 1e-17 * t)
            w.log(done.id, t, {loss: v, w1: 0.001 * t, w2: math.sqrt(t)})
            if t % 100 == 0:
                w.log(done.id, t, {test: 2.0 / (1 + t)})
        for t in range(101):
            w.log(diverged.id, t, {loss: (1.5 ** t) if t < 40 else math.nan})
        for t in range(601):
            w.log(resumed.id, t, {loss: 3.0 - t / 1000})
    store.finish_run(done.id, RunStatus.COMPLETED, steps_done=1500)
    store.finish_run(diverged.id, RunStatus.DIVERGED, steps_done=100, diverged_at=40)
    store.delete_steps_after(resumed.id, 300)  # a restart from the step-300 checkpoint
    with store.writer() as w:
        for t in range(301, 601):
            w.log(resumed.id, t, {loss: 2.0 - t / 1000})
    store.finish_run(resumed.id, RunStatus.COMPLETED, steps_done=600)
    store.rebuild_summaries("fixture")
    store.close()
    print(f"wrote {path}: runs {done.id}, {diverged.id}, {resumed.id}, {pending.id}")


if __name__ == "__main__":
    main(sys.argv[1])
