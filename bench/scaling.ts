/**
 * Scaling: the uniform MLP on p = 1, 2, 4, 8 devices (one worker process each) with 1F1B,
 * ZB-H1 and interleaved 1F1B (v = 2 where the model has layers enough), against 1 device and
 * the ideal p*m/(m+p-1); beside it the simulator run with the run's own action times and hop
 * latency, and where each device's time went (per action kind: compute, sending, waiting for
 * frames, the reaction to a frame; between steps; the stage machine), each boundary's hop
 * latency, and nats-server's CPU from /proc.
 *
 * Full size (8 x 1024 layers, batch 1024, m = 16) on hosts with 10 cores or more, else a small
 * model (256 wide, batch 256) on p = 1, 2. Shaped by SCALING_P (e.g. `1,2,4`), SCALING_SCHEDULES,
 * SCALING_M, SCALING_BATCH, SCALING_WIDTH, SCALING_STEPS, SCALING_FULL=1, SCALING_TRANSPORTS;
 * SCALING_OUT=<dir> writes every run's actions, a Chrome trace and a drawn step per
 * configuration there.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { selectBackend } from '../src/compute/backend.js';
import { buildPlacedSchedule } from '../src/schedule/schedules.js';
import { simulate } from '../src/schedule/simulate.js';
import { UNIFORM_LAYERS } from './jobs/bench.job.js';
import {
  betweenSteps,
  breakdown,
  chromeTrace,
  cpuPerStep,
  drawStep,
  hops,
  measuredCosts,
  shapeOf,
  steadyStepMs,
  stepSpan,
  type FleetRun,
  type Hop,
  type KindRow,
  type DeviceRow,
} from './fleetAnalysis.js';
import { machineLine, median, table } from './report.js';

const run = promisify(execFile);
const env = (k: string) => process.env[k];
const cores = availableParallelism();
const FULL = env('SCALING_FULL') === '1' || (env('SCALING_FULL') !== '0' && cores >= 10);
const PS = (env('SCALING_P') ?? (FULL ? '1,2,4,8' : '1,2')).split(',').map(Number);
const SCHEDULES = (env('SCALING_SCHEDULES') ?? '1f1b,zbh1,interleaved').split(',');
const M = Number(env('SCALING_M') ?? 16);
const BATCH = Number(env('SCALING_BATCH') ?? (FULL ? 1024 : 256));
const WIDTH = Number(env('SCALING_WIDTH') ?? (FULL ? 1024 : 256));
const STEPS = Number(env('SCALING_STEPS') ?? 8);
const OUT = env('SCALING_OUT');
/**
 * The 1F1B rows once per frame path (SCALING_TRANSPORTS=nats,direct): `nats` keeps every frame
 * on the relay, `direct` sends every FORWARD/BACKWARD frame over links (whatever its size);
 * unset, the stages' default (links for frames of 64 KiB and more).
 */
const TRANSPORTS = (env('SCALING_TRANSPORTS') ?? '').split(',').filter(Boolean);

interface Config {
  readonly p: number;
  readonly schedule: string;
  readonly v: number;
  readonly transport?: string;
}

function label(c: Config): string {
  return `p${c.p}-${c.schedule}${c.v > 1 ? `-v${c.v}` : ''}${c.transport ? `-${c.transport}` : ''}`;
}

/**
 * The configurations: p = 1 once (the speed-ups' base), then the largest p first (a run cut
 * short by a time limit keeps the figures that matter most), every schedule that fits p
 * (interleaved needs 2p stages of the model's layers, and m a multiple of p).
 */
function configs(): Config[] {
  const out: Config[] = [];
  for (const p of [...PS].sort((a, b) => (a === 1 ? -1 : b === 1 ? 1 : b - a))) {
    if (p === 1) {
      out.push({ p, schedule: '1f1b', v: 1 });
      continue;
    }
    for (const schedule of SCHEDULES) {
      const v = schedule === 'interleaved' || schedule === 'loopedbfs' ? 2 : 1;
      if (v > 1 && (p * v > UNIFORM_LAYERS + 1 || M % p !== 0)) continue;
      if (TRANSPORTS.length > 0 && schedule === '1f1b') for (const transport of TRANSPORTS) out.push({ p, schedule, v, transport });
      else out.push({ p, schedule, v });
    }
  }
  return out;
}

