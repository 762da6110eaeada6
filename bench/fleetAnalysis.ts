/**
 * Reading a fleet run (bench/fleetRun.ts) the way the scaling bench needs: steady steps, per
 * device and action kind where the time went (compute, sending, waiting for frames, the
 * reaction from a frame's arrival to the action's start, between steps), each boundary's hop
 * latency, process CPU from /proc, and the action times the simulator takes.
 */
import type { ActionCosts } from '../src/schedule/simulate.js';
import { deviceOf } from '../src/schedule/interleaved.js';
import type { ActionEvent, Hello, StatsMessage } from '../src/protocol/messages.js';
import { cpuBetween, type CpuSample } from './procCpu.js';
import { median } from './report.js';

/** What bench/fleetRun.ts prints. */
export interface FleetRun {
  readonly stepMs: number[];
  readonly stats: StatsMessage[];
  readonly steps: StatsMessage[];
  readonly actions: ActionEvent[];
  readonly hellos: Hello[];
  readonly cpu: CpuSample[];
}

/** Steps before the steady state (JIT, first packing of weights). */
export const WARM = 2;

const end = (a: ActionEvent) => a.t0 + a.ms;
const kindOf = (a: ActionEvent) => a.action[0] as 'F' | 'B' | 'W';

/** The run's shape: stages, devices (one worker process each), steady steps. */
export interface Shape {
  readonly stages: number;
  readonly devices: number;
  /** Steady step ids (after WARM). */
  readonly steps: readonly number[];
}

export function shapeOf(r: FleetRun, devices: number): Shape {
  const stages = Math.max(...r.actions.map((a) => a.rank)) + 1;
  const last = r.stepMs.length;
  return { stages, devices, steps: Array.from({ length: Math.max(0, last - WARM) }, (_, i) => WARM + 1 + i) };
}

/** Median ms per step after the warm-up. */
export function steadyStepMs(r: FleetRun): number {
  return median(r.stepMs.slice(WARM));
}

/** Time per step of one device and action kind, in ms (means over the steady steps). */
export interface KindRow {
  readonly device: number;
  readonly kind: 'F' | 'B' | 'W';
  readonly actions: number;
  /** Compute: the action's time less its sending and the frames read meanwhile. */
  readonly compute: number;
  readonly send: number;
  /** From the device's previous action's end until this action's frame was whole at the stage. */
  readonly wait: number;
  /** From then (or the previous action's end, if the frame was in) to the action's start: the stage machine, the event loop, reading frames. */
  readonly react: number;
  /** Frames read and events handled while the action awaited its publish. */
  readonly host: number;
}

/** Per device: the rest of its step. */
export interface DeviceRow {
  readonly device: number;
  /** From the device's last action of a step to its first of the next (the update, UPDATE's round trip, the next plan). */
  readonly between: number;
  /** The stage machine and frame reading as the stages count them (stats), ms per step. */
  readonly machine: number;
  readonly frames: number;
  /** CPU the worker process used per step (/proc), null when unknown. */
  readonly cpu: number | null;
}

/** Per device and kind, where the steady steps' time went. */
export function breakdown(r: FleetRun, s: Shape): { kinds: KindRow[]; devices: DeviceRow[] } {
  const steady = new Set(s.steps);
  const n = s.steps.length || 1;
  const kinds: KindRow[] = [];
  const devices: DeviceRow[] = [];
  for (let d = 0; d < s.devices; d++) {
    const mine = r.actions.filter((a) => deviceOf(a.rank, s.devices) === d).sort((a, b) => a.t0 - b.t0);
    const acc: Record<string, { actions: number; compute: number; send: number; wait: number; react: number; host: number }> = {};
    let between = 0;
    for (let i = 1; i < mine.length; i++) {
      const a = mine[i]!;
      if (!steady.has(a.step)) continue;
      const prev = mine[i - 1]!;
      const prevEnd = end(prev);
      const gap = Math.max(0, a.t0 - prevEnd);
      const k = (acc[kindOf(a)] ??= { actions: 0, compute: 0, send: 0, wait: 0, react: 0, host: 0 });
      k.actions++;
      k.send += a.sendMs ?? 0;
      k.host += a.hostMs ?? 0;
      k.compute += a.ms - (a.sendMs ?? 0) - (a.hostMs ?? 0);
      if (prev.step !== a.step) {
        between += gap;
        continue;
      }
      const inAt = a.inAt === undefined ? prevEnd : Math.min(a.t0, Math.max(prevEnd, a.inAt));
      k.wait += inAt - prevEnd;
      k.react += a.t0 - inAt;
    }
    for (const kind of ['F', 'B', 'W'] as const) {
      const k = acc[kind];
      if (k)
        kinds.push({
          device: d,
          kind,
          actions: k.actions / n,
          compute: k.compute / n,
          send: k.send / n,
          wait: k.wait / n,
          react: k.react / n,
          host: k.host / n,
        });
    }
    const ranks = Array.from({ length: s.stages }, (_, rank) => rank).filter((rank) => deviceOf(rank, s.devices) === d);
    const counter = (c: 'machineMs' | 'framesMs') => ranks.reduce((sum, rank) => sum + statDelta(r, rank, c, s), 0) / n;
    const w = window(r, s);
    const cpu = w ? cpuBetween(r.cpu, `stage${ranks[0]!}`, w.from, w.to) : null;
    devices.push({ device: d, between: between / n, machine: counter('machineMs'), frames: counter('framesMs'), cpu: cpu === null ? null : cpu / n });
  }
  return { kinds, devices };
}

