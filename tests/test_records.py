"""gammadb.records: the run status enum, the run columns and float matching of hyper-parameters."""

from __future__ import annotations

import polars as pl
import pytest

from gammadb import records, schema
from gammadb.records import REL_TOL, FINISHED, RunStatus, same_value, same_value_expr, value_bounds


def test_run_status_lives_in_records_and_the_schema_stores_it() -> None:
    assert schema.Run.__table__.c.status.type.enum_class is RunStatus
    assert FINISHED == ("completed", "diverged")
    assert [s for s in RunStatus if s.finished] == [RunStatus.COMPLETED, RunStatus.DIVERGED]


@pytest.mark.parametrize(("stored", "wanted", "same"), [
    (0.1, 0.1, True),
    (0.1 + 1e-17, 0.1, True),
    (1.0 + 0.9 * REL_TOL, 1.0, True),     # inside the tolerance
    (1.0 + 1.1 * REL_TOL, 1.0, False),    # just outside
    (1.0 - 1.1 * REL_TOL, 1.0, False),
    (10**-2.5, float(f"{10**-2.5:g}"), True),  # a grid value typed back from its display
    (1.0000049, float(f"{1.0000049:g}"), True),  # the worst case of 6-figure rounding (5e-6 relative)
    (2e-9, 1e-9, False),                  # no absolute tolerance: tiny values stay distinct
    (-0.5, -0.5 * (1 + 0.5 * REL_TOL), True),
], ids=["equal", "ulp", "inside", "outside-above", "outside-below", "displayed", "displayed-worst", "tiny", "negative"])
def test_same_value_and_its_twins_agree(stored: float, wanted: float, same: bool) -> None:
    assert same_value(stored, wanted) is same
    lo, hi = value_bounds(wanted)
    assert (lo <= stored <= hi) is same
    assert pl.DataFrame({"eta": [stored]}).select(same_value_expr("eta", wanted)).item() is same


def test_run_columns_are_one_definition() -> None:
    from gammadb.analysis import downsample, etas

    assert downsample.CURVE_KEYS == (*records.RUN_COLUMNS, "gamma", "eta")
    runs = pl.DataFrame({c: [1] for c in ("gamma", *records.RUN_COLUMNS)})
    assert etas.group_columns(runs) == list(records.RUN_COLUMNS)
