#!/usr/bin/env bash
# The scaling bench at full size on a many-core host (the 16-core GPU machine), in one go of
# about 5 minutes: the uniform MLP (8 x 1024, batch 1024, m = 16) on p = 1, 2, 4, 8 worker
# processes with 1F1B (over NATS and over the direct path), ZB-H1 and interleaved, then the
# transport table and the per-hop latency table. Writes under $1, else $OUT, else ./bench-out:
#   scaling.md                    the tables (rewritten after every configuration)
#   <config>.timeline.txt         the last two steady steps drawn per device
#   <config>.trace.json           every action as a Chrome trace (Perfetto), with send -> arrival flows
#   <config>.json                 the raw run: step times, counters, action events, /proc CPU samples
#   transport.md, hops.md, machine.txt, log.txt
# Run from the repository root: bash .devpack/run.sh bash bench/device-scaling.sh
set -uo pipefail
out="${1:-${OUT:-bench-out}}"
mkdir -p "$out"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "cores: $(nproc)"
  lscpu 2>/dev/null | grep -E 'Model name|Socket|Thread|NUMA node\(s\)|L3' || true
  free -g 2>/dev/null | head -2 || true
  node --version
  nats-server --version 2>/dev/null || true
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"
start=$(date +%s)
# The 1F1B rows twice, relay and direct; each configuration is a fresh fleet (a few seconds to start).
SCALING_FULL="${SCALING_FULL:-1}" SCALING_OUT="$out" SCALING_TRANSPORTS="${SCALING_TRANSPORTS:-nats,direct}" \
  timeout "${SCALING_LIMIT:-360}" npx tsx bench/run.ts scaling > "$out/scaling-stdout.md" 2> "$out/log.txt"
echo "scaling: exit $? after $(( $(date +%s) - start )) s" | tee -a "$out/log.txt"
ROUNDS="${ROUNDS:-3}" timeout 70 npx tsx bench/run.ts transport > "$out/transport.md" 2>> "$out/log.txt"
echo "transport: exit $? after $(( $(date +%s) - start )) s" | tee -a "$out/log.txt"
timeout 80 npx tsx bench/run.ts hops > "$out/hops.md" 2>> "$out/log.txt"
echo "hops: exit $? after $(( $(date +%s) - start )) s" | tee -a "$out/log.txt"
cat "$out/scaling.md" "$out/transport.md" "$out/hops.md" 2>/dev/null