/** A stage counter's growth over the steady steps (stats published after each step). */
function statDelta(r: FleetRun, rank: number, c: 'machineMs' | 'framesMs', s: Shape): number {
  const mine = r.steps.filter((x) => x.rank === rank);
  const at = (step: number) => mine.find((x) => x.step === step)?.[c];
  const a = at(WARM);
  const b = at(s.steps[s.steps.length - 1] ?? WARM);
  return a === undefined || b === undefined ? 0 : b - a;
}

/** Unix ms from the first action of the first steady step to the last action's end. */
export function window(r: FleetRun, s: Shape): { from: number; to: number } | null {
  const steady = new Set(s.steps);
  const acts = r.actions.filter((a) => steady.has(a.step));
  if (acts.length === 0) return null;
  return { from: Math.min(...acts.map((a) => a.t0)), to: Math.max(...acts.map(end)) };
}

/** CPU ms per steady step of a watched process (`nats`, `driver`), null when unknown. */
export function cpuPerStep(r: FleetRun, s: Shape, name: string): number | null {
  const w = window(r, s);
  const c = w ? cpuBetween(r.cpu, name, w.from, w.to) : null;
  return c === null ? null : c / (s.steps.length || 1);
}

/** One boundary's hop latencies: a frame handed to the bus on one stage until it is whole on the next. */
export interface Hop {
  readonly from: number;
  readonly to: number;
  readonly phase: 'FORWARD' | 'BACKWARD';
  readonly median: number;
  readonly p90: number;
  /** Median over the frames whose receiver was waiting for them (its previous action had ended): the transfer itself. */
  readonly waited: number | null;
  readonly count: number;
  readonly waitedCount: number;
}

export function hops(r: FleetRun, s: Shape): Hop[] {
  const steady = new Set(s.steps);
  const by = new Map(r.actions.filter((a) => steady.has(a.step)).map((a) => [`${a.step}/${a.rank}/${a.action}`, a]));
  // The end of the receiving device's previous action, to tell a waiting receiver from a busy one.
  const prevEnd = new Map<ActionEvent, number>();
  for (let d = 0; d < s.devices; d++) {
    const mine = r.actions.filter((a) => deviceOf(a.rank, s.devices) === d).sort((a, b) => a.t0 - b.t0);
    for (let i = 1; i < mine.length; i++) prevEnd.set(mine[i]!, end(mine[i - 1]!));
  }
  const out: Hop[] = [];
  for (let st = 0; st + 1 < s.stages; st++) {
    for (const phase of ['FORWARD', 'BACKWARD'] as const) {
      const [src, dst, kind] = phase === 'FORWARD' ? [st, st + 1, 'F'] : [st + 1, st, 'B'];
      const all: number[] = [];
      const waited: number[] = [];
      for (const a of by.values()) {
        if (a.rank !== src || a.action[0] !== kind || a.sendAt === undefined) continue;
        const b = by.get(`${a.step}/${dst}/${a.action}`);
        if (b?.inAt === undefined) continue;
        const hop = b.inAt - (a.t0 + a.sendAt);
        all.push(hop);
        // Waiting: the receiver's previous action ended before the frame arrived.
        const pe = prevEnd.get(b);
        if (pe !== undefined && b.inAt > pe + 0.05) waited.push(hop);
      }
      if (all.length === 0) continue;
      const sorted = [...all].sort((x, y) => x - y);
      out.push({
        from: src,
        to: dst,
        phase,
        median: median(all),
        p90: sorted[Math.floor(0.9 * (sorted.length - 1))]!,
        waited: waited.length ? median(waited) : null,
        count: all.length,
        waitedCount: waited.length,
      });
    }
  }
  return out;
}

/**
 * Each stage's mean action times for the simulator, from the steady steps: F, and B as the part
 * before its input gradients went out (an unsplit backward sends them first, then adds its
 * weight gradients: W); a split list's B and W as timed.
 */
