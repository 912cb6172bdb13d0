"""Tiles of the similarity matrix equal the blocks of the whole one; top-k lists merge exactly."""

import numpy as np
import pytest
import torch

from service.contract.spec import CNNModel, MLPModel
from workers.compute.models import build_model
from workers.compute.similarity import postprocess, similarity
from workers.compute.tiles import merge_topk, tile_similarity, topk

N, D = 23, 10


def data(n=N, d=D, seed=3):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def whole(model, X, **options):
    sym, norm = options.pop("symmetrize"), options.pop("normalize")
    return postprocess(similarity(model, X, **options), symmetrize=sym, normalize=norm)


def assembled(model, X, block, **options):
    n = X.shape[0]
    S = np.full((n, n), np.nan, np.float32)
    for i0 in range(0, n, block):
        for j0 in range(i0, n, block):
            rs, cs = slice(i0, min(n, i0 + block)), slice(j0, min(n, j0 + block))
            upper, lower = tile_similarity(model, X[rs], None if i0 == j0 else X[cs], **options)
            S[rs, cs] = upper
            if lower is not None:
                S[cs, rs] = lower
    return S


OPTIONS = [
    {"kind": "kernelized", "step": 0.0, "loss": "mse", "symmetrize": True, "normalize": False},
    {"kind": "kernelized", "step": 0.0, "loss": "bce", "symmetrize": False, "normalize": True},
    {"kind": "relative", "step": 0.0, "loss": "mse", "symmetrize": False, "normalize": False},
    {"kind": "kernelized", "step": 0.05, "loss": "mse", "symmetrize": False, "normalize": False},
    {"kind": "relative", "step": 0.05, "loss": "bce", "symmetrize": True, "normalize": True},
    {"kind": "activation", "step": 0.0, "loss": "mse", "symmetrize": True, "normalize": False},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"{o['kind']}-{o['step']}-{o['loss']}")
@pytest.mark.parametrize("block", [5, 8])
def test_tiles_assemble_the_whole_matrix(options, block):
    model = build_model(MLPModel(width=32), [D], seed=0)
    X = data()
    expected = whole(model, X, **dict(options))
    got = assembled(model, X, block, **dict(options))
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= 1e-5 * scale
    if options["step"] == 0:
        assert np.abs(got - expected).max() <= 1e-6 * scale


def test_tiles_of_a_cnn_assemble_its_whole_exact_step():
    model = build_model(CNNModel(arch="cnn"), [64], seed=0)
    X = data(7, 64)
    options = {"kind": "kernelized", "step": 0.01, "loss": "mse", "symmetrize": True, "normalize": False}
    expected = whole(model, X, **dict(options))
    got = assembled(model, X, 4, **options)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def reference_topk(values, k, exclude_self=False):
    rows = []
    for i, row in enumerate(values):
        order = sorted((j for j in range(len(row)) if not (exclude_self and j == i)), key=lambda j: (-row[j], j))
        rows.append(order[:k])
    return np.array(rows)


def test_topk_is_exact_with_ties_broken_by_the_lower_column():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4, size=(30, 40)).astype(np.float32)  # many ties
    columns, best = topk(values, 7)
    assert np.array_equal(columns, reference_topk(values, 7))
    assert np.array_equal(best, np.take_along_axis(values, columns.astype(np.int64), axis=1))
    square = values[:, :30]
    columns, _ = topk(square, 5, exclude=0)
    assert np.array_equal(columns, reference_topk(square, 5, exclude_self=True))


def test_partial_lists_merge_into_the_exact_top_k():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 5, size=(12, 50)).astype(np.float32)
    parts = [topk(values[:, c0 : c0 + 7], 6, col_offset=c0) for c0 in range(0, 50, 7)]
    columns, best = merge_topk([p[0] for p in parts], [p[1] for p in parts], 6)
    assert np.array_equal(columns, reference_topk(values, 6))
    assert best.dtype == np.float32 and columns.dtype == np.int32


def test_a_block_narrower_than_k_gives_all_its_columns():
    columns, best = topk(np.array([[1.0, 3.0, 2.0]], np.float32), 8, col_offset=10)
    assert columns.tolist() == [[11, 12, 10]] and best.tolist() == [[3.0, 2.0, 1.0]]


