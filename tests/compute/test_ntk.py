import pytest
import torch

from service.contract.spec import CNNModel, LinearModel, MLPModel, ResMLPModel
from workers.compute.models import build_model
from workers.compute.ntk import ntk, ntk_diagonal, resolve_implementation


def model64(spec, shape=(10,), seed=0):
    return build_model(spec, list(shape), seed=seed).double()


def data(n=9, shape=(10,), seed=1):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def autograd_loop(model, X):
    rows = []
    for i in range(X.shape[0]):
        model.zero_grad()
        model(X[i : i + 1])[0].backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    J = torch.stack(rows)
    return J @ J.T


def test_linear_depth1_is_gram_plus_one_exactly():
    model = model64(LinearModel(arch="linear", depth=1, width=3))
    X = torch.randint(-3, 4, (7, 10)).double()  # integers: every product and sum is exact
    K = ntk(model, X)
    assert resolve_implementation(model) == "closed_form"
    assert torch.equal(K, X @ X.T + 1)
    assert torch.equal(ntk(model, X, implementation="layerwise"), X @ X.T + 1)
    torch.testing.assert_close(ntk(model, X, implementation="jacobian"), X @ X.T + 1, rtol=1e-13, atol=1e-12)


TWO_LAYER = [MLPModel(width=12, activation=a) for a in ("relu", "sigmoid", "tanh", "gelu")] + [
    LinearModel(arch="linear", depth=2, width=6)
]


