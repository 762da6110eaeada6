/**
 * Schedules for devices that host several stages ("virtual stages", chunks): interleaved
 * 1F1B (Megatron-LM) and looped breadth-first (PyTorch's ScheduleLoopedBFS). The model is
 * cut into d x v stages; device k hosts stages k, k + d, k + 2d, ... (non-adjacent slices,
 * so a microbatch visits every device v times). A device runs one action at a time, in the
 * order of its device list; each stage's own list is that order filtered to the stage.
 */
import { ScheduleError } from '../errors.js';
import { formatAction, type Action, type Schedule } from './action.js';
import { checkSize } from './gpipe.js';
import { oneFOneB } from './oneFOneB.js';

/** Per device, its actions (of all the stages it hosts) in the order it runs them. */
export type DeviceSchedule = readonly (readonly Action[])[];

/** A schedule together with the devices' order, when devices host several stages. */
export interface PlacedSchedule {
  /** Per stage, its actions in order. */
  readonly stages: Schedule;
  /** Per device, the order of all its stages' actions; absent when each device hosts one stage. */
  readonly devices?: DeviceSchedule;
}

/** The device hosting `stage` when `devices` devices host the stages round robin. */
export function deviceOf(stage: number, devices: number): number {
  return stage % devices;
}

/** Each stage's list: its device's order, filtered to the stage. */
export function stageRows(devices: DeviceSchedule, stages: number): Schedule {
  const rows: Action[][] = Array.from({ length: stages }, () => []);
  for (const row of devices) for (const a of row) rows[a.stage]!.push(a);
  return rows;
}

/**
 * For each stage, the position of each of its actions in its device's list (as sent in a
 * step plan, so that co-hosted stages take turns in the device's order).
 */
export function devicePositions(devices: DeviceSchedule, stages: number): number[][] {
  const pos: number[][] = Array.from({ length: stages }, () => []);
  for (const row of devices) row.forEach((a, i) => pos[a.stage]!.push(i));
  return pos;
}

function checkChunks(d: number, m: number, v: number, what: string): void {
  checkSize(d, m);
  if (!Number.isInteger(v) || v < 1) throw new ScheduleError(`${what}: virtual stages per device ${v} must be a positive integer`);
}

/**
 * Interleaved 1F1B for `d` devices, `v` stages per device and `m` microbatches (m a multiple
 * of d, as Megatron-LM requires). Forwards go in rounds of d microbatches through chunk 0,
 * then the same d through chunk 1, ...; backwards likewise through the chunks in reverse.
 * Device k warms up with min(2(d - k - 1) + (v - 1)d, mv) forwards, then alternates one
 * forward and one backward, then drains the backwards. The bubble is that of 1F1B divided
 * by v: (d-1)/v units of (F+B) against m.
 *
 * ```
 * d=2 v=2 m=4 (stages 0 and 2 on device 0, 1 and 3 on device 1)
 * device 0: 0F0 0F1 2F0 2F1 0F2 2B0 0F3 2B1 2F2 0B0 2F3 0B1 2B2 2B3 0B2 0B3
 * device 1: 1F0 1F1 3F0 3B0 3F1 3B1 1F2 1B0 1F3 1B1 3F2 3B2 3F3 3B3 1B2 1B3
 * ```
 */
export function interleaved1F1B(d: number, m: number, v: number): PlacedSchedule {
  checkChunks(d, m, v, 'interleaved 1F1B');
  if (v === 1) {
    const rows = oneFOneB(d, m); // one stage per device: plain 1F1B
    return { stages: rows, devices: rows };
  }
  if (m % d !== 0) throw new ScheduleError(`interleaved 1F1B needs the microbatch count (${m}) to be a multiple of the device count (${d})`);
  const total = m * v;
  // The k-th forward (backward) of a device: its chunk and microbatch.
  const chunkOf = (k: number, backward: boolean) => {
    const c = Math.floor(k / d) % v;
    return backward ? v - 1 - c : c;
  };
  const mbOf = (k: number) => Math.floor(k / (d * v)) * d + (k % d);
  const devices: Action[][] = [];
  for (let dev = 0; dev < d; dev++) {
    const f = (k: number): Action => ({ stage: chunkOf(k, false) * d + dev, kind: 'F', microbatch: mbOf(k) });
    const b = (k: number): Action => ({ stage: chunkOf(k, true) * d + dev, kind: 'B', microbatch: mbOf(k) });
    const warmup = Math.min(2 * (d - dev - 1) + (v - 1) * d, total);
    const row: Action[] = [];
    for (let k = 0; k < warmup; k++) row.push(f(k));
    for (let k = 0; k < total - warmup; k++) row.push(f(warmup + k), b(k));
    for (let k = total - warmup; k < total; k++) row.push(b(k));
    devices.push(row);
  }
  return { stages: stageRows(devices, d * v), devices };
}

/**
 * Looped breadth-first (PyTorch's ScheduleLoopedBFS) for `d` devices, `v` stages per device
 * and `m` microbatches: each device runs every forward of its first stage, then of its next,
 * ..., then every backward of its last stage, then of the one before. GPipe's fill and drain
 * per device, with v stages each: all m microbatches are held at the turn.
 */
export function loopedBFS(d: number, m: number, v: number): PlacedSchedule {
  checkChunks(d, m, v, 'looped BFS');
  const devices: Action[][] = [];
  for (let dev = 0; dev < d; dev++) {
    const row: Action[] = [];
    for (let c = 0; c < v; c++) for (let i = 0; i < m; i++) row.push({ stage: c * d + dev, kind: 'F', microbatch: i });
    for (let c = v - 1; c >= 0; c--) for (let i = 0; i < m; i++) row.push({ stage: c * d + dev, kind: 'B', microbatch: i });
    devices.push(row);
  }
  return { stages: stageRows(devices, d * v), devices };
}

/** Draws a device schedule as a table, one row per device: `0: 0F0 2F0 ...`. */
export function formatDeviceSchedule(devices: DeviceSchedule): string[] {
  return devices.map((row, i) => `${i}: ${row.map(formatAction).join(' ')}`);
}
