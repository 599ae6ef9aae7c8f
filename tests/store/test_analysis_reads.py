"""`gammadb.store.analysis_reads`: the analyses' reads on both backends, on tiny sweeps with known
values (exact aggregates, bucket counts and means, layers, runs matched by a where condition)."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gammadb.analysis.downsample import bucketed_series, parse_where
from gammadb.buckets import BUCKET_SCHEMA
from gammadb.records import Condition
from gammadb.store.analysis_reads import where_sql
from gammadb.metrics import MetricKey
from gammadb.records import RunSpec
from gammadb.store import Store
from gammadb.transfer import import_frame


def tiny(store: Store) -> dict[str, int]:
    """Sweep 'tiny': run a (eta 0.1) logs loss 100 - t at t = 0..40 and test loss 50 + t every 10
    steps; run b (eta 0.2) loss 200 - t at odd t = 1..41, no test loss; run c (eta 0.4) loss 300 - t
    at t = 0..40 with a NaN at t = 19 (diverged); run d (eta 0.8) pending, nothing logged. Sweep
    'other' has one run like a. Returns the run ids by letter."""
    a = pl.DataFrame({"gamma": 1.0, "eta": 0.1, "seed": 0, "step": list(range(41)),
                      "loss": [100.0 - t for t in range(41)],
                      "test_loss": [50.0 + t if t % 10 == 0 else None for t in range(41)],
                      "weight_change.l1": [0.01 * t for t in range(41)],
                      "weight_change.l2": [0.02 * t for t in range(41)]})
    b = pl.DataFrame({"gamma": 1.0, "eta": 0.2, "seed": 0, "step": list(range(1, 42, 2)),
                      "loss": [200.0 - t for t in range(1, 42, 2)]})
    c = pl.DataFrame({"gamma": 1.0, "eta": 0.4, "seed": 0, "step": list(range(41)),
                      "loss": [math.nan if t == 19 else 300.0 - t for t in range(41)]})
    import_frame(store, pl.concat([a, b, c], how="diagonal_relaxed").with_columns(pl.lit(3).alias("depth")), "tiny")
    import_frame(store, a.select("gamma", "eta", "seed", "step", "loss"), "other")
    sweep = store.get_sweep("tiny")
    (d,) = store.ensure_runs(sweep.id, [RunSpec(model="unknown", dataset="unknown", loss_fn="mse", optimizer="sgd",
                                                depth=3, width=None, batch_size=None, gamma=1.0, eta=0.8, seed=0,
                                                dtype="unknown", steps_planned=10, config={"eta": 0.8})])
    ids = {round(r["eta"], 3): r["run_id"] for r in store.runs_frame("tiny").iter_rows(named=True)}
    return {"a": ids[0.1], "b": ids[0.2], "c": ids[0.4], "d": d.id}


def test_metric_catalogue(store: Store) -> None:
    empty = store.metric_keys()
    assert empty.is_empty() and empty.schema == pl.Schema({"name": pl.String, "layer": pl.Int64})
    assert store.metric_id("loss") is None and store.metric_layers("loss") == []
    tiny(store)
    keys = store.metric_keys()
    assert keys.rows() == [("loss", 0), ("test_loss", 0), ("weight_change", 1), ("weight_change", 2)]
    assert keys.schema == pl.Schema({"name": pl.String, "layer": pl.Int64})
    ids = {(n, l): store.metric_id(n, l) for n, l in keys.rows()}
    assert len(set(ids.values())) == 4 and all(isinstance(i, int) for i in ids.values())
    assert store.metric_ids([MetricKey("weight_change", 2)])[MetricKey("weight_change", 2)] == ids["weight_change", 2]
    assert store.metric_id("weight_change") is None  # layer 0 of a per-layer series was never stored
    assert store.metric_id("weight_change", 3) is None and store.metric_id("nope") is None
    assert store.metric_layers("weight_change") == [1, 2]
    assert store.metric_layers("loss") == [0] and store.metric_layers("nope") == []


def test_finished_runs_with_loss_ends(store: Store) -> None:
    ids = tiny(store)
    df = store.finished_runs_with_loss_ends("tiny")
    assert df.columns == ["run_id", "model", "dataset", "loss_fn", "optimizer", "depth", "width", "batch_size",
                          "gamma", "eta", "seed", "status", "diverged_at", "s_final_step", "s_steps", "s_final",
                          "s_min", "s_max", "s_tail", "s_diverged", "first_step", "max_step", "initial_test", "initial_train",
                          "config"]
    assert df["s_diverged"].cast(pl.Boolean).to_list() == [False, False, True]
    # the pending run d and the other sweep's run are not there
    assert df["run_id"].to_list() == [ids["a"], ids["b"], ids["c"]]
    got = df.select("status", "diverged_at", "s_final_step", "s_steps", "s_final", "s_min", "s_max", "s_tail", "first_step",
                    "max_step", "initial_test", "initial_train", "depth", "width")
    want = pl.DataFrame({
        "status": ["completed", "completed", "diverged"], "diverged_at": [None, None, 19],
        "s_final_step": [40, 41, 40], "s_steps": [41, 21, 41], "s_final": [60.0, 159.0, 260.0],
        "s_min": [60.0, 159.0, 260.0],
        "s_max": [100.0, 199.0, 300.0],  # the largest finite loss (c's NaN at step 19 left out)
        "s_tail": [62.0, 161.0, 262.0],  # the last ceil(10%) of the steps
        "first_step": [0, 1, 0], "max_step": [40, 41, 40],
        "initial_test": [50.0, None, None], "initial_train": [100.0, 199.0, 300.0],
        "depth": [3, 3, 3], "width": [None, None, None],
    }, schema_overrides={"diverged_at": pl.Int64, "width": pl.Int64})
    assert_frame_equal(got, want)
    assert [json.loads(c)["eta"] for c in df["config"]] == [0.1, 0.2, 0.4]
    assert df.schema["gamma"] == pl.Float64 and df.schema["model"] == pl.String
    assert store.finished_runs_with_loss_ends("no-such-sweep").is_empty()


def test_loss_aggregates_at_a_budget(store: Store) -> None:
    ids = tiny(store)
    a, b, c = ids["a"], ids["b"], ids["c"]
    agg = store.loss_aggregates([c, a, b, 999_999], 20, tail_after=17, want_min=True, want_max=True).sort("run_id")
    assert agg.columns == ["run_id", "last_step", "final_loss", "tail_sum", "tail_n", "tail_rows", "min_loss",
                           "max_loss"]
    rows = {r["run_id"]: r for r in agg.iter_rows(named=True)}
    assert set(rows) == {a, b, c}  # an id that is no run has no row
    # a: steps 18, 19, 20 in the tail window (17, 20]
    assert rows[a] == dict(run_id=a, last_step=20, final_loss=80.0, tail_sum=243.0, tail_n=3, tail_rows=3,
                           min_loss=80.0, max_loss=100.0)
    # b: odd steps; the last step <= 20 is 19, the only one in the window
    assert rows[b] == dict(run_id=b, last_step=19, final_loss=181.0, tail_sum=181.0, tail_n=1, tail_rows=1,
                           min_loss=181.0, max_loss=199.0)
    # c: a NaN at step 19, inside the window: a row without a value (tail_n < tail_rows), left out of
    # the sums and extremes, the same on both backends
    r = rows[c]
    assert (r["last_step"], r["final_loss"], r["tail_rows"], r["min_loss"]) == (20, 280.0, 3, 280.0)
    assert (r["tail_sum"], r["tail_n"], r["max_loss"]) == (562.0, 2, 300.0)

    plain = store.loss_aggregates([b], 20, tail_after=19)
    assert plain.columns == ["run_id", "last_step", "final_loss", "tail_sum", "tail_n", "tail_rows"]
    assert plain.row(0) == (b, 19, 181.0, None, None, None)  # no logged step in (19, 20]
    early = store.loss_aggregates([b], 0, tail_after=-1, want_min=True)
    assert early.row(0) == (b, None, None, None, None, None, None)  # b starts at step 1
    none = store.loss_aggregates([], 20, tail_after=17, want_max=True)
    assert none.is_empty() and none.columns[-1] == "max_loss"


def test_test_loss_at_the_last_evaluation(store: Store) -> None:
    ids = tiny(store)
    got = store.test_loss_at([ids["b"], ids["a"]], 25).sort("run_id")
    assert got.schema == pl.Schema({"run_id": pl.Int64, "test_loss": pl.Float64})
    assert dict(got.iter_rows()) == {ids["a"]: 70.0, ids["b"]: None}  # a: evaluated at 20; b: never
    assert store.test_loss_at([ids["a"]], 9).row(0) == (ids["a"], 50.0)
    assert store.test_loss_at([ids["a"]], 40).row(0) == (ids["a"], 90.0)


def buckets_sweep(store: Store) -> dict[float, int]:
    """Sweep 'b': eta 1, value = t at t = 0..1000 (t = 0 is off the log axis); eta 2, value -1 at
    t = 1..20; eta 3, value 1 at t = 1..10 with inf at 5 and NaN at 6; layers 1 and 2 of 'w' on eta 1."""
    t = list(range(1001))
    one = pl.DataFrame({"gamma": 1.0, "eta": 1.0, "seed": 0, "step": t, "loss": [float(s) for s in t],
                        "w.l1": [1.0] * len(t), "w.l2": [2.0] * len(t)})
    neg = pl.DataFrame({"gamma": 1.0, "eta": 2.0, "seed": 0, "step": list(range(1, 21)), "loss": -1.0})
    bad = pl.DataFrame({"gamma": 1.0, "eta": 3.0, "seed": 0, "step": list(range(1, 11)),
                        "loss": [math.inf if s == 5 else math.nan if s == 6 else 1.0 for s in range(1, 11)]})
    import_frame(store, pl.concat([one, neg, bad], how="diagonal_relaxed"), "b")
    return {r["eta"]: r["run_id"] for r in store.runs_frame("b").iter_rows(named=True)}


def test_bucketed_series_exact(store: Store) -> None:
    ids = buckets_sweep(store)
    one, neg, bad = ids[1.0], ids[2.0], ids[3.0]
    got = bucketed_series(store, [bad, one, neg], MetricKey("loss"), 1)
    assert got is not None and got.schema == pl.Schema(BUCKET_SCHEMA)
    assert got.select("run_id", "bucket").rows() == [(one, 0), (one, 1), (one, 2), (one, 3), (neg, 0), (neg, 1),
                                                     (bad, 0), (bad, 1)]
    r = got.filter(pl.col("run_id") == one)
    # one bucket a decade, exact at 10, 100, 1000: steps 1-9, 10-99, 100-999, 1000 (step 0 is left out)
    assert r["n"].to_list() == [9, 90, 900, 1]
    assert r["step_lo"].to_list() == [1, 10, 100, 1000] and r["step_hi"].to_list() == [9, 99, 999, 1000]
    assert r["mean"].to_list() == [5.0, 54.5, 549.5, 1000.0]
    assert r["min"].to_list() == [1.0, 10.0, 100.0, 1000.0] and r["max"].to_list() == [9.0, 99.0, 999.0, 1000.0]
    log_means = [sum(math.log(s) for s in range(lo, hi + 1)) / (hi - lo + 1)
                 for lo, hi in ((1, 9), (10, 99), (100, 999), (1000, 1000))]
    assert r["mean_log"].to_list() == pytest.approx(log_means, rel=1e-12)
    assert r["step"].to_list() == pytest.approx([math.exp(x) for x in log_means], rel=1e-12)  # value = step
    n = got.filter(pl.col("run_id") == neg)
    assert n["n"].to_list() == [9, 11] and n["mean"].to_list() == [-1.0, -1.0]
    assert n["mean_log"].to_list() == [None, None]  # no positive value to take the log of
    x = got.filter(pl.col("run_id") == bad)
    assert x["n"].to_list() == [7, 1] and x["max"].to_list() == [1.0, 1.0]  # inf and NaN left out

    capped = bucketed_series(store, [one], MetricKey("loss"), 1, max_step=99)
    assert capped["n"].to_list() == [9, 90]
    layer2 = bucketed_series(store, [one], MetricKey("w", 2), 1)
    assert layer2["mean"].to_list() == [2.0] * 4 and layer2["n"].to_list() == [9, 90, 900, 1]
    assert bucketed_series(store, [one], "w", 1).is_empty()  # layer 0 of w was never logged
    empty = bucketed_series(store, [], MetricKey("loss"), 1)
    assert empty.is_empty() and empty.schema == pl.Schema(BUCKET_SCHEMA)


def test_values_frame_reads_a_step_range_of_one_series(store: Store) -> None:
    ids = buckets_sweep(store)
    run_ids = sorted(ids.values())
    raw = store.series(run_ids, metrics=["loss"]).select("run_id", "step", "value")
    loss = store.metric_id("loss")
    assert loss is not None
    got = store.values_frame(run_ids, loss, lo=5, hi=1000)
    want = raw.filter((pl.col("step") >= 5) & (pl.col("step") <= 1000))
    assert want.height > 100
    assert_frame_equal(got, want)  # NaN and inf as stored
    assert store.values_frame(run_ids, MetricKey("nope")).is_empty()


def test_run_ids_where(store: Store) -> None:
    ids = tiny(store)

    def where(text: str) -> list[int]:
        return store.run_ids_where("tiny", parse_where(text))

    assert where("eta > 0.15") == sorted([ids["b"], ids["c"], ids["d"]])
    assert where("eta = 0.1") == [ids["a"]]  # not the other sweep's run with the same eta
    assert where("eta = 0.2000000000001") == [ids["b"]]  # float '=' within a relative 1e-9
    assert where("eta != 0.2 and status in (completed, diverged)") == [ids["a"], ids["c"]]
    assert where("status = pending") == [ids["d"]]
    assert where("diverged_at >= 19") == [ids["c"]]
    assert where("model = \"x' OR '1'='1\"") == []  # a quoted value is bound, never SQL
    assert store.run_ids_where("tiny", [Condition("eta", "<", (0.15,))]) == [ids["a"]]
    assert store.run_ids_where("no-such-sweep", [Condition("eta", ">", (0.0,))]) == []


@pytest.mark.parametrize("conditions,sql,params", [
    ([Condition("gamma", ">", (10.0,))], "gamma > ?", [10.0]),
    ([Condition("depth", "=", (3,)), Condition("eta", "<=", (0.1,))], "depth = ? AND eta <= ?", [3, 0.1]),
    ([Condition("model", "IN", ("mlp", "toy"))], "model IN (?, ?)", ["mlp", "toy"]),
    ([Condition("status", "<>", ("diverged",))], "status <> ?", ["diverged"]),
    ([Condition("eta", "=", (0.1,))], "(eta BETWEEN ? AND ?)", [0.1 * (1 - 1e-5), 0.1 * (1 + 1e-5)]),
    ([Condition("eta", "<>", (0.1,))], "NOT (eta BETWEEN ? AND ?)", [0.1 * (1 - 1e-5), 0.1 * (1 + 1e-5)]),
], ids=["gt", "and", "in", "ne", "float-eq", "float-ne"])
def test_where_sql_renders_typed_conditions(conditions, sql, params) -> None:
    got_sql, got_params = where_sql(conditions)
    assert got_sql == sql
    assert got_params == pytest.approx(params, rel=1e-12)


@pytest.mark.parametrize("bad", [
    Condition("value; DROP TABLE runs", "=", (1,)), Condition("gamma", "OR", (1.0,)), Condition("gamma", "=", ()),
], ids=["column", "operator", "no-value"])
def test_where_sql_refuses_anything_but_a_run_condition(bad: Condition) -> None:
    with pytest.raises(ValueError):
        where_sql([bad])


def test_metric_id_asks_the_store_once_for_a_found_series_and_again_for_a_missing_one(store, monkeypatch):
    """A lookup costs a connection (30-80 ms on PostgreSQL) and a report makes about 30: found ids
    are kept; a missing series is asked for again, since a writer may create it meanwhile."""
    reads: list[str] = []
    real = store.read
    monkeypatch.setattr(store, "read", lambda sql, params=(): reads.append(sql) or real(sql, params))
    assert store.metric_id("loss") is None and store.metric_id("loss") is None
    assert len(reads) == 2
    created = store.metric_ids([MetricKey("loss")])[MetricKey("loss")]
    other = Store.open(store.url.render_as_string(hide_password=False))  # a fresh store object
    try:
        own = other.read
        monkeypatch.setattr(other, "read", lambda sql, params=(): reads.append(sql) or own(sql, params))
        assert other.metric_id("loss") == created and other.metric_id("loss", 0) == created
        assert len(reads) == 3
    finally:
        other.close()
