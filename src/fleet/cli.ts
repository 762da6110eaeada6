/** The `troupe` command line: `up`, `worker`, and `--help` for each. */
import { parseArgs } from 'node:util';
import { ConfigError, TroupeError, messageOf } from '../errors.js';
import { BackendName } from '../compute/backend.js';
import { InterruptedError, runJob } from './runJob.js';
import { parseBoundaries, parseRanks, runWorker } from './worker.js';
import { runPoolWorker } from '../pool/runPoolWorker.js';
import { describeCheckpoint, exportCheckpoint } from './checkpointTools.js';
import { startInspector } from '../inspect/inspectorServer.js';
import { drawSvg, drawTerminal } from '../schedule/draw.js';
import { buildPlacedSchedule, ScheduleName } from '../schedule/schedules.js';
import { simulate } from '../schedule/simulate.js';
import { loadScheduleFile } from '../schedule/scheduleFile.js';
import { existsSync } from 'node:fs';
import { writeAtomically } from '../writeAtomically.js';

const HELP: Record<string, string> = {
  main: `troupe: pipeline-parallel training with xstate actors over NATS

usage: troupe <command> [options]

commands:
  up <job-config>     run a job: nats-server, one worker process per stage, training, summary
  worker              join a job's fleet as one stage (on this or another host)
  pool-worker         join a task pool, answering its tasks with a module's function
  checkpoint          inspect a checkpoint, or export its model for tf.loadLayersModel
  inspect             serve a live inspector page (and the Stately relay) for a job
  schedule show       simulate a schedule and draw its timeline (terminal, SVG)

troupe <command> --help shows a command's options.`,
  up: `usage: troupe up <job-config> [options]

Starts nats-server from nats.conf on a free port (unless --nats names a running one), forks
one worker process per stage, trains with a progress bar, evaluates the held-out data and
prints a summary. Ctrl-C stops every process it started; the last checkpoint stays whole.

options:
  --nats <url>[,<url>..]  use a running NATS server (or the nodes of a cluster)
  --nats-config <file>    start nats-server with this file (default nats.conf; nats-tls.conf
                          for TLS, with TROUPE_NATS_TLS_CERT/KEY and TROUPE_NATS_CA set)
  --job <id>              job id in subjects (default: the config's job, else its file name)
  --checkpoint-dir <dir>  save every stage's weights and optimizer state after every step
  --resume                continue from the checkpoint in --checkpoint-dir
  --steps <n>             stop after step n (default: all epochs)
  --save <dir>            write the trained model as model.json + weights.bin
  --no-spawn              start no workers: wait for 'troupe worker' processes to join
  --ready-timeout <s>     seconds to wait for every worker (default 60)
  --backend <name>        node-gpu, node, wasm or cpu (default: best available)
  --inspect               publish every actor's inspection events (see troupe inspect)
  --trace <file>          write every step's timeline as a Chrome trace (Perfetto)
  --restarts <n>          survive n worker deaths: restart the worker, load every stage with
                          the last completed step and replay the interrupted step (default 0)
  -h, --help              this text`,
  checkpoint: `usage: troupe checkpoint inspect <dir>
       troupe checkpoint export <dir> --config <job-config> --out <model-dir>

inspect: the checkpoint's step, the run's configuration and every layer weight with its shape
(a faulty newest checkpoint is reported and the previous one shown). export: the job's whole
model with the checkpoint's weights, as a TensorFlow.js model directory (model.json +
weights.bin) that tf.loadLayersModel reads without Troupe.`,
  'pool-worker': `usage: troupe pool-worker --nats <url> --pool <name> --task <module> [--concurrency <n>] [--inspect]

Joins task pool <name> and answers its tasks with the default export of <module>, a function
of (input, index), running up to <n> at once (default 1), each in a child process: a task
past its deadline is stopped by killing that process. Workers may join and leave at any time;
a caller's Pool sends a task whose worker died or went silent to another. Stops on SIGTERM
(running tasks get 5 s, then go back to their callers; a second signal cuts that short).`,
  worker: `usage: troupe worker --nats <url> --job <id> --rank <r>[,<r>...] --config <job-config> [--backend <name>]

Builds stage <r> of the job from the config module and serves it on NATS until the driver
stops it (or SIGTERM). The driver waits for every rank and sends the weights.

options:
  --nats <url>        the job's NATS server
  --job <id>          the job id the driver printed
  --rank <r>[,<r>...] which stage this process runs (0-based); several for the stages of
                      one device (virtual stages), which then take turns
  --boundaries <i,..> the cut to use (first layer of stages 1..p-1) instead of the config's
                      stages; troupe up passes its own
  --replica <i> --replicas <k>
                      data parallel: these stages belong to replica i of k
  --config <file>     the job config module (the same file as the driver's)
  --backend <name>    node-gpu, node, wasm or cpu (default: best available)
  --inspect           publish the stage actor's inspection events
  -h, --help          this text`,
  inspect: `usage: troupe inspect --nats <url> --job <id> [--port <n>] [--stately]

Serves on 127.0.0.1 a page that works offline: every actor's state machine with its current
state highlighted live, the pipeline timeline of the current and last steps with the
measured and theoretical bubble, each stage's counters and the first error. Run the job
with 'troupe up --inspect' so its actors publish their inspection events.

options:
  --nats <url>        the job's NATS server
  --job <id>          the job id
  --port <n>          HTTP port (default: a free one, printed)
  --stately           also relay the events in the @statelyai/inspect WebSocket format on
                      /ws, and serve /stately, a page embedding Stately's (online) inspector
  -h, --help          this text`,
  schedule: `usage: troupe schedule show <gpipe|1f1b|zbh1|interleaved|loopedbfs|table-file> -p <stages> -m <microbatches> [-v <stages per device>] [--forward <t>] [--backward <t>] [--weight <t>] [--comm <t>] [--svg <file>]

Simulates one step of the schedule with per-action costs and prints the timeline (a row per
device), the step time, the bubble next to the formula ((d-1)/v)/(m+(d-1)/v) for d = p/v
devices, (p-1)/(m+p-1) with one stage each, and the peak activations per stage; --svg also
writes the picture. Costs in time units: --forward 1; --backward 1, the input-gradient part
of a backward; --weight 1, its weight-gradient part (a W action where the schedule splits
the backward, else part of B); --comm 0 per message between stages.`,
};

