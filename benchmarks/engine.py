"""Benchmark of the compute engine (similarity / NTK paths) against float64 per-example loops.

    python benchmarks/engine.py [--quick] [--device cpu|cuda] [--epochs 10] [--width 4096]

(a) exact one-step path vs a float64 per-example reference loop at η = 1e-3 (digits, 2-layer ReLU MLP)
(b) limit path (step 0) vs the same loop and vs the float64 NTK
(c) limit path at n = 10,000, d = 784 (synthetic): seconds, GFLOP/s, peak memory
(d) cnn and resmlp: generic exact path vs a per-example loop
The reference loops are timed on a subset of rows and extrapolated linearly when n is large.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.contract.spec import CNNModel, MLPModel, ResMLPModel  # noqa: E402
from workers.compute.models import build_model  # noqa: E402
from workers.compute.ntk import ntk  # noqa: E402
from workers.compute.similarity import similarity  # noqa: E402
from workers.compute.training import train  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, repeat: int = 1):
    """(output, seconds): the median of `repeat` runs (the fast paths take milliseconds, so one run of
    them is at the mercy of the machine's noise; the reference loops run once over many rows)."""
    times = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return out, sorted(times)[len(times) // 2]


def digits(device):
    from sklearn.datasets import load_digits

    data = load_digits()
    X = torch.tensor(2 * data.data / 16 - 1, dtype=torch.float32, device=device)
    y = torch.tensor(data.target, device=device)
    return X, y


def reference_rows(model, X, rows, eta, kind="kernelized"):
    """Float64 per-example loop (mse): restore θ, one autograd SGD step on (x_i, 1), re-predict."""
    m = copy.deepcopy(model).double()
    X = X.double()
    theta = copy.deepcopy(m.state_dict())
    with torch.no_grad():
        f0 = m(X)
    out = []
    for i in rows:
        m.load_state_dict(theta)
        m.zero_grad()
        ((m(X[i : i + 1]) - 1) ** 2).sum().backward()
        with torch.no_grad():
            for p in m.parameters():
                p -= eta * p.grad
            out.append((m(X) - f0) / (-eta * 2 * (f0[i] - 1)))
    return torch.stack(out).cpu().numpy()


def reference(model, X, eta, max_rows, device):
    """(rows, seconds for all n extrapolated, extrapolated?)."""
    n = X.shape[0]
    rows = list(range(min(n, max_rows)))
    R, dt = timed(lambda: reference_rows(model, X, rows, eta), device)
    return R, dt * n / len(rows), len(rows) < n


def rel(A, B):
    return float(np.abs(A - B).max() / np.abs(B).max())


def section_ab(args, X, y, label_sets, width):
    device = args.device
    prim = torch.isin(y, torch.tensor(label_sets[0], device=device))
    aux = torch.isin(y, torch.tensor(label_sets[1], device=device))
    Xp, Xa = X[prim], X[aux]
    model = build_model(MLPModel(width=width), [64], seed=0).to(device)
    Xt = torch.cat([Xp, Xa])
    yt = torch.cat([torch.ones(len(Xp)), torch.zeros(len(Xa))]).to(device)
    stats = train(model, Xt, yt, loss="mse", epochs=args.epochs, lr=0.003, batch_size=50, seed=0)
    n = Xp.shape[0]
    print(
        f"\n## digits primary {label_sets[0]} (n={n}) aux {label_sets[1]}, relu mlp width {width}, "
        f"trained {args.epochs} epochs (paper: 200): "
        f"loss {stats['final_loss']:.4f} acc {stats['final_accuracy']:.3f}"
    )
    R, t_ref, extrap = reference(model, Xp, 1e-3, args.ref_rows, device)
    note = f" (timed on {R.shape[0]} rows, extrapolated linearly to {n})" if extrap else ""
    print(f"(a) float64 per-example loop, eta=1e-3: {t_ref:.2f} s{note}")
    similarity(model, Xp, kind="kernelized", step=1e-3, loss="mse")  # warm-up
    S, t_fast = timed(lambda: similarity(model, Xp, kind="kernelized", step=1e-3, loss="mse"), device, repeat=7)
    print(
        f"    exact-step path:  {t_fast:.3f} s  speedup {t_ref / t_fast:7.1f}x  "
        f"max rel diff {rel(S[: R.shape[0]], R):.2e}"
    )
    L, t_lim = timed(lambda: similarity(model, Xp, kind="kernelized", step=0, loss="mse"), device, repeat=7)
    K64, t_k64 = timed(lambda: ntk(copy.deepcopy(model).double(), Xp.double()).cpu().numpy(), device)
    print(
        f"(b) limit path (step 0): {t_lim:.3f} s  speedup vs loop {t_ref / t_lim:7.1f}x; "
        f"float64 NTK {t_k64:.3f} s, max rel diff {rel(L, K64):.2e}; "
        f"loop(eta=1e-3) vs limit {rel(R, K64[: R.shape[0]]):.2e}"
    )


def current_rss() -> int:
    """Resident set size now (bytes), from /proc/self/statm on Linux, else the ru_maxrss mark."""
    try:
        import os

        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _limit_child(n, d, width, device, queue):
    torch.set_num_threads(torch.get_num_threads())
    model = build_model(MLPModel(width=width), [d], seed=0).to(device)
    X = torch.rand(n, d, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    base = current_rss()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    similarity(model, X[:64], kind="kernelized", step=0, loss="mse")
    _, dt = timed(lambda: similarity(model, X, kind="kernelized", step=0, loss="mse"), device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gpu = torch.cuda.max_memory_allocated() - base_gpu if device.startswith("cuda") else None
    a = torch.randn(4096, 4096, device=device)
    a @ a
    _, mm = timed(lambda: [a @ a for _ in range(3)], device)
    queue.put({"dt": dt, "rss_base": base, "rss_peak": peak, "gpu": gpu, "mm": 3 * 2 * 4096**3 / mm / 1e9})


def section_c(args):
    n, d, m = (2000, 784, 4096) if args.quick else (args.n_large, 784, args.width)
    ctx = mp.get_context("spawn")  # fresh process: its ru_maxrss high-water mark is this run's alone
    q = ctx.Queue()
    p = ctx.Process(target=_limit_child, args=(n, d, m, args.device, q))
    p.start()
    r = q.get()
    p.join()
    from workers.compute.ntk import symmetric_row_blocks

    upper = sum((b.stop - b.start) * (n - b.start) for b in symmetric_row_blocks(n))  # entries computed
    flops = 2 * n * d * m + 2 * upper * (2 * m + d)  # U; then H Hᵀ, Da Daᵀ and X Xᵀ on the upper blocks
    need = 2 * n * n * 4 + (d * m + 2 * m + 1) * 4 + n * d * 4
    print(
        f"\n(c) limit path n={n}, d={d}, width={m}: {r['dt']:.2f} s, {flops / r['dt'] / 1e9:.0f} GFLOP/s "
        f"(GEMM flops executed: {flops / 1e12:.2f} TFLOP); machine float32 matmul {r['mm']:.0f} GFLOP/s"
    )
    if r["gpu"] is not None:
        print(f"    peak GPU memory above model+data: {r['gpu'] / 2**20:.0f} MiB")
    print(
        f"    CPU peak RSS (ru_maxrss of a fresh process) {r['rss_peak'] / 2**20:.0f} MiB; "
        f"growth above pre-run RSS {(r['rss_peak'] - r['rss_base']) / 2**20:.0f} MiB "
        f"(peak ru_maxrss minus RSS before the run, model + data already resident)\n"
        f"    vs 2*n*n*4 + model + data = {need / 2**20:.0f} MiB"
    )


def per_example_jacobian_ntk(model, X):
    from torch.func import functional_call, jacrev

    params = {k: v.detach() for k, v in model.named_parameters()}
    rows = []
    for i in range(X.shape[0]):
        J = jacrev(lambda p, x=X[i : i + 1]: functional_call(model, p, (x,))[0])(params)
        rows.append(torch.cat([v.flatten() for v in J.values()]))
    J = torch.stack(rows)
    return J @ J.T


def section_d(args, X):
    n = 60 if args.quick else 200
    Xs = X[:n]
    print(f"\n(d) the other architectures on digits-sized inputs (n={n}, untrained weights, mse)")
    models = (
        ("cnn", CNNModel(arch="cnn")),  # exact step: float64 torch.func; limit: tiled Jacobian
        ("resmlp", ResMLPModel(arch="resmlp", width=512)),  # difference propagation; layerwise NTK
        ("mlp3", MLPModel(depth=3, width=512, activation="relu")),
    )
    for name, spec in models:
        model = build_model(spec, [64], seed=0).to(args.device)
        R, t_ref, extrap = reference(model, Xs, 1e-3, args.ref_rows // 4, args.device)
        S, t = timed(lambda m=model: similarity(m, Xs, kind="kernelized", step=1e-3, loss="mse"), args.device)
        note = f" (loop on {R.shape[0]} rows, extrapolated)" if extrap else ""
        print(
            f"    {name:6s} exact step: {t:.2f} s vs float64 loop {t_ref:.2f} s{note} "
            f"speedup {t_ref / t:.1f}x, max rel diff {rel(S[: R.shape[0]], R):.2e}"
        )
        Kl, t_loop = timed(lambda m=model: per_example_jacobian_ntk(m, Xs).cpu().numpy(), args.device)
        L, t_lim = timed(lambda m=model: similarity(m, Xs, kind="kernelized", step=0, loss="mse"), args.device)
        print(
            f"    {name:6s} limit: {t_lim:.3f} s vs per-example jacobian loop {t_loop:.2f} s "
            f"speedup {t_loop / t_lim:.1f}x, max rel diff {rel(L, Kl):.2e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a minute on 2 CPU cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=200, help="pre-training epochs (paper: 200)")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--ref-rows", type=int, default=160, help="rows of the reference loop actually run")
    parser.add_argument("--n-large", type=int, default=10_000)
    parser.add_argument("--skip", default="", help="comma list of sections to skip: ab,c,d")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.ref_rows = min(args.epochs, 3), min(args.ref_rows, 40)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    X, y = digits(args.device)
    skip = set(args.skip.split(","))
    if "ab" not in skip:
        section_ab(args, X, y, ([3, 5], [8, 9]), args.width)
        if not args.quick:
            section_ab(args, X, y, ([3, 5, 8, 9], [0, 1]), args.width)
    if "c" not in skip:
        section_c(args)
    if "d" not in skip:
        section_d(args, X)


if __name__ == "__main__":
    main()
