# Builds one CUDA extension (selective_scan_cuda or causal_conv1d_cuda) for
# sm_90 with the nvcc flags of mamba_ssm 2.2.4's / causal-conv1d 1.5.0.post8's
# setup.py, except: their other -gencode targets dropped, -lineinfo dropped
# (debug sections only: the kernels' code is byte-identical without it, and it
# is 2/3 of the compressed size), fatbin compressed (--compress-mode=size).
# Used by build.sh.
import os, sys
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

name, srcdir = os.environ["EXT_NAME"], os.environ["EXT_SRC"]
sources = os.environ["EXT_SOURCES"].split()
nvcc = ["-O3", "-std=c++17",
        "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
        "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math",
        "--ptxas-options=-v",
        "-gencode", "arch=compute_90,code=sm_90", "--threads", "4",
        "--compress-mode=size"]  # not in their setup.py: the device code ~12x smaller
setup(name=name,
      ext_modules=[CUDAExtension(name=name,
                                 sources=[os.path.join(srcdir, s) for s in sources],
                                 extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": nvcc},
                                 include_dirs=[srcdir])],
      cmdclass={"build_ext": BuildExtension})
