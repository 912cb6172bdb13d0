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
      "clustering": {"k": null, "method": "auto"},                  (k null: the primary class count, or 2)
      "baselines": ["kmeans_raw", "pca_kmeans", "spectral_rbf"],
      "seed": 0,
      "observed": {"labels": [...]} or {"indices": [...]},          (default: the primary examples)
      "execution": {"mode": "auto", "block": 4096},                 (auto | single | sharded)
      "output": {"matrix": "auto", "neighbors": 32}
    }
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import ConfigDict, Field, field_validator, model_validator

from service.contract.architectures import ARCHITECTURES, ArchitectureSpec, alternatives_phrase, architecture_of
from service.contract.architectures import CNNModel as CNNModel
from service.contract.architectures import LinearModel as LinearModel
from service.contract.architectures import MLPModel as MLPModel
from service.contract.architectures import ResMLPModel as ResMLPModel
from service.contract.strict import StrictModel as StrictModel

#: The names of the builtin datasets (the one list of them): scikit-learn's digits and the paper's six
#: synthetic two-class manifolds.
SyntheticName = Literal["torus", "two_folded_boxes", "double_helix", "two_cosines", "two_spheres", "two_cycles"]
BuiltinName = Literal["digits", SyntheticName]
SYNTHETIC_BUILTINS: tuple[str, ...] = get_args(SyntheticName)
BUILTINS: tuple[str, ...] = get_args(BuiltinName)

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


class BuiltinDataset(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"builtin": "torus", "n": 200, "seed": 0}]})

    builtin: BuiltinName = Field(description="A dataset that ships with lelastic.")
    n: int = Field(default=200, ge=4, le=100_000, description="Examples to generate (synthetic sets only).")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Generator seed (synthetic sets only).")

    def info(self) -> dict[str, Any]:
        """{"n", "shape", "classes"} of this builtin, without generating it."""
        if self.builtin == "digits":
            return dict(DIGITS_INFO)
        half = self.n // 2
        return {"n": 2 * half, "shape": SYNTHETIC_INFO[self.builtin]["shape"], "classes": [0, 1]}


#: Most class labels one selection may name; an uploaded dataset may have no more distinct labels.
MAX_SELECTED_LABELS = 1000
#: Longest name of a string class label, in characters (a selection's and an upload's).
MAX_LABEL_CHARS = 200


class Selection(StrictModel):
    """A subset of a dataset's examples: by class label or by row index (exactly one of the two)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"labels": [3, 5]}, {"indices": [0, 1, 2]}]})

    labels: list[int | Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SELECTED_LABELS,
        description="Class labels: integers, or the names of a dataset uploaded with string labels.",
        examples=[[3, 5]],
    )
    indices: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, min_length=1, max_length=1_000_000, description="Row numbers (0-based) of the dataset."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Selection:
        if (self.labels is None) == (self.indices is None):
            raise ValueError("give exactly one of 'labels' or 'indices'")
        for name in ("labels", "indices"):
            values = getattr(self, name)
            if values is not None and len(set(values)) != len(values):
                raise ValueError(f"'{name}' has repeated values: {values!r}")
        return self


#: The architectures and their spec classes live in the registry (service.contract.architectures).
ModelSpec = Annotated[ArchitectureSpec, Field(discriminator="arch")]


class InitWeights(StrictModel):
    """Measure at the seeded default PyTorch initialisation."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"source": "init"}]})

    source: Literal["init"] = Field(description="init: the seeded default PyTorch initialisation.")


class TrainedWeights(StrictModel):
    """Pre-train with plain SGD, primary examples labelled 1 and auxiliary examples 0."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"source": "trained", "epochs": 200, "lr": 0.003, "batch_size": 50}]}
    )

    source: Literal["trained"] = Field(default="trained", description="trained: pre-train with plain SGD.")
    epochs: int = Field(default=200, ge=1, le=100_000, description="Passes over primary + auxiliary examples.")
    lr: float = Field(default=0.003, gt=0, le=10, description="SGD learning rate (synthetic builtins default to 1e-4).")
    batch_size: int = Field(
        default=50, ge=1, le=100_000, description="Examples per SGD step (synthetic builtins: the whole set)."
    )
    optimizer: Literal["sgd"] = Field(default="sgd", description="Plain SGD, no momentum or weight decay.")


class UploadedWeights(StrictModel):
    """Measure at weights uploaded as a .safetensors file (its upload id)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"source": "upload", "weights": "9c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"}]}
    )

    source: Literal["upload"] = Field(description="upload: weights uploaded as a .safetensors file.")
    weights: str = Field(min_length=1, max_length=64, description="Upload id of a .safetensors file.")


WeightsSpec = Annotated[InitWeights | TrainedWeights | UploadedWeights, Field(discriminator="source")]


SimilarityKindName = Literal["kernelized", "relative", "activation"]


