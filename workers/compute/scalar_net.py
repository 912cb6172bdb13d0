"""The base of every model the engine builds, and what the algorithms read from a model.

A `ScalarNet` maps X [n, *input_shape] to z [n] (pre-sigmoid) and carries its registry entry
(service.contract.architectures) and the capabilities of its spec. The algorithms choose their path
from those capabilities, never from the module's class; any other nn.Module gets the generic paths.
"""

from __future__ import annotations

import torch
from torch import nn

from service.contract.architectures import Architecture, ArchitectureSpec, Capabilities, architecture_of

#: [(A_l [n, in], G_l [n, out])] per Linear layer: the layer's input and ∂z/∂(its output), per example.
LayerFactors = list[tuple[torch.Tensor, torch.Tensor]]

#: The capabilities of a module that is not a ScalarNet: only the generic paths apply.
NO_CAPABILITIES = Capabilities()


class ScalarNet(nn.Module):
    """A model of the job spec: X [n, *input_shape] → z [n], built by `models.build_model`."""

    spec: ArchitectureSpec
    architecture: Architecture[ArchitectureSpec]
    capabilities: Capabilities

    def __init__(self, spec: ArchitectureSpec) -> None:
        super().__init__()
        self.spec = spec
        self.architecture = architecture_of(spec)
        self.capabilities = self.architecture.capabilities(spec)

    def probe_differences(self, factors: LayerFactors, probe: LayerFactors, s: torch.Tensor) -> torch.Tensor:
        """Δz [B, n] at the n examples after the SGD step of each of B probes (capability difference_propagation).

        factors: `ntk.layer_factors` at the examples (`convprop.layer_signals` for convolutional nets);
        probe: the probes' rows of those factors ([B, in], [B, out]); s [B]: each probe's step
        (η · ∂L/∂z). See `propagation.py`.
        """
        raise NotImplementedError(f"arch {self.architecture.name!r} does not propagate differences")


def capabilities_of(model: nn.Module) -> Capabilities:
    """The capabilities of `model`'s spec (none for a module that is not a ScalarNet)."""
    return model.capabilities if isinstance(model, ScalarNet) else NO_CAPABILITIES


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's Linear layers, in registration order."""
    return [module for module in model.modules() if isinstance(module, nn.Linear)]


def relu_pattern_layer(model: nn.Module) -> nn.Linear | None:
    """The hidden Linear layer whose ReLU on/off pattern kind 'activation' compares (None: the model has none)."""
    if not isinstance(model, ScalarNet) or model.capabilities.activation != "relu":
        return None
    name = model.architecture.relu_pattern_layer
    if name is None:
        return None
    layer = model.get_submodule(name)
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"relu_pattern_layer {name!r} of arch {model.architecture.name!r} is not a Linear layer")
    return layer