@pytest.mark.parametrize("spec", TWO_LAYER, ids=lambda s: s.model_dump_json())
def test_closed_form_equals_layerwise_equals_jacobian(spec):
    model, X = model64(spec), data()
    Kc = ntk(model, X, implementation="closed_form")
    torch.testing.assert_close(ntk(model, X, implementation="layerwise"), Kc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ntk(model, X, implementation="jacobian"), Kc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(autograd_loop(model, X), Kc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ntk_diagonal(model, X), Kc.diag(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "spec",
    [
        LinearModel(arch="linear", depth=3, width=5),
        MLPModel(depth=3, width=8, activation="relu"),
        MLPModel(depth=3, width=8, activation="gelu"),
        ResMLPModel(arch="resmlp", width=8),
    ],
    ids=lambda s: s.model_dump_json(),
)
def test_layerwise_equals_jacobian_deeper(spec):
    model, X = model64(spec), data()
    assert resolve_implementation(model) == "layerwise"
    Kl = ntk(model, X)
    torch.testing.assert_close(ntk(model, X, implementation="jacobian"), Kl, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(autograd_loop(model, X), Kl, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        ntk(model, X, implementation="closed_form")


@pytest.mark.parametrize("shape", [(64,), (1, 16, 16), (1, 28, 28)])
def test_cnn_structured_and_jacobian_equal_autograd_loop_and_tile(shape):
    model, X = model64(CNNModel(arch="cnn"), shape), data(5, shape)
    assert resolve_implementation(model) == "structured"
    expected = autograd_loop(model, X)
    torch.testing.assert_close(ntk(model, X), expected, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(ntk(model, X, implementation="jacobian"), expected, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(ntk_diagonal(model, X), expected.diag(), rtol=1e-11, atol=1e-11)
    n_params = sum(p.numel() for p in model.parameters())
    # budget for ~1 example per block and no cache: exercises the tiled recomputation path
    tiny = ntk(model, X, implementation="jacobian", max_bytes=6 * n_params * 8)
    torch.testing.assert_close(tiny, expected, rtol=1e-11, atol=1e-11)
    with pytest.raises(ValueError):
        ntk(model, X, implementation="layerwise")


def test_structured_blocks_and_recomputed_tiles_give_the_same_kernel():
    from workers.compute.structured import block_features, structured_ntk

    model, X = model64(CNNModel(arch="cnn"), (1, 16, 16)), data(11, (1, 16, 16))
    whole = structured_ntk(model, X)
    per_example = block_features(model, X[:1]).nbytes()
    # blocks of 2 examples, features recomputed per tile (they do not all fit the budget)
    tiled = structured_ntk(model, X, max_bytes=5 * per_example, work_bytes=1)
    torch.testing.assert_close(tiled, whole, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(whole, autograd_loop(model, X), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("syrk", [True, False], ids=["syrk", "products"])
def test_structured_row_groups_and_panels_give_the_autograd_kernel(monkeypatch, syrk):
    from workers.compute import structured

    model, X = model64(CNNModel(arch="cnn"), (1, 16, 16)), data(11, (1, 16, 16))
    expected = autograd_loop(model, X)
    # several syrk row groups, Linear-term panels and feature blocks, each with a ragged last one
    monkeypatch.setattr(structured, "_SYRK_ROWS", 4)
    monkeypatch.setattr(structured, "_PANEL", 3)
    monkeypatch.setattr(structured, "_PATCH_BYTES", 1)
    if not syrk:
        monkeypatch.setattr(structured, "_syrk_lower", lambda Fi, K: False)
    block = structured.block_features(model, X[:1]).nbytes()
    K = structured.structured_ntk(model, X, work_bytes=block * 8)
    assert torch.equal(K, K.T)
    torch.testing.assert_close(K, expected, rtol=1e-11, atol=1e-11)


def test_structured_columns_zero_over_the_first_block_are_kept_apart_or_dropped():
    from workers.compute import structured

    model, X = model64(CNNModel(arch="cnn"), (1, 16, 16)), data(11, (1, 16, 16))
    with torch.no_grad():
        model.conv2.bias[3] = -1e6  # a channel that no example activates: its columns are dropped
    X[:5] = 0  # conv1's weight gradients vanish over the first block only: kept apart, then multiplied
    block = structured.block_features(model, X[:1]).nbytes()
    assert structured._block_size(model, X, block * 8) == 5
    every = structured._all_features(model, X, 5)
    widths = [part.shape[1] for part in every.parts]
    per_channel = model.conv2.weight[0].numel() + 1
    assert len(widths) == 2 and sum(widths) <= structured.conv_feature_width(model) - per_channel
    K = structured.structured_ntk(model, X, work_bytes=block * 8)
    torch.testing.assert_close(K, autograd_loop(model, X), rtol=1e-11, atol=1e-11)


def test_structured_float32_is_within_1e_5_of_float64_and_reports_progress(monkeypatch):
    from workers.compute import progress as progress_module

    monkeypatch.setattr(progress_module.time, "monotonic", iter(range(0, 10**6, 5)).__next__)  # 5 s per call
    model = build_model(CNNModel(arch="cnn"), [1, 28, 28], seed=0)
    X = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    reports = []
    K = ntk(model, X, max_bytes=2 * 2**20, progress=lambda f, m: reports.append(f))
    K64 = ntk(model.double(), X.double(), implementation="jacobian")
    assert K.dtype == torch.float32
    assert float((K.double() - K64).abs().max() / K64.abs().max()) < 1e-5
    assert len(reports) >= 3 and reports == sorted(reports) and reports[-1] == 1.0


@pytest.mark.parametrize(
    "spec",
    [MLPModel(width=16), ResMLPModel(arch="resmlp", width=8), CNNModel(arch="cnn")],
    ids=lambda s: s.arch,
)
def test_symmetric_psd_and_permutation_equivariant(spec):
    model, X = model64(spec, (64,)), data(8, (64,))
    K = ntk(model, X)
    torch.testing.assert_close(K, K.T, rtol=0, atol=1e-12 * K.abs().max())
    assert torch.linalg.eigvalsh(K).min() > -1e-10 * K.abs().max()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ntk(model, X[perm]), K[perm][:, perm], rtol=1e-12, atol=1e-12)


def test_float32_in_float32_out_and_close_to_float64():
    spec = MLPModel(width=32)
    model = build_model(spec, [10], seed=0)
    X = data().float()
    K = ntk(model, X)
    assert K.dtype == torch.float32 and K.shape == (9, 9)
    K64 = ntk(model.double(), X.double())
    assert float((K.double() - K64).abs().max() / K64.abs().max()) < 1e-5


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_both_closed_form_strategies_match_layerwise_over_several_row_blocks(activation):
    from workers.compute.ntk import _closed_form_by_hidden_units, _closed_form_by_rows, _flat, symmetric_row_blocks

    model, X = model64(MLPModel(width=16, activation=activation)), data(n=300)
    assert len(symmetric_row_blocks(300, 8)) >= 3  # the upper-block-triangle products and the mirror run
    expected = ntk(model, X, implementation="layerwise")
    torch.testing.assert_close(_closed_form_by_rows(model, _flat(model, X)), expected, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(_closed_form_by_hidden_units(model, _flat(model, X)), expected, rtol=1e-12, atol=1e-10)


def test_the_closed_form_reports_progress_that_ends_at_one(monkeypatch):
    from workers.compute import progress as progress_module

    monkeypatch.setattr(progress_module.time, "monotonic", iter(range(0, 10_000, 5)).__next__)  # 5 s per call
    reports = []
    model, X = model64(MLPModel(width=16)), data(n=300)
    ntk(model, X, progress=lambda fraction, message: reports.append(fraction))
    assert len(reports) >= 3 and reports == sorted(reports) and reports[-1] == 1.0


class Canceled(Exception):
    pass


@pytest.mark.parametrize(
    "spec",
    [MLPModel(width=16), MLPModel(depth=3, width=8), ResMLPModel(arch="resmlp", width=8), CNNModel(arch="cnn")],
    ids=lambda s: s.model_dump_json(),
)
@pytest.mark.parametrize("step", [0.0, 1e-3])
def test_every_path_reports_progress_and_a_raising_callback_cancels_it(monkeypatch, spec, step):
    from workers.compute import progress as progress_module
    from workers.compute.similarity import similarity

    monkeypatch.setattr(progress_module.time, "monotonic", iter(range(0, 10**7, 5)).__next__)  # 5 s per call
    model, X = build_model(spec, [64], seed=0), data(20, (64,)).float()
    reports = []
    similarity(model, X, kind="kernelized", step=step, loss="mse", progress=lambda f, m: reports.append(f))
    assert len(reports) >= 2 and reports == sorted(reports) and reports[-1] == 1.0

    def cancel(fraction, message):  # the first report from inside the path cancels it
        if message != "similarity done":
            raise Canceled(message)

    with pytest.raises(Canceled):
        similarity(model, X, kind="kernelized", step=step, loss="mse", progress=cancel)


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        (LinearModel(arch="linear"), [6]),
        (MLPModel(width=8, depth=2, activation="relu"), [6]),
        (MLPModel(width=8, depth=2, activation="gelu"), [6]),
        (MLPModel(width=8, depth=3, activation="tanh"), [6]),
        (ResMLPModel(arch="resmlp", width=8), [6]),
        (CNNModel(arch="cnn"), [64]),
    ],
)
def test_the_memory_estimate_follows_the_path_the_engine_takes(spec, shape):
    """service.contract.memory sizes the engine's work buffers by the path it expects from the spec's
    capabilities: they must be the built model's, and at step 0 the engine's own choice must be that path
    (at a step the engine branches on the same capability flags)."""
    from service.contract.architectures import architecture_of
    from service.contract.memory import engine_path
    from workers.compute.scalar_net import capabilities_of

    model = build_model(spec, shape, seed=0)
    capabilities = architecture_of(spec).capabilities(spec)
    assert capabilities == capabilities_of(model)
    engine_limit = {"jacobian": "generic"}.get(resolve_implementation(model), resolve_implementation(model))
    assert engine_path(capabilities, kind="kernelized", step=0, trajectory=False) == engine_limit
