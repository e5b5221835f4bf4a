#!/usr/bin/env bash
# second_blas_kernel.sh — prints the name of an OpenBLAS kernel (an OPENBLAS_CORETYPE value) that
# this CPU can run and that differs from the one OpenBLAS picks by itself (or from the one already
# forced through OPENBLAS_CORETYPE), so that a second test run exercises other GEMM micro-kernels:
# Haswell (AVX2) on an AVX-512 machine, Sandybridge (AVX) on an AVX2 one, Nehalem (SSE4) below.
# Debian's OpenBLAS is built with DYNAMIC_ARCH, so every one of these kernels is in the library.
set -euo pipefail

flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
has() { [[ " $flags " == *" $1 "* ]]; }

# The kernels this CPU can run, best first: the first is what OpenBLAS picks unless told otherwise.
kernels=()
has avx512f && has avx512vl && has avx512bw && has avx512dq && kernels+=(SkylakeX)
has avx2 && has fma && kernels+=(Haswell)
has avx && kernels+=(Sandybridge)
kernels+=(Nehalem)

# The next kernel below the current one (never above: a forced kernel may be forced because the
# better ones misbehave on this CPU). A forced name outside the list (Zen, ...) counts as AVX2.
current=${OPENBLAS_CORETYPE:-${kernels[0]}}
case "${current,,}" in
  skylakex) level=0 ;; haswell | zen) level=1 ;; sandybridge) level=2 ;; nehalem) level=3 ;;
  *) level=1 ;;
esac
names=(SkylakeX Haswell Sandybridge Nehalem)
for k in "${kernels[@]}"; do
  for ((i = level + 1; i < ${#names[@]}; ++i)); do
    if [[ "$k" == "${names[$i]}" ]]; then
      echo "$k"
      exit 0
    fi
  done
done
echo "second_blas_kernel: no kernel below ${current} for this CPU (kernels: ${kernels[*]})" >&2
exit 1
