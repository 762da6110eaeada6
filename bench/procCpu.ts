/** CPU time of processes from /proc (Linux): nats-server, the workers, the driver; sampled over a run. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

let ticks: number | undefined;

/** Clock ticks per second of /proc's utime and stime (getconf CLK_TCK, 100 on Linux as a rule). */
function clockTicks(): number {
  if (ticks === undefined) {
    try {
      ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticks = 100;
    }
  }
  return ticks;
}

/** User + system CPU milliseconds of process `pid` so far; null where /proc has none (not Linux, gone). */
export function cpuMs(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which sits in parentheses and may hold spaces: state is field 3.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / clockTicks();
  } catch {
    return null;
  }
}

/** One sample: Unix ms, and the CPU ms of each watched process (by name) at that time. */
export interface CpuSample {
  readonly t: number;
  readonly cpu: Readonly<Record<string, number | null>>;
}

/**
 * Samples the CPU time of named processes every `everyMs` until stopped. `pids()` is asked at
 * every sample, so processes that appear later (workers saying hello) are watched from then on.
 */
export function sampleCpu(pids: () => Readonly<Record<string, number>>, everyMs = 100): { stop(): CpuSample[] } {
  const samples: CpuSample[] = [];
  const take = () => {
    const cpu: Record<string, number | null> = {};
    for (const [name, pid] of Object.entries(pids())) cpu[name] = cpuMs(pid);
    samples.push({ t: performance.timeOrigin + performance.now(), cpu });
  };
  take();
  const timer = setInterval(take, everyMs);
  return {
    stop: () => {
      clearInterval(timer);
      take();
      return samples;
    },
  };
}

/** CPU ms process `name` used between Unix times `from` and `to`, interpolated between samples; null if unknown. */
export function cpuBetween(samples: readonly CpuSample[], name: string, from: number, to: number): number | null {
  const at = (t: number): number | null => {
    const known = samples.filter((s) => typeof s.cpu[name] === 'number');
    if (known.length === 0 || t < known[0]!.t || t > known[known.length - 1]!.t) return null;
    const i = known.findIndex((s) => s.t >= t);
    if (i <= 0) return known[Math.max(0, i)]!.cpu[name] as number;
    const a = known[i - 1]!;
    const b = known[i]!;
    const va = a.cpu[name] as number;
    const vb = b.cpu[name] as number;
    return va + ((vb - va) * (t - a.t)) / (b.t - a.t);
  };
  const a = at(from);
  const b = at(to);
  return a === null || b === null ? null : b - a;
}
