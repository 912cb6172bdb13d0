"""The job spec: what a client asks lelastic to compute.

This module imports only pydantic and the standard library. The API validates requests with it and
the workers parse the stored spec with it, so the two always agree on every name, default and bound.

A spec reads, with its defaults::

    {
      "dataset": "<dataset id>" or {"builtin": "digits"},
      "primary":   {"labels": [3, 5]} or {"indices": [0, 1, 2]},   (default: every example)
      "auxiliary": {"labels": [8, 9]} or {"indices": [...]},       (default: none)
      "model": {"arch": "mlp", "width": 4096, "depth": 2, "activation": "relu"},
      "loss": "mse",
      "weights": {"source": "trained", "epochs": 200, "lr": 0.003, "batch_size": 50},
      "similarity": {"kind": "kernelized", "step": 0},
      "clustering": {"k": 2, "method": "auto"},
      "baselines": ["kmeans_raw", "pca_kmeans", "spectral_rbf"],
      "seed": 0
    }
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SYNTHETIC_BUILTINS = ("torus", "two_folded_boxes", "double_helix", "two_cosines", "two_spheres", "two_cycles")
BUILTINS = ("digits", *SYNTHETIC_BUILTINS)

#: Shape, classes and size of each builtin dataset, known without generating it (the API has no
#: scikit-learn). Synthetic sets have two classes (1 and 0) of n // 2 examples each.
DIGITS_INFO = {"n": 1797, "shape": [64], "classes": list(range(10))}
SYNTHETIC_INFO = {
    "torus": {"shape": [3]},
    "two_folded_boxes": {"shape": [3]},
    "double_helix": {"shape": [3]},
    "two_cosines": {"shape": [2]},
    "two_spheres": {"shape": [3]},
    "two_cycles": {"shape": [2]},
}


class StrictModel(BaseModel):
    """Base of every spec part: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class BuiltinDataset(StrictModel):
    builtin: Literal[
        "digits", "torus", "two_folded_boxes", "double_helix", "two_cosines", "two_spheres", "two_cycles"
    ] = Field(description="A dataset that ships with lelastic.")
    n: int = Field(200, ge=4, le=100_000, description="Examples to generate (synthetic sets only).")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Generator seed (synthetic sets only).")

    def info(self) -> dict[str, Any]:
        """{"n", "shape", "classes"} of this builtin, without generating it."""
        if self.builtin == "digits":
            return dict(DIGITS_INFO)
        half = self.n // 2
        return {"n": 2 * half, "shape": SYNTHETIC_INFO[self.builtin]["shape"], "classes": [0, 1]}


class Selection(StrictModel):
    """A subset of a dataset's examples: by class label or by row index (exactly one of the two)."""

    labels: list[int] | None = Field(None, min_length=1, max_length=1000)
    indices: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1, max_length=1_000_000)

    @model_validator(mode="after")
    def _exactly_one(self) -> Selection:
        if (self.labels is None) == (self.indices is None):
            raise ValueError("give exactly one of 'labels' or 'indices'")
        for name in ("labels", "indices"):
            values = getattr(self, name)
            if values is not None and len(set(values)) != len(values):
                raise ValueError(f"'{name}' has repeated values: {values!r}")
        return self


class LinearModel(StrictModel):
    """Linear layers with no activation: the paper's linear networks (depth 1 is a linear model)."""

    arch: Literal["linear"]
    depth: Literal[1, 2, 3] = 2
    width: int = Field(4096, ge=1, le=65_536)


class MLPModel(StrictModel):
    """Fully connected network with `depth` linear layers and an activation between them."""

    arch: Literal["mlp"] = "mlp"
    depth: Literal[2, 3] = 2
    width: int = Field(4096, ge=1, le=65_536)
    activation: Literal["relu", "sigmoid", "tanh", "gelu"] = "relu"


class ResMLPModel(StrictModel):
    """The authors' "ResNet": h1 = relu(W1 x), h2 = relu(W2 h1), out = W3 (h1 + h2)."""

    arch: Literal["resmlp"]
    width: int = Field(4096, ge=1, le=16_384)


