#!/usr/bin/env bash
# The GPU check of hdpo, for a machine with an NVIDIA GPU; about 10 minutes.
#
#   scripts/gpu_check.sh [--out DIR] [--cpu]
#
# Steps (each under its own time limit; a summary goes to DIR/summary.txt):
#   1. build:  `cargo build --release --features cuda` (the toolkit from the PATH,
#      else scripts/install_cuda_toolchain.sh; CUDA_COMPUTE_CAP from nvidia-smi),
#      or the binary named by $HDPO_BIN (a cuda build made elsewhere, for a
#      machine without cargo or network; its CUDA libraries are then looked up
#      in the Python nvidia-* wheels when the loader cannot find them)
#   2. parity: `hdpo model device-check` on the tiny LLaVA fixture: per-token
#      log-probs and LoRA gradients on the GPU against the CPU in f32
#      (tolerance 1e-4) and bf16 (0.25 nats per token, 10 % of the gradient scale)
#   3. bench:  `hdpo bench train` on the LLaVA-Med 7B shape (configs/shapes/llava-med-7b:
#      Mistral-7B decoder, CLIP ViT-L/14-336 tower, random weights), bf16, LoRA r 128
#      on q/k/v/o, 4 pairs (8 sequences) of 1024 tokens with 576 image tokens each:
#      tokens/s, MFU against the GPU's bf16 dense peak, peak host RSS and peak GPU
#      memory (nvidia-smi, sampled every 200 ms); 1 pair if 4 do not fit
#   4. train:  a short `hdpo train hdpo` on a small phantom benchmark with --device cuda
#
# --cpu runs the same steps without a GPU, as CI's tests do: the CPU build (or
# $HDPO_BIN), `device-check --device cuda` (which must say "skipped: no GPU"),
# the 7B shape through `hdpo model info`, the bench with the same flags on the
# tiny fixture's shape and 64 tokens, and the phantom training on the CPU.
#
# Fixtures: $HDPO_SHARED (default ../shared beside the repository) must hold
# fixtures/models/tiny_llava.
set -euo pipefail
cd "$(dirname "$0")/.."

out="target/gpu-check"
mode="gpu"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --cpu) mode="cpu"; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
shared="${HDPO_SHARED:-$(cd .. && pwd)/shared}"
fixture="$shared/fixtures/models/tiny_llava"
summary="$out/summary.txt"
: >"$summary"
failed=0

note() { echo "$*" | tee -a "$summary"; }
# step NAME SECONDS CMD...: run with a time limit, log to $out/NAME.log.
step() {
    local name="$1" secs="$2"; shift 2
    echo "== $name: $*"
    local t0=$SECONDS rc=0
    timeout "$secs" "$@" >"$out/$name.log" 2>&1 || rc=$?
    tail -n 20 "$out/$name.log"
    if [ "$rc" = 0 ]; then
        note "$name: ok ($((SECONDS - t0)) s)"
    else
        note "$name: FAILED (exit $rc after $((SECONDS - t0)) s; $out/$name.log)"
        failed=1
    fi
    return "$rc"
}

if [ ! -f "$fixture/config.json" ]; then
    echo "gpu_check.sh: no tiny LLaVA fixture at $fixture (set HDPO_SHARED)" >&2
    exit 1
fi

# ---------------------------------------------------------------- 1. build
if [ "$mode" = gpu ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo "gpu_check.sh: nvidia-smi not found: no NVIDIA GPU here (use --cpu)" >&2
        exit 1
    fi
    gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)"
    cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d '.')"
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$cap}"
    note "GPU: $gpu_name (compute capability $cap), driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n1)"
fi
if [ -n "${HDPO_BIN:-}" ]; then
    hdpo="$HDPO_BIN"
    note "build: using HDPO_BIN=$hdpo"
else
    if [ "$mode" = gpu ]; then
        if ! command -v nvcc >/dev/null 2>&1; then
            scripts/install_cuda_toolchain.sh
            # shellcheck disable=SC1091
            . target/cuda-toolchain/env.sh
        fi
        step build 1500 cargo build --release --features cuda || exit 1
    else
        step build 1500 cargo build --release || exit 1
    fi
    hdpo="$PWD/target/release/hdpo"
fi
if [ "$mode" = gpu ] && ldd "$hdpo" 2>/dev/null | grep -q 'not found'; then
    # CUDA libraries from the Python wheels (nvidia-cublas, nvidia-curand, ...).
    libdirs="$(python3 - <<'EOF' 2>/dev/null || true
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib", "lib*.so*"), recursive=True)})
print(":".join(dirs))
EOF
)"
    export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if ldd "$hdpo" | grep 'not found'; then
        echo "gpu_check.sh: $hdpo misses the libraries above" >&2
        exit 1
    fi
fi

# ---------------------------------------------------------------- 2. parity
if [ "$mode" = gpu ]; then
    step parity 300 "$hdpo" model device-check --model "$fixture" --device cuda --dtypes f32,bf16 || true
