"""OpenBLAS's kernels for FAISS: chosen from the CPU's flags, before FAISS loads the library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from search.blas import choose_openblas_kernels

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fpu sse2 avx2 avx512f avx512bw", "SkylakeX"), ("fpu sse2 avx2", "Haswell"), ("fpu", None)],
)
def test_the_kernels_follow_the_cpu_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str, expected: str | None
) -> None:
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: {flags}\n"
    )
    assert choose_openblas_kernels(cpuinfo) == expected
    assert choose_openblas_kernels(tmp_path / "absent") == expected  # set once, then kept


def test_a_users_setting_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    (tmp_path / "cpuinfo").write_text("flags\t\t: avx2 avx512f\n")
    assert choose_openblas_kernels(tmp_path / "cpuinfo") == "Haswell"


def test_faiss_loads_the_kernels_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a fresh process, as a server starts: importing the package before faiss decides
    which kernels the library FAISS bundles runs (on this CPU, never the SSE3 fallback)."""
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    expected = choose_openblas_kernels()
    if expected is None:
        pytest.skip("this CPU has neither AVX2 nor AVX-512 (or is not Linux)")
    probe = "import search\nfrom search.blas import faiss_kernels\nprint(faiss_kernels())"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    loaded = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    if loaded == "None":
        pytest.skip("this FAISS build does not bundle OpenBLAS")
    assert loaded.lower() == expected.lower()
