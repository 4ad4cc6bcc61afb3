"""Compile ``bnlab_cpu.cpp`` on first use and load it with ctypes.

The library needs only a C++17 compiler with OpenMP (g++ or clang++; ``$CXX`` picks one): no PyTorch headers,
so a build takes seconds-to-a-minute instead of minutes, and a missing compiler is a clean fallback rather than
an import error. The result is cached under ``$BNLAB_CACHE_DIR`` (default ``$XDG_CACHE_HOME/bnlab`` or
``~/.cache/bnlab``), keyed by a hash of the source, the compiler's version, the flags, this CPU's feature
flags (the code is built with ``-march=native``) and ``$BNLAB_CPU_ARCH`` (``generic``: build without
``-march=native``, the portable code), so a cached build is never run on a machine it was not made for.
Concurrent first uses wait on a file lock instead of compiling twice.

Each build writes a record beside the library (``bnlab_cpu-KEY.json``: its size and SHA-256), and the library is
loaded only when it matches: a cached file cut short (a full disk, an interrupted copy) would kill the process
with SIGBUS when the loader maps it, and an empty one would fail to load for good. A library that does not match
its record, or has none, is rebuilt.

Where the library cannot be built or loaded, :func:`load` returns None, :func:`failure_reason` says why, and
the reason is logged once (logger ``bnlab.kernels.cpu``) instead of raising.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger("bnlab.kernels.cpu")

SOURCE = Path(__file__).with_name("bnlab_cpu.cpp")
ABI_VERSION = 1
BASE_FLAGS = ("-O3", "-std=gnu++17", "-fopenmp", "-shared", "-fPIC", "-fno-math-errno")
# -march=native first; a compiler or assembler that cannot target this CPU gets the generic x86-64/aarch64 build.
ARCH_FLAGS = (("-march=native",), ())
# $BNLAB_CPU_ARCH=generic builds only the generic one: the portable code a CPU without AVX-512 runs (the vector
# extensions lowered to SSE2, the bfloat16 rounding without VCVTNEPS2BF16), which any machine can then test.
ARCH_ENV = "BNLAB_CPU_ARCH"
ARCH_CHOICES = {"native": ARCH_FLAGS, "generic": ((),)}
COMPILE_TIMEOUT_S = 600

_state: dict[str, object] = {}  # "lib": the loaded CDLL, or "reason": why there is none


def cache_dir() -> Path:
    """Where compiled libraries are kept: $BNLAB_CACHE_DIR, else $XDG_CACHE_HOME/bnlab, else ~/.cache/bnlab."""
    explicit = os.environ.get("BNLAB_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bnlab"


def find_compiler() -> str | None:
    """The C++ compiler to build with: $CXX, else the first of c++, g++, clang++ on the PATH; None if none."""
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def arch_choice() -> str:
    """$BNLAB_CPU_ARCH: "native" (the default: this CPU's instruction set) or "generic"; ValueError otherwise."""
    choice = os.environ.get(ARCH_ENV, "") or "native"
    if choice not in ARCH_CHOICES:
        raise ValueError(f"${ARCH_ENV} must be one of {', '.join(ARCH_CHOICES)}, got {choice!r}")
    return choice


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return os.uname().machine


def _build_key(compiler: str) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), version.encode(), " ".join(BASE_FLAGS).encode(), _cpu_flags().encode(),
                 arch_choice().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def library_file(compiler: str) -> Path:
    """Where the library built by ``compiler`` for this source, these flags and this CPU is cached."""
    return cache_dir() / "cpu-kernels" / f"bnlab_cpu-{_build_key(compiler)}.so"


def record_file(library: Path) -> Path:
    """The build record of ``library``: JSON with its ``size`` in bytes and its ``sha256``."""
    return library.with_suffix(".json")


