"""An upper bound of a job's peak memory (resident set of its work-horse), from its spec alone.

Pure arithmetic (no torch): the API refuses a spec whose estimate exceeds `max_job_memory`, and the
benchmark `benchmarks/job_memory.py` checks the bound against measured peaks.

A job holds, all along: the process (interpreter, torch, scikit-learn, matplotlib), the dataset and
the model. On top, one stage at a time (M = 4 n² bytes, the float32 n × n similarity matrix):

    similarity   the repeats' running sums (none for one repeat; M, or 2M with normalize), the new
                 matrix M, the engine's own n × n temporaries (2M for the η → 0 limit and the
                 activation kind; 3M for a fixed-θ step η > 0, whose rows are overwritten in place;
                 5M for the trajectory, whose rows and logits are float64) and the work buffers of
                 its path (`engine_path`, `engine_work_bytes`), and the hidden activations of the
                 examples at the widest layer (a convolution's channels × output positions)
    analysis     (synthetic builtins) the raw mean, plus the paired within-class vectors (≤ M)
    clustering   S, plus one n × n copy for kmeans, spectral, or an asymmetric kernel_kmeans
    baselines    S, plus spectral_rbf's affinity (M)
    artifacts    S, plus one cluster's block for the heat map's ordering (≤ M)

Up to `DENSE_SPECTRAL_MAX` examples scikit-learn's float64 spectral clustering takes about 9M.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from service.contract.architectures import ArchitectureSpec, Capabilities, architecture_of, cnn_geometry, image_shape
from service.contract.spec import JobSpec, parameter_shapes

GiB = 2**30
MiB = 2**20
#: A work-horse after its imports, with headroom for BLAS and matplotlib buffers.
PROCESS_BYTES = 1 * GiB
#: Work buffers of the engine's blockwise paths (`engine_work_bytes`): closed-form 2-layer nets, the
#: activation kind, the layerwise NTK (row blocks of 256 MiB) and the trajectory (one example's float64
#: gradient at a time; its forward passes are the hidden activations); torch.func's Jacobians.
CLOSED_FORM_WORK_BYTES = 512 * MiB
GENERIC_WORK_BYTES = 3 * GiB
#: Difference propagation (workers/compute/propagation.py): a block of B probes holds [B, n, width]
#: float32 temporaries, B sized so that PROPAGATION_ARRAYS of them fit PROPAGATION_BLOCK_BYTES (at
#: least one probe: 4 · PROPAGATION_ARRAYS · n · width bytes); GELU's differences are float64, twice that.
PROPAGATION_BLOCK_BYTES = 1 * GiB
PROPAGATION_ARRAYS = 6
#: The structured NTK (workers/compute/structured.py): the per-example features kept at once (all of
#: them while they fit, else two blocks'), plus one block's forward, backward and patches (256 MiB)
#: and the block buffer beside it.
STRUCTURED_FEATURE_BYTES = 2 * GiB
STRUCTURED_WORK_BYTES = 512 * MiB
#: Up to this many examples spectral clustering is scikit-learn's dense float64 one (workers/compute/clustering.py).
DENSE_SPECTRAL_MAX = 2048
#: The elasticity analysis' fixed-size parts (the Spearman sample, the scatter plot).
ANALYSIS_BYTES = 128 * MiB
#: Hidden activations kept per example and unit of the widest layer (float32 U, H, D, R, ... and their float64 twins).
ACTIVATION_BYTES_PER_UNIT = 32


@dataclass(frozen=True)
class MemoryEstimate:
    """total: the estimated peak, in bytes; stage: the stage at the peak; parts: the terms of the peak."""

    total: int
    stage: str
    parts: dict[str, int] = field(default_factory=dict)

    def explain(self) -> str:
        """'similarity stage: n × n matrices 3.0 GiB, process 1.0 GiB, engine work buffers 512 MiB, ...'"""
        terms = sorted(self.parts.items(), key=lambda item: -item[1])
        return f"{self.stage} stage: " + ", ".join(f"{name} {size_text(value)}" for name, value in terms if value)

    def driver(self) -> str:
        """The largest term of the peak."""
        return max(self.parts.items(), key=lambda item: item[1])[0]


def size_text(value: int) -> str:
    """'3.0 GiB', '512 MiB', '12 KiB'."""
    if value >= GiB:
        return f"{value / GiB:.1f} GiB"
    return f"{value / MiB:.0f} MiB" if value >= MiB else f"{value / 1024:.0f} KiB"


def estimate_job_memory(
    *,
    n: int,
    n_auxiliary: int,
    dataset_rows: int,
    features: int,
    parameters: int,
    widest_layer: int,
    path: str,
    feature_bytes: int = 0,
    kind: str,
    step: float,
    repeats: int,
    normalize: bool,
    trajectory: bool = False,
    symmetrize: bool,
    synthetic: bool,
    method: str | None,
    baselines: Sequence[str],
) -> MemoryEstimate:
    """The peak memory bound of one job, in bytes (see the module docstring for the model).

    n, n_auxiliary: primary and auxiliary examples; dataset_rows: the whole dataset's; features: per
    example; parameters and widest_layer: the model's parameter count and widest layer (units per
    example); path: the engine's path (`engine_path`); feature_bytes: the structured NTK's features per
    example (bytes); method: the resolved clustering method, or None.
    """
    M = 4 * n * n
    fixed = {
        "process": PROCESS_BYTES,
        "dataset": 4 * features * (dataset_rows + n + n_auxiliary) + 24 * features * n,
        "model": 32 * parameters,
    }
    per_repeat = normalize and repeats > 1
    held = 0 if repeats == 1 else (M if not per_repeat else (2 * M if synthetic else M))
    if kind == "activation" or step == 0:
        engine = 2 * M
    else:
        engine = 5 * M if trajectory else 3 * M
    stages = {
        "similarity": {
            "n × n matrices": held + M + engine,
            "engine work buffers": engine_work_bytes(path, n=n, widest_layer=widest_layer, feature_bytes=feature_bytes),
            "hidden activations": ACTIVATION_BYTES_PER_UNIT * (n + n_auxiliary) * widest_layer,
        },
        "analysis": {"n × n matrices": (2 * M if per_repeat else M) + M if synthetic else 0, "parts": ANALYSIS_BYTES},
        "clustering": {"n × n matrices": M + _clustering_bytes(n, method, symmetrize)},
        "baselines": {"n × n matrices": M + (_spectral_bytes(n) if "spectral_rbf" in baselines else 0)},
        "artifacts": {"n × n matrices": 2 * M, "heat map": 256 * MiB},
    }
    stage, parts = max(stages.items(), key=lambda item: sum(item[1].values()))
    parts = {**parts, **fixed}
    return MemoryEstimate(total=sum(parts.values()), stage=stage, parts=parts)


#: The engine's paths (workers/compute/similarity.py picks one from the model's capabilities, kind and step).
ENGINE_PATHS = ("closed_form", "layerwise", "structured", "propagation", "propagation_float64", "trajectory", "generic")


def engine_path(capabilities: Capabilities, *, kind: str, step: float, trajectory: bool) -> str:
    """The path the engine takes for a model of these capabilities (one of ENGINE_PATHS)."""
    if kind == "activation":
        return "closed_form"
    if trajectory:
        return "trajectory"
    if step == 0:
        if capabilities.closed_form_ntk:
            return "closed_form"
        if capabilities.layerwise_ntk:
            return "layerwise"
        return "structured" if capabilities.structured_ntk else "generic"
    if capabilities.closed_form_step:
        return "closed_form"
    if capabilities.difference_propagation:
        return "propagation_float64" if capabilities.activation == "gelu" else "propagation"
    return "generic"


def engine_work_bytes(path: str, *, n: int, widest_layer: int, feature_bytes: int = 0) -> int:
    """The engine's work buffers on `path` (bytes), for n examples, the widest layer's units per example
    and the structured NTK's feature bytes per example."""
    if path in ("closed_form", "layerwise", "trajectory"):
        return CLOSED_FORM_WORK_BYTES
    if path == "structured":
        return min(n * feature_bytes, STRUCTURED_FEATURE_BYTES) + STRUCTURED_WORK_BYTES
    if path in ("propagation", "propagation_float64"):
        one_probe = 4 * PROPAGATION_ARRAYS * n * widest_layer
        return max(PROPAGATION_BLOCK_BYTES, one_probe) * (2 if path == "propagation_float64" else 1)
    if path == "generic":
        return GENERIC_WORK_BYTES
    raise ValueError(f"unknown engine path {path!r}")