@dataclass(frozen=True)
class SimilarityKind:
    """What the spec checks and resolves for one similarity kind (workers/compute/kinds.py computes it).

    takes_step: the kind reads the prediction changes of SGD steps; otherwise the step must be 0.
    auto_clustering: the method that clustering "auto" resolves to.
    needs_relu_layer: the model needs a hidden ReLU layer (its architecture's `relu_pattern_layer`).
    compares: what the kind compares, for messages.
    """

    takes_step: bool
    auto_clustering: Literal["kmeans", "kernel_kmeans"]
    needs_relu_layer: bool = False
    compares: str = "the prediction changes of SGD steps"


#: Adding a kind: its name in `SimilarityKindName`, its entry here, its computation in workers/compute/kinds.py.
SIMILARITY_KINDS: dict[str, SimilarityKind] = {
    "kernelized": SimilarityKind(takes_step=True, auto_clustering="kernel_kmeans"),
    "relative": SimilarityKind(takes_step=True, auto_clustering="kmeans"),
    "activation": SimilarityKind(
        takes_step=False, auto_clustering="kernel_kmeans", needs_relu_layer=True, compares="ReLU on/off patterns"
    ),
}


class SimilaritySpec(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"kind": "kernelized", "step": 0, "normalize": False}]})

    kind: SimilarityKindName = Field(
        default="kernelized",
        description="kernelized: Δf(x′) / (−η ∂L/∂f(x)), the NTK at step 0; relative: |Δf(x′)| / |Δf(x)|; "
        "activation: cosine of first-layer ReLU patterns.",
    )
    step: float = Field(
        default=0.0, ge=0, le=10, description="SGD step η of the probe; 0 means the exact small-step limit."
    )
    schedule: Literal["fixed", "trajectory"] = Field(
        default="fixed",
        description="fixed: every probe starts from the same θ; trajectory: one SGD pass, θ carried forward.",
    )
    symmetrize: bool = Field(default=True, description="Average S with its transpose: (S + Sᵀ) / 2.")
    normalize: bool = Field(default=False, description="Cosine-normalise: S[i,j] / sqrt(S[i,i] S[j,j]).")
    repeats: int = Field(default=1, ge=1, le=20, description="Average over this many model seeds.")

    @model_validator(mode="after")
    def _trajectory_needs_step(self) -> SimilaritySpec:
        if self.schedule == "trajectory" and self.step == 0:
            raise ValueError("schedule 'trajectory' needs step > 0 (the steps are real SGD steps)")
        kind = SIMILARITY_KINDS[self.kind]
        if not kind.takes_step and self.step != 0:
            raise ValueError(f"kind {self.kind!r} takes no step (it compares {kind.compares})")
        return self


#: The largest k that defaulting clustering.k to the number of primary classes gives.
MAX_DEFAULT_K = 100


class ClusteringSpec(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"k": 2, "method": "kernel_kmeans", "n_init": 10}]})

    k: int | None = Field(
        default=None,
        ge=2,
        le=100,
        description="Number of clusters. Null (the default): the number of classes among the primary examples "
        "when the dataset has labels (at most 100), else 2. The result's `clustering.k_from` says which.",
    )
    method: Literal["auto", "kmeans", "spectral", "kernel_kmeans"] = Field(
        default="auto", description="auto: relative → kmeans on rows, otherwise kernel_kmeans (the authors' choice)."
    )
    n_init: int = Field(default=10, ge=1, le=100, description="Restarts; the best objective is kept.")

    def resolve_k(self, primary_classes: int | None) -> tuple[int, str]:
        """(k, where it came from): `spec`, `classes` (the primary examples' class count) or `default` (2)."""
        if self.k is not None:
            return self.k, "spec"
        if primary_classes is not None and primary_classes >= 2:
            return min(primary_classes, MAX_DEFAULT_K), "classes"
        return 2, "default"


Baseline = Literal["kmeans_raw", "pca_kmeans", "spectral_rbf"]


class ExecutionSpec(StrictModel):
    """How the job is run: in one work-horse (single) or as tiles spread over the workers (sharded)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"mode": "auto", "block": 4096}]})

    mode: Literal["auto", "single", "sharded"] = Field(
        default="auto",
        description="auto: sharded when the primary examples exceed LELASTIC_SHARD_ABOVE_N, else single. "
        "The submitted job's spec shows the mode it runs in.",
    )
    block: int = Field(
        default=4096, ge=8, le=65_536, description="Rows and columns of one tile of a sharded job's matrix."
    )


class OutputSpec(StrictModel):
    """What a job writes besides its result."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"matrix": "auto", "neighbors": 32}]})

    matrix: Literal["auto"] | bool = Field(
        default="auto",
        description="The full similarity matrix (similarity.npy): true, false, or auto: written when it fits "
        "the matrix budget (LELASTIC_MAX_MATRIX_BYTES single, LELASTIC_MAX_SHARDED_MATRIX_BYTES sharded).",
    )
    neighbors: int = Field(
        default=32, ge=1, le=1024, description="k of the k nearest neighbours of every row (neighbors_*.npy)."
    )


