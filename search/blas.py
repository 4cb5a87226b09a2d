"""OpenBLAS's kernels for FAISS, chosen by what the CPU can do rather than by its model name.

FAISS's wheels bundle OpenBLAS 0.3.15, which picks its kernels by CPU model and falls back to
its SSE3 ones ("Prescott") for a model it does not know, as a cloud VM's "Intel(R) Xeon(R)
Processor" is. FAISS's matrix products (k-means, assigning a build's vectors to lists, any
batch of queries) then run four to five times slower (benchmarks/openblas_kernels.py). The
library reads OPENBLAS_CORETYPE once, as it loads with FAISS: this must run before `import
faiss`, which is why the package runs it on import. A value the user set wins.
"""

from __future__ import annotations

import os
from pathlib import Path

# The newest kernels OpenBLAS 0.3.15 has for each instruction set, best first.
KERNELS = (("avx512f", "SkylakeX"), ("avx2", "Haswell"))


def choose_openblas_kernels(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """Set OPENBLAS_CORETYPE from the CPU's flags unless it is set; the kernels, or None."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return os.environ["OPENBLAS_CORETYPE"]
    try:
        flags = set(_flags(cpuinfo.read_text(errors="replace")))
    except OSError:  # not Linux: OpenBLAS detects as it does
        return None
    for flag, kernels in KERNELS:
        if flag in flags:
            os.environ["OPENBLAS_CORETYPE"] = kernels
            return kernels
    return None


def faiss_kernels() -> str | None:
    """The kernels the OpenBLAS that FAISS bundles runs (it loads with faiss), or None if
    this FAISS build bundles none."""
    import ctypes

    import faiss

    libs = Path(faiss.__file__).parent.parent.glob("faiss*.libs/libopenblas*")
    if (library := next(libs, None)) is None:
        return None
    blas = ctypes.CDLL(str(library))
    blas.openblas_get_corename.restype = ctypes.c_char_p
    return blas.openblas_get_corename().decode()


def _flags(cpuinfo: str) -> list[str]:
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return value.split()
    return []
