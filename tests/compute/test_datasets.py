import numpy as np
import pytest

from workers.compute.datasets import SYNTHETIC, embed, geodesic_distances, load_builtin

DIMS = {
    "torus": 3,
    "two_folded_boxes": 3,
    "double_helix": 3,
    "two_cosines": 2,
    "two_spheres": 3,
    "two_cycles": 2,
}


@pytest.mark.parametrize("name", SYNTHETIC)
def test_shapes_balance_determinism(name):
    data = load_builtin(name, n=41, seed=3)
    assert data.X.shape == (40, DIMS[name]) and data.X.dtype == np.float32
    assert data.y.dtype == np.int64
    np.testing.assert_array_equal(data.y, np.repeat([1, 0], 20))
    assert data.coords.shape[0] == 40 and data.coords.dtype == np.float64
    again = load_builtin(name, n=41, seed=3)
    np.testing.assert_array_equal(data.X, again.X)
    np.testing.assert_array_equal(data.coords, again.coords)
    assert not np.array_equal(data.X, load_builtin(name, n=41, seed=4).X)
    # X is the float32 image of the float64 embedding of the coordinates.
    for label in (1, 0):
        rows = data.y == label
        np.testing.assert_allclose(data.X[rows], embed(name, data.coords[rows], label=label), atol=1e-5)


def _points(name, label, n=400, seed=0):
    data = load_builtin(name, n=n, seed=seed)
    rows = data.y == label
    return embed(name, data.coords[rows], label=label), data.coords[rows]


@pytest.mark.parametrize("label", [1, 0])
def test_points_on_manifolds(label):
    sign = 1.0 if label == 1 else -1.0
    tol = 1e-9

    P, c = _points("torus", label)
    rho = np.hypot(P[:, 0], P[:, 1])
    np.testing.assert_allclose((rho - 8) ** 2 + P[:, 2] ** 2, 1.0, atol=tol)  # tube of radius 1
    angle = np.arctan2(P[:, 1], P[:, 0])
    np.testing.assert_allclose(P[:, 2], sign * np.cos(4 * angle), atol=tol)
    assert np.all(np.abs(c[:, 0]) <= np.pi)

    P, c = _points("double_helix", label)
    np.testing.assert_allclose(
        P[:, :2], sign * np.column_stack([np.cos(1.5 * P[:, 2]), np.sin(1.5 * P[:, 2])]), atol=tol
    )
    assert np.all(np.abs(P[:, 2]) <= np.pi / 2)

    P, _ = _points("two_cosines", label)
    np.testing.assert_allclose(P[:, 1] - np.cos(P[:, 0]), sign * 0.2, atol=tol)
    assert np.all(np.abs(P[:, 0]) <= 0.6 * np.pi)

    P, _ = _points("two_spheres", label)
    np.testing.assert_allclose(np.linalg.norm(P, axis=1), 10.0 if label else 20.0, atol=tol)

    P, _ = _points("two_cycles", label)
    np.testing.assert_allclose(np.linalg.norm(P, axis=1), 10.0 if label else 50.0, atol=tol)

    P, c = _points("two_folded_boxes", label)
    offset = 13.0 if label else 11.0
    on_face = [np.abs(P[:, 1] - face * (offset - 1.2 * np.abs(P[:, 0]))) < tol for face in (1, -1)]
    assert np.all(on_face[0] | on_face[1])
    assert on_face[0].sum() > 60 and on_face[1].sum() > 60  # both faces used
    assert np.all(np.abs(P[:, 0]) <= offset / 1.2) and np.all(np.abs(P[:, 2]) <= 1)
    if label == 1:
        assert np.abs(P[:, 0]).max() > 10  # x range widened by delta / k
    else:
        assert np.abs(P[:, 0]).max() <= 10 - 1 / 1.2  # x range narrowed by delta / k


