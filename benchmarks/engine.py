"""Benchmark of the compute engine (similarity / NTK paths) against float64 per-example loops.

    python benchmarks/engine.py [--quick] [--device cpu|cuda] [--epochs 10] [--width 4096]

(a) exact one-step path vs a float64 per-example reference loop at η = 1e-3 (digits, 2-layer ReLU MLP)
(b) limit path (step 0) vs the same loop and vs the float64 NTK
(c) limit path at n = 10,000, d = 784 (synthetic): seconds, GFLOP/s, peak memory
(d) cnn, resmlp and mlp3: exact step vs the float64 loop, limit vs a per-example Jacobian loop; the cnn's
    exact step on 28 x 28 images at --n-cnn-step examples (fresh process)
(e) cnn on 28 x 28 images: structured NTK vs per-example gradients and one Gram product (fresh processes)
(f) exact step at eta = 0.1 vs 1e-3 (n = 5,000, d = 784, width 4096) and the count of flipped ReLUs
Every timing comes with its peak memory where it runs in a fresh process (c, e).
The reference loops are timed on a subset of rows and extrapolated linearly when n is large.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rss import current_rss, peak_rss  # noqa: E402

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


def peak_note(device):
    """This process's peak RSS so far (VmHWM; a high-water mark over the sections run before), and on
    CUDA the peak GPU memory since the last such note."""
    note = f"[process peak RSS so far {peak_rss() / 2**20:.0f} MiB"
    if device.startswith("cuda"):
        note += f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
        torch.cuda.reset_peak_memory_stats()
    return note + "]"


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
    print(f"    {peak_note(device)}")


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
    peak = peak_rss()
    gpu = torch.cuda.max_memory_allocated() - base_gpu if device.startswith("cuda") else None
    queue.put({"dt": dt, "rss_base": base, "rss_peak": peak, "gpu": gpu, **matmul_rates(device)})


def matmul_rates(device):
    """The device's own float32 GEMM rate (GFLOP/s), and on CUDA its TF32 rate (the engine runs with TF32 off)."""
    size = 8192 if device.startswith("cuda") else 4096
    a = torch.randn(size, size, device=device)
    rates = {}
    for name, tf32 in (("mm", False), ("mm_tf32", True)):
        if tf32 and not device.startswith("cuda"):
            continue
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a @ a
        _, dt = timed(lambda: [a @ a for _ in range(3)], device)
        torch.backends.cuda.matmul.allow_tf32 = before
        rates[name] = 3 * 2 * size**3 / dt / 1e9
    return rates