def test_nystrom_features_with_every_landmark_reproduce_a_kernel():
    from workers.compute.bigcluster import choose_landmarks, nystrom_features

    A = np.random.default_rng(2).normal(size=(40, 6))
    K = A @ A.T
    full = nystrom_features(K, choose_landmarks(40, 40, seed=0))
    assert np.allclose(full @ full.T, K, atol=1e-8 * np.abs(K).max())
    marks = choose_landmarks(40, 10, seed=0)
    assert marks.size == 10 and np.all(np.diff(marks) > 0)
    assert np.allclose(nystrom_features(K[:, marks], marks) @ nystrom_features(K[:, marks], marks).T, K)
    blocked = nystrom_features(K[:, marks], marks, dtype=np.float32, rows=7)  # several row blocks, float32
    assert blocked.dtype == np.float32
    assert np.allclose(blocked, nystrom_features(K[:, marks], marks), rtol=1e-5, atol=1e-5)


def test_knn_spectral_separates_two_blobs_and_its_graph_is_symmetric():
    from workers.compute.bigcluster import knn_graph, knn_spectral

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 8])
    S = -((X[:, None] - X[None]) ** 2).sum(-1)
    columns, _ = topk(S, 5, exclude=0)
    graph = knn_graph(columns, 60)
    assert (graph != graph.T).nnz == 0
    labels, parameters = knn_spectral(columns, k=2, seed=0)
    assert parameters["method"] == "knn_spectral" and parameters["neighbors"] == 5
    assert len(set(labels[:30])) == 1 and len(set(labels[30:])) == 1 and labels[0] != labels[30]


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("kind", ["kernelized", "relative"])
def test_the_cross_kernel_of_linear_nets_assembles_the_whole_matrix(depth, kind):
    from service.contract.spec import LinearModel

    model = build_model(LinearModel(arch="linear", depth=depth, width=16), [D], seed=0)
    options = {"kind": kind, "step": 0.0, "loss": "bce", "symmetrize": True, "normalize": kind == "kernelized"}
    expected = whole(model, data(), **dict(options))
    got = assembled(model, data(), 6, **options)
    assert np.abs(got - expected).max() <= 1e-6 * np.abs(expected).max()


def test_neighbors_of_a_read_only_memory_mapped_matrix(tmp_path):
    from workers.compute.tiles import neighbors

    S = np.random.default_rng(5).random((9, 9)).astype(np.float32)
    np.save(tmp_path / "S.npy", S)
    mapped = np.load(tmp_path / "S.npy", mmap_mode="r")
    columns, values = neighbors(mapped, 3, exclude_self=True, rows_per_block=4)
    assert np.array_equal(columns, reference_topk(S, 3, exclude_self=True))
    assert np.array_equal(values, np.take_along_axis(S, columns.astype(np.int64), axis=1))


def noisy_cluster_lists(n: int, clusters: int, neighbours: int, noise: float, seed: int = 0):
    """(true labels [n], neighbour lists [n, neighbours]): each row's neighbours drawn from its own cluster,
    a fraction `noise` of them from anywhere (a connected graph with clear clusters)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, n)
    columns = np.empty((n, neighbours), np.int32)
    for c in range(clusters):
        members = np.flatnonzero(labels == c)
        columns[members] = rng.choice(members, size=(members.size, neighbours))
    stray = rng.random((n, neighbours)) < noise
    columns[stray] = rng.integers(0, n, stray.sum())
    return labels, columns


def test_knn_spectral_agrees_with_scikit_learns_spectral_clustering_of_the_same_graph():
    """The Lanczos embedding against SpectralClustering(affinity="precomputed") (ARPACK shift-invert) on a
    graph both can afford: the same partition, and the true one."""
    from sklearn.cluster import SpectralClustering
    from sklearn.metrics import adjusted_rand_score

    from workers.compute.bigcluster import knn_graph, knn_spectral

    truth, columns = noisy_cluster_lists(900, 4, 10, noise=0.3)
    ours, _ = knn_spectral(columns, k=4, seed=0, n_init=5)
    graph = knn_graph(columns, 900)
    theirs = SpectralClustering(n_clusters=4, affinity="precomputed", random_state=0, n_init=5).fit_predict(graph)
    assert adjusted_rand_score(theirs, ours) == pytest.approx(1.0)
    assert adjusted_rand_score(truth, ours) == pytest.approx(1.0)
    again, _ = knn_spectral(columns, k=4, seed=0, n_init=5)
    assert np.array_equal(again, ours), "deterministic for a fixed seed"


def test_knn_spectral_separates_the_pieces_of_a_disconnected_graph():
    """Three components (the eigenvalue 1 three times over): each is one cluster."""
    from workers.compute.bigcluster import knn_spectral

    _, pieces = noisy_cluster_lists(300, 1, 6, noise=0.0)
    columns = np.concatenate([pieces, pieces + 300, pieces + 600])
    labels, _ = knn_spectral(columns, k=3, seed=0)
    assert [len(set(labels[i * 300 : (i + 1) * 300])) for i in range(3)] == [1, 1, 1]
    assert len(set(labels)) == 3
