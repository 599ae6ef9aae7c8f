"""Scale-out and faults with real processes: parallel workers on SQLite and PostgreSQL, a killed
database connection, a full disk, a read-only store, bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gammadb.cli import app
from gammadb.errors import StoreUnavailableError
from gammadb.records import RunStatus
from gammadb.store import Store
from gammadb.runners.config import RunConfig
from gammadb.runners.plan import SweepPlan, prepare
from gammadb.runners.train import ListSink, train

ROOT = Path(__file__).parents[2]


def short(**kw) -> RunConfig:
    base = dict(model="mlp", task="teacher", depth=2, width=8, batch_size=4, steps=5, cadence="none",
                feature_alignment=False, ntk=False, sharpness=False, test_size=16)
    return RunConfig(**{**base, **kw})


def make_sweep(url: str, name: str, n: int, **kw) -> list[int]:
    configs = [short(gamma=1.0, eta=0.01 * (i + 1), **kw) for i in range(n)]
    with Store.open(url) as store:
        _, runs = prepare(store, SweepPlan(name=name, spec={}, configs=configs))
        return [r.id for r in runs]


def start_worker(url: str, sweep: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "GAMMADB_URL": url, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "gammadb", "worker", "--sweep", sweep, "--threads", "1", *extra],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def drain(url: str, sweep: str, workers: int) -> Counter:
    procs = [start_worker(url, sweep) for _ in range(workers)]
    ran: Counter = Counter()
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        assert "locked" not in err.lower(), err[-2000:]
        ran.update(int(m) for m in re.findall(r"run (\d+) gamma=", err))
    return ran


@pytest.mark.parametrize("backend, workers", [("sqlite", 4), ("postgresql", 8)], ids=["sqlite-4", "postgresql-8"])
def test_workers_drain_a_sweep_exactly_once(backend: str, workers: int, sqlite_url: str, request) -> None:
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("pg_url")
    ids = make_sweep(url, "drain", 64)
    ran = drain(url, "drain", workers)
    assert sorted(ran) == sorted(ids) and set(ran.values()) == {1}, "a run was trained twice or never"
    with Store.open(url) as store:
        runs = store.runs_frame("drain")
        assert runs["status"].to_list() == ["completed"] * 64
        n = store.read("SELECT COUNT(*) AS n, COUNT(DISTINCT run_id) AS r FROM metric_values")
        assert (n["n"][0], n["r"][0]) == (64 * 5 * 3, 64)  # loss + 2 weight-change layers per step


def test_a_killed_database_connection_under_a_writer_loses_nothing(pg_url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    (run_id,) = make_sweep(pg_url, "kill", 1, steps=4000)
    proc = start_worker(pg_url, "kill")
    db = make_url(pg_url).database
    admin = make_url(pg_url).set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    killed = 0
    with Store.open(pg_url) as store, psycopg.connect(admin, autocommit=True) as conn:
        deadline = time.time() + 120
        while time.time() < deadline and killed < 2:
            time.sleep(0.5)
            if store.get_run(run_id).steps_done > 200 * (killed + 1):
                killed += conn.execute(
                    "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid() AND application_name <> 'gammadb-test'", (db,)
                ).fetchone()[0] > 0
    out, err = proc.communicate(timeout=600)
    assert killed >= 1
    with Store.open(pg_url) as store:
        run = store.get_run(run_id)
        if run.status.value != "completed":  # the run failed cleanly: a requeue and a worker finish it
            assert run.status.value == "failed", err[-2000:]
            store.requeue("kill", failed=True)
            assert drain(pg_url, "kill", 1)[run_id] == 1
        loss = store.series([run_id])
        assert loss["step"].to_list() == list(range(1, 4001))


def test_a_connection_killed_at_a_runs_end_does_not_leave_it_running(store_url: str, monkeypatch) -> None:
    """The kill above can land on the run's end (its summary read, its status write): a trained run
    must still end completed, not stay 'running' until its heartbeat goes stale. One transient store
    error there is retried on a new connection; any other error is not (a bug must surface)."""
    from gammadb.runners.sweep import work
    from gammadb.store import retry_transient

    (run_id,) = make_sweep(store_url, "end", 1, steps=30)
    with Store.open(store_url) as store:
        real = store.finish_runs
        calls: list[int] = []

        def finish_runs(*args, **kwargs):  # the real call, after one real-looking connection loss
            calls.append(1)
            if len(calls) == 1:
                raise StoreUnavailableError(f"cannot open {store.display_url}: FATAL: terminating connection "
                                            "due to administrator command")
            return real(*args, **kwargs)

        monkeypatch.setattr(store, "finish_runs", finish_runs)
        work(store, "end")
        assert len(calls) == 2 and store.get_run(run_id).status == RunStatus.COMPLETED
        assert store.series([run_id])["step"].to_list() == list(range(1, 31))

    def broken() -> None:
        calls.append(1)
        raise StoreUnavailableError("store x is read-only: attempt to write a readonly database")

    calls.clear()
    with pytest.raises(StoreUnavailableError, match="read-only"):
        retry_transient(broken)
    assert len(calls) == 1  # not transient: not retried


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_full_disk_is_a_clear_error_and_the_store_stays_consistent(tmp_path: Path) -> None:
    from gammadb.metrics import MetricKey

    disk = tmp_path / "disk"
    if not _tmpfs(disk, "1m"):
        pytest.skip("cannot mount a small tmpfs here")
    try:
        url = f"sqlite:///{disk / 'store.sqlite'}"
        (run_id,) = make_sweep(url, "full", 1)
        with Store.open(url) as store:
            with pytest.raises(StoreUnavailableError) as info:
                with store.writer(batch_rows=5000) as w:
                    for step in range(1, 200_000):
                        w.log(run_id, step, {MetricKey("loss"): 1.0 / step})
                    w.flush()
            assert "full" in str(info.value).lower() or "disk" in str(info.value).lower()
            steps = store.series([run_id])["step"].to_list()
            assert steps == list(range(1, len(steps) + 1))  # whole batches only
        import sqlite3

        assert sqlite3.connect(disk / "store.sqlite").execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_a_read_only_store_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ro.sqlite"
    url = f"sqlite:///{path}"
    make_sweep(url, "ro", 2)
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        r = CliRunner().invoke(app, ["run", "--url", url, "--name", "ro2", "--gamma", "1", "--eta", "0.1",
                                     "--steps", "3", "--width", "8", "--quiet"])
        assert r.exit_code == 5, r.output
        assert "read-only" in r.output and "Traceback" not in r.output
        r = CliRunner().invoke(app, ["runs", "ls", "--url", url, "--format", "csv"])
        assert r.exit_code == 0 and r.output.count("\n") == 3
    finally:
        subprocess.run(["chattr", "-i", str(path)])


@pytest.mark.parametrize("args, code, text", [
    (["run", "--gamma", "-1"], 2, "gamma"),
    (["run", "--gamma", "1e2:1e-2:3"], 2, "lo must be <= hi"),
    (["run", "--model", "transformerXL"], 2, "model"),
    (["run", "--task", "mnist1m", "--data-dir", "/nonexistent"], 3, "nonexistent"),
    (["run", "nope.toml"], 3, "nope.toml"),
    (["worker", "--sweep", "nope"], 3, "no sweep named"),
    (["run", "--preset", "nope"], 2, "unknown preset"),
], ids=["gamma", "grid", "model", "data-dir", "spec-file", "worker-sweep", "preset"])
def test_bad_input_is_refused_before_anything_is_written(sqlite_url: str, args, code, text) -> None:
    r = CliRunner().invoke(app, [*args, "--url", sqlite_url])
    assert r.exit_code == code, r.output
    assert text in r.output and len(r.output.strip().splitlines()) == 1
    if Path(sqlite_url[len("sqlite:///"):]).exists():
        with Store.open(sqlite_url) as store:
            assert store.runs_frame().height == 0


def test_malformed_spec_file(sqlite_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\ngamma = [1.0\n")
    r = CliRunner().invoke(app, ["run", str(bad), "--url", sqlite_url])
    assert r.exit_code == 2 and "TOML" in r.output


def test_run_with_local_workers_cli(sqlite_url: str, tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text(
        'name = "par"\ngamma = [0.5, 2.0]\neta = [0.01, 0.1]\nseeds = 2\nsteps = 5\n'
        '[base]\nmodel = "mlp"\ntask = "teacher"\ndepth = 2\nwidth = 8\nbatch_size = 4\ncadence = "none"\n'
        'ntk = false\nsharpness = false\nfeature_alignment = false\n'
    )
    r = CliRunner().invoke(app, ["run", str(spec), "--url", sqlite_url, "--workers", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    with Store.open(sqlite_url) as store:
        assert store.runs_frame("par")["status"].to_list() == ["completed"] * 8


def test_repeated_sigkills_at_random_points_lose_and_duplicate_nothing(sqlite_url: str, tmp_path: Path) -> None:
    import random
    import signal

    configs = [short(gamma=2.0, eta=0.05, steps=400, seed=s, feature_alignment=True) for s in range(3)]
    with Store.open(sqlite_url) as store:
        prepare(store, SweepPlan(name="kills", spec={}, configs=configs))
    rnd = random.Random(7)
    ckpt = str(tmp_path / "ckpt")
    kills = 0
    with Store.open(sqlite_url) as store:
        for _ in range(5):
            before = store.read("SELECT COALESCE(SUM(steps_done), 0) AS n FROM runs")["n"][0]
            target = before + rnd.randint(50, 250)
            proc = start_worker(sqlite_url, "kills", "--checkpoint-dir", ckpt, "--checkpoint-every", "0.2")
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                if store.read("SELECT COALESCE(SUM(steps_done), 0) AS n FROM runs")["n"][0] >= target:
                    break
                time.sleep(0.05)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate()
            # nothing half-written: every stored step carries all its per-step metrics
            counts = store.read("SELECT run_id, step, COUNT(*) AS n FROM metric_values GROUP BY run_id, step")
            assert counts.is_empty() or counts["n"].unique().to_list() == [4]
        ran = drain(sqlite_url, "kills", 1)  # requeues the dead workers' runs first
        assert kills >= 3
        runs = store.runs_frame("kills").sort("seed")
        assert runs["status"].to_list() == ["completed"] * 3
        for config, run_id in zip(configs, runs["run_id"].to_list()):
            ref = ListSink()
            train(config, ref, device="cpu")
            got = store.series([run_id], metrics=["loss"])
            assert got["step"].to_list() == list(range(1, 401))
            assert got["value"].to_list() == ref.values("loss")  # bit for bit on CPU
        assert set(ran.values()) <= {1}


def test_a_worker_without_ensemble_takes_the_sweep_specs(sqlite_url: str, tmp_path: Path, monkeypatch) -> None:
    """`gammadb worker` with no --ensemble stacks as the stored sweep spec says."""
    import gammadb.runners.ensemble as ensemble_module

    sizes: list[int] = []
    real = ensemble_module.train_ensemble

    def spy(configs, sinks, **kw):
        sizes.append(len(configs))
        return real(configs, sinks, **kw)

    monkeypatch.setattr(ensemble_module, "train_ensemble", spy)
    spec = tmp_path / "s.toml"
    spec.write_text('name = "wk"\ngamma = [0.5, 2.0]\neta = [0.01, 0.02]\nsteps = 3\nensemble = 4\n'
                    '[base]\nmodel = "mlp"\ntask = "teacher"\ndepth = 2\nwidth = 8\nbatch_size = 4\n'
                    'cadence = "none"\n')
    with Store.open(sqlite_url) as store:
        from gammadb.runners.plan import plan_of
        from gammadb.runners.spec import load_spec

        prepare(store, plan_of(load_spec(spec)))
    r = CliRunner().invoke(app, ["worker", "--sweep", "wk", "--url", sqlite_url, "--quiet"])
    assert r.exit_code == 0, r.output
    assert sizes == [4]
    with Store.open(sqlite_url) as store:
        assert [run.status for run in store.runs(sweep="wk")] == [RunStatus.COMPLETED] * 4


@pytest.mark.parametrize("ensemble", [1, 4])
def test_submitit_local_launcher_drains_the_sweep(sqlite_url: str, tmp_path: Path, monkeypatch, ensemble: int) -> None:
    """Through submitit's local executor, one run at a time or stacked (the sweep spec's ``ensemble``):
    every run completes with the losses of the same point trained alone (float64)."""
    pytest.importorskip("submitit")
    monkeypatch.chdir(tmp_path)  # submitit's job folder goes under the working directory
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'name = "sub"\ngamma = [0.5, 2.0]\neta = [0.01]\nseeds = 2\nsteps = 4\nensemble = {ensemble}\n'
        '[base]\nmodel = "mlp"\ntask = "teacher"\ndepth = 2\nwidth = 8\nbatch_size = 4\ncadence = "none"\n'
        'ntk = false\nsharpness = false\nfeature_alignment = false\ndtype = "float64"\n'
    )
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    r = CliRunner().invoke(app, ["run", str(spec), "--url", sqlite_url, "--launcher", "local", "--workers", "2",
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    with Store.open(sqlite_url) as store:
        runs = store.runs(sweep="sub")
        assert [r.status for r in runs] == [RunStatus.COMPLETED] * 4
        assert store.get_sweep("sub").spec["ensemble"] == ensemble
        for run in runs:
            ref = ListSink()
            train(RunConfig.from_dict(run.config), ref, device="cpu")
            got = store.series([run.id], metrics=["loss"])["value"].to_list()
            assert got == pytest.approx(ref.values("loss"), rel=1e-10, abs=0)


@pytest.mark.parametrize(("checkpoints", "ensemble"), [(True, 1), (True, 3)], ids=["solo", "ensemble"])
def test_sigterm_stops_cleanly_and_the_rerun_finishes(sqlite_url: str, tmp_path: Path, checkpoints: bool,
                                                      ensemble: int) -> None:
    """SIGTERM: the runs in training finish their step, save a checkpoint at exactly the stored step
    count, go back to pending and the process exits 130; the rerun resumes there and ends with the
    losses of an uninterrupted sweep, bit for bit."""
    import signal

    spec = tmp_path / "t.toml"
    spec.write_text(
        'name = "term"\ngamma = [0.5, 2.0]\neta = [0.01, 0.02]\nseeds = 1\nsteps = 6000\n'
        '[base]\nmodel = "mlp"\ntask = "teacher"\ndepth = 2\nwidth = 8\nbatch_size = 4\ncadence = "none"\n'
    )  # 4 values a step: the writer's first commit (20,000 rows) lands in the middle of a run
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    extra = ["--ensemble", str(ensemble)] + (["--checkpoint-dir", str(tmp_path / "ck")] if checkpoints else [])
    cmd = [sys.executable, "-m", "gammadb", "run", str(spec), "--url", sqlite_url, "--quiet", *extra]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with Store.open(sqlite_url) as store:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.1)
            try:  # a run in training with committed steps
                if store.read("SELECT COUNT(*) AS n FROM runs WHERE status = 'running' AND steps_done > 0")["n"][0]:
                    break
            except Exception:
                continue
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "interrupted: everything logged so far is committed" in err
        runs = store.runs(sweep="term")
        assert RunStatus.RUNNING not in [r.status for r in runs]
        stopped = [r for r in runs if r.status == RunStatus.PENDING and r.steps_done > 0]
        assert stopped, [(r.status, r.steps_done) for r in runs]
        if checkpoints:
            from gammadb.runners.checkpoint import latest_checkpoint

            for r in stopped:
                path = latest_checkpoint(tmp_path / "ck" / "term" / str(r.id))
                assert path is not None and int(path.stem[5:]) == r.steps_done
        assert subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True).returncode == 0
        assert store.runs_frame("term")["status"].to_list() == ["completed"] * 4
        got = store.series([r.id for r in runs], metrics=["loss"])
    clean = f"sqlite:///{tmp_path / 'clean.sqlite'}"
    assert subprocess.run([*cmd[:6], clean, "--quiet", "--ensemble", str(ensemble)], env=env, cwd=ROOT,
                          capture_output=True).returncode == 0
    with Store.open(clean) as ref:
        want = ref.series([r.id for r in ref.runs(sweep="term")], metrics=["loss"])
    assert got["value"].to_list() == want["value"].to_list() and got.height == 4 * 6000

ADAPTIVE = ('name = "ad"\ngamma = [0.5, 2.0]\neta = [1e4, 1e3, 100.0, 10.0, 1.0, 0.1, 0.01]\nseeds = 2\nsteps = 30\n'
            'adaptive = true\ndecades_below = 1\n[base]\nmodel = "mlp"\ntask = "teacher"\ndepth = 2\nwidth = 8\n'
            'batch_size = 4\ncadence = "none"\n')


def test_advance_adaptive_creates_each_next_level_once_its_ladder_allows(sqlite_url: str, tmp_path: Path) -> None:
    """The store-driven scan, step by step, without training: one level per ladder at a time, the
    next once every run of the level ended, none below the range; failed ends a level as non-diverged."""
    from gammadb.runners.plan import plan_of
    from gammadb.runners.spec import spec_from_toml
    from gammadb.runners.adaptive import advance_adaptive

    with Store.open(sqlite_url) as store:
        plan = plan_of(spec_from_toml(ADAPTIVE))
        prepare(store, plan)

        def level(gamma: float) -> dict[float, list]:
            out: dict[float, list] = {}
            for r in store.runs(sweep="ad"):
                if r.gamma == gamma:
                    out.setdefault(r.eta, []).append(r)
            return out

        def end(runs: list, *statuses: RunStatus) -> None:
            for r, status in zip(runs, statuses):
                store.finish_run(r.id, status, steps_done=1)

        assert advance_adaptive(store, "ad") == 4  # 2 gammas x 2 seeds at the largest eta
        assert advance_adaptive(store, "ad") == 0  # nothing ended yet
        assert sorted(level(0.5)) == sorted(level(2.0)) == [1e4]
        end(level(0.5)[1e4], RunStatus.DIVERGED, RunStatus.COMPLETED)  # one seed diverged
        assert advance_adaptive(store, "ad") == 2 and sorted(level(0.5)) == [1e3, 1e4]
        end(level(0.5)[1e3], RunStatus.COMPLETED, RunStatus.FAILED)  # no divergence: largest convergent
        assert advance_adaptive(store, "ad") == 2 and sorted(level(0.5)) == [100.0, 1e3, 1e4]
        end(level(0.5)[100.0], RunStatus.DIVERGED, RunStatus.DIVERGED)  # within range: the scan restarts
        assert advance_adaptive(store, "ad") == 2 and sorted(level(0.5)) == [10.0, 100.0, 1e3, 1e4]
        end(level(0.5)[10.0], RunStatus.COMPLETED, RunStatus.COMPLETED)  # the new anchor: down to 1
        assert advance_adaptive(store, "ad") == 2
        end(level(0.5)[1.0], RunStatus.COMPLETED, RunStatus.COMPLETED)
        assert advance_adaptive(store, "ad") == 0  # 0.1 < 10 / 10: the 0.5 ladder is done
        assert sorted(level(0.5)) == [1.0, 10.0, 100.0, 1e3, 1e4] and sorted(level(2.0)) == [1e4]


@pytest.mark.parametrize("ensemble", [1, 4])
def test_workers_run_the_adaptive_scan_as_one_process_does(sqlite_url: str, tmp_path: Path, ensemble: int) -> None:
    """`gammadb run --adaptive --workers 2`: the workers create the levels between them and end with
    the runs, statuses and losses (bit for bit) of the one-process scan."""
    spec = tmp_path / "ad.toml"
    spec.write_text(ADAPTIVE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "gammadb", "run", str(spec), "--quiet", "--ensemble", str(ensemble)]
    parallel = subprocess.run([*base, "--url", sqlite_url, "--workers", "2"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
    assert parallel.returncode == 0, parallel.stderr
    assert "skipped by the adaptive scan" in parallel.stdout
    alone_url = f"sqlite:///{tmp_path / 'alone.sqlite'}"
    alone = subprocess.run([*base, "--url", alone_url, "--ensemble", "1"], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr

    def table(url: str) -> dict[tuple, tuple]:
        with Store.open(url) as store:
            return {(r.gamma, r.eta, r.seed): (r.status, store.series([r.id])["value"].to_list())
                    for r in store.runs(sweep="ad")}

    got, want = table(sqlite_url), table(alone_url)
    assert RunStatus.DIVERGED in {s for s, _ in want.values()} and len(want) < 2 * 7 * 2
    if ensemble == 1:
        assert got.keys() == want.keys()
        assert str(sorted(got.items())) == str(sorted(want.items()))  # NaN and inf compare by their text
    else:  # stacked float32 rounds differently: the same scan range, statuses where runs are shared
        assert set(want) <= set(got)
        assert {k: v[0] for k, v in got.items() if k in want} == {k: v[0] for k, v in want.items()}


ORPHANS = ('name = "orph"\ngamma = [0.5, 2.0]\neta = [0.01, 0.02, 0.03, 0.04]\nseeds = 2\nsteps = 200\n'
           '[base]\nmodel = "mlp"\ntask = "teacher"\ndepth = 2\nwidth = 8\nbatch_size = 4\ncadence = "none"\n'
           'ntk = false\nsharpness = false\nfeature_alignment = false\n')  # 16 runs: a few seconds of work


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of process ``pid`` from /proc; None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _children(ppid: int) -> dict[int, int]:
    """The live child processes of ``ppid``: pid -> start time (which tells a reused pid apart)."""
    out = {}
    for entry in Path("/proc").iterdir():
        stat = _stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None and stat[1] == ppid and stat[0] not in "ZX":
            out[int(entry.name)] = stat[2]
    return out


def _alive(pids: dict[int, int]) -> list[int]:
    """Which of ``pids`` still run (a zombie nobody reaped has stopped)."""
    return [pid for pid, start in pids.items()
            if (stat := _stat(pid)) is not None and stat[2] == start and stat[0] not in "ZX"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
@pytest.mark.parametrize("kill", ["parent-sigkill", "parent-sigterm", "workers-sigkill"])
def test_killing_run_workers_stops_them_and_leaves_no_run_running(sqlite_url: str, tmp_path: Path,
                                                                   kill: str) -> None:
    """`gammadb run --workers 2`: when the parent dies, even by SIGKILL, its workers stop within
    seconds (the parent-death signal) and put their runs back to pending; SIGTERM to the parent stops
    it and them as Ctrl-C does; workers killed outright leave no run 'running' once the parent ends.
    A rerun finishes the sweep."""
    import signal

    spec = tmp_path / "orph.toml"
    spec.write_text(ORPHANS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "gammadb", "run", str(spec), "--url", sqlite_url, "--quiet"]
    log = (tmp_path / "run.log").open("w+")
    with Store.open(sqlite_url) as store:  # the schema exists before anyone polls it
        proc = subprocess.Popen([*cmd, "--workers", "2"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        workers: dict[int, int] = {}
        try:
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                workers = _children(proc.pid)
                if len(workers) == 2 and store.read(
                        "SELECT COUNT(*) AS n FROM runs WHERE status = 'running'")["n"][0] == 2:
                    break
                time.sleep(0.05)
            else:
                pytest.fail(f"the two workers never both trained: {log.seek(0) or log.read()[-2000:]}")
            if kill == "workers-sigkill":
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
            else:
                proc.send_signal(signal.SIGKILL if kill == "parent-sigkill" else signal.SIGTERM)
            assert proc.wait(timeout=60) == {"parent-sigkill": -9, "parent-sigterm": 130, "workers-sigkill": 0}[kill]
            deadline = time.time() + 30
            while _alive(workers) and time.time() < deadline:
                time.sleep(0.1)
            assert _alive(workers) == [], "the workers outlived their parent"
            statuses = Counter(store.runs_frame("orph")["status"].to_list())
            assert "running" not in statuses, statuses
            assert statuses["pending"] >= 2, statuses  # the workers stopped instead of draining the sweep
        finally:
            for pid in _alive(workers):  # never leave an orphan training on a shared machine
                os.kill(pid, signal.SIGKILL)
        log.seek(0)
        text = log.read()
        assert "Traceback" not in text, text[-2000:]
        if kill == "parent-sigterm":
            assert "interrupted: everything logged so far is committed" in text
        if kill == "parent-sigkill":
            rerun = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
            assert rerun.returncode == 0, rerun.stderr[-2000:]
            assert store.runs_frame("orph")["status"].to_list() == ["completed"] * 16


def test_the_parent_watch_thread_signals_an_orphan(monkeypatch) -> None:
    """Where Linux's parent-death signal is missing, a thread polls the parent pid and, once the
    worker is orphaned (adopted by another process), sends it SIGTERM (handled here)."""
    import signal

    from gammadb.runners.launch import _poll_parent

    calls: list[int] = []

    def getppid() -> int:  # the parent lives for five checks, then the worker is adopted by pid 1
        calls.append(1)
        return 4242 if len(calls) <= 5 else 1

    signalled_at: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: signalled_at.append(len(calls)))
    try:
        monkeypatch.setattr(os, "getppid", getppid)
        thread = _poll_parent(4242, every_seconds=0.01)
        thread.join(timeout=5)
        assert not thread.is_alive()
        deadline = time.time() + 5
        while not signalled_at and time.time() < deadline:
            time.sleep(0.01)  # the handler runs in the main thread, between bytecodes
        assert signalled_at == [6]  # once, and only after the parent changed
    finally:
        signal.signal(signal.SIGTERM, previous)