async function fleet(c: Config): Promise<FleetRun> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', new URL('./fleetRun.ts', import.meta.url).pathname], {
    env: {
      ...process.env,
      BENCH_MODEL: 'uniform',
      BENCH_WIDTH: String(WIDTH),
      BENCH_STAGES: String(c.p * c.v),
      BENCH_V: String(c.v),
      BENCH_M: String(M),
      BENCH_SCHEDULE: c.schedule,
      BENCH_BATCH: String(BATCH),
      BENCH_STEPS: String(STEPS),
      TROUPE_BACKEND: 'wasm',
      ...(c.transport === 'nats' ? { TROUPE_DIRECT: '0' } : c.transport === 'direct' ? { TROUPE_DIRECT: '1', TROUPE_DIRECT_MIN_BYTES: '1' } : {}),
    },
    maxBuffer: 1 << 28,
  });
  return JSON.parse(stdout.trim().split('\n').pop()!) as FleetRun;
}

const f1 = (x: number) => x.toFixed(1);
const pct = (x: number) => `${(x * 100).toFixed(0)}%`;

export async function benchScaling(): Promise<string> {
  await selectBackend({ prefer: 'wasm', log: null }); // the workers' backend, named in the machine line
  if (!PS.includes(1)) throw new Error('SCALING_P must include 1: speed-ups are against 1 device');
  if (OUT) mkdirSync(OUT, { recursive: true });
  const rows: string[][] = [];
  const kindRows: string[][] = [];
  const hopRows: string[][] = [];
  let t1 = 0;
  for (const c of configs()) {
    process.stderr.write(`scaling: ${label(c)}\n`);
    const r = await fleet(c);
    const s = shapeOf(r, c.p);
    const ms = steadyStepMs(r);
    if (c.p === 1) t1 = ms;
    const ideal = (c.p * M) / (M + c.p - 1);
    const hs = hops(r, s);
    // The transfer as the simulator takes it: the median hop of frames whose receiver waited for them.
    const waitedHops = hs.flatMap((h) => (h.waited === null ? [] : [h.waited]));
    const comm = waitedHops.length ? median(waitedHops) : 0;
    const placed = buildPlacedSchedule(c.schedule, c.p * c.v, M, c.v);
    const between = betweenSteps(r, s);
    const costs = measuredCosts(r, s, comm);
    const sim = simulate(placed, costs).stepTime + between;
    const simFree = simulate(placed, measuredCosts(r, s, 0)).stepTime + between;
    // The same with the input gradients sent after W, as stages did before this round.
    const simLate = simulate(placed, (st) => ({ ...costs(st), inputGradientsFirst: false })).stepTime + between;
    const nats = cpuPerStep(r, s, 'nats');
    const driver = cpuPerStep(r, s, 'driver');
    const speed = t1 / ms;
    rows.push([
      String(c.p),
      `${c.schedule}${c.v > 1 ? `, v=${c.v}` : ''}${c.transport ? ` (${c.transport})` : ''}`,
      f1(ms),
      f1(stepSpan(r, s)),
      f1(between),
      c.p === 1 ? '1.00' : speed.toFixed(2),
      ideal.toFixed(2),
      pct(speed / ideal),
      f1(sim),
      pct(t1 / sim / ideal),
      f1(simFree),
      pct(t1 / simFree / ideal),
      pct(t1 / simLate / ideal),
      comm.toFixed(2),
      nats === null ? '-' : `${f1(nats)} (${pct(nats / ms)})`,
      driver === null ? '-' : f1(driver),
    ]);
    const b = breakdown(r, s);
    for (const k of b.kinds)
      kindRows.push(
        kindRow(
          c,
          k,
          b.devices.find((d) => d.device === k.device)!,
          b.kinds,
          ms,
        ),
      );
    for (const h of hs) hopRows.push(hopRow(c, h));
    if (OUT) {
      const name = label(c);
      writeFileSync(join(OUT, `${name}.json`), JSON.stringify(r));
      writeFileSync(join(OUT, `${name}.trace.json`), JSON.stringify(chromeTrace(r, name)));
      const steps = s.steps.slice(-2);
      writeFileSync(join(OUT, `${name}.timeline.txt`), `${name}: ${f1(ms)} ms/step\n\n${steps.map((st) => drawStep(r, s, st)).join('\n\n')}\n`);
      // The tables so far: a run cut short by a time limit still leaves them.
      writeFileSync(join(OUT, 'scaling.md'), `${report(rows, kindRows, hopRows)}\n`);
    }
    process.stderr.write(`scaling: ${label(c)}: ${f1(ms)} ms/step, ${pct(t1 / ms / ideal)} of ideal\n`);
  }
  return report(rows, kindRows, hopRows);
}

