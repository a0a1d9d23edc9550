#!/usr/bin/env bash
# Install a CUDA 13.0 compiler toolchain from PyPI wheels into a folder (no
# root, no system CUDA needed), so that `cargo check/clippy/build --features
# cuda` works on a machine without a GPU or a CUDA installation.
#
#   scripts/install_cuda_toolchain.sh [--prefix DIR] [--libs]
#
#   --prefix DIR  where the wheels go (default: target/cuda-toolchain, which a
#                 clean clone can create and `cargo clean` removes)
#   --libs        also install the runtime libraries the final link needs
#                 (cuBLAS, cuRAND, NVRTC; about 600 MB) and a link stub for
#                 the driver library libcuda.so, for a fully linked binary
#
# It writes DIR/env.sh (source it: `. target/cuda-toolchain/env.sh`) and
# prints the same exports. Running it again with the same pins does nothing.
# It exits non-zero, saying why, when pip cannot install the wheels.
#
# Versions: cudarc 0.19.10 (candle 0.11.1) reads the toolkit version from
# `nvcc --version` and accepts 11.4 to 13.4 only (13.5 panics in its build
# script). The compiler pieces (nvcc, nvvm, crt, runtime headers) must come
# from one release: nvvm of one release with nvcc of another emits PTX that
# ptxas refuses. 13.0 is chosen because candle loads its kernels as PTX that
# the driver compiles at start, and a driver only accepts the PTX versions of
# its own CUDA release and older: PTX from 13.0 runs on any CUDA 13 driver
# (580 and newer).
set -euo pipefail
cd "$(dirname "$0")/.."

prefix="target/cuda-toolchain"
libs=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="$2"; shift 2 ;;
        --libs) libs=1; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "install_cuda_toolchain.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

compiler_pins=(
    "nvidia-cuda-nvcc==13.0.88"
    "nvidia-nvvm==13.0.88"
    "nvidia-cuda-crt==13.0.88"
    "nvidia-cuda-runtime==13.0.88"
    "nvidia-cuda-cccl==13.0.85"
)
lib_pins=(
    "nvidia-cuda-nvrtc==13.0.88"
    "nvidia-cublas==13.0.2.14"
    "nvidia-curand==10.4.0.35"
)
pins=("${compiler_pins[@]}")
if [ "$libs" = 1 ]; then pins+=("${lib_pins[@]}"); fi

mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
cu="$prefix/nvidia/cu13"
stamp="$prefix/installed.txt"
want="$(printf '%s\n' "${pins[@]}")"

write_env() {
    cat >"$prefix/env.sh.tmp" <<EOF
# CUDA toolchain from scripts/install_cuda_toolchain.sh; source this file.
export PATH="$cu/bin:\$PATH"
export CUDA_ROOT="$cu"
export CUDA_PATH="$cu"
export CUDA_HOME="$cu"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
EOF
    mv "$prefix/env.sh.tmp" "$prefix/env.sh"
}

# The final link needs unversioned names (libcublas.so) and the driver
# library, which no wheel ships (it comes with the NVIDIA driver). The stub
# defines every driver function cudarc declares (read from cudarc's source, as
# cargo has fetched it), as the toolkit's own lib/stubs/libcuda.so does, under
# the driver's soname, so the binary loads the real libcuda.so.1 at run time.
# Each stub function returns CUDA_ERROR_STUB_LIBRARY (34), so a binary that
# finds the stub instead of a driver reports an error rather than crashing.
link_stub() {
    for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
        if [ ! -f "$cu/lib/$lib" ]; then
            echo "install_cuda_toolchain.sh: $cu/lib/$lib is missing" >&2
            exit 1
        fi
        ln -sfn "$lib" "$cu/lib/${lib%.*}"
    done
    local src
    src="$(cargo metadata --format-version 1 --features cuda 2>/dev/null | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(p["manifest_path"].rsplit("/", 1)[0] + "/src/driver/sys/mod.rs")
        break
')"
    if [ -z "$src" ] || [ ! -f "$src" ]; then
        echo "install_cuda_toolchain.sh: cannot find cudarc's driver bindings (cargo fetch first)" >&2
        exit 1
    fi
    mkdir -p "$cu/lib/stubs"
    grep -o '^ *fn cu[A-Z][A-Za-z0-9_]*(' "$src" | sed 's/^ *fn \(.*\)(/\1/' | sort -u \
        | awk '{print "int " $1 "(void) { return 34; }"}' >"$cu/lib/stubs/libcuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cu/lib/stubs/libcuda.so" "$cu/lib/stubs/libcuda_stub.c"
    # Also under lib/: cudarc's build script records only the folders that
    # exist when it runs, and a build made before --libs has lib/ but not lib/stubs.
    ln -sfn stubs/libcuda.so "$cu/lib/libcuda.so"
    echo "libcuda.so link stub: $(wc -l <"$cu/lib/stubs/libcuda_stub.c") driver functions from $src"
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$cu/bin/nvcc" ]; then
    echo "CUDA toolchain already installed in $prefix"
else
    if python3 -m pip --version >/dev/null 2>&1; then pip=(python3 -m pip)
    elif command -v pip3 >/dev/null 2>&1; then pip=(pip3)
    else echo "install_cuda_toolchain.sh: no pip (python3 -m pip or pip3) to install the CUDA wheels" >&2; exit 1; fi
    echo "installing into $prefix: ${pins[*]}"
    rm -f "$stamp"
    if ! "${pip[@]}" install -q --disable-pip-version-check --no-deps --upgrade \
        --target "$prefix" "${pins[@]}"; then
        echo "install_cuda_toolchain.sh: pip could not install the CUDA wheels (${pins[*]});" \
            "is the package index reachable?" >&2
        exit 1
    fi
    if [ ! -x "$cu/bin/nvcc" ]; then
        echo "install_cuda_toolchain.sh: the wheels installed but $cu/bin/nvcc is missing" >&2
        exit 1
    fi
    printf '%s\n' "$want" >"$stamp"
fi
write_env
if [ "$libs" = 1 ]; then link_stub; fi
"$cu/bin/nvcc" --version | tail -n 2
echo "# environment (also in $prefix/env.sh):"
cat "$prefix/env.sh"
