#!/usr/bin/env bash
# The GPU checks, on a machine with an NVIDIA GPU (issue #17): the WebGPU equivalence tests,
# the bench's GPU section, and a 2-stage fleet on webgpu. Writes what it measured under
# ${OUT:-gpu-out}/. On a GPU machine without network, after ../shared/device/pack.sh here:
#   bash .devpack/run.sh bash scripts/gpu-check.sh
set -u
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
step() { echo "== $* ($(date +%T))" | tee -a "$out/log.txt"; }

step machine
{ nvidia-smi -L 2>&1; nproc; node -v; ldconfig -p | grep -c libvulkan; echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"; } | tee "$out/machine.txt"
node --import tsx -e "import('./src/compute/webgpu.ts').then(async (w) => console.log('adapters:', JSON.stringify(await w.listGpuAdapters())))" 2>&1 | tee -a "$out/machine.txt"

step "equivalence on webgpu (test/gpu)"
TROUPE_BACKEND=webgpu timeout 240 npx vitest run test/gpu > "$out/test-gpu.txt" 2>&1
echo "rc=$?" >> "$out/test-gpu.txt"
grep -E "✓|×|passed|failed|Error" "$out/test-gpu.txt" | head -20

step "bench gpu"
GPU_STEPS=${GPU_STEPS:-10} timeout 300 npx tsx bench/run.ts gpu > "$out/gpu.md" 2> "$out/gpu.err"
echo "rc=$?" >> "$out/gpu.err"
cat "$out/gpu.md"; tail -5 "$out/gpu.err"

step "fleet: troupe up, 2 workers on webgpu, 1 epoch of MNIST"
EPOCHS=1 TROUPE_BACKEND=webgpu timeout 150 node bin/troupe.mjs up examples/mnist.job.ts --backend webgpu > "$out/fleet.txt" 2>&1
echo "rc=$?" >> "$out/fleet.txt"
grep -E "backend|held-out|stage [0-9]|rc=|rror" "$out/fleet.txt" | head -20
step done
