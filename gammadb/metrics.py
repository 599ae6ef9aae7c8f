"""Metric names shared by runners (which write them) and analysis (which reads them).

A metric series is keyed by (name, layer): layer 0 means "the whole model"; per-layer metrics use
layers 1..L, matching W_1..W_L in docs/theory.md.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple


class MetricKind(str, enum.Enum):
    STEP = "step"  # recorded at every training step
    CADENCE = "cadence"  # recorded on a (log-spaced) cadence


class MetricKey(NamedTuple):
    name: str
    layer: int = 0


_LAYER = re.compile(r"^(?P<name>.+)\.l(?P<layer>\d+)$")


def metric_key(column: str) -> MetricKey:
    """The series a file column or a wide frame's column holds: ``weight_change.l2`` is layer 2."""
    m = _LAYER.match(column)
    return MetricKey(m["name"], int(m["layer"])) if m else MetricKey(column, 0)


def column_name(key: MetricKey) -> str:
    """The column of a series in files and wide frames (:func:`metric_key`'s inverse)."""
    return key.name if key.layer == 0 else f"{key.name}.l{key.layer}"


# Every step.
LOSS = "loss"  # training loss on the fresh batch, before the update
WEIGHT_CHANGE = "weight_change"  # ||W_l(t) - W_l(0)||_F / ||W_l(0)||_F, per layer
FEATURE_ALIGNMENT = "feature_alignment"  # CKA of last-hidden feature kernel with targets (probe)

# On a cadence.
TEST_LOSS = "test_loss"
TEST_ACCURACY = "test_accuracy"
NTK_ALIGNMENT = "ntk_alignment"  # CKA of the empirical NTK with targets (probe batch)
NTK_DISTANCE = "ntk_distance"  # ||K(t) - K(0)||_F / ||K(0)||_F on the probe batch
SHARPNESS = "sharpness"  # top Hessian eigenvalue of the training loss
DATA_PASSES = "data_passes"  # completed passes over a finite dataset

STEP_METRICS = (LOSS, WEIGHT_CHANGE, FEATURE_ALIGNMENT)
CADENCE_METRICS = (TEST_LOSS, TEST_ACCURACY, NTK_ALIGNMENT, NTK_DISTANCE, SHARPNESS, DATA_PASSES)


def kind_of(name: str) -> MetricKind:
    return MetricKind.STEP if name in STEP_METRICS else MetricKind.CADENCE
