"""Where and how to compute: ``resolve_device`` turns ``--device`` into a usable
``torch.device``, ``autocast_dtype`` turns ``--precision`` into an autocast dtype,
``compiled`` is ``torch.compile`` with its one common failure explained,
``reuse_freed_memory`` keeps the C allocator from handing large tensors back to the OS, and
``max_parallel`` bounds ``--threads`` and ``--workers``."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import CnnlabError

__all__ = [
    "PRECISIONS",
    "autocast",
    "autocast_dtype",
    "available_memory",
    "compiled",
    "max_parallel",
    "native_bf16",
    "require_memory",
    "resolve_device",
    "reuse_freed_memory",
]

PRECISIONS = ("fp32", "bf16", "auto")
# glibc's mallopt parameters, and the largest block it may serve from its heap instead
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_BLOCK_MAX = 2**31 - 1
GIB = 2**30
PARALLEL_PER_CPU = 4  # threads or worker processes per usable CPU


def max_parallel() -> int:
    """The most threads (``--threads``) or worker processes (``--workers``) cnnlab starts:
    ``PARALLEL_PER_CPU`` per CPU this process may run on. More only contend for the cores,
    and each costs memory: 100,000 OpenMP threads exhaust it."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS)
        cpus = os.cpu_count() or 1
    return PARALLEL_PER_CPU * cpus


def resolve_device(name: str | None = None) -> torch.device:
    """``None``: the first CUDA GPU if there is one, else the CPU; ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"`` where that GPU exists. Anything else is one ``CnnlabError`` line."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise CnnlabError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise CnnlabError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise CnnlabError(f"--device {name}: no CUDA GPU is available on this machine")
    if device.index is not None and device.index >= count:
        raise CnnlabError(f"--device {name}: this machine has {count} CUDA GPU(s)")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it, or a CPU with
    AMX or AVX512-BF16 (elsewhere PyTorch emulates bf16 on the CPU, often many times slower
    than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--precision`` on ``device``: ``None`` (fp32) or bf16.

    ``"auto"`` is bf16 where ``device`` computes it natively, else fp32; ``None`` (no option
    given) is bf16 on a GPU and fp32 on a CPU; ``"bf16"`` on a CPU without native bf16 warns.
    """
    if precision is None:
        return torch.bfloat16 if device.type == "cuda" else None
    if precision not in PRECISIONS:
        raise CnnlabError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    native = native_bf16(device)
    if precision == "bf16" and not native:
        warnings.warn(
            f"bf16 on this {device.type.upper()} is emulated (no AMX / AVX512-BF16): usually "
            "much slower than fp32",
            stacklevel=2,
        )
    return torch.bfloat16 if precision == "bf16" or native else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def compiled(model: torch.nn.Module, *, freeze: bool = False) -> Any:
    """``torch.compile(model)`` with inductor and static shapes. ``freeze``: fold the weights
    into the graph as constants (inductor does this for inference only). ``dynamic=False``
    gives every input shape its own static graph; by default a second shape (a last partial
    batch, another image size) recompiles the model with symbolic shapes, whose kernels are
    slower (docs/performance.md). Inductor writes and builds C++ on the CPU: without a C++
    compiler this is a ``CnnlabError`` now rather than at the first call."""
    if not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
        raise CnnlabError("torch.compile needs a C++ compiler (c++, g++ or clang++) on PATH")
    # torch's C++ build helper warns on every CPU-only machine that it found no CUDA runtime
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if freeze:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
    try:
        return torch.compile(model, backend="inductor", dynamic=False)
    except Exception as exc:  # an unsupported model or platform
        raise CnnlabError(f"torch.compile failed: {type(exc).__name__}: {exc}") from None


def reuse_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse, for the rest of this process.

    By default glibc serves every block over its mmap threshold (at most 32 MiB) with a fresh
    ``mmap`` and unmaps it on ``free``: each training step's activations then come back as
    new pages that the kernel faults in and zeroes one by one: 0.9 s of kernel time in a 3.1 s
    ResNet-18 step at batch 64 and 224 px on 2 cores (docs/performance.md). With the mmap
    threshold at 2 GiB and trimming off, freed blocks stay in the heap and the next step
    reuses them; the process keeps its peak memory instead of returning it between steps.
    Returns whether it applied (glibc only).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_BLOCK_MAX)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, -1)
    )


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors: the GPU's free memory, or the machine's available RAM
    (``MemAvailable``; free pages where /proc/meminfo is missing)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def require_memory(need: int, device: torch.device, what: str, fix: str) -> None:
    """Refuse, before allocating anything, work that needs more bytes than ``device`` has
    free: ``what`` needs about N GiB, but M GiB are free on ``device``; ``fix``."""
    free = available_memory(device)
    if need > free:
        raise CnnlabError(
            f"{what} needs about {need / GIB:,.1f} GiB, but {free / GIB:,.1f} GiB are free on "
            f"{device}; {fix}"
        )
