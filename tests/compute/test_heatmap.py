"""The heat map's example order and its figure."""

from __future__ import annotations

import numpy as np

from workers.compute.plots import cluster_order, heatmap_png


def test_examples_are_grouped_by_cluster_and_ordered_by_the_leading_eigenvector():
    # Cluster 0 holds rows 0..5, with a rank-one block u uᵀ: the order within it must follow u.
    u = np.array([0.2, 0.9, 0.5, 0.1, 0.7, 0.3])
    S = np.zeros((8, 8))
    S[:6, :6] = np.outer(u, u)
    S[6:, 6:] = 1.0
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    order = cluster_order(S, labels)
    assert order[:6].tolist() == np.argsort(-u).tolist()
    assert sorted(order[6:].tolist()) == [6, 7]


def test_the_heat_map_draws_with_a_true_label_strip():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    png = heatmap_png(X @ X.T, np.repeat([0, 1, 2], 10), true_labels=np.tile([3, 5], 15), title="kernelized")
    assert png.startswith(b"\x89PNG")
    assert png != heatmap_png(X @ X.T, np.repeat([0, 1, 2], 10), title="kernelized")
