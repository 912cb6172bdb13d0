"""The architecture registry against the torch modules built from it, and the similarity kinds against
their computations: names, shapes, input rules, and that every claimed capability gives the result of
the generic path (and every unclaimed one is refused)."""

from typing import get_args

import pytest
import torch

from service.api.validation import DatasetFacts, _model_issues
from service.contract.architectures import (
    ARCHITECTURES,
    ArchitectureSpec,
    Capabilities,
    CNNModel,
    LinearModel,
    MLPModel,
    ResMLPModel,
    architecture_of,
)
from service.contract.spec import SIMILARITY_KINDS, JobSpec, SimilarityKindName, parameter_shapes
from workers.compute import propagation
from workers.compute.kinds import DIRECT_KINDS, STEP_KINDS
from workers.compute.models import BUILDERS, ScalarNet, build_model
from workers.compute.ntk import ntk, resolve_implementation
from workers.compute.similarity import _generic_rows, _propagated_rows, _two_layer_rows, _z64, similarity

#: At least one spec of every registry entry (test_every_architecture_has_specs_here checks that).
SPECS: list[ArchitectureSpec] = [
    LinearModel(arch="linear", depth=1, width=3),
    LinearModel(arch="linear", depth=2, width=5),
    LinearModel(arch="linear", depth=3, width=4),
    *[MLPModel(depth=2, width=6, activation=a) for a in ("relu", "sigmoid", "tanh", "gelu")],
    MLPModel(depth=3, width=5, activation="relu"),
    MLPModel(depth=3, width=5, activation="gelu"),
    ResMLPModel(arch="resmlp", width=6),
    CNNModel(arch="cnn"),
]


def spec_id(spec: ArchitectureSpec) -> str:
    return spec.model_dump_json()


def input_shapes(spec: ArchitectureSpec) -> list[list[int]]:
    return [[64], [1, 16, 16]] if architecture_of(spec).check_input_shape else [[10], [2, 5]]


def model64(spec: ArchitectureSpec, shape: list[int]) -> ScalarNet:
    return build_model(spec, shape, seed=0).double()


