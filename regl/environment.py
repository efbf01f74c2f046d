"""What a run ran on: package versions, CPU and threads, recorded beside every result.

Float results of CPU training depend on more than the code: torch picks its oneDNN and
BLAS kernels (and so the order of every float sum) by the CPU's instruction sets and cache
sizes, and on the thread count. Two runs are comparable digit for digit only when this
record matches.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE")
ISA_PREFIXES = ("avx", "amx", "fma", "sse4", "f16c")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux); empty elsewhere."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return {}
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


@lru_cache(maxsize=1)
def packages() -> dict[str, str]:
    """Every installed distribution's version, by lower-case name."""
    return dict(sorted((d.metadata["Name"].lower(), d.version) for d in metadata.distributions()))


def cpu() -> dict[str, Any]:
    info = _cpuinfo()
    flags = info.get("flags", "").split()
    return {
        "model_name": info.get("model name", platform.processor()),
        "family_model_stepping": "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping")),
        "cache_size": info.get("cache size"),
        "isa_flags": sorted(f for f in flags if f.startswith(ISA_PREFIXES)),
        "logical_cpus": os.cpu_count(),
    }


def describe() -> dict[str, Any]:
    """This process's environment: packages, CPU, torch's kernel choice and thread counts; and which derivation
    gave its seeds (regl.seeds.SEED_DERIVATION; a record without it predates regl.seeds)."""
    import torch

    from regl.seeds import SEED_DERIVATION

    return {
        "seed_derivation": SEED_DERIVATION,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu(),
        "torch": {
            "version": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
        },
        "thread_variables": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "packages": packages(),
    }
