"""Metric names shared by runners (which write them) and analysis (which reads them).

A metric series is keyed by (name, layer): layer 0 means "the whole model"; per-layer metrics use
layers 1..L, matching W_1..W_L in docs/theory.md.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class MetricKind(str, enum.Enum):
    STEP = "step"  # recorded at every training step
    CADENCE = "cadence"  # recorded on a (log-spaced) cadence


class MetricKey(NamedTuple):
    name: str
    layer: int = 0


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
