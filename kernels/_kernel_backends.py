"""Which Pallas GPU backend a kernel runs on: Mosaic GPU, Triton, or neither.

JAX deprecated Pallas's Triton backend in 0.11; Mosaic GPU is the backend it keeps,
and the one that reaches Hopper's TMA and warpgroup instructions. So on a GPU of
compute capability 9.0 or newer the kernels run on Mosaic GPU, on older GPUs on
Triton while the installed jax still has it, and otherwise on the XLA reference.
A backend that is missing, cannot take the inputs (float64 on Mosaic GPU) or fails
to lower is skipped with one warning naming why; a forced one raises instead.

Off GPUs the kernels run interpreted (`impl="pallas"`, `"triton"`, `"mosaic"`):
Triton's interpreter and Mosaic GPU's (`InterpretGPUParams`, which simulates
shared memory, barriers and TMA on the CPU).
"""

import functools
import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Literal

import jax

BACKENDS = ("mosaic", "triton")
"""The Pallas GPU backends, most preferred first."""


def gpu_compute_capability() -> tuple[int, int] | None:
    """The first GPU's CUDA compute capability, or `None` without an NVIDIA GPU."""
    try:
        devices = jax.devices("gpu")
    except RuntimeError:
        return None
    version = str(getattr(devices[0], "compute_capability", "") if devices else "")
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:  # ROCm reports "gfx…"; no capability at all
        return None


@functools.cache
def missing(backend: str) -> str | None:
    """Why this jax cannot run `backend` (`None`: it can), from its imports alone."""
    if backend == "mosaic":
        from ._linear_scan_mosaic import mosaic_modules

        plgpu, interpret = mosaic_modules()
        if plgpu is None:
            return f"jax {jax.__version__} has no Mosaic GPU Pallas backend"
        on_gpu = gpu_compute_capability() is not None
        if not on_gpu and interpret is None:
            return f"jax {jax.__version__} has no Mosaic GPU interpreter for CPUs"
        return None
    if backend == "triton":
        try:
            importlib.import_module("jax.experimental.pallas.triton")
            importlib.import_module("jax._src.pallas.triton.pallas_call_registration")
        except ImportError:
            return f"jax {jax.__version__} has no Pallas Triton backend (removed after 0.11)"
        return None
    raise ValueError(f"unknown Pallas backend {backend!r}; expected one of {BACKENDS}.")


def _cannot(backend: str, *, float64: bool, capability, unsupported=None) -> str | None:
    """Why `backend` cannot run these inputs here, from what is installed and from the
    kernel's own limits (`unsupported`: backend → why it cannot take these inputs)."""
    why = missing(backend)
    if why is None and backend == "mosaic" and float64:
        why = "Mosaic GPU has no float64"
    if why is None and unsupported and backend in unsupported:
        why = unsupported[backend]
    if why is None and backend == "mosaic" and capability is not None and capability < (9, 0):
        why = f"Mosaic GPU kernels here need compute capability ≥ 9.0, this GPU has {capability}"
    return why


@functools.cache
def _lowering_error(name: str, backend: str, probe: Callable[[str], None]) -> str | None:
    """Lower a tiny instance once per kernel and backend; the error, if any."""
    try:
        probe(backend)
    except Exception as error:  # any lowering failure means: do not use it
        return f"lowering failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return None


def pallas_backends() -> dict[str, str | None]:
    """Each Pallas GPU backend (`"mosaic"`, `"triton"`) and why it cannot run on
    this machine with the installed jax (`None`: it can; off GPUs, interpreted)."""
    capability = gpu_compute_capability()
    return {b: _cannot(b, float64=False, capability=capability) for b in BACKENDS}


def require(
    backend: str,
    name: str,
    *,
    float64: bool = False,
    kernels: tuple[str, ...] = BACKENDS,
    references: tuple[str, ...] = ("xla", "sequential"),
    impl: str | None = None,
    unsupported: Mapping[str, str] | None = None,
) -> None:
    """Raise a clear error when a forced `backend` (asked for as `impl`, by default
    its own name) cannot run these inputs here, naming the implementations of kernel
    `name` (its `kernels`, then its `references`) this machine has. `unsupported`:
    backends of this kernel that cannot take these inputs, and why."""
    capability = gpu_compute_capability()
    why = _cannot(backend, float64=float64, capability=capability, unsupported=unsupported)
    if why is not None:
        have = [b for b, reason in pallas_backends().items() if reason is None and b in kernels]
        raise ValueError(
            f"{name}: impl={impl or backend!r} cannot run here: {why}. This machine has "
            f"{', '.join(map(repr, have + list(references)))}."
        )


def choose(
    name: str,
    *,
    float64: bool = False,
    fallback: str | None = "xla",
    capability: tuple[int, int] | Literal["detect"] | None = "detect",
    probe: Callable[[str], None] | None = None,
    kernels: tuple[str, ...] = BACKENDS,
    unsupported: Mapping[str, str] | None = None,
    references: tuple[str, ...] = ("xla", "sequential"),
) -> str:
    """The backend for kernel `name`, among the backends it is written for
    (`kernels`): on a GPU (`capability`, detected by default) Mosaic GPU from
    compute capability 9.0, else Triton; off GPUs (interpreted) Triton, else Mosaic
    GPU. A preferred backend that cannot run (or whose `probe`, a tiny lowering,
    raises) is skipped with one warning; with none left, `fallback` (a reference
    implementation), or an error naming the kernel's `references` when `fallback`
    is `None`. `unsupported`: backends that cannot take these inputs (dtype, sizes),
    and why."""
    if capability == "detect":
        capability = gpu_compute_capability()
    if capability is not None and capability >= (9, 0):
        order = tuple(b for b in ("mosaic", "triton") if b in kernels)
    else:
        order = tuple(b for b in ("triton", "mosaic") if b in kernels)
    skipped = []
    for backend in order:
        if capability is not None and capability < (9, 0) and backend == "mosaic":
            continue  # not preferred below Hopper, so not worth a warning
        why = _cannot(backend, float64=float64, capability=capability, unsupported=unsupported)
        if why is None and probe is not None and capability is not None:
            why = _lowering_error(name, backend, probe)
        if why is None:
            if skipped:
                _warn_once(name, backend, tuple(skipped))
            return backend
        skipped.append(f"{backend}: {why}")
    if fallback is None:
        raise ValueError(
            f"{name}: impl='pallas': no Pallas backend can run here ({'; '.join(skipped)}). "
            f"This machine has {', '.join(map(repr, references))}."
        )
    _warn_once(name, fallback, tuple(skipped))
    return fallback


def mosaic_interpret():
    """Mosaic GPU's interpreter settings off GPUs, `None` (compiled) on them. Decided
    when tracing, not at lowering as the Triton kernels do: the interpreter's ordered
    callbacks cannot sit in a `platform_dependent` branch."""
    if jax.default_backend() == "gpu":
        return None
    from ._linear_scan_mosaic import mosaic_modules

    return mosaic_modules()[1]()


@functools.cache
def _warn_once(name: str, chosen: str, skipped: tuple[str, ...]) -> None:
    warnings.warn(
        f"{name}: running on {chosen!r} because {'; '.join(skipped)}.", RuntimeWarning, stacklevel=4
    )