def section_c(args):
    n, d, m = (2000, 784, 4096) if args.quick else (args.n_large, 784, args.width)
    ctx = mp.get_context("spawn")  # fresh process: its VmHWM high-water mark is this run's alone
    q = ctx.Queue()
    p = ctx.Process(target=_limit_child, args=(n, d, m, args.device, q))
    p.start()
    r = q.get()
    p.join()
    from workers.compute.ntk import symmetric_row_blocks

    upper = sum((b.stop - b.start) * (n - b.start) for b in symmetric_row_blocks(n))  # entries computed
    flops = 2 * n * d * m + 2 * upper * (2 * m + d)  # U; then H Hᵀ, Da Daᵀ and X Xᵀ on the upper blocks
    need = 2 * n * n * 4 + (d * m + 2 * m + 1) * 4 + n * d * 4
    rate = flops / r["dt"] / 1e9
    print(
        f"\n(c) limit path n={n}, d={d}, width={m}: {r['dt']:.2f} s, {rate:.0f} GFLOP/s "
        f"(GEMM flops executed: {flops / 1e12:.2f} TFLOP); device float32 matmul {r['mm']:.0f} GFLOP/s "
        f"({100 * rate / r['mm']:.0f} % of it)"
    )
    if "mm_tf32" in r:
        print(
            f"    device TF32 matmul {r['mm_tf32']:.0f} GFLOP/s ({100 * rate / r['mm_tf32']:.0f} % of it; "
            "the engine keeps TF32 off)"
        )
    if r["gpu"] is not None:
        print(f"    peak GPU memory above model+data: {r['gpu'] / 2**20:.0f} MiB")
    print(
        f"    CPU peak RSS (VmHWM of a fresh process) {r['rss_peak'] / 2**20:.0f} MiB; "
        f"growth above pre-run RSS {(r['rss_peak'] - r['rss_base']) / 2**20:.0f} MiB "
        f"(peak VmHWM minus RSS before the run, model + data already resident)\n"
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
    width = 512 if args.quick else args.width
    print(f"\n(d) the other architectures on digits-sized inputs (n={n}, width {width}, untrained weights, mse)")
    models = (
        ("cnn", CNNModel(arch="cnn")),  # exact step: difference propagation (convprop.py); limit: structured NTK
        ("resmlp", ResMLPModel(arch="resmlp", width=width)),  # difference propagation; layerwise NTK
        ("mlp3", MLPModel(depth=3, width=width, activation="relu")),
    )
    for name, spec in models:
        if name not in args.archs.split(","):
            continue
        model = build_model(spec, [64], seed=0).to(args.device)
        R, t_ref, extrap = reference(model, Xs, 1e-3, args.ref_rows // 4, args.device)
        S, t = timed(lambda m=model: similarity(m, Xs, kind="kernelized", step=1e-3, loss="mse"), args.device, repeat=7)
        note = f" (loop on {R.shape[0]} rows, extrapolated)" if extrap else ""
        print(
            f"    {name:6s} exact step: {t:.2f} s vs float64 loop {t_ref:.2f} s{note} "
            f"speedup {t_ref / t:.1f}x, max rel diff {rel(S[: R.shape[0]], R):.2e} {peak_note(args.device)}"
        )
        # the loop's J [rows, P] within 1 GiB: run on that many rows, its time extrapolated linearly
        P = sum(p.numel() for p in model.parameters())
        rows = max(2, min(n, 2**30 // (4 * P)))
        Kl, t_loop = timed(lambda m=model, r=rows: per_example_jacobian_ntk(m, Xs[:r]).cpu().numpy(), args.device)
        t_loop *= n / rows
        limit = lambda m=model: similarity(m, Xs, kind="kernelized", step=0, loss="mse")  # noqa: E731
        L, t_lim = timed(limit, args.device, repeat=7)
        note = f" (loop on {rows} rows, extrapolated)" if rows < n else ""
        print(
            f"    {name:6s} limit: {t_lim:.3f} s vs per-example jacobian loop {t_loop:.2f} s{note} "
            f"speedup {t_loop / t_lim:.1f}x, max rel diff {rel(L[:rows, :rows], Kl):.2e} {peak_note(args.device)}"
        )
        if name == "cnn" and args.n_cnn_step > 0:
            r = measured("cnn_step", n=args.n_cnn_step, device=args.device)
            size = f"28 x 28 images, n={args.n_cnn_step}"
            print(f"    cnn    exact step on {size} (fresh process): {r['dt']:.1f} s, {memory_note(r)}")


def _measured_child(task, kwargs, queue):
    """Runs one measurement in a fresh process: its VmHWM high-water mark is this run's alone."""
    torch.manual_seed(0)
    device = kwargs["device"]
    out, base = TASKS[task](**kwargs, rss=current_rss)
    fn, warm = out
    if warm is not None:
        warm()
    before = current_rss()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result, dt = timed(fn, device)
    peak = peak_rss()
    gpu = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    queue.put({"result": result, "dt": dt, "rss_peak": peak, "rss_before": before, "gpu": gpu})


def measured(task, **kwargs):
    """{result, dt (s), rss_peak, rss_before (bytes), gpu (bytes or None)} of TASKS[task] in a fresh process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measured_child, args=(task, kwargs, q))
    p.start()
    r = q.get()
    p.join()
    return r


def memory_note(r):
    note = f"peak RSS {r['rss_peak'] / 2**20:.0f} MiB (+{(r['rss_peak'] - r['rss_before']) / 2**20:.0f} MiB in the run)"
    if r["gpu"] is not None:
        note += f", peak GPU memory {r['gpu'] / 2**20:.0f} MiB"
    return note


def _cnn28(n, device):
    model = build_model(CNNModel(arch="cnn"), [1, 28, 28], seed=0).to(device)
    X = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)).to(device)
    return model, X


def _task_cnn_limit(n, device, rss):
    model, X = _cnn28(n, device)
    fn = lambda: similarity(model, X, kind="kernelized", step=0, loss="mse")  # noqa: E731
    return (fn, lambda: similarity(model, X[:32], kind="kernelized", step=0, loss="mse")), None


def _task_cnn_step(n, device, rss):
    model, X = _cnn28(n, device)
    fn = lambda: similarity(model, X, kind="kernelized", step=1e-3, loss="mse")  # noqa: E731
    return (fn, lambda: similarity(model, X[:16], kind="kernelized", step=1e-3, loss="mse")), None


def _task_cnn_grad_loop(n, device, rss, rows):
    """The loop on the first `rows` examples: (K [rows, rows], seconds of the gradients, seconds of J Jᵀ)."""
    model, X = _cnn28(n, device)
    X = X[:rows]

    def run():
        params = list(model.parameters())
        J = torch.empty((rows, sum(p.numel() for p in params)), device=X.device)
        t = time.perf_counter()
        for i in range(rows):
            J[i] = torch.cat([g.flatten() for g in torch.autograd.grad(model(X[i : i + 1])[0], params)])
        sync(device)
        t_grads = time.perf_counter() - t
        t = time.perf_counter()
        K = J @ J.T
        sync(device)
        return K.cpu().numpy(), t_grads, time.perf_counter() - t

    return (run, None), None


def _task_large_step(n, eta, device, rss):
    model = build_model(MLPModel(width=4096), [784], seed=0).to(device)
    X = (torch.rand(n, 784, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    return (lambda: similarity(model, X, kind="kernelized", step=eta, loss="mse"), None), None


TASKS = {
    "cnn_limit": _task_cnn_limit,
    "cnn_step": _task_cnn_step,
    "cnn_grad_loop": _task_cnn_grad_loop,
    "large_step": _task_large_step,
}


def flipped_units(n, eta, device, probes=50):
    """(flipped (i, j, r) of the exact step, extrapolated from `probes` probes; n² m) for section f's net."""
    from workers.compute.functional import dloss_dz
    from workers.compute.ntk import two_layer_features

    model = build_model(MLPModel(width=4096), [784], seed=0).to(device)
    X = (torch.rand(n, 784, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    with torch.no_grad():
        f = two_layer_features(model, X)
        s = eta * dloss_dz(model(X), 1.0, "mse")
        rows = torch.linspace(0, n - 1, probes).long()
        E = f["X"][rows] @ f["X"].T + 1
        flips = 0
        for k, i in enumerate(rows.tolist()):
            new = f["U"] - (s[i] * E[k])[:, None] * (f["a"] * f["D"][i])[None, :]
            flips += int(((f["U"] > 0) != (new > 0)).sum())
    return flips * n / probes, n * n * f["U"].shape[1]


def section_f(args):
    n = 300 if args.quick else args.n_step
    print(f"\n(f) exact step, 2-layer relu mlp width 4096, n={n}, d=784 (uniform [-1, 1)), each in a fresh process")
    runs = {eta: measured("large_step", n=n, eta=eta, device=args.device) for eta in (1e-3, 0.1)}
    for eta, r in runs.items():
        flips, total = flipped_units(n, eta, args.device)
        print(
            f"    eta={eta:<6g} {r['dt']:7.2f} s  {memory_note(r)}; flipped ReLUs (i, j, r) ~{flips:.2e} "
            f"= {100 * flips / total:.3f} % of n^2 m"
        )
    print(f"    large / small step time: {runs[0.1]['dt'] / runs[1e-3]['dt']:.1f}x")


def section_e(args):
    n = 300 if args.quick else 2000
    print(
        f"\n(e) cnn limit (step 0) on 28 x 28 images (n={n}, uniform [0, 1) pixels, default init seed 0), "
        f"each in a fresh process (load average {os.getloadavg()[0]:.2f} at the start)"
    )
    rows = min(n, args.ref_rows * 2)
    ours = measured("cnn_limit", n=n, device=args.device)
    loop = measured("cnn_grad_loop", n=n, device=args.device, rows=rows)
    K, t_grads, t_gram = loop["result"]
    t_loop = t_grads * n / rows + t_gram * (n / rows) ** 2  # gradients linear in n, J Jᵀ quadratic
    P = sum(p.numel() for p in build_model(CNNModel(arch="cnn"), [1, 28, 28], seed=0).parameters())
    note = (
        f" (run on {rows} examples: gradients {t_grads:.2f} s, J J^T {t_gram:.2f} s; extrapolated to {n}, "
        f"its J alone {n * P * 4 / 2**20:.0f} MiB)"
        if rows < n
        else ""
    )
    print(f"    structured NTK:                         {ours['dt']:7.2f} s  {memory_note(ours)}")
    print(f"    per-example gradient loop + J J^T:      {t_loop:7.2f} s{note}  {memory_note(loop)}")
    print(
        f"    speedup {t_loop / ours['dt']:.1f}x, max rel diff {rel(ours['result'][:rows, :rows], K):.2e} "
        f"(on the first {rows} rows and columns, relative to their max)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a minute on 2 CPU cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=200, help="pre-training epochs (paper: 200)")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--ref-rows", type=int, default=160, help="rows of the reference loop actually run")
    parser.add_argument("--n-large", type=int, default=10_000)
    parser.add_argument("--n-step", type=int, default=5000, help="examples of section f (the large step)")
    parser.add_argument("--archs", default="cnn,resmlp,mlp3", help="comma list of the architectures of section d")
    parser.add_argument(
        "--n-cnn-step",
        type=int,
        default=1000,
        help="examples of section d's cnn exact step on 28 x 28 images (0: skip)",
    )
    parser.add_argument("--skip", default="", help="comma list of sections to skip: ab,c,d,e,f")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.ref_rows = min(args.epochs, 3), min(args.ref_rows, 40)
        args.n_cnn_step = min(args.n_cnn_step, 200)
    args.ref_rows = max(args.ref_rows, 1)
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
    if "e" not in skip:
        section_e(args)
    if "f" not in skip:
        section_f(args)


if __name__ == "__main__":
    main()
