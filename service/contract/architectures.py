"""The architectures lelastic builds: one registry entry each, the one place that says what an
architecture is.

Adding an architecture touches two files:

1. This one: its spec class (a `StrictModel` with `arch: Literal["<name>"]`), that class in
   `ArchitectureSpec`, and an `Architecture` entry in `ARCHITECTURES` (parameter shapes, input rule,
   capabilities).
2. `workers/compute/models.py`: its torch module, a `ScalarNet` built from (spec, input_shape) with
   exactly the entry's parameter names and shapes, registered in `BUILDERS`; when the entry claims
   `difference_propagation`, the module implements `probe_differences`.

Then add a spec of it to `tests/contract/test_architectures.py`, which checks every entry against its
module: parameter names and shapes, and that each claimed capability gives the generic path's result.

This module imports only pydantic and the standard library: the API (which has no torch) checks
uploaded weights and input shapes with the same entries the workers build their models from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import ConfigDict, Field

from service.contract.strict import StrictModel

Activation = Literal["relu", "sigmoid", "tanh", "gelu"]


class LinearModel(StrictModel):
    """Linear layers with no activation: the paper's linear networks (depth 1 is a linear model)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"arch": "linear", "depth": 2, "width": 4096}]})

    arch: Literal["linear"] = Field(description="The architecture: linear layers, no activation.")
    depth: Literal[1, 2, 3] = Field(default=2, description="Linear layers (1: a linear model x → wᵀx + b).")
    width: int = Field(default=4096, ge=1, le=65_536, description="Units of each hidden layer.")


class MLPModel(StrictModel):
    """Fully connected network with `depth` linear layers and an activation between them."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"arch": "mlp", "depth": 2, "width": 4096, "activation": "relu"}]}
    )

    arch: Literal["mlp"] = Field(default="mlp", description="The architecture: a fully connected network.")
    depth: Literal[2, 3] = Field(default=2, description="Layers: 2 (one hidden layer, the paper's) or 3.")
    width: int = Field(default=4096, ge=1, le=65_536, description="Units of each hidden layer (the paper: 40960).")
    activation: Activation = Field(default="relu", description="The hidden layers' activation.")


class ResMLPModel(StrictModel):
    """The authors' "ResNet": h1 = relu(W1 x), h2 = relu(W2 h1), out = W3 (h1 + h2)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"arch": "resmlp", "width": 4096}]})

    arch: Literal["resmlp"] = Field(description="The architecture: the authors' fully connected residual net.")
    width: int = Field(default=4096, ge=1, le=16_384, description="Units of both hidden layers.")