@pytest.mark.parametrize("name", SYNTHETIC)
def test_geodesic_zero_diagonal_symmetric(name):
    data = load_builtin(name, n=60, seed=1)
    D = data.geodesic()
    assert D.shape == (60, 60)
    np.testing.assert_array_equal(np.diag(D), 0.0)
    np.testing.assert_array_equal(D, D.T)
    assert np.all(np.isnan(D[:30, 30:])) and np.all(np.isnan(D[30:, :30]))
    within = D[:30, :30]
    assert np.all(within >= 0)
    sub = data.geodesic(np.array([0, 5]), np.array([1, 2, 3]))
    np.testing.assert_array_equal(sub, D[np.ix_([0, 5], [1, 2, 3])])


def test_geodesic_hand_cases():
    g = geodesic_distances
    assert g("torus", [[-3.0]], [[3.0]])[0, 0] == pytest.approx(2 * np.pi - 6)
    assert g("two_cycles", [[0.1]], [[2 * np.pi - 0.1]])[0, 0] == pytest.approx(0.2)
    assert g("double_helix", [[-1.0]], [[0.5]])[0, 0] == pytest.approx(1.5)
    assert g("two_cosines", [[1.0], [0.0]], [[-1.0]])[:, 0] == pytest.approx([2.0, 1.0])
    # north pole vs a point on the equator; two equator points 90 degrees apart; antipodes
    assert g("two_spheres", [[0.0, 0.0]], [[np.pi / 2, 1.0]])[0, 0] == pytest.approx(np.pi / 2)
    assert g("two_spheres", [[np.pi / 2, 0.0]], [[np.pi / 2, np.pi / 2]])[0, 0] == pytest.approx(np.pi / 2)
    assert g("two_spheres", [[np.pi / 2, 0.0]], [[np.pi / 2, np.pi]])[0, 0] == pytest.approx(np.pi)


def test_geodesic_folded_boxes():
    g = geodesic_distances
    s = np.sqrt(1 + 1.2**2)
    a1 = 13 / 1.2  # half-width of class 1
    # same face, across the fold at x = 0
    assert g("two_folded_boxes", [[-2.0, 1, 0.0]], [[3.0, 1, 0.0]])[0, 0] == pytest.approx(5 * s)
    # quadrature with dz
    assert g("two_folded_boxes", [[1.0, -1, -1.0]], [[4.0, -1, 1.0]])[0, 0] == pytest.approx(np.hypot(3 * s, 2))
    # the two faces meet at x = +-a: the shared vertex is one point
    assert g("two_folded_boxes", [[a1, 1, 0.0]], [[a1, -1, 0.0]])[0, 0] == pytest.approx(0, abs=1e-12)
    # round the vertex: x = 9 on face +1 to x = 9 on face -1
    assert g("two_folded_boxes", [[9.0, 1, 0.0]], [[9.0, -1, 0.0]])[0, 0] == pytest.approx(2 * (a1 - 9) * s)
    # apex to apex: half the perimeter, either way round; class 0 is the smaller rhombus
    assert g("two_folded_boxes", [[0.0, 1, 0.0]], [[0.0, -1, 0.0]])[0, 0] == pytest.approx(2 * a1 * s)
    assert g("two_folded_boxes", [[0.0, 1, 0.0]], [[0.0, -1, 0.0]], label=0)[0, 0] == pytest.approx(2 * 11 / 1.2 * s)
    # geodesic never exceeds the straight line... it is at least the Euclidean distance
    data = load_builtin("two_folded_boxes", n=100, seed=2)
    D = data.geodesic()
    E = np.linalg.norm(data.X[:, None, :].astype(float) - data.X[None, :, :], axis=-1)
    same = data.y[:, None] == data.y[None, :]
    assert np.all(D[same] >= E[same] - 1e-4)


def test_digits():
    data = load_builtin("digits", n=10, seed=5)
    assert data.X.shape == (1797, 64) and data.X.dtype == np.float32
    assert data.X.min() == -1.0 and data.X.max() == 1.0
    assert sorted(set(data.y.tolist())) == list(range(10)) and data.y.dtype == np.int64
    assert data.coords is None
    with pytest.raises(ValueError):
        data.geodesic()


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown builtin"):
        load_builtin("mnist")