class CNNModel(StrictModel):
    """LeNet-style net of PyTorch's MNIST example, for image-shaped inputs."""

    arch: Literal["cnn"]


ModelSpec = Annotated[LinearModel | MLPModel | ResMLPModel | CNNModel, Field(discriminator="arch")]


class InitWeights(StrictModel):
    """Measure at the seeded default PyTorch initialisation."""

    source: Literal["init"]


class TrainedWeights(StrictModel):
    """Pre-train with plain SGD, primary examples labelled 1 and auxiliary examples 0."""

    source: Literal["trained"] = "trained"
    epochs: int = Field(200, ge=1, le=100_000)
    lr: float = Field(0.003, gt=0, le=10)
    batch_size: int = Field(50, ge=1, le=100_000)
    optimizer: Literal["sgd"] = "sgd"


class UploadedWeights(StrictModel):
    """Measure at weights uploaded as a .safetensors file (its upload id)."""

    source: Literal["upload"]
    weights: str = Field(min_length=1, max_length=64, description="Upload id of a .safetensors file.")


WeightsSpec = Annotated[InitWeights | TrainedWeights | UploadedWeights, Field(discriminator="source")]


class SimilaritySpec(StrictModel):
    kind: Literal["kernelized", "relative", "activation"] = "kernelized"
    step: float = Field(0.0, ge=0, le=10, description="SGD step η of the probe; 0 means the exact small-step limit.")
    schedule: Literal["fixed", "trajectory"] = Field(
        "fixed",
        description="fixed: every probe starts from the same θ; trajectory: one SGD pass, θ carried forward.",
    )
    symmetrize: bool = True
    normalize: bool = Field(False, description="Cosine-normalise: S[i,j] / sqrt(S[i,i] S[j,j]).")
    repeats: int = Field(1, ge=1, le=20, description="Average over this many model seeds.")

    @model_validator(mode="after")
    def _trajectory_needs_step(self) -> SimilaritySpec:
        if self.schedule == "trajectory" and self.step == 0:
            raise ValueError("schedule 'trajectory' needs step > 0 (the steps are real SGD steps)")
        if self.kind == "activation" and self.step != 0:
            raise ValueError("kind 'activation' takes no step (it compares ReLU on/off patterns)")
        return self


class ClusteringSpec(StrictModel):
    k: int = Field(2, ge=2, le=100)
    method: Literal["auto", "kmeans", "spectral", "kernel_kmeans"] = Field(
        "auto", description="auto: relative → kmeans on rows, otherwise kernel_kmeans (the authors' choice)."
    )
    n_init: int = Field(10, ge=1, le=100, description="Restarts; the best objective is kept.")


Baseline = Literal["kmeans_raw", "pca_kmeans", "spectral_rbf"]


