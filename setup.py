"""Build fastnn's C++/CUDA extension, fastnn._C, against the torch already installed.

    pip install --no-build-isolation .        # or -e . for development

Environment:
    FASTNN_CUDA=auto|0|1   build the CUDA kernels: auto (default) when a CUDA toolkit
                           is found, 0 never, 1 always (fail if no toolkit)
    CUDA_HOME              the toolkit folder; found automatically otherwise
    TORCH_CUDA_ARCH_LIST   CUDA architectures, e.g. "8.0;9.0a"; default: the visible GPUs'
                           (a compute-capability 9.0 GPU as 9.0a), or DEFAULT_ARCHS when
                           no GPU is visible. Naming 9.0a (and not also 9.0) builds the
                           Hopper wgmma GEMM (FASTNN_SM90A)
    MAX_JOBS               parallel compile jobs (ninja)
    DEBUG=1                -O0 -g instead of -O3
"""
import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Ampere (+ its PTX for anything newer) and Hopper with its architecture-specific
# instructions (wgmma): sm_90a machine code runs on compute capability 9.0 only.
DEFAULT_ARCHS = "8.0+PTX;9.0a"


def log(msg):
    print(f"[fastnn setup] {msg}", file=sys.stderr)


def is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h"))


def find_cuda_home():
    """The CUDA toolkit folder, or None.

    `nvcc` on PATH may be a wrapper script outside the toolkit (so its folder's parent
    is not CUDA_HOME); every candidate is therefore checked for bin/nvcc and
    include/cuda_runtime.h before it is used.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    return next((c for c in candidates if is_toolkit(c)), None)


def nvidia_wheel_includes():
    """Header folders of the nvidia-* wheels installed with torch (cuBLAS, cuSPARSE, ...).

    torch's CUDA headers include cublas_v2.h and cusparse.h; a toolkit without those
    libraries still builds fastnn when the wheels provide them.
    """
    import site
    roots = site.getsitepackages() + [site.getusersitepackages()]
    found = []
    for root in roots:
        found += glob.glob(os.path.join(root, "nvidia", "cu*", "include"))
        found += glob.glob(os.path.join(root, "nvidia", "*", "include"))
    return sorted({p for p in found if os.path.isdir(p)})


def want_cuda():
    mode = os.environ.get("FASTNN_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        sys.exit(f"FASTNN_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return None
    home = find_cuda_home()
    if home is None and mode == "1":
        sys.exit("FASTNN_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME to the toolkit folder.")
    return home


cuda_home = want_cuda()
if cuda_home:
    # Must be set before torch.utils.cpp_extension is imported: it resolves CUDA_HOME then.
    os.environ["CUDA_HOME"] = cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

if cuda_home and torch.version.cuda is None:
    log("torch is a CPU-only build: the CUDA kernels are skipped.")
    cuda_home = None

if cuda_home and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
    # sm_90a (wgmma) needs CUDA 12; older toolkits get plain 9.0 and no wgmma GEMM.
    sm90a = int(torch.version.cuda.split(".")[0]) >= 12
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(
            f"{a}.{b}" + ("a" if (a, b) == (9, 0) and sm90a else "") for a, b in caps)
    else:
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS if sm90a else "8.0;9.0+PTX"

debug = os.environ.get("DEBUG", "0") == "1"
opt = ["-O0", "-g"] if debug else ["-O3"]
defines = [f'-DFASTNN_TORCH_VERSION="{torch.__version__}"']
include_dirs = [os.path.join(ROOT, "csrc", "include")]

sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "autograd", "*.cpp"))
                 + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
extra = {"cxx": opt + defines + ["-fopenmp", "-fvisibility=hidden"]}
Extension = CppExtension
if cuda_home:
    Extension = CUDAExtension
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    include_dirs += nvidia_wheel_includes()
    extra["cxx"].append("-DFASTNN_WITH_CUDA")
    extra["nvcc"] = opt + defines + ["-DFASTNN_WITH_CUDA", "-lineinfo",
                                     "--expt-relaxed-constexpr"]
    archs = {a.split("+")[0] for a in os.environ["TORCH_CUDA_ARCH_LIST"].replace(" ", ";").split(";")}
    numbered = {a: re.match(r"\d+\.\d+", a) for a in archs}  # names like "Ampere" are >= 8.0
    too_old = sorted(a for a, m in numbered.items() if m and float(m.group()) < 8.0)
    if too_old:
        sys.exit(f"fastnn's CUDA kernels need compute capability 8.0 or newer, but TORCH_CUDA_ARCH_LIST "
                 f"names {', '.join(too_old)}. Set TORCH_CUDA_ARCH_LIST to 8.0 or above, or FASTNN_CUDA=0 "
                 "to build the CPU kernels only.")
    if "9.0a" in archs and "9.0" not in archs:
        # Only then is the machine code a 9.0 GPU runs the sm_90a build (with both,
        # which one the driver picks is not specified).
        extra["nvcc"].append("-DFASTNN_SM90A")
        extra["cxx"].append("-DFASTNN_SM90A")
    log(f"CUDA toolkit: {cuda_home}; archs: {os.environ['TORCH_CUDA_ARCH_LIST']}")
else:
    log("building the CPU kernels only (no CUDA toolkit, FASTNN_CUDA=0, or a CPU-only torch)")
log(f"torch {torch.__version__}; MAX_JOBS={os.environ.get('MAX_JOBS', 'default')}")

setup(
    name="fastnn",
    version="0.1.0",
    description="Hand-written CPU and CUDA kernels for small PyTorch MLPs",
    packages=find_packages(include=["fastnn", "fastnn.*"]),
    ext_modules=[
        Extension(
            "fastnn._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.9",
    install_requires=["torch>=2.5"],
)