def data(n: int, shape: list[int], seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_every_architecture_has_specs_here_and_a_builder():
    assert {spec.arch for spec in SPECS} == set(ARCHITECTURES) == set(BUILDERS)


def test_entries_name_their_spec_class_and_the_spec_union_holds_every_class():
    for name, entry in ARCHITECTURES.items():
        assert entry.name == name
        assert get_args(entry.spec_class.model_fields["arch"].annotation) == (name,)
        assert JobSpec(dataset="x", model={"arch": name}).model.__class__ is entry.spec_class
    assert set(get_args(ArchitectureSpec)) == {entry.spec_class for entry in ARCHITECTURES.values()}


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_the_module_has_exactly_the_registry_parameters(spec):
    entry = architecture_of(spec)
    for shape in input_shapes(spec):
        model = build_model(spec, shape, seed=0)
        got = [(name, list(p.shape)) for name, p in model.named_parameters()]
        assert got == list(entry.parameter_shapes(spec, shape).items())
        assert got == list(parameter_shapes(spec, shape).items())
        assert model.capabilities == entry.capabilities(spec) and model.architecture is entry
        assert model(torch.randn(3, *shape)).shape == (3,)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_input_rules(name):
    entry = ARCHITECTURES[name]
    spec = next(spec for spec in SPECS if spec.arch == name)
    if entry.check_input_shape is None:  # any shape: examples are flattened
        for shape in ([1], [7], [2, 3], [2, 3, 4]):
            assert build_model(spec, shape, seed=0)(torch.randn(2, *shape)).shape == (2,)
        return
    for shape in ([64], [28, 28], [3, 16, 16]):
        entry.check_input_shape(shape)
        assert build_model(spec, shape, seed=0)(torch.randn(2, *shape)).shape == (2,)
    for shape in ([3], [2, 2], [1, 2, 3, 4]):
        with pytest.raises(ValueError):
            entry.check_input_shape(shape)
        with pytest.raises(ValueError):
            entry.parameter_shapes(spec, shape)


def test_the_cnn_padding_rule_keeps_small_images_and_follows_the_mnist_example_for_large_ones():
    small = parameter_shapes(CNNModel(arch="cnn"), [64])  # 1 × 8 × 8, padding 2: 8 → 4 → 2
    large = parameter_shapes(CNNModel(arch="cnn"), [1, 28, 28])  # padding 0: 28 → 12 → 4
    assert small["fc1.weight"] == [500, 50 * 2 * 2] and large["fc1.weight"] == [500, 50 * 4 * 4]
    assert build_model(CNNModel(arch="cnn"), [64], seed=0).conv1.padding == (2, 2)
    assert build_model(CNNModel(arch="cnn"), [1, 28, 28], seed=0).conv1.padding == (0, 0)


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_ntk_capabilities_match_the_jacobian_ntk(spec):
    capabilities = architecture_of(spec).capabilities(spec)
    shape = input_shapes(spec)[0]
    model, X = model64(spec, shape), data(5, shape)
    expected = ntk(model, X, implementation="jacobian")
    for implementation, claimed in (
        ("closed_form", capabilities.closed_form_ntk),
        ("layerwise", capabilities.layerwise_ntk),
        ("structured", capabilities.structured_ntk),
    ):
        if claimed:
            torch.testing.assert_close(ntk(model, X, implementation=implementation), expected, rtol=1e-12, atol=1e-12)
        else:
            with pytest.raises(ValueError):
                ntk(model, X, implementation=implementation)
    assert resolve_implementation(model) == (
        "closed_form"
        if capabilities.closed_form_ntk
        else "layerwise"
        if capabilities.layerwise_ntk
        else "structured"
        if capabilities.structured_ntk
        else "jacobian"
    )


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_exact_step_capabilities_match_the_generic_float64_path(spec):
    capabilities = architecture_of(spec).capabilities(spec)
    shape = input_shapes(spec)[0]
    model = build_model(spec, shape, seed=2)
    X = data(8, shape, seed=3).float()
    z = _z64(model, X)
    s = 1e-2 * 2 * (z - 1)
    expected = _generic_rows(model, X, s, z, None)
    if capabilities.difference_propagation:
        got = _propagated_rows(model, X, s).double()
        assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5
    else:
        with pytest.raises(ValueError):
            propagation.step_differences(model, X, s)
    if capabilities.closed_form_step:
        got = _two_layer_rows(model, X, s).double()
        assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_the_relu_pattern_layer_is_a_registry_layer_and_the_activation_kind_reads_it(spec):
    entry = architecture_of(spec)
    shape = input_shapes(spec)[0]
    model, X = build_model(spec, shape, seed=0), data(6, shape).float()
    has_pattern = entry.relu_pattern_layer is not None and entry.capabilities(spec).activation == "relu"
    if not has_pattern:
        with pytest.raises(ValueError):
            similarity(model, X, kind="activation", step=0, loss="mse")
        return
    assert f"{entry.relu_pattern_layer}.weight" in entry.parameter_shapes(spec, shape)
    layer = model.get_submodule(entry.relu_pattern_layer)
    with torch.no_grad():
        P = (layer(X.reshape(6, -1)) > 0).double()
    cosine = P @ P.T / torch.sqrt(torch.outer(P.sum(1), P.sum(1)))
    S = similarity(model, X, kind="activation", step=0, loss="mse")
    torch.testing.assert_close(torch.from_numpy(S).double(), cosine, rtol=1e-6, atol=1e-6)


def test_capabilities_refuse_a_closed_form_or_propagation_outside_a_stack_of_linear_layers():
    with pytest.raises(ValueError):
        Capabilities(closed_form_ntk=True)
    with pytest.raises(ValueError):
        Capabilities(difference_propagation=True)
    assert Capabilities(closed_form_ntk=True, layerwise_ntk=True, activation="relu").closed_form_step
    assert not Capabilities(closed_form_ntk=True, layerwise_ntk=True, activation="tanh").closed_form_step


def test_messages_list_the_architectures_from_the_registry():
    with pytest.raises(ValueError, match=r"needs a model with a first ReLU layer \(arch mlp or resmlp\)"):
        JobSpec(dataset="x", model={"arch": "linear"}, similarity={"kind": "activation"})
    with pytest.raises(ValueError, match="needs activation 'relu'"):
        JobSpec(dataset="x", model={"arch": "mlp", "activation": "tanh"}, similarity={"kind": "activation"})
    facts = DatasetFacts(n=10, shape=[3], classes=None, class_counts=None)
    assert _model_issues(JobSpec(dataset="x", model={"arch": "cnn"}), facts) == [
        {
            "loc": ["body", "model", "arch"],
            "msg": "the cnn needs image-shaped examples ([C, H, W], [H, W] or a square [d]), got [3]; "
            "use arch 'mlp', 'linear' or 'resmlp' for this dataset",
            "input": "cnn",
        }
    ]


def test_every_similarity_kind_is_computed_by_the_engine():
    assert tuple(SIMILARITY_KINDS) == get_args(SimilarityKindName)
    assert set(SIMILARITY_KINDS) == set(STEP_KINDS) | set(DIRECT_KINDS)
    assert not set(STEP_KINDS) & set(DIRECT_KINDS)
    for name, kind in SIMILARITY_KINDS.items():
        assert kind.takes_step == (name in STEP_KINDS)


@pytest.mark.parametrize("name", list(STEP_KINDS))
def test_a_step_kind_reads_its_limit_as_the_limit_of_its_rows(name):
    """At η → 0, R_ij = w_j K_z(i, j) and K_f = w_i w_j K_z: from_limit(K_f) = from_rows(R, w)."""
    kind = STEP_KINDS[name]
    g = torch.Generator().manual_seed(0)
    J = torch.randn(6, 9, generator=g, dtype=torch.float64)
    K = J @ J.T
    w = torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    from_rows = kind.from_rows(w[None, :] * K, w)
    torch.testing.assert_close(kind.from_limit(w[:, None] * w[None, :] * K), from_rows, rtol=1e-12, atol=1e-12)