def widest_units(model: ArchitectureSpec, input_shape: Sequence[int]) -> int:
    """Units per example of the model's widest layer output: a Linear layer's outputs, or (the cnn) its
    first convolution's channels × output positions."""
    shapes = parameter_shapes(model, list(input_shape))
    widest = max((shape[0] for shape in shapes.values() if shape), default=1)
    if model.arch != "cnn":
        return widest
    _, height, width = image_shape(input_shape)
    padding, (channels, _, kh, kw) = cnn_geometry(input_shape)["padding"], shapes["conv1.weight"]
    return max(widest, channels * (height - kh + 1 + 2 * padding) * (width - kw + 1 + 2 * padding))


def structured_feature_bytes(shapes: dict[str, list[int]]) -> int:
    """Bytes per example of the structured NTK's float32 features: each convolution's weight gradient and
    bias signal (C_out C_in k_h k_w + C_out), and each Linear layer's input and output gradient (in + out)."""
    numbers = 0
    for shape in shapes.values():
        if len(shape) == 4:
            numbers += math.prod(shape) + shape[0]
        elif len(shape) == 2:
            numbers += shape[0] + shape[1]
    return 4 * numbers


def _spectral_bytes(n: int) -> int:
    return 9 * 4 * n * n if n <= DENSE_SPECTRAL_MAX else 4 * n * n + 64 * MiB


