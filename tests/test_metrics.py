from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmbench.train.metrics import (
    accuracy,
    average_precision,
    classification_metrics,
    imbalance_ratio,
    macro_f1,
    mean_average_precision,
    true_class_score,
)


def test_accuracy_and_macro_f1_by_hand():
    y = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    assert accuracy(pred, y) == pytest.approx(3 / 5)
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 fn 0 -> 0.8; class 2: tp 0 -> 0
    assert macro_f1(pred, y) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_macro_f1_counts_a_predicted_class_absent_from_labels():
    y = np.array([0, 0])
    pred = np.array([0, 1])
    # class 0: tp 1 fn 1 -> 2/3; class 1: fp 1 -> 0
    assert macro_f1(pred, y) == pytest.approx((2 / 3) / 2)


def test_average_precision_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    positive = np.array([True, False, True, False])
    # precision at the two positives: 1/1 and 2/3
    assert average_precision(scores, positive) == pytest.approx((1 + 2 / 3) / 2)


def test_average_precision_treats_ties_as_one_threshold():
    scores = np.array([0.5, 0.5, 0.1])
    positive = np.array([False, True, True])
    # threshold 0.5: tp 1 of 2 predicted, recall 1/2; threshold 0.1: precision 2/3, recall 1
    assert average_precision(scores, positive) == pytest.approx(0.5 * 0.5 + 0.5 * (2 / 3))


def test_average_precision_without_positives_is_nan_and_skipped_by_map():
    assert math.isnan(average_precision(np.array([0.2, 0.1]), np.array([False, False])))
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    assert mean_average_precision(probs, np.array([0, 1])) == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1, allow_nan=False), st.booleans()), min_size=1, max_size=30,
                unique_by=lambda t: t[0]))
def test_average_precision_equals_mean_precision_at_each_positive(pairs):
    scores = np.array([p[0] for p in pairs])
    positive = np.array([p[1] for p in pairs])
    if not positive.any():
        return
    ranked = positive[np.argsort(-scores)]
    precision_at_hits = [ranked[: k + 1].mean() for k in np.nonzero(ranked)[0]]
    assert average_precision(scores, positive) == pytest.approx(np.mean(precision_at_hits))


def test_true_class_score_and_ratio_by_hand():
    logits_a = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    logits_v = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 0])
    s_a = float(true_class_score(logits_a, y))
    s_v = float(true_class_score(logits_v, y))
    assert s_a == pytest.approx(0.5 + math.exp(2) / (math.exp(2) + 1))
    assert s_v == pytest.approx(1.0)
    assert imbalance_ratio(s_a, s_v) == pytest.approx(s_a / s_v)
    assert imbalance_ratio(1.0, 0.0) == math.inf
    assert math.isnan(imbalance_ratio(0.0, 0.0))


def test_classification_metrics_of_perfect_logits():
    y = np.array([0, 1, 2, 1])
    logits = np.eye(3)[y] * 5
    m = classification_metrics(logits, y)
    assert (m["acc"], m["macro_f1"], m["map"], m["n_correct"]) == (1.0, 1.0, 1.0, 4)


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_and_map_match_scikit_learn(seed):
    """The hand-written metrics (no runtime dependency on scikit-learn) against its reference code, on
    random predictions with rounded (tied) scores and a class that never occurs."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 200)  # class 5 of 6 never occurs
    probs = np.round(rng.dirichlet(np.ones(6), 200), 1)
    pred = probs.argmax(1)
    expected_f1 = sklearn_metrics.f1_score(y, pred, average="macro", labels=np.union1d(y, pred), zero_division=0)
    assert macro_f1(pred, y) == pytest.approx(expected_f1)
    expected_map = np.mean([sklearn_metrics.average_precision_score(y == c, probs[:, c]) for c in np.unique(y)])
    assert mean_average_precision(probs, y) == pytest.approx(expected_map)
