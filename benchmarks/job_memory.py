"""Peak memory of whole jobs against the size of their similarity matrix, and against the estimate.

    python benchmarks/job_memory.py [--quick] [--case NAME ...]

Each case runs `workers.pipeline.run_pipeline` on CPU in a fresh child process, the model at its
seeded initialisation: by default a narrow mlp on the two_cycles builtin (so the n × n parts dominate);
the other architectures' cases (mlp3, resmlp: wide stacks of Linear layers; cnn: 1 × 28 × 28 images of
uniform random pixels with two labels, stored in the job's data dir as an upload is) show the engine's
own temporaries. Each reports:

    peak_rss    the child's peak resident set (VmHWM), whole process, imports included
    base_rss    its resident set after the imports, before the job
    matrix      the n × n float32 similarity matrix, n² · 4 bytes
    ratio       (peak_rss − base_rss) / matrix
    estimate    service.contract.memory.estimate_job_memory(...) of the same spec (≥ peak_rss: bound ok)

and the peak of each stage (the high-water mark is reset at each stage change through
/proc/self/clear_refs, so each stage's figure is its own).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.contract.storage import DataDir  # noqa: E402

MiB = 2**20

CASES: dict[str, dict] = {
    "n4000": {"n": 4000},
    "n8000": {"n": 8000},
    "n4000_repeats20": {"n": 4000, "repeats": 20},
    "n3000_relative_step_normalize_spectral": {
        "n": 3000,
        "kind": "relative",
        "step": 0.01,
        "normalize": True,
        "method": "spectral",
        "repeats": 2,
    },
    "n8000_relative_step": {"n": 8000, "kind": "relative", "step": 0.01},
    "n2000_trajectory": {"n": 2000, "step": 1e-5, "schedule": "trajectory"},
    "cnn28_n2000": {"n": 2000, "images": True, "model": {"arch": "cnn"}},
    "cnn28_n1000_step": {"n": 1000, "images": True, "model": {"arch": "cnn"}, "step": 1e-3},
    "cnn28_n400_trajectory": {
        "n": 400,
        "images": True,
        "model": {"arch": "cnn"},
        "step": 1e-3,
        "schedule": "trajectory",
    },
    "cnn28_n1500_repeats3_normalize": {
        "n": 1500,
        "images": True,
        "model": {"arch": "cnn"},
        "repeats": 3,
        "normalize": True,
    },
    "mlp3_w4096_n2000": {"n": 2000, "model": {"arch": "mlp", "width": 4096, "depth": 3}},
    "mlp3_w1024_n1000_step": {"n": 1000, "model": {"arch": "mlp", "width": 1024, "depth": 3}, "step": 1e-3},
    "mlp3_w1024_n500_trajectory": {
        "n": 500,
        "model": {"arch": "mlp", "width": 1024, "depth": 3},
        "step": 1e-5,
        "schedule": "trajectory",
    },
    "resmlp_w4096_n2000": {"n": 2000, "model": {"arch": "resmlp", "width": 4096}},
    "resmlp_w1024_n1000_step": {"n": 1000, "model": {"arch": "resmlp", "width": 1024}, "step": 1e-3},
    "resmlp_w1024_n1000_relative_step": {
        "n": 1000,
        "model": {"arch": "resmlp", "width": 1024},
        "kind": "relative",
        "step": 1e-3,
    },
    "resmlp_w2048_n2000_rep2_normalize": {
        "n": 2000,
        "model": {"arch": "resmlp", "width": 2048},
        "repeats": 2,
        "normalize": True,
    },
    "gelu_w1024_n1000_step": {
        "n": 1000,
        "model": {"arch": "mlp", "width": 1024, "depth": 2, "activation": "gelu"},
        "step": 1e-3,
    },
    "tanh_w1024_n1000_step": {
        "n": 1000,
        "model": {"arch": "mlp", "width": 1024, "depth": 2, "activation": "tanh"},
        "step": 1e-3,
    },
    "mlp_w4096_n4000_activation": {"n": 4000, "model": {"arch": "mlp", "width": 4096}, "kind": "activation"},
}
QUICK = ("n4000",)
#: The stored dataset of the image cases: its id, and the shape of one example.
IMAGES_ID = "uniform28"
IMAGE_SHAPE = [1, 28, 28]


def case_spec(case: dict) -> dict:
    """A job spec: two_cycles with n examples (or the stored images), the case's model (default: a
    width-64 mlp) at init, the default clustering and baselines."""
    dataset = IMAGES_ID if case.get("images") else {"builtin": "two_cycles", "n": case["n"]}
    return {
        "dataset": dataset,
        "model": case.get("model", {"arch": "mlp", "width": 64, "depth": 2}),
        "weights": {"source": "init"},
        "similarity": {
            "kind": case.get("kind", "kernelized"),
            "step": case.get("step", 0.0),
            "normalize": case.get("normalize", False),
            "repeats": case.get("repeats", 1),
            "schedule": case.get("schedule", "fixed"),
        },
        "clustering": {"k": 2, "method": case.get("method", "auto")},
    }


def store_images(data_dir: DataDir, n: int) -> None:
    """Store n uniform [0, 1) images of IMAGE_SHAPE with labels 0 and 1 as the dataset IMAGES_ID, in
    the file layout of an upload (X float32, y int64)."""
    import numpy as np

    from service.contract.storage import atomic_open

    rng = np.random.default_rng(0)
    X = rng.random((n, *IMAGE_SHAPE), dtype=np.float32)
    with atomic_open(data_dir.dataset_file(IMAGES_ID)) as handle:
        np.savez(handle, X=X, y=np.arange(n, dtype=np.int64) % 2)


def child(name: str) -> None:
    """Run one case in this process; print one JSON line."""
    import torch
    from rss import current_rss, peak_rss, reset_peak

    from service.contract.spec import JobSpec
    from workers.main import preload
    from workers.pipeline import run_pipeline

    torch.set_num_threads(2)
    preload()
    case = CASES[name]
    spec = JobSpec.model_validate(case_spec(case))
    tmp = tempfile.TemporaryDirectory()
    data_dir = DataDir(Path(tmp.name) / "data")
    if case.get("images"):
        store_images(data_dir, case["n"])
    base = current_rss()
    stages: dict[str, int] = {}
    current = ["start"]

    def report(fraction: float, stage: str, message: str) -> None:
        if stage != current[0]:
            stages[current[0]] = max(stages.get(current[0], 0), peak_rss())
            reset_peak()
            current[0] = stage

    with tmp:
        run_pipeline(spec, job_dir=Path(tmp.name) / "job", data_dir=data_dir, device_setting="cpu", report=report)
    stages[current[0]] = max(stages.get(current[0], 0), peak_rss())
    print(json.dumps({"base": base, "stages": stages}))


def estimate(name: str) -> int:
    """The API's estimate of the case's peak (service.contract.memory)."""
    from service.contract.memory import estimate_spec_memory
    from service.contract.spec import JobSpec

    case = CASES[name]
    spec = JobSpec.model_validate(case_spec(case))
    shape = IMAGE_SHAPE if case.get("images") else spec.dataset.info()["shape"]  # every example is primary
    return estimate_spec_memory(spec, n=case["n"], n_auxiliary=0, dataset_rows=case["n"], input_shape=shape).total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--case", nargs="+", choices=sorted(CASES), help="cases to run (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    names = args.case or (QUICK if args.quick else tuple(CASES))
    print(
        f"{'case':36} {'peak_rss':>9} {'base_rss':>9} {'matrix':>8} {'ratio':>6} {'estimate':>9}"
        "  bound  stage peaks (MiB)"
    )
    for name in names:
        out = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"{name:36} failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        peak = max(row["stages"].values())
        n = CASES[name]["n"]
        matrix = 4 * n * n
        est = estimate(name)
        est_text = f"{est / MiB:8.0f}M"
        bound = "ok" if est >= peak else "LOW"
        stage_text = " ".join(f"{stage}={value / MiB:.0f}" for stage, value in row["stages"].items())
        print(
            f"{name:36} {peak / MiB:8.0f}M {row['base'] / MiB:8.0f}M {matrix / MiB:7.0f}M "
            f"{(peak - row['base']) / matrix:6.2f} {est_text}  {bound:5}  {stage_text}",
            flush=True,
        )


if __name__ == "__main__":
    main()
