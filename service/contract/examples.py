"""The paper's experiments as job specs: the named examples of `POST /v1/jobs` and the files in `examples/`.

Each entry is the authors' setting (He & Su, "The Local Elasticity of Neural Networks") as far as this
service reproduces it: the MNIST clustering runs on scikit-learn's 8×8 digits (3 vs 5, auxiliary 8 and
9; width 4096, plain SGD, 200 epochs at lr 3e-3, the linear net at 3e-5, BCE for 50 epochs) and the
synthetic simulations (class 1 primary, class 0 auxiliary, full-batch SGD at a small learning rate,
relative similarity in the small-step limit, no clustering). `examples/<name>.json` holds `spec`.
"""

from __future__ import annotations

import copy
from typing import Any

from service.contract.spec import EXAMPLE_SPEC

DIGITS_3_5 = {"dataset": {"builtin": "digits"}, "primary": {"labels": [3, 5]}, "auxiliary": {"labels": [8, 9]}}


def _digits(
    model: dict[str, Any], *, loss: str = "mse", epochs: int = 200, lr: float = 0.003, **similarity: Any
) -> dict[str, Any]:
    """Digits 3 vs 5 (auxiliary 8, 9) as the authors run MNIST: SGD with batch 50, then the clustering
    the paper pairs with the similarity kind (K-means on the rows of the relative one, else kernel K-means)."""
    kind = similarity.setdefault("kind", "kernelized")
    return {
        **DIGITS_3_5,
        "model": dict(model),
        "loss": loss,
        "weights": {"source": "trained", "epochs": epochs, "lr": lr, "batch_size": 50},
        "similarity": {"kind": kind, "step": 0, **{k: v for k, v in similarity.items() if k != "kind"}},
        "clustering": {"k": 2, "method": "kmeans" if kind == "relative" else "kernel_kmeans"},
        "baselines": ["kmeans_raw", "pca_kmeans", "spectral_rbf"],
        "seed": 0,
    }


RELU_4096 = {"arch": "mlp", "width": 4096, "depth": 2, "activation": "relu"}


def _synthetic(builtin: str, model: dict[str, Any], lr: float) -> dict[str, Any]:
    return {
        "dataset": {"builtin": builtin, "n": 200, "seed": 0},
        "primary": {"labels": [1]},
        "auxiliary": {"labels": [0]},
        "model": dict(model),
        "loss": "mse",
        "weights": {"source": "trained", "epochs": 500, "lr": lr, "batch_size": 200},
        "similarity": {"kind": "relative", "step": 0, "symmetrize": False},
        "clustering": None,
        "baselines": [],
        "seed": 0,
    }


#: name → {"summary", "description", "spec"}.
EXAMPLES: dict[str, dict[str, Any]] = {
    "digits-quick": {
        "summary": "Digits 3 vs 5, a quick trained MLP (seconds)",
        "description": "The digits setting at width 1024 and 30 epochs: a few seconds on a CPU.",
        "spec": copy.deepcopy(EXAMPLE_SPEC),
    },
    "digits-relu-kernelized": {
        "summary": "Paper: digits 3 vs 5, ReLU net, MSE, kernelized similarity",
        "description": "The authors' MNIST setting on the 8×8 digits: 2-layer ReLU MLP of width 4096, SGD 200 "
        "epochs at lr 3e-3, batch 50; kernelized similarity in the small-step limit; kernel K-means.",
        "spec": _digits(RELU_4096),
    },
    "digits-relu-relative": {
        "summary": "Paper: digits 3 vs 5, ReLU net, MSE, relative similarity",
        "description": "As digits-relu-kernelized with the relative similarity, clustered by K-means on its rows.",
        "spec": _digits(RELU_4096, kind="relative"),
    },
    "digits-linear-kernelized": {
        "summary": "Paper: digits 3 vs 5, linear net, MSE, kernelized similarity",
        "description": "The authors' linear control: a 2-layer linear net of width 4096 trained at lr 3e-5.",
        "spec": _digits({"arch": "linear", "width": 4096, "depth": 2}, lr=3e-5),
    },
    "digits-relu-bce-normalized": {
        "summary": "Paper: digits 3 vs 5, ReLU net, BCE (50 epochs), cosine-normalised kernelized similarity",
        "description": "BCE as the authors train it (50 epochs); normalising cancels the sigmoid's slope.",
        "spec": _digits(RELU_4096, loss="bce", epochs=50, normalize=True),
    },
    "torus-relu": {
        "summary": "Paper simulation: torus, 2-layer ReLU net, relative similarity vs geodesic distance",
        "description": "200 points on the torus curves, class 1 primary and class 0 auxiliary, full-batch SGD "
        "500 epochs at lr 1e-4, relative similarity in the small-step limit, no clustering; the result's "
        "`analysis` correlates similarity with geodesic distance (strongly negative: locally elastic).",
        "spec": _synthetic("torus", {"arch": "mlp", "width": 2048, "depth": 2, "activation": "relu"}, 1e-4),
    },
    "torus-linear": {
        "summary": "Paper simulation: torus, 2-layer linear net (no local elasticity)",
        "description": "As torus-relu with a linear net at lr 1e-5: similarity does not fall with distance.",
        "spec": _synthetic("torus", {"arch": "linear", "width": 2048, "depth": 2}, 1e-5),
    },
    "two-folded-boxes-relu": {
        "summary": "Paper simulation: two folded boxes, 3-layer ReLU net",
        "description": "The folded surfaces with a 3-layer ReLU net of width 1024, lr 1e-4, full batch, 500 epochs.",
        "spec": _synthetic("two_folded_boxes", {"arch": "mlp", "width": 1024, "depth": 3, "activation": "relu"}, 1e-4),
    },
    "two-folded-boxes-linear": {
        "summary": "Paper simulation: two folded boxes, 3-layer linear net",
        "description": "As two-folded-boxes-relu with a linear net at lr 1e-5.",
        "spec": _synthetic("two_folded_boxes", {"arch": "linear", "width": 1024, "depth": 3}, 1e-5),
    },
}


def openapi_examples() -> dict[str, dict[str, Any]]:
    """The examples as FastAPI `openapi_examples` (Swagger UI's drop-down): name → summary, description, value."""
    return {
        name: {"summary": entry["summary"], "description": entry["description"], "value": entry["spec"]}
        for name, entry in EXAMPLES.items()
    }
