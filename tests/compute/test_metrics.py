import math

import numpy as np
import pytest

from workers.compute.metrics import (
    clustering_metrics,
    matched_accuracy,
    similarity_ratio,
    similarity_ratio_or_reason,
)


def test_accuracy_invariant_to_cluster_ids():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([5, 5, 9, 9, 1, 1, 1])
    scores = clustering_metrics(y, pred)
    assert scores == {"accuracy": 1.0, "ari": 1.0, "nmi": 1.0}


def test_hand_computed_case():
    # Contingency (cluster x class): c0 = [3 A, 1 B], c1 = [0 A, 2 B] -> best matching 3 + 2 = 5 of 6.
    y = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 0, 0, 1, 1])
    # ARI by hand: sum C(n_ij, 2) = 3 + 0 + 1 = 4; rows (4, 2) -> 6 + 1 = 7; cols (3, 3) -> 6;
    # expected = 7 * 6 / 15 = 2.8; max = 6.5; ARI = (4 - 2.8) / (6.5 - 2.8) = 1.2 / 3.7.
    scores = clustering_metrics(y, pred)
    assert scores["accuracy"] == pytest.approx(5 / 6)
    assert scores["ari"] == pytest.approx(1.2 / 3.7)
    assert 0 < scores["nmi"] < 1


def test_accuracy_with_more_or_fewer_clusters_than_classes():
    y = np.array([0, 0, 1, 1])
    # 3 clusters, 2 classes: cluster 2 is unmatched, its example counts as wrong.
    assert matched_accuracy(y, np.array([0, 0, 1, 2])) == pytest.approx(3 / 4)
    # 1 cluster, 2 classes: only one class can be matched.
    assert matched_accuracy(y, np.zeros(4, dtype=int)) == pytest.approx(1 / 2)
    # two-class accuracy equals 0.5 + |correct/n - 0.5| (the authors' formula).
    pred = np.array([1, 0, 0, 0])
    assert matched_accuracy(y, pred) == pytest.approx(0.5 + abs(np.mean(pred == y) - 0.5))


def test_similarity_ratio_closed_form():
    # Classes of sizes 2 and 3; within-class off-diagonal entries a, between-class b, diagonal d.
    a, b, d = 3.0, 0.5, 100.0
    y = np.array([1, 0, 1, 0, 0])
    same = y[:, None] == y[None, :]
    S = np.where(same, a, b)
    np.fill_diagonal(S, d)
    assert similarity_ratio(S, y) == pytest.approx(a / b)
    # Asymmetric entries: the ratio averages ordered pairs (i, j), i != j.
    S2 = S.copy()
    S2[0, 2], S2[2, 0] = 1.0, 5.0  # same class, mean still 3
    S2[0, 1] = 2.0  # one between pair of 12 rises by 1.5
    assert similarity_ratio(S2, y) == pytest.approx(a / (b + 1.5 / 12))


def test_similarity_ratio_undefined():
    assert math.isnan(similarity_ratio(np.ones((3, 3)), np.array([0, 0, 0])))
    assert math.isnan(similarity_ratio(np.ones((3, 3)), np.array([0, 1, 2])))
    assert math.isnan(similarity_ratio(np.eye(2), np.array([0, 1])))


def test_the_ratio_or_the_reason_it_is_undefined():
    y = np.array([0, 0, 1, 1])
    S = np.array([[1, 0.8, 0.1, 0.2], [0.8, 1, 0.2, 0.1], [0.1, 0.2, 1, 0.6], [0.2, 0.1, 0.6, 1]])
    assert similarity_ratio_or_reason(S, y) == (pytest.approx(0.7 / 0.15), None)
    for S, y, why in [
        (np.ones((3, 3)), np.array([0, 0, 0]), "single class"),
        (np.ones((3, 3)), np.array([0, 1, 2]), "no pair of the same class"),
        (np.zeros((4, 4)), np.array([0, 0, 1, 1]), "mean similarity between classes is 0"),
    ]:
        ratio, note = similarity_ratio_or_reason(S, y)
        assert ratio is None and note is not None and why in note, note


def test_length_mismatch():
    with pytest.raises(ValueError, match="differ in length"):
        clustering_metrics(np.array([0, 1]), np.array([0, 1, 1]))
