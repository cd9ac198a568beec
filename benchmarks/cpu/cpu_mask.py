"""Run a benchmark as on a CPU with AVX2 but no AVX-512, VNNI or AMX, on a host that has them.

Issue 22 sets one goal for AVX2-only CPUs (int8 >= 1.5x fp32) and another where VNNI is present
(>= 2x), and the host a session gets is one or the other by chance. ``--cpu avx2`` of the
inference benchmarks re-runs the script under ``avx2_only.c`` (an ``LD_PRELOAD`` library that
masks those features from the CPUID instruction through the kernel's CPUID faulting), so
onnxruntime, numpy and torch pick their AVX2 kernels; the figures then say "emulated". The
kernels run on this host's cores, so the AVX2 throughput of a real AVX2-only CPU may differ;
the 2026-12-04/05 runs on such a CPU are the check (benchmarks/inference/README.md).

The library is compiled with ``$CC`` (default ``cc``) into ``~/.cache/eostream/cpu-mask/`` keyed
by the source's hash, once.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("avx2_only.c")
MARKER = "EOSTREAM_CPU_MASK"  # set in the re-run process: which mask it runs under
MODES = ("host", "avx2")


class MaskError(RuntimeError):
    """The mask cannot be used here (one line, for the benchmark's parser.error)."""


def cpu_flags() -> set[str]:
    """The flags of /proc/cpuinfo's first processor (the kernel's view, never masked)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def library(cache: Path | None = None) -> Path:
    """The compiled ``avx2_only.so`` (built on first use)."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise MaskError("--cpu avx2 needs Linux on x86-64")
    if "cpuid_fault" not in cpu_flags():
        raise MaskError("--cpu avx2 needs CPUID faulting (no cpuid_fault in /proc/cpuinfo)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source).hexdigest()[:16]
    folder = (cache or Path.home() / ".cache" / "eostream" / "cpu-mask") / key
    target = folder / "avx2_only.so"
    if target.exists():
        return target
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise MaskError("--cpu avx2 needs a C compiler (cc, or $CC) to build avx2_only.c")
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"avx2_only.so.{os.getpid()}"
    done = subprocess.run(  # noqa: S603
        [compiler, "-O2", "-shared", "-fPIC", "-o", str(partial), str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise MaskError(f"could not build avx2_only.c: {first}")
    partial.replace(target)
    return target


def rerun_under(mode: str) -> None:
    """Re-run this script under ``mode``'s mask (``exec``: this call returns only for ``host``
    or when already masked)."""
    if mode == "host" or os.environ.get(MARKER) == mode:
        return
    if mode not in MODES:
        raise MaskError(f"unknown CPU mode {mode!r}: one of {', '.join(MODES)}")
    preload = " ".join(filter(None, [str(library()), os.environ.get("LD_PRELOAD", "")]))
    env = {**os.environ, "LD_PRELOAD": preload, MARKER: mode}
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)  # noqa: S606


def describe() -> str:
    """What this process's libraries see, checked: ``host``, or ``avx2 only (emulated ...)``
    once numpy confirms AVX-512 and VNNI are hidden (raises MaskError if they are not)."""
    mode = os.environ.get(MARKER, "host")
    if mode == "host":
        return "host"
    # numpy's own dispatch table: which CPU features its CPUID probe found in this process
    seen = importlib.import_module("numpy._core._multiarray_umath").__cpu_features__
    shown = {k: bool(seen.get(k)) for k in ("AVX2", "AVX512F", "AVX512VNNI")}
    if not shown["AVX2"] or shown["AVX512F"] or shown["AVX512VNNI"]:
        raise MaskError(f"the CPUID mask did not take: numpy sees {shown}")
    return (
        "avx2 only, EMULATED (benchmarks/cpu/avx2_only.c masks AVX-512, VNNI and AMX from "
        "CPUID; numpy sees avx2=yes avx512f=no avx512vnni=no)"
    )


def add_option(parser: argparse.ArgumentParser) -> None:
    """A benchmark's ``--cpu`` option."""
    parser.add_argument(
        "--cpu",
        choices=MODES,
        default="host",
        help="avx2: everything as on a CPU with AVX2 but no AVX-512/VNNI (emulated by masking "
        "CPUID; benchmarks/cpu/cpu_mask.py)",
    )


def enter(parser: argparse.ArgumentParser, mode: str) -> str:
    """Run on under ``mode`` (re-running the script under its mask when needed) and say what
    the libraries see (:func:`describe`); a mask that cannot be used ends the run with one line."""
    try:
        rerun_under(mode)
        return describe()
    except MaskError as error:
        parser.error(str(error))