/** A command line that cannot run: wrong flags or values. */
export class UsageError extends TroupeError {
  constructor(message: string) {
    super('USAGE', message);
  }
}

function backendOf(v: string | undefined): BackendName | undefined {
  if (v === undefined) return undefined;
  if (!Object.values(BackendName).includes(v as BackendName)) throw new UsageError(`--backend must be one of ${Object.values(BackendName).join(', ')}, got "${v}"`);
  return v as BackendName;
}

function intOf(flag: string, v: string | undefined, min: number): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < min) throw new UsageError(`${flag} must be an integer >= ${min}, got "${v}"`);
  return Number(v);
}

async function up(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      nats: { type: 'string' },
      'nats-config': { type: 'string' },
      job: { type: 'string' },
      'checkpoint-dir': { type: 'string' },
      resume: { type: 'boolean' },
      steps: { type: 'string' },
      save: { type: 'string' },
      'no-spawn': { type: 'boolean' },
      'ready-timeout': { type: 'string' },
      backend: { type: 'string' },
      inspect: { type: 'boolean' },
      trace: { type: 'string' },
      restarts: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return print(HELP['up']!);
  if (positionals.length !== 1) throw new UsageError('troupe up takes exactly one job config file');
  const ac = new AbortController();
  const onSigint = () => {
    process.stderr.write('\ntroupe up: interrupted, stopping every process\n');
    ac.abort();
  };
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigint);
  try {
    const steps = intOf('--steps', values.steps, 1);
    const ready = intOf('--ready-timeout', values['ready-timeout'], 1);
    const restarts = intOf('--restarts', values.restarts, 0);
    const backend = backendOf(values.backend);
    await runJob({
      config: positionals[0]!,
      ...(values.nats ? { nats: values.nats } : {}),
      ...(values['nats-config'] ? { natsConfig: values['nats-config'] } : {}),
      ...(values.job ? { job: values.job } : {}),
      ...(values['checkpoint-dir'] ? { checkpointDir: values['checkpoint-dir'] } : {}),
      resume: values.resume ?? false,
      ...(steps ? { steps } : {}),
      ...(values.save ? { save: values.save } : {}),
      spawn: !values['no-spawn'],
      ...(ready ? { readyTimeoutMs: ready * 1000 } : {}),
      ...(backend ? { backend } : {}),
      inspect: values.inspect ?? false,
      ...(values.trace ? { trace: values.trace } : {}),
      ...(restarts !== undefined ? { restarts } : {}),
      signal: ac.signal,
    });
    return 0;
  } catch (err) {
    if (err instanceof InterruptedError) return 130;
    throw err;
  } finally {
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigint);
  }
}