#: Training defaults of a job on a synthetic builtin (the paper's simulations, with fewer epochs): full-batch
#: plain SGD at a small learning rate.
SYNTHETIC_TRAINING: dict[str, Any] = {"epochs": 500, "lr": 1e-4}


class JobSpec(StrictModel):
    """Everything a job computes. See the module docstring for the shape of a spec."""

    model_config = ConfigDict(json_schema_extra=lambda schema: schema.update(examples=[EXAMPLE_SPEC]))

    dataset: str | BuiltinDataset = Field(
        description="An uploaded dataset's id, or a builtin.", examples=[{"builtin": "digits"}]
    )
    primary: Selection | None = Field(default=None, description="Examples to compare (default: every example).")
    auxiliary: Selection | None = Field(default=None, description="Examples labelled 0 in training (default: none).")
    model: ModelSpec = Field(
        default_factory=MLPModel, description="The network, by `arch`: mlp, linear, resmlp or cnn (one output)."
    )
    loss: Literal["mse", "bce"] = Field(
        default="mse", description="mse: (f − y)² on the output; bce: binary cross-entropy on its sigmoid."
    )
    weights: WeightsSpec = Field(
        default_factory=TrainedWeights,
        description="The weights θ the similarity is measured at, by `source`: trained (default), init or upload.",
    )
    similarity: SimilaritySpec = Field(default_factory=SimilaritySpec, description="Which similarity, and how.")
    clustering: ClusteringSpec | None = Field(
        default_factory=ClusteringSpec, description="How to cluster the matrix; null: no clustering."
    )
    baselines: list[Baseline] = Field(
        default_factory=lambda: list(get_args(Baseline)),
        description="Clusterings of the raw features to compare with: kmeans_raw, pca_kmeans, spectral_rbf.",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the model, training and clustering.")
    observed: Selection | None = Field(
        default=None,
        description="Examples whose outputs are watched (the matrix's columns; default: the primary examples).",
    )
    execution: ExecutionSpec = Field(
        default_factory=ExecutionSpec, description="How the job runs: in one work-horse or sharded in tiles."
    )
    output: OutputSpec = Field(default_factory=OutputSpec, description="What the job writes besides its result.")

    @model_validator(mode="before")
    @classmethod
    def _synthetic_training_defaults(cls, data: Any) -> Any:
        """`weights` without a `source` is trained weights; and a synthetic builtin trains with its own
        defaults (`SYNTHETIC_TRAINING`, batch = the whole set) where the spec leaves them out: the digits'
        lr 3e-3 diverges on the synthetic coordinates."""
        if not isinstance(data, dict):
            return data
        dataset, weights = data.get("dataset"), data.get("weights", {})
        if isinstance(weights, dict) and "source" not in weights and "weights" not in weights:
            weights = {"source": "trained", **weights}  # the default source, as when `weights` is left out
            data = {**data, "weights": weights}
        if not (isinstance(dataset, dict) and dataset.get("builtin") in SYNTHETIC_BUILTINS):
            return data
        if not (isinstance(weights, dict) and weights.get("source", "trained") == "trained"):
            return data
        n = dataset.get("n", 200)
        full_batch = n if type(n) is int and 1 <= n <= 100_000 else 200
        return {**data, "weights": {"source": "trained", **SYNTHETIC_TRAINING, "batch_size": full_batch, **weights}}

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
        if SIMILARITY_KINDS[self.similarity.kind].needs_relu_layer:
            self._check_relu_layer()
        return self

    def _check_relu_layer(self) -> None:
        kind, architecture = self.similarity.kind, architecture_of(self.model)
        if architecture.relu_pattern_layer is None:
            with_one = [entry.name for entry in ARCHITECTURES.values() if entry.relu_pattern_layer is not None]
            archs = alternatives_phrase(with_one, quote=False)
            raise ValueError(f"kind {kind!r} needs a model with a first ReLU layer (arch {archs})")
        if architecture.capabilities(self.model).activation != "relu":
            raise ValueError(f"kind {kind!r} needs activation 'relu'")

    def clustering_method(self) -> str | None:
        """The clustering method after resolving 'auto' (None when clustering is off)."""
        if self.clustering is None:
            return None
        if self.clustering.method != "auto":
            return self.clustering.method
        return SIMILARITY_KINDS[self.similarity.kind].auto_clustering


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


def parameter_shapes(model: ArchitectureSpec, input_shape: Sequence[int]) -> dict[str, list[int]]:
    """Name → shape of every parameter of the model the workers build for `model` (torch state_dict order).

    Read from the architecture registry; used to check uploaded weights without importing torch. The
    model has one scalar output.
    """
    return architecture_of(model).parameter_shapes(model, input_shape)