else
    step parity 300 "$hdpo" model device-check --model "$fixture" --device cuda || true
    if ! grep -q '^skipped: no GPU' "$out/parity.log"; then
        note "parity: expected 'skipped: no GPU' without a GPU"
        failed=1
    fi
    step parity_cpu 300 "$hdpo" model device-check --model "$fixture" --device cpu --dtypes f32 || true
fi

grep -h -E ' (f32|bf16|f16): token log-probs' "$out"/parity*.log | tee -a "$summary" || true

# ---------------------------------------------------------------- 3. bench
shape="configs/shapes/llava-med-7b"
step model_info 60 "$hdpo" model info --model "$shape" --seq-len 1024 --batch 8 --lora-r 128 || true
bench_flags=(--shape model --dtype bf16 --lora-r 128 --lora-targets q_proj,k_proj,v_proj,o_proj --images --json)
if [ "$mode" = gpu ]; then
    # bf16 dense peak (TFLOP/s, without sparsity) of the GPUs this is expected on.
    case "$gpu_name" in
        *H100*PCIe*) peak=756 ;;
        *H100*|*H200*|*GH200*) peak=989 ;;
        *A100*) peak=312 ;;
        *L40S*) peak=362 ;;
        *A10*) peak=125 ;;
        *) peak="" ;;
    esac
    [ -n "$peak" ] && bench_flags+=(--peak-tflops "$peak") || note "bench: unknown bf16 peak of $gpu_name: MFU not computed"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$out/gpu_memory.csv" 2>/dev/null &
    smi=$!
    # `hdpo model info` estimates about 135 GiB for 8 sequences of 1024 tokens
    # without activation checkpointing (48 GiB for 2): if 4 pairs do not fit,
    # 1 pair (the paper's batch of 4 over four GPUs) is measured as well.
    if ! step bench 300 "$hdpo" bench train --model "$shape" --device cuda --batch 4 --seq-len 1024 --iters 3 "${bench_flags[@]}"; then
        mv "$out/bench.log" "$out/bench_4pairs.log"
        step bench 240 "$hdpo" bench train --model "$shape" --device cuda --batch 1 --seq-len 1024 --iters 3 "${bench_flags[@]}" || true
    fi
    kill "$smi" 2>/dev/null || true
    wait "$smi" 2>/dev/null || true
    peak_mib="$(sort -n "$out/gpu_memory.csv" | tail -n1)"
    note "bench: peak GPU memory ${peak_mib:-unknown} MiB (nvidia-smi, all processes)"
else
    step bench 300 "$hdpo" bench train --model "$fixture" --device cpu --batch 1 --seq-len 64 --iters 1 --peak-tflops 1 "${bench_flags[@]}" || true
fi
if [ -s "$out/bench.log" ]; then
    python3 - "$out/bench.log" <<'EOF' | tee -a "$summary" || true
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):])
r, s = j["result"], j["shape"]
mfu = r.get("mfu")
mfu = "%.1f%%" % (100 * mfu) if mfu is not None else "n/a"
rss = r.get("peak_rss_bytes")
rss = "%.2f GiB" % (rss / 2**30) if rss else "unknown"
print(f"bench: hidden {s['hidden']} x {s['layers']} layers, {s['dtype']}, {s['batch']} pairs of {s['seq_len']} tokens "
      f"({s['image_tokens']} image tokens): {r['seconds_per_step']:.3f} s/step, {r['tokens_per_s']:.0f} tokens/s, "
      f"{r['achieved_tflops']:.4g} TFLOP/s, MFU {mfu}, peak host RSS {rss}")
EOF
fi

# ---------------------------------------------------------------- 4. train
dev=cuda
[ "$mode" = cpu ] && dev=cpu
ph="$out/phantom"
rm -rf "$ph"
train_phantom() {
    "$hdpo" phantom --out "$ph/data" --seed 0 --train 4 --test 2 &&
        "$hdpo" align --data "$ph/data" --format phantom-report --out "$ph/encoder" --epochs 2 &&
        "$hdpo" curate --data "$ph/data" --format phantom --heatmaps mask --encoder "$ph/encoder" --out "$ph/pairs/pairs.jsonl" &&
        "$hdpo" init-model --tokenizer-from "$ph/data" --format phantom --out "$ph/M" &&
        "$hdpo" train hdpo --model "$ph/M" --pairs "$ph/pairs/pairs.jsonl" --template llava_plain \
            --out "$ph/run" --preset phantom --epochs 1 --device "$dev" &&
        test -s "$ph/run/adapter/adapter_model.safetensors"
}
export hdpo ph dev
export -f train_phantom
step train 420 bash -c train_phantom || true

if [ "$failed" = 0 ]; then note "gpu_check: all steps passed ($mode)"; else note "gpu_check: some steps FAILED ($mode)"; fi
exit "$failed"
