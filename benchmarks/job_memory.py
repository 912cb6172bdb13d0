"""Peak memory of whole jobs against the size of their similarity matrix, and against the estimate.

    python benchmarks/job_memory.py [--quick] [--case NAME ...]

Each case runs `workers.pipeline.run_pipeline` on CPU in a fresh child process (a narrow mlp at its
seeded initialisation on a synthetic builtin, so the n × n parts dominate) and reports:

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
}
QUICK = ("n4000",)


def case_spec(case: dict) -> dict:
    """A job spec: two_cycles with n examples, a width-64 mlp at init, the default clustering and baselines."""
    return {
        "dataset": {"builtin": "two_cycles", "n": case["n"]},
        "model": {"arch": "mlp", "width": case.get("width", 64), "depth": 2},
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


def child(name: str) -> None:
    """Run one case in this process; print one JSON line."""
    import torch
    from rss import current_rss, peak_rss, reset_peak

    from service.contract.spec import JobSpec
    from service.contract.storage import DataDir
    from workers.main import preload
    from workers.pipeline import run_pipeline

    torch.set_num_threads(2)
    preload()
    spec = JobSpec.model_validate(case_spec(CASES[name]))
    base = current_rss()
    stages: dict[str, int] = {}
    current = ["start"]

    def report(fraction: float, stage: str, message: str) -> None:
        if stage != current[0]:
            stages[current[0]] = max(stages.get(current[0], 0), peak_rss())
            reset_peak()
            current[0] = stage

    with tempfile.TemporaryDirectory() as tmp:
        run_pipeline(
            spec, job_dir=Path(tmp) / "job", data_dir=DataDir(Path(tmp) / "data"), device_setting="cpu", report=report
        )
    stages[current[0]] = max(stages.get(current[0], 0), peak_rss())
    print(json.dumps({"base": base, "stages": stages}))


def estimate(name: str) -> int:
    """The API's estimate of the case's peak (service.contract.memory)."""
    from service.contract.memory import estimate_spec_memory
    from service.contract.spec import JobSpec

    spec = JobSpec.model_validate(case_spec(CASES[name]))
    info = spec.dataset.info()  # a builtin: every example is primary
    return estimate_spec_memory(
        spec, n=info["n"], n_auxiliary=0, dataset_rows=info["n"], input_shape=info["shape"]
    ).total


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
