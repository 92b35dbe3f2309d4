"""Builds simplecnn_kernels._C: the CPU kernel always, the CUDA kernel when it can.

Build with `pip install --no-build-isolation -e .` so the extension is compiled against the
torch already installed (build isolation would fetch another one).

Environment switches:
  SIMPLECNN_BUILD_CUDA  auto (default): build csrc/cuda when torch has CUDA and a toolkit is found;
                        1: require it (fail loudly if it cannot be built); 0: skip it.
  CUDA_HOME             the toolkit root. When unset it is found from nvcc, following wrapper
                        scripts such as /usr/local/bin/nvcc -> /usr/local/cuda-13.0/bin/nvcc.
  TORCH_CUDA_ARCH_LIST  the GPU architectures to build for: torch's default (the visible GPUs'),
                        or Ampere and Hopper with PTX (8.0;9.0+PTX) on a machine without a GPU.
  MAX_JOBS              parallel compile jobs (ninja).
"""

import glob
import os
import re
import shutil

from setuptools import setup


def _toolkit_root(path):
    root = os.path.dirname(os.path.dirname(os.path.realpath(path)))
    return root if os.path.exists(os.path.join(root, "include", "cuda_runtime.h")) else None


def find_cuda_home():
    """The CUDA toolkit root, or None. torch guesses it as the parent of whatever `nvcc` is on
    PATH, which is wrong when that nvcc is a wrapper script; read the script's target instead."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        candidates.append(nvcc)
        with open(nvcc, "rb") as f:
            head = f.read(4096)
        if head.startswith(b"#!"):  # a wrapper: look for the real nvcc it runs
            candidates += re.findall(rb"(/\S+/bin/nvcc)\b", head)
    candidates.append("/usr/local/cuda/bin/nvcc")
    for candidate in candidates:
        root = _toolkit_root(os.fsdecode(candidate))
        if root:
            return root
    return None


# torch.utils.cpp_extension reads CUDA_HOME when it is imported.
_cuda_home = find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"  # the Makefile's default too


def build_cuda():
    switch = os.environ.get("SIMPLECNN_BUILD_CUDA", "auto").lower()
    if switch in ("0", "false", "no", "off"):
        return False
    # Decided from the installed torch and toolkit, never torch.cuda.is_available(): a build
    # machine without a GPU must still build the CUDA kernel.
    can = torch.version.cuda is not None and _cuda_home is not None
    if switch in ("1", "true", "yes", "on"):
        if not can:
            raise RuntimeError(
                f"SIMPLECNN_BUILD_CUDA={switch} but the CUDA kernel cannot be built: "
                f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={_cuda_home}"
            )
        return True
    return can


def cuda_wheel_includes():
    """Headers of the pip CUDA wheels (nvidia/*/include), which some torch headers include."""
    return sorted(
        path
        for site in {os.path.dirname(os.path.dirname(torch.__file__))}
        for path in glob.glob(os.path.join(site, "nvidia", "*", "include"))
    )


def extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # No -march=native: each instruction-set level is compiled by a target pragma in its own
    # translation unit, and the level is chosen at run time (csrc/cpu/cpu_capability.cpp).
    # -fopenmp makes at::parallel_for (an inline OpenMP loop) parallel. It is not passed to the
    # linker: the GOMP symbols then resolve to the libgomp torch itself loaded, so the kernel
    # shares torch's thread pool and obeys torch.set_num_threads.
    cxx_flags = ["-O3", "-fopenmp"]
    if build_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # torch derives the list from the visible GPUs and fails on a machine with none.
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        nvcc_flags = ["-O3", "-lineinfo"]  # no --use_fast_math: NaN/Inf must stay exact
        return CUDAExtension(
            "simplecnn_kernels._C",
            sources + sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu")),
            include_dirs=cuda_wheel_includes(),
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        )
    return CppExtension("simplecnn_kernels._C", sources, extra_compile_args={"cxx": cxx_flags})


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
