# source this file: an AVX2-only host emulated on an AVX-512 one (numba's target, torch's kernels, MKL, oneDNN)
export NUMBA_CPU_NAME=haswell
NUMBA_CPU_FEATURES="$(python -c '
import llvmlite.binding as llvm
off = ("avx512", "amx", "avxvnni", "avxifma", "avxneconvert", "avx10", "vpclmulqdq", "vaes", "gfni", "evex512")
f = llvm.get_host_cpu_features()
print(",".join(("-" if k.startswith(off) or not v else "+") + k for k, v in f.items()))')"
export NUMBA_CPU_FEATURES
export ATEN_CPU_CAPABILITY=avx2
export MKL_ENABLE_INSTRUCTIONS=AVX2
export ONEDNN_MAX_CPU_ISA=AVX2