def _clustering_bytes(n: int, method: str | None, symmetrize: bool) -> int:
    if method == "spectral":
        return _spectral_bytes(n)
    if method == "kmeans" or (method == "kernel_kmeans" and not symmetrize):
        return 4 * n * n
    return 0


def estimate_spec_memory(
    spec: JobSpec,
    *,
    n: int,
    n_auxiliary: int,
    dataset_rows: int,
    input_shape: Sequence[int],
) -> MemoryEstimate:
    """`estimate_job_memory` of a spec, given the sizes its selections resolve to and the input shape."""
    shapes = parameter_shapes(spec.model, list(input_shape))
    sim = spec.similarity
    capabilities = architecture_of(spec.model).capabilities(spec.model)
    return estimate_job_memory(
        n=n,
        n_auxiliary=n_auxiliary,
        dataset_rows=dataset_rows,
        features=math.prod(input_shape),
        parameters=sum(math.prod(shape) for shape in shapes.values()),
        widest_layer=widest_units(spec.model, input_shape),
        path=engine_path(capabilities, kind=sim.kind, step=sim.step, trajectory=sim.schedule == "trajectory"),
        feature_bytes=structured_feature_bytes(shapes),
        kind=sim.kind,
        step=sim.step,
        repeats=sim.repeats,
        normalize=sim.normalize,
        trajectory=sim.schedule == "trajectory",
        symmetrize=sim.symmetrize,
        synthetic=not isinstance(spec.dataset, str) and spec.dataset.builtin != "digits",
        method=spec.clustering_method(),
        baselines=spec.baselines,
    )


__all__ = [
    "ENGINE_PATHS",
    "MemoryEstimate",
    "engine_path",
    "engine_work_bytes",
    "estimate_job_memory",
    "estimate_spec_memory",
    "size_text",
    "structured_feature_bytes",
    "widest_units",
]
