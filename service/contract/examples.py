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


def _synthetic(builtin: str, model: dict[str, Any], lr: float) -> dict[str, Any]:
    return {
        "dataset": {"builtin": builtin, "n": 200, "seed": 0},
        "primary": {"labels": [1]},
        "auxiliary": {"labels": [0]},
        "model": model,
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
        "spec": {
            **DIGITS_3_5,
            "model": {"arch": "mlp", "width": 4096, "depth": 2, "activation": "relu"},
            "loss": "mse",
            "weights": {"source": "trained", "epochs": 200, "lr": 0.003, "batch_size": 50},
            "similarity": {"kind": "kernelized", "step": 0},
            "clustering": {"k": 2, "method": "kernel_kmeans"},
            "baselines": ["kmeans_raw", "pca_kmeans", "spectral_rbf"],
            "seed": 0,
        },
    },
    "digits-relu-relative": {
        "summary": "Paper: digits 3 vs 5, ReLU net, MSE, relative similarity",
        "description": "As digits-relu-kernelized with the relative similarity, clustered by K-means on its rows.",
        "spec": {
            **DIGITS_3_5,
            "model": {"arch": "mlp", "width": 4096, "depth": 2, "activation": "relu"},
            "loss": "mse",
            "weights": {"source": "trained", "epochs": 200, "lr": 0.003, "batch_size": 50},
            "similarity": {"kind": "relative", "step": 0},
            "clustering": {"k": 2, "method": "kmeans"},
            "baselines": ["kmeans_raw", "pca_kmeans", "spectral_rbf"],
            "seed": 0,
        },
    },
    "digits-linear-kernelized": {
        "summary": "Paper: digits 3 vs 5, linear net, MSE, kernelized similarity",
        "description": "The authors' linear control: a 2-layer linear net of width 4096 trained at lr 3e-5.",
        "spec": {
            **DIGITS_3_5,
            "model": {"arch": "linear", "width": 4096, "depth": 2},
            "loss": "mse",
            "weights": {"source": "trained", "epochs": 200, "lr": 3e-5, "batch_size": 50},
            "similarity": {"kind": "kernelized", "step": 0},
            "clustering": {"k": 2, "method": "kernel_kmeans"},
            "baselines": ["kmeans_raw", "pca_kmeans", "spectral_rbf"],
            "seed": 0,
        },
    },
    "digits-relu-bce-normalized": {
        "summary": "Paper: digits 3 vs 5, ReLU net, BCE (50 epochs), cosine-normalised kernelized similarity",
        "description": "BCE as the authors train it (50 epochs); normalising cancels the sigmoid's slope.",
        "spec": {
            **DIGITS_3_5,
            "model": {"arch": "mlp", "width": 4096, "depth": 2, "activation": "relu"},
            "loss": "bce",
            "weights": {"source": "trained", "epochs": 50, "lr": 0.003, "batch_size": 50},
            "similarity": {"kind": "kernelized", "step": 0, "normalize": True},
            "clustering": {"k": 2, "method": "kernel_kmeans"},
            "baselines": ["kmeans_raw", "pca_kmeans", "spectral_rbf"],
            "seed": 0,
        },
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
