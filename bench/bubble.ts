/**
 * The bubble of every schedule, three ways side by side: measured on a fleet (one worker
 * process per device), simulated with the per-action times measured in that same run, and
 * the papers' formulas. Model: the uniform MLP (8 equal 1024-wide layers), so stages do
 * equal work; p = 2 and 4 devices (4 processes on 2 cores time-share, which shows in the
 * measured column), m = 8.
 */
import { selectBackend } from '../src/compute/backend.js';
import { deviceOf } from '../src/schedule/interleaved.js';
import { buildPlacedSchedule } from '../src/schedule/schedules.js';
import { simulate } from '../src/schedule/simulate.js';
import { machineLine, median, table } from './report.js';
import { tracedRun } from './tracedRun.js';

const M = 8;
const BATCH = 512;
const STEPS = Number(process.env['BENCH_STEPS'] ?? 6);

interface Config {
  readonly schedule: string;
  readonly devices: number;
  readonly v: number;
}

/** The papers' bubble: idle share of device time. */
function formula(c: Config): { value: number; text: string } {
  const d = c.devices;
  if (c.schedule === 'zbh1') return { value: (d - 1) / (3 * M + d - 1), text: '(p-1)/(3m+p-1), F=B=W' };
  if (c.v > 1) {
    const k = (d - 1) / c.v;
    return { value: k / (M + k), text: '((p-1)/v)/(m+(p-1)/v)' };
  }
  return { value: (d - 1) / (M + d - 1), text: '(p-1)/(m+p-1)' };
}

interface Measured {
  readonly bubble: number;
  readonly costs: { F: number; B: number; W: number };
  readonly stepMs: number;
}

/** One fleet run: each device's idle share of the steady steps, and the mean action times. */
async function measure(c: Config): Promise<Measured> {
  const result = await tracedRun({
    BENCH_MODEL: 'uniform',
    BENCH_STAGES: String(c.devices * c.v),
    BENCH_V: String(c.v),
    BENCH_M: String(M),
    BENCH_SCHEDULE: c.schedule,
    BENCH_BATCH: String(BATCH),
    BENCH_STEPS: String(STEPS),
  });
  const actions = result.actions.filter((e) => e.args!.step! > 1 && e.args!.step! <= STEPS);
  // Per step and device: the span from its first action's start to the step's last end, and its busy time.
  const idle: number[] = [];
  for (let s = 2; s <= STEPS; s++) {
    const step = actions.filter((e) => e.args!.step === s);
    if (step.length === 0) continue;
    const start = Math.min(...step.map((e) => e.ts));
    const end = Math.max(...step.map((e) => e.ts + e.dur));
    for (let dev = 0; dev < c.devices; dev++) {
      const busy = step.filter((e) => deviceOf(e.tid, c.devices) === dev).reduce((n, e) => n + e.dur, 0);
      idle.push(1 - busy / (end - start));
    }
  }
  const mean = (kind: string) => {
    const ds = actions.filter((e) => e.name.startsWith(kind)).map((e) => e.dur / 1000);
    return ds.length ? median(ds) : 0;
  };
  return { bubble: idle.reduce((a, b) => a + b, 0) / idle.length, costs: { F: mean('F'), B: mean('B'), W: mean('W') }, stepMs: median(result.stepMs.slice(1)) };
}

export async function benchBubble(): Promise<string> {
  await selectBackend({ prefer: 'wasm', log: null }); // the workers' backend, named in the machine line
  const configs: Config[] = [];
  for (const devices of [2, 4]) {
    for (const schedule of ['gpipe', '1f1b', 'zbh1']) configs.push({ schedule, devices, v: 1 });
    configs.push({ schedule: 'interleaved', devices, v: 2 }, { schedule: 'loopedbfs', devices, v: 2 });
  }
  const rows: string[][] = [];
  for (const c of configs) {
    const placed = buildPlacedSchedule(c.schedule, c.devices * c.v, M, c.v);
    const got = await measure(c);
    const split = c.schedule === 'zbh1';
    // Simulated with this run's action times (a split B and W are timed apart; else B holds both).
    const simMeasured = simulate(placed, split ? got.costs : { F: got.costs.F, B: got.costs.B, W: 0 }).bubble;
    const simUnit = simulate(placed, split ? { F: 1, B: 1, W: 1 } : { F: 1, B: 2 }).bubble;
    const f = formula(c);
    const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
    rows.push([
      String(c.devices),
      c.v > 1 ? `${c.schedule}, v=${c.v}` : c.schedule,
      got.stepMs.toFixed(0),
      pct(got.bubble),
      pct(simMeasured),
      pct(simUnit),
      `${pct(f.value)} ${f.text}`,
      `F ${got.costs.F.toFixed(1)} / B ${got.costs.B.toFixed(1)}${split ? ` / W ${got.costs.W.toFixed(1)}` : ''}`,
    ]);
  }
  return [
    `### Bubble by schedule: measured, simulated, formula (uniform MLP ${8} x 1024, batch ${BATCH}, m = ${M})`,
    '',
    machineLine(),
    '',
    "Measured: each device's idle share of a step (from the first action to the last), averaged over devices and steps 2.." +
      STEPS +
      ", from the run's trace; one worker process per device. " +
      'Simulated: the same schedule with the action times measured in that run (median per kind), ' +
      'and with unit costs (F=1, B=2; F=B=W=1 when B and W are split). ' +
      'The measured column is higher than the simulation by the time frames take between devices (a 256 KB activation per message) and, ' +
      "with 4 devices on 2 cores, by two processes sharing a core; the order of the schedules is the simulation's. " +
      "Action times differ between runs of different schedules (this VM drifts), which is why the simulation uses each run's own.",
    '',
    table(['devices p', 'schedule', 'ms/step', 'measured', 'simulated (measured costs)', 'simulated (unit costs)', 'formula', 'action ms'], rows),
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchBubble());