export function measuredCosts(r: FleetRun, s: Shape, comm: number): (stage: number) => ActionCosts {
  const steady = new Set(s.steps);
  const costs = Array.from({ length: s.stages }, (_, st): ActionCosts => {
    const mine = r.actions.filter((a) => a.rank === st && steady.has(a.step));
    const of = (k: string) => mine.filter((a) => a.action[0] === k);
    // Means, not medians: a step is a sum of actions, and a shared machine's action times have long tails.
    const med = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
    const F = med(of('F').map((a) => a.ms));
    const split = of('W').length > 0;
    if (split) return { F, B: med(of('B').map((a) => a.ms)), W: med(of('W').map((a) => a.ms)), comm, inputGradientsFirst: true };
    const bs = of('B');
    const sends = bs.filter((a) => a.sendAt !== undefined);
    if (sends.length === 0) return { F, B: med(bs.map((a) => a.ms)), W: 0, comm, inputGradientsFirst: true };
    const B = med(sends.map((a) => a.sendAt! + (a.sendMs ?? 0)));
    return { F, B, W: Math.max(0, med(bs.map((a) => a.ms)) - B), comm, inputGradientsFirst: true };
  });
  return (st) => costs[st]!;
}

/** Median over steady steps of the time from a step's last action (any stage) to the next step's first. */
export function betweenSteps(r: FleetRun, s: Shape): number {
  const gaps: number[] = [];
  for (const step of s.steps) {
    const cur = r.actions.filter((a) => a.step === step);
    const next = r.actions.filter((a) => a.step === step + 1);
    if (cur.length && next.length) gaps.push(Math.max(0, Math.min(...next.map((a) => a.t0)) - Math.max(...cur.map(end))));
  }
  return gaps.length ? median(gaps) : 0;
}

/** Median over steady steps of a step's span, from its first action's start to its last action's end. */
export function stepSpan(r: FleetRun, s: Shape): number {
  const spans = s.steps.flatMap((step) => {
    const acts = r.actions.filter((a) => a.step === step);
    return acts.length ? [Math.max(...acts.map(end)) - Math.min(...acts.map((a) => a.t0))] : [];
  });
  return spans.length ? median(spans) : 0;
}

/** One step of the run drawn per device in text: a column per `msPerChar`, the action's kind and microbatch over its time. */
export function drawStep(r: FleetRun, s: Shape, step: number, width = 160): string {
  const acts = r.actions.filter((a) => a.step === step);
  if (acts.length === 0) return `(no actions in step ${step})`;
  const t0 = Math.min(...acts.map((a) => a.t0));
  const span = Math.max(...acts.map(end)) - t0;
  const per = span / width;
  const lines = [
    `step ${step}: ${span.toFixed(1)} ms, ${per.toFixed(2)} ms per column; letters are compute (F, B, W, microbatch at the start), '>' sending, '.' idle`,
  ];
  for (let d = 0; d < s.devices; d++) {
    const row = new Array<string>(width).fill('.');
    for (const a of acts.filter((x) => deviceOf(x.rank, s.devices) === d)) {
      const from = Math.floor((a.t0 - t0) / per);
      const to = Math.min(width, Math.max(from + 1, Math.round((end(a) - t0) / per)));
      const label = a.action;
      for (let c = from; c < to; c++) row[c] = c - from < label.length ? label[c - from]! : a.action[0]!.toLowerCase();
      if (a.sendAt !== undefined) {
        const sf = Math.floor((a.t0 + a.sendAt - t0) / per);
        const st = Math.min(to, Math.round((a.t0 + a.sendAt + (a.sendMs ?? 0) - t0) / per));
        for (let c = Math.max(from + label.length, sf); c < st; c++) row[c] = '>';
      }
    }
    lines.push(`${String(d).padStart(2)} |${row.join('')}|`);
  }
  return lines.join('\n');
}

/** The run as a Chrome trace (Perfetto): an event per action with its timings, flows from a send to the frame's arrival. */
export function chromeTrace(r: FleetRun, label: string): object {
  const origin = Math.min(...r.actions.map((a) => a.t0));
  const us = (t: number) => Math.round((t - origin) * 1000);
  const events: object[] = [{ name: 'process_name', ph: 'M', pid: 0, tid: 0, args: { name: label } }];
  const by = new Map(r.actions.map((a) => [`${a.step}/${a.rank}/${a.action}`, a]));
  let id = 0;
  for (const a of r.actions) {
    events.push({
      name: a.action,
      cat: a.action[0],
      ph: 'X',
      pid: 0,
      tid: a.rank,
      ts: us(a.t0),
      dur: Math.max(1, Math.round(a.ms * 1000)),
      args: { step: a.step, sendAt: a.sendAt, sendMs: a.sendMs, inAt: a.inAt === undefined ? undefined : a.inAt - origin, hostMs: a.hostMs },
    });
    if (a.sendAt === undefined) continue;
    const to = by.get(`${a.step}/${a.action[0] === 'F' ? a.rank + 1 : a.rank - 1}/${a.action}`);
    if (to?.inAt === undefined) continue;
    id++;
    events.push({ name: a.action[0] === 'F' ? 'activation' : 'gradient', cat: 'flow', ph: 's', id, pid: 0, tid: a.rank, ts: us(a.t0 + a.sendAt) });
    events.push({ name: a.action[0] === 'F' ? 'activation' : 'gradient', cat: 'flow', ph: 'f', bp: 'e', id, pid: 0, tid: to.rank, ts: us(to.inAt) });
  }
  return { traceEvents: events, displayTimeUnit: 'ms' };
}
