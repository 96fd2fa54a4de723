"""Build script: metadata lives in pyproject.toml; this file only adds the native extensions.

Two plain pybind11 extensions are built from ``csrc/`` (no torch C++ API: they take raw pointers, so one build
works with any torch):

- ``meds_core._native``: the CPU kernel (C++17, OpenMP when the compiler supports it). Always attempted.
- ``meds_core._native_cuda``: the CUDA kernel, compiled by ``nvcc`` into an object linked (with the static CUDA
  runtime, so importing it needs no GPU and no CUDA libraries) into its own module. Built when a GPU is visible
  (``/dev/nvidiactl`` exists or ``nvidia-smi -L`` lists one) and ``nvcc`` is found (``CUDA_HOME``/``CUDA_PATH``,
  else ``PATH``), or with ``MEDS_FORCE_CUDA=1`` (pytorch_cluster's convention: a build machine without a GPU, CI).
  On a machine without a GPU a toolkit on PATH therefore costs nothing. A separate module keeps the CPU build free
  of any CUDA dependency.

Both are optional: a failed build warns and the package falls back to its pure-torch path (one warning at run
time). Switches:

- ``MEDS_FORCE_CUDA=1``: build the CUDA module even without a visible GPU, and fail the install if that is not
  possible (``.ci/run`` sets it whenever nvcc is present, so CI compiles the ``.cu`` on every run).
- ``MEDS_SKIP_CUDA=1``: never build the CUDA module.
- ``MEDS_SKIP_NATIVE=1``: build no extension at all (pure-torch install).
- CUDA architectures: ``TORCH_CUDA_ARCH_LIST`` (``"8.0;9.0+PTX"``) or ``CUDAARCHS`` (``"80;90-real"``, ``native``,
  ``all``, ``all-major``), else the GPUs ``nvidia-smi`` reports, else ``sm_90`` (+ its PTX, which newer GPUs JIT).
  One architecture keeps the build short: on a 2-core machine the CPU module takes ~14 s, the CUDA one ~17 s more.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"
DEFAULT_CUDA_ARCHS = ["9.0+PTX"]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def gpu_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU: the driver's control node, or a GPU listed by ``nvidia-smi -L``."""
    if os.path.exists("/dev/nvidiactl"):
        return True
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def find_cuda_home() -> str | None:
    """The CUDA toolkit root holding ``bin/nvcc`` and ``include/cuda_runtime.h``, or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:  # nvcc may be a wrapper script: ask it where its toolkit is
            dry = subprocess.run([nvcc, "--dryrun", "--version"], capture_output=True, text=True, timeout=60)
            top = re.search(r"_TOP_=(\S+)", dry.stdout + dry.stderr)
            if top:
                candidates.append(os.path.dirname(os.path.normpath(top.group(1))))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc" + (".exe" if os.name == "nt" else ""))) \
                and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")):
            return os.path.realpath(root)
    return None


def cuda_gencode_flags() -> tuple[list[str], str]:
    """nvcc ``-gencode`` flags and a short label (``sm_90+compute_90``) from the environment or the local GPUs."""
    items: list[tuple[str, bool, bool]] = []  # (arch digits, SASS, PTX)
    if os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
        for tok in re.split(r"[;\s,]+", os.environ["TORCH_CUDA_ARCH_LIST"].strip()):
            m = re.fullmatch(r"(\d+)\.(\d+)([a-z]?)(\+PTX)?", tok, flags=re.IGNORECASE)
            if not m:
                raise ValueError(f"TORCH_CUDA_ARCH_LIST: cannot read {tok!r}; use numbers such as '8.0;9.0+PTX'.")
            items.append((m.group(1) + m.group(2) + m.group(3).lower(), True, bool(m.group(4))))
    elif os.environ.get("CUDAARCHS", "").strip() in ("native", "all", "all-major"):
        return [f"-arch={os.environ['CUDAARCHS'].strip()}"], os.environ["CUDAARCHS"].strip()
    elif os.environ.get("CUDAARCHS", "").strip():
        for tok in re.split(r"[;\s,]+", os.environ["CUDAARCHS"].strip()):
            m = re.fullmatch(r"(\d+[a-z]?)(-real|-virtual)?", tok)
            if not m:
                raise ValueError(f"CUDAARCHS: cannot read {tok!r}; use CMake-style values such as '80;90-real'.")
            kind = m.group(2) or ""
            items.append((m.group(1), kind != "-virtual", kind != "-real"))
    else:
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=60)
            caps = sorted({c.strip() for c in smi.stdout.split() if re.fullmatch(r"\d+\.\d+", c.strip())})
        except (OSError, subprocess.SubprocessError):
            caps = []
        for cap in caps or DEFAULT_CUDA_ARCHS:
            major, minor = cap.replace("+PTX", "").split(".")
            items.append((major + minor, True, cap.endswith("+PTX")))
    flags, label = [], []
    for arch, sass, ptx in items:
        codes = ([f"sm_{arch}"] if sass else []) + ([f"compute_{arch}"] if ptx else [])
        flags += ["-gencode", f"arch=compute_{arch},code=[{','.join(codes)}]"]
        label += codes
    return flags, "+".join(label)


class BuildExt(build_ext):
    """build_ext that compiles ``.cu`` sources with nvcc and gives each extension its own temp folder
    (``csrc/meds_native.cpp`` is compiled once per module, with different macros)."""

    def build_extensions(self):
        if self.compiler.compiler_type == "unix":
            if self._has_openmp():
                for ext in self.extensions:
                    if ext.name == "meds_core._native":
                        ext.extra_compile_args["cxx"].append("-fopenmp")
                        ext.extra_link_args.append("-fopenmp")
            else:
                print("meds_core: the C++ compiler has no OpenMP; the CPU kernel runs single-threaded.")
        self.compiler.src_extensions.append(".cu")
        default_compile = self.compiler._compile

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            args = extra_postargs
            if isinstance(extra_postargs, dict):
                args = extra_postargs["nvcc" if src.endswith(".cu") else "cxx"]
            if src.endswith(".cu"):
                self.spawn([self._nvcc, "-c", src, "-o", obj, *pp_opts, *args])
            else:
                default_compile(obj, src, ext, cc_args, args, pp_opts)

        self.compiler._compile = _compile
        super().build_extensions()

    def build_extension(self, ext):
        self._nvcc = getattr(ext, "nvcc", None)
        build_temp = self.build_temp
        self.build_temp = os.path.join(build_temp, ext.name.rsplit(".", 1)[-1])
        try:
            super().build_extension(ext)
        finally:
            self.build_temp = build_temp

    def _has_openmp(self) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "omp.cpp")
            with open(src, "w") as f:
                f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
            try:
                objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
                self.compiler.link_executable(objs, os.path.join(tmp, "omp"), extra_postargs=["-fopenmp"])
                return True
            except Exception:  # CompileError / LinkError: no OpenMP
                return False


def native_extensions() -> list[Extension]:
    """The CPU extension (always) and the CUDA one (GPU visible or MEDS_FORCE_CUDA=1, and nvcc found); see the
    module docstring."""
    if _env_flag("MEDS_SKIP_NATIVE"):
        return []
    import pybind11

    includes = [pybind11.get_include(), CSRC]
    headers = [f"{CSRC}/checks.h", f"{CSRC}/gather.h"]  # listed so that sdists ship them and edits trigger rebuilds
    msvc = sys.platform == "win32"
    cxx = ["/O2", "/std:c++17", "/openmp"] if msvc else ["-O3", "-std=c++17", "-fvisibility=hidden",
                                                         "-fopenmp-simd"]
    exts = [Extension(
        "meds_core._native",
        sources=[f"{CSRC}/meds_native.cpp", f"{CSRC}/cpu/gather_cpu.cpp"],
        depends=headers + [f"{CSRC}/cpu/gather_cpu.h"],
        include_dirs=includes,
        extra_compile_args={"cxx": list(cxx)},
        extra_link_args=[],
        language="c++",
        optional=True,
    )]

    force, skip = _env_flag("MEDS_FORCE_CUDA"), _env_flag("MEDS_SKIP_CUDA")
    if force and skip:
        raise RuntimeError("MEDS_FORCE_CUDA=1 and MEDS_SKIP_CUDA=1 are both set; unset one of them.")
    if skip:
        return exts
    if not force and not gpu_visible():
        print("meds_core: no GPU visible, the CUDA kernel is not built (MEDS_FORCE_CUDA=1 builds it anyway)")
        return exts
    cuda_home = find_cuda_home()
    if cuda_home is None:
        if force:
            raise RuntimeError("MEDS_FORCE_CUDA=1 but nvcc was not found: set CUDA_HOME to the CUDA toolkit "
                               "(the folder holding bin/nvcc) or put nvcc on PATH.")
        return exts
    gencode, archs = cuda_gencode_flags()
    lib_dirs = [d for d in (os.path.join(cuda_home, "lib64"), os.path.join(cuda_home, "lib", "x64"),
                            os.path.join(cuda_home, "targets", f"{sysconfig.get_config_var('MULTIARCH') or ''}"
                                         .replace("-linux-gnu", "-linux"), "lib"))
                if os.path.isdir(d)]
    nvcc_args = ["-O3", "-std=c++17", f"-DMEDS_CUDA_ARCHS={archs}", *gencode]
    if not msvc:
        nvcc_args += ["-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden"]
    ext = Extension(
        "meds_core._native_cuda",
        sources=[f"{CSRC}/meds_native.cpp", f"{CSRC}/cuda/gather_cuda.cu"],
        depends=headers + [f"{CSRC}/cuda/gather_cuda.h"],
        include_dirs=includes + [os.path.join(cuda_home, "include")],
        define_macros=[("MEDS_WITH_CUDA", "1")],
        library_dirs=lib_dirs,
        libraries=["cudart_static"] + ([] if msvc else ["rt", "pthread", "dl"]),
        extra_compile_args={"cxx": list(cxx), "nvcc": nvcc_args},
        language="c++",
        optional=not force,
    )
    ext.nvcc = os.path.join(cuda_home, "bin", "nvcc")
    print(f"meds_core: building the CUDA kernel with {ext.nvcc} for {archs}")
    exts.append(ext)
    return exts


setup(ext_modules=native_extensions(), cmdclass={"build_ext": BuildExt})