function report(rows: string[][], kindRows: string[][], hopRows: string[][]): string {
  return [
    `### Scaling: the uniform MLP on p devices (${UNIFORM_LAYERS} x ${WIDTH} layers, batch ${BATCH}, m = ${M}, ${STEPS} steps, the first 2 left out)`,
    '',
    `${machineLine()} Cores: ${cores}.` +
      (FULL
        ? ''
        : ' Fewer than 10 cores: a small model, and only the p that fit (SCALING_P to choose); ' +
          'the full figures need a many-core host (bench/device-scaling.sh).'),
    '',
    'One worker process per device, nats-server and the driver beside them. ' +
      '"Span": a step from its first action to its last; "between": from a step\'s last action to the next step\'s first (the update, ' +
      "UPDATE's round trip). Speed-up against p = 1, and its share of the ideal p*m/(m+p-1). " +
      '"Simulated": the schedule simulated with this run\'s mean action times per stage (a backward\'s input gradients leave before its weight ' +
      'gradients, as the stages send them) and its median hop latency between stages, plus the measured time between steps; ' +
      '"no transfer": the same with free messages; "gradients after W": the same as the stages sent them before (after the weight gradients), ' +
      'the change side by side in the model. nats-server: its CPU ms per step (/proc) and that as a share of the step.',
    '',
    table(
      [
        'p',
        'schedule',
        'ms/step',
        'span',
        'between',
        'speed-up',
        'ideal',
        'of ideal',
        'simulated ms/step',
        'simulated of ideal',
        'no transfer',
        'no transfer of ideal',
        'simulated, gradients after W, of ideal',
        'hop ms (sim)',
        'nats-server CPU ms/step',
        'driver CPU ms/step',
      ],
      rows,
    ),
    '',
    "#### Where each device's time goes (ms per step, steady steps)",
    '',
    'Per device (one worker process) and action kind: "compute" is the actions\' time less sending and the frames read meanwhile; ' +
      '"sending" is handing frames to the transport; "waiting" runs from the device\'s previous action\'s end to the arrival of the frame this ' +
      "action consumed; \"reaction\" from then (or the previous action's end, when the frame was in) to the action's start: the stage machine's " +
      "transitions, the event loop, reading frames. The last columns are the device's own per step: between steps, " +
      "the stage machine and frame reading as the stage counts them (they fall inside reaction and between), and the process's CPU (/proc).",
    '',
    table(
      [
        'config',
        'device',
        'kind',
        'actions',
        'compute',
        'sending',
        'waiting',
        'reaction',
        'read meanwhile',
        'between steps',
        'machine',
        'reading frames',
        'process CPU',
        'step',
      ],
      kindRows,
    ),
    '',
    '#### Hop latency per boundary (ms)',
    '',
    "From the sender handing a frame to its transport to the frame being whole at the receiver (both clocks are the host's). " +
      'A receiver busy computing reads the frame after its action: "receiver waiting" keeps only the frames whose receiver had nothing else to do, ' +
      'which is the transfer itself.',
    '',
    table(['config', 'boundary', 'frames', 'median', 'p90', 'receiver waiting: median', 'of them'], hopRows),
  ].join('\n');
}

function kindRow(c: Config, k: KindRow, d: DeviceRow, all: readonly KindRow[], ms: number): string[] {
  // The device's own columns on its first kind's row only.
  const first = all.find((x) => x.device === k.device) === k;
  const own = first ? [f1(d.between), f1(d.machine), f1(d.frames), d.cpu === null ? '-' : f1(d.cpu), f1(ms)] : ['', '', '', '', ''];
  return [first ? label(c) : '', String(k.device), k.kind, k.actions.toFixed(0), f1(k.compute), f1(k.send), f1(k.wait), f1(k.react), f1(k.host), ...own];
}

function hopRow(c: Config, h: Hop): string[] {
  return [
    label(c),
    `${h.from} -> ${h.to} ${h.phase}`,
    String(h.count),
    h.median.toFixed(2),
    h.p90.toFixed(2),
    h.waited === null ? '-' : h.waited.toFixed(2),
    String(h.waitedCount),
  ];
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchScaling());
