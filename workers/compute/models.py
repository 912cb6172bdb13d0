"""The torch module of each architecture of the registry (service.contract.architectures).

Every model maps X of shape [n, *input_shape] to z of shape [n] (pre-sigmoid). Its parameter names
and shapes are its registry entry's `parameter_shapes(spec, input_shape)` (tests/contract checks that),
and `BUILDERS` maps each registry name to the module class that builds it from (spec, input_shape).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from service.contract.architectures import (
    ArchitectureSpec,
    CNNModel,
    LinearModel,
    MLPModel,
    ResMLPModel,
    cnn_geometry,
    image_shape,
)
from workers.compute.convprop import ConvReluPool, LayerSignals
from workers.compute.propagation import activation_difference, linear_difference
from workers.compute.scalar_net import LayerFactors, ScalarNet, linear_layers

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": F.gelu,
}


class LayeredNet(ScalarNet):
    """linear and mlp: `depth` Linear layers with the spec's activation between them (linear: none).

    forward: X [n, *shape] → z [n].
    """

    def __init__(self, spec: LinearModel | MLPModel, input_shape: Sequence[int]) -> None:
        super().__init__(spec)
        d = math.prod(input_shape)
        sizes = [d] + [spec.width] * (spec.depth - 1) + [1]
        self.layers = nn.ModuleList([nn.Linear(sizes[k], sizes[k + 1]) for k in range(spec.depth)])
        self.activation = self.capabilities.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)
        act = ACTIVATIONS[self.activation] if self.activation else None
        for k, layer in enumerate(self.layers):
            h = layer(h)
            if act is not None and k < len(self.layers) - 1:
                h = act(h)
        return h[:, 0]

    def probe_differences(self, factors: LayerFactors, probe: LayerFactors, s: torch.Tensor) -> torch.Tensor:
        """Δz [B, n]: the differences propagated through the layers in turn."""
        da: torch.Tensor | None = None
        layers = linear_layers(self)
        for k, (layer, (a, _)) in enumerate(zip(layers, factors, strict=True)):
            du = linear_difference(layer, a, da, *probe[k], s)
            if k == len(layers) - 1:
                return du[..., 0]
            da = activation_difference(layer(a), du, self.activation)
        raise AssertionError("unreachable")


class ResMLP(ScalarNet):
    """h1 = relu(fc1 x), h2 = relu(fc2 h1), z = out(h1 + h2). X [n, *shape] → z [n]."""

    def __init__(self, spec: ResMLPModel, input_shape: Sequence[int]) -> None:
        super().__init__(spec)
        d = math.prod(input_shape)
        self.fc1 = nn.Linear(d, spec.width)
        self.fc2 = nn.Linear(spec.width, spec.width)
        self.out = nn.Linear(spec.width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = torch.relu(self.fc1(x.reshape(x.shape[0], -1)))
        h2 = torch.relu(self.fc2(h1))
        z: torch.Tensor = self.out(h1 + h2)[:, 0]
        return z

    def probe_differences(self, factors: LayerFactors, probe: LayerFactors, s: torch.Tensor) -> torch.Tensor:
        """Δz [B, n]: Δh1 and Δh2 by the two ReLU layers, then `out` sees Δh1 + Δh2."""
        (x, _), (h1, _), (h12, _) = factors
        u1, u2 = self.fc1(x), self.fc2(h1)
        dh1 = activation_difference(u1, linear_difference(self.fc1, x, None, *probe[0], s), "relu")
        dh2 = activation_difference(u2, linear_difference(self.fc2, h1, dh1, *probe[1], s), "relu")
        return linear_difference(self.out, h12, dh1.add_(dh2), *probe[2], s)[..., 0]


class CNN(ScalarNet):
    """LeNet-style net of PyTorch's MNIST example. X [n, *shape] → image [n, C, H, W] → z [n]."""

    #: Bound on the pair temporaries of one sub-block of probes in `probe_differences` on the CPU: small
    #: enough to stay in cache and in the allocator's reused memory (larger sub-blocks ran slower). An
    #: accelerator takes the driver's whole block at once.
    CPU_PAIR_BYTES = 32 * 2**20

    def __init__(self, spec: CNNModel, input_shape: Sequence[int]) -> None:
        super().__init__(spec)
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
        z: torch.Tensor = self.fc2(h)[:, 0]
        return z

    def probe_differences(self, factors: LayerFactors, probe: LayerFactors, s: torch.Tensor) -> torch.Tensor:
        """Δz [B, n]: both conv → relu → pool stages (convprop.py), then the Linear layers, over sub-blocks
        of probes (`CPU_PAIR_BYTES`). factors: `convprop.layer_signals`, kept by `_prepared`."""
        (x, _), (a2, _), (a3, _), (a4, _) = factors
        first, second, u3 = self._prepared(factors)
        n, widest = x.shape[0], max(g[0].numel() for _, g in factors)
        per_probe = 4 * n * widest * x.element_size()
        size = max(1, self.CPU_PAIR_BYTES // per_probe) if x.device.type == "cpu" else s.shape[0]
        parts = []
        for start in range(0, s.shape[0], size):
            rows = slice(start, start + size)
            (x_i, g1_i), (a2_i, g2_i), (A3, G3), (A4, G4) = [(A[rows], G[rows]) for A, G in probe]
            da = first(None, x_i, g1_i, s[rows])  # [b, n, h, w, 20]
            da = second(da, a2_i, g2_i, s[rows])  # [b, n, h, w, 50]
            du = linear_difference(self.fc1, a3, da.movedim(-1, 2).flatten(2), A3, G3, s[rows])  # fc1 reads (C, h, w)
            da = activation_difference(u3, du, "relu")
            parts.append(linear_difference(self.fc2, a4, da, A4, G4, s[rows])[..., 0])
        return torch.cat(parts)

    def _prepared(self, factors: LayerFactors) -> tuple[ConvReluPool, ConvReluPool, torch.Tensor]:
        """Both conv stages prepared at the examples and fc1's pre-activations [n, 500]; kept with the
        signals for the next blocks of probes when `factors` are `convprop.LayerSignals`."""
        (x, _), (a2, _), (a3, _), _ = factors

        def prepare() -> tuple[ConvReluPool, ConvReluPool, torch.Tensor]:
            first = ConvReluPool(self.conv1, x, moves=False)
            return first, ConvReluPool(self.conv2, a2, moves=True), self.fc1(a3)

        return factors.memo("cnn", prepare) if isinstance(factors, LayerSignals) else prepare()


#: Registry name → the module class that builds it from (spec, input_shape).
BUILDERS: dict[str, Callable[[Any, Sequence[int]], ScalarNet]] = {
    "mlp": LayeredNet,
    "linear": LayeredNet,
    "resmlp": ResMLP,
    "cnn": CNN,
}


def build_model(spec: ArchitectureSpec, input_shape: Sequence[int], *, seed: int) -> ScalarNet:
    """The float32 model of `spec` for examples of `input_shape`, default PyTorch init seeded by `seed`.

    The global RNG is left untouched (fork_rng); the same seed gives bitwise identical weights.
    """
    build = BUILDERS[spec.arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(spec, list(input_shape))


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