class JobSpec(StrictModel):
    """Everything a job computes. See the module docstring for the shape of a spec."""

    dataset: str | BuiltinDataset = Field(
        description="An uploaded dataset's id, or a builtin.", examples=[{"builtin": "digits"}]
    )
    primary: Selection | None = Field(None, description="Examples to compare (default: every example).")
    auxiliary: Selection | None = Field(None, description="Examples labelled 0 in training (default: none).")
    model: ModelSpec = Field(default_factory=MLPModel)
    loss: Literal["mse", "bce"] = "mse"
    weights: WeightsSpec = Field(default_factory=TrainedWeights)
    similarity: SimilaritySpec = Field(default_factory=SimilaritySpec)
    clustering: ClusteringSpec | None = Field(default_factory=ClusteringSpec)
    baselines: list[Baseline] = Field(default_factory=lambda: ["kmeans_raw", "pca_kmeans", "spectral_rbf"])
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("dataset")
    @classmethod
    def _dataset_id(cls, value: str | BuiltinDataset) -> str | BuiltinDataset:
        if isinstance(value, str) and not (1 <= len(value) <= 64 and value.replace("-", "").isalnum()):
            raise ValueError(f"dataset id must be 1-64 letters, digits or '-', got {value!r}")
        return value

    @field_validator("baselines")
    @classmethod
    def _unique_baselines(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        for name, number in (
            ("weights.lr", getattr(self.weights, "lr", 1.0)),
            ("similarity.step", self.similarity.step),
        ):
            if not math.isfinite(number):
                raise ValueError(f"{name} must be finite, got {number!r}")
        if self.similarity.kind == "activation" and self.model.arch not in ("mlp", "resmlp"):
            raise ValueError("kind 'activation' needs a model with a first ReLU layer (arch mlp or resmlp)")
        if (
            self.similarity.kind == "activation"
            and isinstance(self.model, MLPModel)
            and self.model.activation != "relu"
        ):
            raise ValueError("kind 'activation' needs activation 'relu'")
        return self

    def clustering_method(self) -> str | None:
        """The clustering method after resolving 'auto' (None when clustering is off)."""
        if self.clustering is None:
            return None
        if self.clustering.method != "auto":
            return self.clustering.method
        return "kmeans" if self.similarity.kind == "relative" else "kernel_kmeans"


EXAMPLE_SPEC: dict[str, Any] = {
    "dataset": {"builtin": "digits"},
    "primary": {"labels": [3, 5]},
    "auxiliary": {"labels": [8, 9]},
    "model": {"arch": "mlp", "width": 1024, "depth": 2, "activation": "relu"},
    "loss": "mse",
    "weights": {"source": "trained", "epochs": 30, "lr": 0.003, "batch_size": 50},
    "similarity": {"kind": "kernelized", "step": 0},
    "clustering": {"k": 2, "method": "kernel_kmeans"},
    "baselines": ["kmeans_raw", "pca_kmeans", "spectral_rbf"],
    "seed": 0,
}


def image_shape(input_shape: list[int] | tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) the CNN reads an example of `input_shape` as.

    [C, H, W] is taken as is, [H, W] gets one channel, and a flat [d] with d a perfect square is read
    as a 1 × √d × √d image (so the 64 digits features are a 1 × 8 × 8 image).
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    if len(shape) == 2:
        return (1, shape[0], shape[1])
    side = math.isqrt(shape[0]) if len(shape) == 1 else 0
    if len(shape) == 1 and side * side == shape[0]:
        return (1, side, side)
    raise ValueError(f"the cnn needs image-shaped examples ([C, H, W], [H, W] or a square [d]), got {list(shape)}")


def cnn_geometry(input_shape: list[int] | tuple[int, ...]) -> dict[str, int]:
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


def parameter_shapes(
    model: LinearModel | MLPModel | ResMLPModel | CNNModel, input_shape: list[int]
) -> dict[str, list[int]]:
    """Name → shape of every parameter of the model the workers build for `model` (torch state_dict order).

    Used to check uploaded weights without importing torch. The model has one scalar output.
    """
    d = math.prod(input_shape)
    shapes: dict[str, list[int]] = {}
    if isinstance(model, LinearModel | MLPModel):
        sizes = [d] + [model.width] * (model.depth - 1) + [1]
        for k in range(model.depth):
            shapes[f"layers.{k}.weight"] = [sizes[k + 1], sizes[k]]
            shapes[f"layers.{k}.bias"] = [sizes[k + 1]]
    elif isinstance(model, ResMLPModel):
        w = model.width
        shapes = {
            "fc1.weight": [w, d],
            "fc1.bias": [w],
            "fc2.weight": [w, w],
            "fc2.bias": [w],
            "out.weight": [1, w],
            "out.bias": [1],
        }
    else:
        geometry = cnn_geometry(input_shape)
        shapes = {
            "conv1.weight": [20, geometry["channels"], 5, 5],
            "conv1.bias": [20],
            "conv2.weight": [50, 20, 5, 5],
            "conv2.bias": [50],
            "fc1.weight": [500, geometry["flat"]],
            "fc1.bias": [500],
            "fc2.weight": [1, 500],
            "fc2.bias": [1],
        }
    return shapes