async function checkpoint(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { config: { type: 'string' }, out: { type: 'string' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) return print(HELP['checkpoint']!);
  const [verb, dir, ...extra] = positionals;
  if (!dir || extra.length || (verb !== 'inspect' && verb !== 'export')) throw new UsageError('usage: troupe checkpoint inspect <dir> | troupe checkpoint export <dir> --config <job-config> --out <model-dir>');
  if (verb === 'inspect') return print(await describeCheckpoint(dir));
  if (!values.config || !values.out) throw new UsageError('troupe checkpoint export needs --config and --out');
  const r = await exportCheckpoint(dir, values.config, values.out);
  return print(`exported step ${r.step} (${r.weights} weights) to ${values.out}/model.json; load it with tf.loadLayersModel`);
}

async function poolWorker(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { nats: { type: 'string' }, pool: { type: 'string' }, task: { type: 'string' }, concurrency: { type: 'string' }, inspect: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) return print(HELP['pool-worker']!);
  if (positionals.length > 0) throw new UsageError(`troupe pool-worker takes no positional arguments, got ${positionals.join(' ')}`);
  for (const f of ['nats', 'pool', 'task'] as const) if (!values[f]) throw new UsageError(`troupe pool-worker needs --${f}`);
  await runPoolWorker({ nats: values.nats!, pool: values.pool!, task: values.task!, concurrency: intOf('--concurrency', values.concurrency, 1) ?? 1, inspect: values.inspect ?? false });
  return 0;
}

async function worker(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      nats: { type: 'string' },
      job: { type: 'string' },
      rank: { type: 'string' },
      boundaries: { type: 'string' },
      replica: { type: 'string' },
      replicas: { type: 'string' },
      config: { type: 'string' },
      backend: { type: 'string' },
      inspect: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return print(HELP['worker']!);
  if (positionals.length > 0) throw new UsageError(`troupe worker takes no positional arguments, got ${positionals.join(' ')}`);
  for (const f of ['nats', 'job', 'rank', 'config'] as const) if (!values[f]) throw new UsageError(`troupe worker needs --${f}`);
  const backend = backendOf(values.backend);
  await runWorker({ nats: values.nats!, job: values.job!, ranks: ranksOf(values.rank!), ...(values.boundaries !== undefined ? { boundaries: boundariesOf(values.boundaries) } : {}),
    ...(values.replicas !== undefined ? { replicas: intOf('--replicas', values.replicas, 1)!, replica: intOf('--replica', values.replica ?? '0', 0)! } : {}), config: values.config!, inspect: values.inspect ?? false, ...(backend ? { backend } : {}) });
  return 0;
}

async function inspect(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      nats: { type: 'string' },
      job: { type: 'string' },
      port: { type: 'string' },
      stately: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return print(HELP['inspect']!);
  if (positionals.length > 0) throw new UsageError(`troupe inspect takes no positional arguments, got ${positionals.join(' ')}`);
  for (const f of ['nats', 'job'] as const) if (!values[f]) throw new UsageError(`troupe inspect needs --${f}`);
  const port = intOf('--port', values.port, 0);
  const insp = await startInspector({ nats: values.nats!, job: values.job!, stately: values.stately ?? false, ...(port !== undefined ? { port } : {}) });
  process.stdout.write(`troupe inspect: job ${values.job} at ${insp.url}${insp.wsUrl ? `\n  Stately relay: ${insp.wsUrl} (open ${insp.url}stately)` : ''}\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await insp.close();
  return 0;
}

async function schedule(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      stages: { type: 'string', short: 'p' },
      microbatches: { type: 'string', short: 'm' },
      'virtual-stages': { type: 'string', short: 'v' },
      forward: { type: 'string' },
      backward: { type: 'string' },
      weight: { type: 'string' },
      comm: { type: 'string' },
      svg: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return print(HELP['schedule']!);
  const [verb, name, ...extra] = positionals;
  if (verb !== 'show' || !name || extra.length) throw new UsageError(`usage: troupe schedule show <${Object.values(ScheduleName).join('|')}|table-file> -p <stages> -m <microbatches>`);
  const p = intOf('-p', values.stages ?? '', 1)!;
  const m = intOf('-m', values.microbatches ?? '', 1)!;
  const v = intOf('-v', values['virtual-stages'] ?? '1', 1)!;
  const cost = (flag: string, v: string | undefined, d: number) => {
    if (v === undefined) return d;
    const n = Number(v);
    if (!(n >= 0) || !Number.isFinite(n)) throw new UsageError(`${flag} must be a non-negative number, got "${v}"`);
    return n;
  };
  // A name, or a file with a table of actions per stage (its own p and m must match -p and -m).
  const table = existsSync(name) ? await loadScheduleFile(name) : null;
  const sim = simulate(buildPlacedSchedule(table ?? name, p, m, v), {
    F: cost('--forward', values.forward, 1),
    B: cost('--backward', values.backward, 1),
    W: cost('--weight', values.weight, 1),
    comm: cost('--comm', values.comm, 0),
  });
  const lines = [
    `${name}, p=${p}${sim.devices !== p ? ` on ${sim.devices} devices` : ''}, m=${m}: step ${sim.stepTime} time units`,
    drawTerminal(sim),
    `bubble: simulated ${(sim.bubble * 100).toFixed(1)}%, ${bubbleFormula(sim.devices, m, p / sim.devices)}`,
    `peak activations per stage: ${sim.peakActivations.join(' ')}`,
  ];
  if (values.svg) {
    await writeAtomically(values.svg, drawSvg(sim));
    lines.push(`picture: ${values.svg}`);
  }
  return print(lines.join('\n'));
}

function print(text: string): number {
  process.stdout.write(`${text}\n`);
  return 0;
}

/** Runs the command line; resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    if (cmd === undefined || cmd === '--help' || cmd === '-h' || cmd === 'help') return print(HELP['main']!);
    if (cmd === 'up') return await up(rest);
    if (cmd === 'worker') return await worker(rest);
    if (cmd === 'pool-worker') return await poolWorker(rest);
    if (cmd === 'checkpoint') return await checkpoint(rest);
    if (cmd === 'inspect') return await inspect(rest);
    if (cmd === 'schedule') return await schedule(rest);
    throw new UsageError(`unknown command "${cmd}" (try troupe --help)`);
  } catch (err) {
    const usage = err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
    process.stderr.write(`troupe: ${err instanceof ConfigError || err instanceof TroupeError || usage ? messageOf(err) : (err as Error)?.stack ?? String(err)}\n`);
    return usage ? 2 : 1;
  }
}

/** The textbook bubble of d devices with v stages each: (p-1)/(m+p-1), divided by v when interleaved. */
function bubbleFormula(d: number, m: number, v: number): string {
  if (v === 1) return `(p-1)/(m+p-1) = ${(((d - 1) / (m + d - 1)) * 100).toFixed(1)}%`;
  const k = (d - 1) / v;
  return `((d-1)/v)/(m+(d-1)/v) = ${((k / (m + k)) * 100).toFixed(1)}%`;
}

function ranksOf(s: string): number[] {
  try {
    return parseRanks(s);
  } catch (err) {
    throw new UsageError(messageOf(err));
  }
}

function boundariesOf(s: string): number[] {
  try {
    return parseBoundaries(s);
  } catch (err) {
    throw new UsageError(messageOf(err));
  }
}
