import pytest
import torch

from service.contract.spec import CNNModel, LinearModel, MLPModel, ResMLPModel, parameter_shapes
from workers.compute.models import build_model, load_weights

SPECS = [
    LinearModel(arch="linear", depth=1, width=5),
    LinearModel(arch="linear", depth=2, width=5),
    LinearModel(arch="linear", depth=3, width=5),
    *[MLPModel(depth=d, width=7, activation=a) for d in (2, 3) for a in ("relu", "sigmoid", "tanh", "gelu")],
    ResMLPModel(arch="resmlp", width=6),
    CNNModel(arch="cnn"),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.model_dump_json())
def test_parameter_names_and_shapes_match_spec(spec):
    for shape in ([64], [1, 28, 28]) if spec.arch == "cnn" else ([64], [3, 2]):
        model = build_model(spec, shape, seed=0)
        got = {k: list(v.shape) for k, v in model.named_parameters()}
        assert list(got.items()) == list(parameter_shapes(spec, shape).items())
        z = model(torch.randn(4, *shape))
        assert z.shape == (4,)


@pytest.mark.parametrize("spec", SPECS[:1] + SPECS[-2:], ids=lambda s: s.arch)
def test_seeded_init_is_deterministic_and_leaves_global_rng(spec):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_model(spec, [64], seed=7)
    after = torch.rand(3)
    b = build_model(spec, [64], seed=7)
    c = build_model(spec, [64], seed=8)
    assert torch.equal(after, expected_next)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


def test_linear_depth1_is_plain_linear_and_resmlp_structure():
    model = build_model(LinearModel(arch="linear", depth=1, width=3), [4], seed=0)
    X = torch.randn(5, 4)
    w, b = model.layers[0].weight[0], model.layers[0].bias[0]
    torch.testing.assert_close(model(X), X @ w + b)
    res = build_model(ResMLPModel(arch="resmlp", width=6), [4], seed=0)
    h1 = torch.relu(res.fc1(X))
    h2 = torch.relu(res.fc2(h1))
    torch.testing.assert_close(res(X), res.out(h1 + h2)[:, 0])


def test_load_weights_checks_names_and_shapes():
    spec = MLPModel(width=4)
    model = build_model(spec, [3], seed=0)
    source = build_model(spec, [3], seed=1)
    load_weights(model, dict(source.state_dict()))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), source.parameters(), strict=True))
    bad = dict(source.state_dict())
    bad["layers.0.weight"] = torch.zeros(5, 3)
    del bad["layers.1.bias"]
    bad["extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as info:
        load_weights(model, bad)
    message = str(info.value)
    assert "layers.0.weight" in message and "layers.1.bias" in message and "extra" in message
