"""Models of the job spec as torch modules with one scalar output.

Every model maps X of shape [n, *input_shape] to z of shape [n] (pre-sigmoid). Parameter names and
shapes equal `service.contract.spec.parameter_shapes(spec, input_shape)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from service.contract.spec import (
    CNNModel,
    LinearModel,
    MLPModel,
    ResMLPModel,
    cnn_geometry,
    image_shape,
    parameter_shapes,
)

ACTIVATIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "gelu": F.gelu}


class LayeredNet(nn.Module):
    """`depth` Linear layers with `activation` between them (None: a linear network).

    forward: X [n, *shape] → z [n].
    """

    def __init__(self, d: int, width: int, depth: int, activation: str | None):
        super().__init__()
        sizes = [d] + [width] * (depth - 1) + [1]
        self.layers = nn.ModuleList([nn.Linear(sizes[k], sizes[k + 1]) for k in range(depth)])
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)
        act = ACTIVATIONS[self.activation] if self.activation else None
        for k, layer in enumerate(self.layers):
            h = layer(h)
            if act is not None and k < len(self.layers) - 1:
                h = act(h)
        return h[:, 0]


class ResMLP(nn.Module):
    """h1 = relu(fc1 x), h2 = relu(fc2 h1), z = out(h1 + h2). X [n, *shape] → z [n]."""

    def __init__(self, d: int, width: int):
        super().__init__()
        self.fc1 = nn.Linear(d, width)
        self.fc2 = nn.Linear(width, width)
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = torch.relu(self.fc1(x.reshape(x.shape[0], -1)))
        h2 = torch.relu(self.fc2(h1))
        return self.out(h1 + h2)[:, 0]


class CNN(nn.Module):
    """LeNet-style net of PyTorch's MNIST example. X [n, *shape] → image [n, C, H, W] → z [n]."""

    def __init__(self, input_shape: list[int]):
        super().__init__()
        geometry = cnn_geometry(input_shape)
        self.image = image_shape(input_shape)
        p = geometry["padding"]
        self.conv1 = nn.Conv2d(geometry["channels"], 20, 5, padding=p)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=p)
        self.fc1 = nn.Linear(geometry["flat"], 500)
        self.fc2 = nn.Linear(500, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], *self.image)
        h = F.max_pool2d(torch.relu(self.conv1(h)), 2)
        h = F.max_pool2d(torch.relu(self.conv2(h)), 2)
        h = torch.relu(self.fc1(h.flatten(1)))
        return self.fc2(h)[:, 0]


def build_model(
    spec: LinearModel | MLPModel | ResMLPModel | CNNModel, input_shape: list[int], *, seed: int
) -> nn.Module:
    """The float32 model of `spec` for examples of `input_shape`, default PyTorch init seeded by `seed`.

    The global RNG is left untouched (fork_rng); the same seed gives bitwise identical weights.
    """
    d = math.prod(input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(spec, LinearModel):
            model: nn.Module = LayeredNet(d, spec.width, spec.depth, None)
        elif isinstance(spec, MLPModel):
            model = LayeredNet(d, spec.width, spec.depth, spec.activation)
        elif isinstance(spec, ResMLPModel):
            model = ResMLP(d, spec.width)
        elif isinstance(spec, CNNModel):
            model = CNN(list(input_shape))
        else:
            raise TypeError(f"unknown model spec {spec!r}")
    expected = parameter_shapes(spec, list(input_shape))
    actual = {name: list(p.shape) for name, p in model.named_parameters()}
    assert actual == expected, (actual, expected)
    return model


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy `tensors` (name → tensor) into `model` after checking names and shapes.

    Raises ValueError listing every missing, unexpected or mis-shaped tensor.
    """
    params = dict(model.named_parameters())
    problems = [f"missing {name} {list(p.shape)}" for name, p in params.items() if name not in tensors]
    problems += [f"unexpected {name}" for name in tensors if name not in params]
    problems += [
        f"{name}: shape {list(tensors[name].shape)}, expected {list(p.shape)}"
        for name, p in params.items()
        if name in tensors and tuple(tensors[name].shape) != tuple(p.shape)
    ]
    if problems:
        raise ValueError("weights do not fit the model: " + "; ".join(problems))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(dtype=p.dtype, device=p.device))
