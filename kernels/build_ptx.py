#!/usr/bin/env python3
"""Builds kernels/ptx/*.ptx from kernels/cuda/*.cu and checks it with ptxas.

NVRTC (libnvrtc.so.12 from the PyPI wheel nvidia-cuda-nvrtc-cu12==12.2.140) is
loaded with ctypes and compiles each CUDA source to PTX for compute_61; every
PTX file is then assembled with ptxas (from nvidia-cuda-nvcc-cu12==12.2.140)
for each architecture in ARCHS, which fails on any error. No GPU and no CUDA
toolkit is needed: check_ptx.sh installs the two wheels into a cached venv.

    build_ptx.py           write kernels/ptx/*.ptx, then run ptxas on them
    build_ptx.py --check   compile, fail if the result differs from the
                           committed PTX, then run ptxas on it

NVRTC 12.2 writes PTX ISA 8.2, the newest the 535 driver of Debian 12 can
JIT; the script refuses any other ISA version. Set NVRTC_LIB or PTXAS to use
another libnvrtc.so.12 or ptxas than the ones of the installed wheels.
"""

from __future__ import annotations

import argparse
import ctypes
import difflib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CUDA_DIR = HERE / "cuda"
PTX_DIR = HERE / "ptx"

NVRTC_VERSION = (12, 2)
PTX_ISA = ".version 8.2"
VIRTUAL_ARCH = "compute_61"
ARCHS = ("sm_61", "sm_75", "sm_86", "sm_89", "sm_90")
# Fixed options, so the same source always gives the same PTX: no line info,
# no debug info, an explicit language standard, contraction into FMA as the
# kernels expect (compensated sums use explicitly rounded intrinsics). Every
# function in the sources is annotated, so -default-device would change
# nothing. The nv::target constants that NVRTC's built-in headers leave as
# globals in every PTX file are inert (nothing reads them).
NVRTC_OPTIONS = (
    f"--gpu-architecture={VIRTUAL_ARCH}",
    "--std=c++17",
    "--fmad=true",
)


class BuildError(Exception):
    """A step of the build failed; the message says which and why."""


def wheel_dir(package: str) -> Path:
    """Directory of an installed `nvidia.*` wheel package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            f"Python package {package} is not installed; run kernels/check_ptx.sh, "
            "which installs the pinned wheels into a venv"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def load_nvrtc() -> ctypes.CDLL:
    path = os.environ.get("NVRTC_LIB") or str(
        wheel_dir("nvidia.cuda_nvrtc") / "lib" / "libnvrtc.so.12"
    )
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise BuildError(f"cannot load NVRTC from {path}: {e}") from e
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    if (major.value, minor.value) != NVRTC_VERSION:
        raise BuildError(
            f"{path} is NVRTC {major.value}.{minor.value}; the committed PTX is built "
            f"with NVRTC {NVRTC_VERSION[0]}.{NVRTC_VERSION[1]}"
        )
    return lib


def check(lib: ctypes.CDLL, result: int, call: str) -> None:
    if result != 0:
        message = lib.nvrtcGetErrorString(result).decode()
        raise BuildError(f"{call} failed: {message}")


def compile_ptx(lib: ctypes.CDLL, source: Path) -> str:
    """Compiles one CUDA source file to PTX text."""
    prog = ctypes.c_void_p()
    check(
        lib,
        lib.nvrtcCreateProgram(
            ctypes.byref(prog),
            source.read_bytes(),
            source.name.encode(),
            0,
            None,
            None,
        ),
        "nvrtcCreateProgram",
    )
    try:
        options = (ctypes.c_char_p * len(NVRTC_OPTIONS))(
            *(o.encode() for o in NVRTC_OPTIONS)
        )
        result = lib.nvrtcCompileProgram(prog, len(NVRTC_OPTIONS), options)
        log_size = ctypes.c_size_t()
        check(lib, lib.nvrtcGetProgramLogSize(prog, ctypes.byref(log_size)), "log size")
        log = ctypes.create_string_buffer(log_size.value)
        check(lib, lib.nvrtcGetProgramLog(prog, log), "log")
        text = log.value.decode(errors="replace").strip()
        if result != 0:
            raise BuildError(f"{source.name} does not compile:\n{text}")
        if text:
            raise BuildError(f"{source.name} compiles with warnings:\n{text}")
        size = ctypes.c_size_t()
        check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "PTX size")
        ptx = ctypes.create_string_buffer(size.value)
        check(lib, lib.nvrtcGetPTX(prog, ptx), "PTX")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    text = ptx.value.decode()
    if PTX_ISA not in text.splitlines():
        raise BuildError(f"{source.name}: PTX does not declare {PTX_ISA}")
    return text


def ptxas_path() -> str:
    return os.environ.get("PTXAS") or str(wheel_dir("nvidia.cuda_nvcc") / "bin" / "ptxas")


def assemble(ptxas: str, ptx: Path) -> None:
    """Assembles `ptx` for every architecture in ARCHS; raises on any error."""
    for arch in ARCHS:
        run = subprocess.run(
            [ptxas, f"-arch={arch}", "--warning-as-error", str(ptx), "-o", os.devnull],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            raise BuildError(
                f"ptxas -arch={arch} {ptx.name} failed:\n{run.stdout}{run.stderr}"
            )
        print(f"ptxas {arch:<6} {ptx.name}: ok")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="fail if the built PTX differs from kernels/ptx/ (writes nothing)",
    )
    args = parser.parse_args()
    if sys.version_info < (3, 11):
        raise BuildError("Python 3.11 or newer is required")

    sources = sorted(CUDA_DIR.glob("*.cu"))
    if not sources:
        raise BuildError(f"no CUDA sources in {CUDA_DIR}")
    lib = load_nvrtc()
    stale = []
    for source in sources:
        built = compile_ptx(lib, source)
        target = PTX_DIR / (source.stem + ".ptx")
        if args.check:
            committed = target.read_text() if target.exists() else ""
            if committed != built:
                diff = difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    built.splitlines(keepends=True),
                    f"committed/{target.name}",
                    f"built/{target.name}",
                )
                sys.stdout.writelines(list(diff)[:40])
                stale.append(target.name)
        else:
            PTX_DIR.mkdir(exist_ok=True)
            target.write_text(built)
            print(f"wrote {target.relative_to(HERE.parent)}")
    extra = sorted(
        p.name for p in PTX_DIR.glob("*.ptx") if not (CUDA_DIR / (p.stem + ".cu")).exists()
    )
    if extra:
        raise BuildError(f"PTX without a CUDA source: {', '.join(extra)}")
    if stale:
        raise BuildError(
            f"committed PTX is stale: {', '.join(stale)}; "
            "rebuild with kernels/build_ptx.py (from the venv of check_ptx.sh)"
        )

    # The files in kernels/ptx/ now equal the build (written or checked).
    ptxas = ptxas_path()
    for source in sources:
        assemble(ptxas, PTX_DIR / (source.stem + ".ptx"))
    print(f"PTX ok: {len(sources)} file(s), {VIRTUAL_ARCH}, {PTX_ISA}, {' '.join(ARCHS)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuildError as e:
        print(f"build_ptx: {e}", file=sys.stderr)
        sys.exit(1)
