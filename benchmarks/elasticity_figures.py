"""The paper's simulations: does similarity fall with geodesic distance? ReLU nets vs linear nets.

Runs the job pipeline on the torus (2-layer nets) and the two folded boxes (3-layer nets), with trained
weights and the relative similarity in the small-step limit, over the points of class 1, and prints
the Pearson/Spearman correlation between similarity and geodesic distance. Writes the scatter plots to
docs/figures/ (the README shows them).

    python benchmarks/elasticity_figures.py [--width 2048] [--epochs 500] [--n 200]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from service.contract.spec import JobSpec
from service.contract.storage import DataDir
from workers.pipeline import run_pipeline

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"


def spec(dataset: str, arch: str, depth: int, width: int, *, n: int, epochs: int, lr: float) -> JobSpec:
    model = {"arch": arch, "depth": depth, "width": width}
    if arch == "mlp":
        model["activation"] = "relu"
    return JobSpec.model_validate(
        {
            "dataset": {"builtin": dataset, "n": n, "seed": 0},
            "primary": {"labels": [1]},
            "auxiliary": {"labels": [0]},
            "model": model,
            "weights": {"source": "trained", "epochs": epochs, "lr": lr, "batch_size": n},
            "similarity": {"kind": "relative", "step": 0, "symmetrize": False},
            "clustering": None,
            "baselines": [],
            "seed": 0,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="points per dataset (half of them class 1)")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=500, help="full-batch SGD epochs")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--linear-lr", type=float, default=1e-5)
    args = parser.parse_args()
    FIGURES.mkdir(parents=True, exist_ok=True)
    runs = [
        ("torus", "mlp", 2),
        ("torus", "linear", 2),
        ("two_folded_boxes", "mlp", 3),
        ("two_folded_boxes", "linear", 3),
    ]
    print(f"{'dataset':18} {'net':12} {'pearson':>8} {'spearman':>9} {'pairs':>6} {'train loss':>10} {'seconds':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = DataDir(tmp)
        for dataset, arch, depth in runs:
            lr = args.lr if arch == "mlp" else args.linear_lr
            job = spec(
                dataset, arch, depth, args.width if depth == 2 else args.width // 2, n=args.n, epochs=args.epochs, lr=lr
            )
            tick = time.perf_counter()
            name = f"{dataset}-{'relu' if arch == 'mlp' else 'linear'}{depth}"
            result = run_pipeline(job, job_dir=data_dir.job_dir(name), data_dir=data_dir, device_setting="auto")
            analysis = result["analysis"]
            shutil.copy(data_dir.artifact(name, "elasticity.png"), FIGURES / f"{name}.png")
            print(
                f"{dataset:18} {name.split('-')[1]:12} {analysis['pearson']:8.3f} {analysis['spearman']:9.3f} "
                f"{analysis['pairs']:6d} {result['training']['final_loss']:10.4f} {time.perf_counter() - tick:8.1f}"
            )
    print(f"figures written to {FIGURES}")


if __name__ == "__main__":
    main()