class CNNModel(StrictModel):
    """LeNet-style net of PyTorch's MNIST example, for image-shaped inputs."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"arch": "cnn"}]})

    arch: Literal["cnn"] = Field(description="The architecture: LeNet-style CNN (PyTorch's MNIST example).")


#: The "model" part of a job spec (spec.py adds the discriminator on "arch").
ArchitectureSpec = LinearModel | MLPModel | ResMLPModel | CNNModel


@dataclass(frozen=True)
class Capabilities:
    """What the engine may exploit in a model's structure; all False leaves the generic torch.func paths.

    closed_form_ntk: the model is one Linear layer, or Linear → `activation` → Linear (its Linear
        modules in registration order): the NTK and, with relu or no activation, the exact step in GEMMs.
    layerwise_ntk: the model is Linear layers and pointwise maps only: the NTK from one forward and
        backward pass, K = Σ_l (G_l G_lᵀ) ⊙ (A_l A_lᵀ + 1).
    difference_propagation: the module propagates one-step differences through its layers
        (`ScalarNet.probe_differences`), exact in float32; needs layerwise_ntk or structured_ntk (the
        per-layer inputs and output gradients it reads).
    structured_ntk: the model is Conv2d (groups 1) and Linear layers with pointwise maps, pooling and
        reshapes between them, no parameter shared across examples: the NTK per layer from its inputs
        (im2col patches for a convolution) and its backpropagated signals, never an n × P Jacobian.
    activation: the pointwise activation after the hidden layers (None: none, a linear network).
    """

    closed_form_ntk: bool = False
    layerwise_ntk: bool = False
    difference_propagation: bool = False
    structured_ntk: bool = False
    activation: Activation | None = None

    def __post_init__(self) -> None:
        if self.closed_form_ntk and not self.layerwise_ntk:
            raise ValueError("closed_form_ntk needs a stack of Linear layers (layerwise_ntk)")
        if self.difference_propagation and not (self.layerwise_ntk or self.structured_ntk):
            raise ValueError("difference_propagation needs Linear and Conv2d layers (layerwise_ntk or structured_ntk)")

    @property
    def closed_form_step(self) -> bool:
        """The exact one-step change in GEMMs applies: a closed-form NTK with relu or no activation."""
        return self.closed_form_ntk and self.activation in (None, "relu")


SpecT = TypeVar("SpecT", bound=StrictModel)


@dataclass(frozen=True)
class Architecture(Generic[SpecT]):
    """One architecture of the registry.

    parameter_shapes(spec, input_shape): name → shape of every parameter, in torch state_dict order, for
        examples of `input_shape`; the model has one scalar output.
    capabilities(spec): what the engine may exploit in this spec's model.
    check_input_shape(input_shape): raises ValueError when examples of that shape do not fit (None: any
        shape fits; the examples are flattened).
    relu_pattern_layer: the hidden Linear layer (a parameter name prefix) whose on/off pattern the
        "activation" similarity compares when the activation is relu (None: the architecture has none).
    """

    name: str
    spec_class: type[SpecT]
    parameter_shapes: Callable[[SpecT, Sequence[int]], dict[str, list[int]]]
    capabilities: Callable[[SpecT], Capabilities]
    check_input_shape: Callable[[Sequence[int]], None] | None = None
    relu_pattern_layer: str | None = None


def image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) the CNN reads an example of `input_shape` as.

    [C, H, W] is taken as is, [H, W] gets one channel, and a flat [d] with d a perfect square is read
    as a 1 × √d × √d image (so the 64 digits features are a 1 × 8 × 8 image).
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        return (shape[0], shape[1], shape[2])
    if len(shape) == 2:
        return (1, shape[0], shape[1])
    side = math.isqrt(shape[0]) if len(shape) == 1 else 0
    if len(shape) == 1 and side * side == shape[0]:
        return (1, side, side)
    raise ValueError(f"the cnn needs image-shaped examples ([C, H, W], [H, W] or a square [d]), got {list(shape)}")


def cnn_geometry(input_shape: Sequence[int]) -> dict[str, int]:
    """Channels, padding and flattened size of the LeNet-style CNN for this input shape.

    Both 5×5 convolutions use padding 2 when the image is smaller than 16 pixels on a side (so that
    8 × 8 digits still fit two conv + 2×2 max-pool stages), else padding 0 (PyTorch's MNIST example).
    """
    channels, height, width = image_shape(input_shape)
    padding = 2 if min(height, width) < 16 else 0
    for _ in range(2):
        height, width = (height - 4 + 2 * padding) // 2, (width - 4 + 2 * padding) // 2
    if height < 1 or width < 1:
        raise ValueError(f"image {list(input_shape)} is too small for the cnn")
    return {"channels": channels, "padding": padding, "flat": 50 * height * width}


def _check_image_input(input_shape: Sequence[int]) -> None:
    cnn_geometry(input_shape)


def _layer_stack_shapes(spec: LinearModel | MLPModel, input_shape: Sequence[int]) -> dict[str, list[int]]:
    """`depth` Linear layers d → width → … → 1, named layers.<k>."""
    sizes = [math.prod(input_shape)] + [spec.width] * (spec.depth - 1) + [1]
    shapes: dict[str, list[int]] = {}
    for k in range(spec.depth):
        shapes[f"layers.{k}.weight"] = [sizes[k + 1], sizes[k]]
        shapes[f"layers.{k}.bias"] = [sizes[k + 1]]
    return shapes


def _layer_stack_capabilities(depth: int, activation: Activation | None) -> Capabilities:
    return Capabilities(
        closed_form_ntk=depth <= 2, layerwise_ntk=True, difference_propagation=True, activation=activation
    )


def _resmlp_shapes(spec: ResMLPModel, input_shape: Sequence[int]) -> dict[str, list[int]]:
    d, w = math.prod(input_shape), spec.width
    return {
        "fc1.weight": [w, d],
        "fc1.bias": [w],
        "fc2.weight": [w, w],
        "fc2.bias": [w],
        "out.weight": [1, w],
        "out.bias": [1],
    }


def _cnn_shapes(spec: CNNModel, input_shape: Sequence[int]) -> dict[str, list[int]]:
    geometry = cnn_geometry(input_shape)
    return {
        "conv1.weight": [20, geometry["channels"], 5, 5],
        "conv1.bias": [20],
        "conv2.weight": [50, 20, 5, 5],
        "conv2.bias": [50],
        "fc1.weight": [500, geometry["flat"]],
        "fc1.bias": [500],
        "fc2.weight": [1, 500],
        "fc2.bias": [1],
    }


def _mlp_capabilities(spec: MLPModel) -> Capabilities:
    return _layer_stack_capabilities(spec.depth, spec.activation)


def _linear_capabilities(spec: LinearModel) -> Capabilities:
    return _layer_stack_capabilities(spec.depth, None)


def _resmlp_capabilities(spec: ResMLPModel) -> Capabilities:
    return Capabilities(layerwise_ntk=True, difference_propagation=True, activation="relu")


def _cnn_capabilities(spec: CNNModel) -> Capabilities:
    return Capabilities(structured_ntk=True, difference_propagation=True, activation="relu")


_ENTRIES: tuple[Architecture[Any], ...] = (
    Architecture(
        name="mlp",
        spec_class=MLPModel,
        parameter_shapes=_layer_stack_shapes,
        capabilities=_mlp_capabilities,
        relu_pattern_layer="layers.0",
    ),
    Architecture(
        name="linear",
        spec_class=LinearModel,
        parameter_shapes=_layer_stack_shapes,
        capabilities=_linear_capabilities,
    ),
    Architecture(
        name="resmlp",
        spec_class=ResMLPModel,
        parameter_shapes=_resmlp_shapes,
        capabilities=_resmlp_capabilities,
        relu_pattern_layer="fc1",
    ),
    Architecture(
        name="cnn",
        spec_class=CNNModel,
        parameter_shapes=_cnn_shapes,
        capabilities=_cnn_capabilities,
        check_input_shape=_check_image_input,
    ),
)

#: name → entry, in the order messages list them.
ARCHITECTURES: dict[str, Architecture[Any]] = {entry.name: entry for entry in _ENTRIES}


def architecture_of(spec: ArchitectureSpec) -> Architecture[Any]:
    """The registry entry of a model spec."""
    return ARCHITECTURES[spec.arch]


def alternatives_phrase(names: Sequence[str], *, quote: bool = True) -> str:
    """ "'a', 'b' or 'c'" (quote=False: "a, b or c"), for messages that list architectures."""
    words = [repr(name) if quote else name for name in names]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