def _fingerprint(library: Path) -> dict[str, object]:
    digest = hashlib.sha256()
    size = 0
    with open(library, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def mismatch(library: Path) -> str | None:
    """Why ``library`` must not be loaded (missing, no build record, another size or checksum), or None."""
    if not library.is_file():
        return "not built yet"
    try:
        record = json.loads(record_file(library).read_text())
    except (OSError, ValueError):
        return "it has no readable build record"
    if not isinstance(record, dict):
        return "its build record is not a JSON object"
    found = _fingerprint(library)
    if record.get("size") != found["size"]:
        return f"it holds {found['size']} bytes, its build record says {record.get('size')}"
    if record.get("sha256") != found["sha256"]:
        return "its checksum differs from its build record"
    return None


def compile_library(compiler: str, output: Path) -> None:
    """Compile the library into ``output``, -march=native first, else for the generic architecture (only the
    generic one where $BNLAB_CPU_ARCH=generic).

    Raises RuntimeError with the compilers' messages when no build works.
    """
    errors = []
    for arch in ARCH_CHOICES[arch_choice()]:
        cmd = [compiler, *BASE_FLAGS, *arch, str(SOURCE), "-o", str(output)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        if proc.returncode == 0:
            return
        errors.append(f"{' '.join(cmd)}: {proc.stderr.strip()[-800:]}")
    raise RuntimeError("compiling the CPU kernels failed: " + " | ".join(errors))


def _build(compiler: str, target: Path) -> None:
    """Compile into a temporary file beside ``target``, record its size and checksum, then rename it into place."""
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        compile_library(compiler, partial)
        # The record goes first: a reader that sees the new record with the old library finds them mismatched
        # and waits on the lock for this build, never the other way round.
        with tempfile.NamedTemporaryFile("w", dir=target.parent, suffix=".json", delete=False) as record:
            json.dump(_fingerprint(partial), record)
        os.replace(record.name, record_file(target))
        os.replace(partial, target)  # atomic: a reader sees the old state or a complete library
    finally:
        partial.unlink(missing_ok=True)


def _build_and_load() -> ctypes.CDLL:
    compiler = find_compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set $CXX, or install g++: apt-get install g++)")
    target = library_file(compiler)
    target.parent.mkdir(parents=True, exist_ok=True)
    if mismatch(target) is not None:
        with open(target.parent / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the library built
            why = mismatch(target)
            if why is not None:
                if target.exists():
                    logger.warning("bnlab: rebuilding the cached CPU kernels %s: %s", target, why)
                logger.info("bnlab: compiling the CPU kernels into %s (once per machine and version)", target)
                _build(compiler, target)
    # torch is imported first, so libgomp.so.1 resolves to the OpenMP runtime torch already loaded: one thread
    # pool for both, instead of two pools competing for the same cores.
    import torch  # noqa: F401

    lib = ctypes.CDLL(str(target))
    if lib.bnlab_abi_version() != ABI_VERSION:
        raise RuntimeError(f"{target} has ABI version {lib.bnlab_abi_version()}, expected {ABI_VERSION}")
    _declare(lib)
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    lib.bnlab_forward_train.argtypes = [i32, p, p, p, p, p, i64, i64, i64, i32, f64, i32, f64, p, p, p, i32]
    lib.bnlab_forward_eval.argtypes = [i32, p, p, p, p, p, p, p, i64, i64, i64, i32, f64, i32, f64, i32]
    lib.bnlab_backward.argtypes = [i32, p, p, p, p, p, p, p, i64, i64, i64, i32, i32, f64, i32, p, p, p, p, i32]
    for fn in (lib.bnlab_forward_train, lib.bnlab_forward_eval, lib.bnlab_backward):
        fn.restype = i32
    lib.bnlab_build_features.argtypes = []
    lib.bnlab_build_features.restype = i32


# Bits of bnlab_build_features(): the instruction sets the library was compiled to use.
FEATURE_AVX512F, FEATURE_AVX512BF16 = 1, 2


def build_features(lib: ctypes.CDLL) -> set[str]:
    """The instruction-set paths compiled into ``lib``: a subset of {"avx512f", "avx512bf16"}."""
    bits = lib.bnlab_build_features()
    return {name for bit, name in ((FEATURE_AVX512F, "avx512f"), (FEATURE_AVX512BF16, "avx512bf16")) if bits & bit}


def load() -> ctypes.CDLL | None:
    """The compiled library, building it on the first call; None (reason logged once) where it cannot be had."""
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    if "reason" in _state:
        return None
    try:
        lib = _build_and_load()
    except Exception as exc:  # any failure to build or load means "fall back", never a crash
        reason = f"{type(exc).__name__}: {exc}"
        _state["reason"] = reason
        logger.warning("bnlab: the 'cpu' batch-norm backend is unavailable, falling back: %s", reason)
        return None
    _state["lib"] = lib
    return lib


def failure_reason() -> str | None:
    """Why :func:`load` returned None, or None if it has not failed."""
    reason = _state.get("reason")
    return None if reason is None else str(reason)
