"""The paper's clustering table on the bundled digits: ReLU vs linear nets, MSE vs BCE, relative vs kernelized.

Primary digits 3 vs 5, auxiliary 8 and 9 (the authors' MNIST pair), networks of width 4096 trained with
the authors' settings (MSE: 200 epochs, lr 3e-3, the linear net 3e-5; BCE: 50 epochs, lr 3e-3; batch 50),
similarity in the small-step limit, the authors' clustering (relative: K-means on rows, kernelized: kernel
K-means), next to the baselines. Prints accuracy / ARI / NMI.

    python benchmarks/digits_table.py [--width 4096] [--pair 3 5 --aux 8 9]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from service.contract.spec import JobSpec
from service.contract.storage import DataDir
from workers.pipeline import run_pipeline

#: (net, loss, similarity, cosine-normalised): the authors' grid, plus BCE kernels normalised.
RUNS = [
    (arch, loss, kind, False)
    for arch in ("relu", "linear")
    for loss in ("mse", "bce")
    for kind in ("relative", "kernelized")
] + [("relu", "bce", "kernelized", True), ("linear", "bce", "kernelized", True)]


def spec(args, arch: str, loss: str, kind: str, normalize: bool) -> JobSpec:
    model = {"arch": "mlp", "activation": "relu"} if arch == "relu" else {"arch": "linear"}
    epochs = 200 if loss == "mse" else 50
    lr = 3e-5 if (arch == "linear" and loss == "mse") else 3e-3
    return JobSpec.model_validate(
        {
            "dataset": {"builtin": "digits"},
            "primary": {"labels": args.pair},
            "auxiliary": {"labels": args.aux},
            "model": {**model, "depth": 2, "width": args.width},
            "loss": loss,
            "weights": {"source": "trained", "epochs": epochs, "lr": lr, "batch_size": 50},
            "similarity": {"kind": kind, "step": 0, "normalize": normalize},
            "clustering": {"k": 2},
            "baselines": ["kmeans_raw", "pca_kmeans", "spectral_rbf"],
            "seed": 0,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--pair", type=int, nargs=2, default=[3, 5])
    parser.add_argument("--aux", type=int, nargs="+", default=[8, 9])
    args = parser.parse_args()
    print(f"digits {args.pair[0]} vs {args.pair[1]}, auxiliary {args.aux}, width {args.width}")
    print(f"{'method':46} {'accuracy':>8} {'ARI':>6} {'NMI':>6} {'seconds':>8}")
    baselines = None
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = DataDir(tmp)
        for arch, loss, kind, normalize in RUNS:
            tick = time.perf_counter()
            name = f"{arch}-{loss}-{kind}-{normalize}"
            result = run_pipeline(
                spec(args, arch, loss, kind, normalize), job_dir=data_dir.job_dir(name), data_dir=data_dir
            )
            label = f"{'ReLU' if arch == 'relu' else 'linear'} net, {loss.upper()}, {kind}"
            label += ", normalized" if normalize else ""
            print(row(label, result["metrics"]) + f" {time.perf_counter() - tick:8.1f}")
            baselines = result["baselines"]
    for name, metrics in baselines.items():
        print(row(name, metrics))


def row(label: str, m: dict) -> str:
    return f"{label:46} {m['accuracy']:8.3f} {m['ari']:6.3f} {m['nmi']:6.3f}"


if __name__ == "__main__":
    main()
