/** The `troupe` command line: `up`, `worker`, and `--help` for each. */
import { parseArgs } from 'node:util';
import { ConfigError, InterruptedError, TroupeError, UsageError, messageOf } from '../errors.js';
import { BackendName } from '../compute/backend.js';
import { runJob } from './runJob.js';
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
import { packageVersion } from '../packagePath.js';
import { summaryOf } from './summary.js';

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

troupe <command> --help shows a command's options; troupe --version the version.`,
  up: `usage: troupe up <job-config> [options]

Starts nats-server from nats.conf on a free port (unless --nats names a running one), forks
one worker process per stage, trains with a progress bar, evaluates the held-out data and
prints a summary. Ctrl-C stops every process it started; the last checkpoint stays whole.
A second Ctrl-C exits at once, killing them.

options:
  --nats <url>[,<url>..]  use a running NATS server (or the nodes of a cluster)
  --nats-config <file>    start nats-server with this file (default nats.conf; nats-tls.conf
                          for TLS, with TROUPE_NATS_TLS_CERT/KEY and TROUPE_NATS_CA set)
  --job <id>              job id in subjects (default: the config's job, else its file name)
  --checkpoint-dir <dir>  save every stage's weights and optimizer state after every step
  --resume                continue from the checkpoint in --checkpoint-dir
  --steps <n>             stop after step n (default: all epochs)
  --save <dir>            write the trained model as model.json + weights.bin (in Node,
                          loadModel(dir) from 'troupe' reads it)
  --no-spawn              start no workers: wait for 'troupe worker' processes to join
  --ready-timeout <s>     seconds to wait for every worker (default 60)
  --backend <name>        node-gpu, webgpu, node, wasm or cpu (default: the best available)
  --inspect[=<port>]      publish every actor's inspection events and serve the inspector
                          page (and Stately's relay) on 127.0.0.1:<port> (default a free
                          port); the URL is printed. 'troupe inspect' may join at any time too
  --trace <file>          write every step's timeline as a Chrome trace (Perfetto)
  --restarts <n>          survive n losses (a worker that dies or hangs, a remote worker
                          replaced, the nats-server troupe up started): restart it, load every
                          stage with the state the driver kept and replay the steps since
                          (default 0)
  --keep-every <k>        with --restarts, keep the stages' state every k steps (default: as
                          rarely as costs a quarter of the bytes the steps move, at most 100)
  --json                  print a JSON summary on stdout (steps, losses, held-out loss and
                          metric, each stage's counters, the workers); the rest goes to stderr
  -q, --quiet             no progress bar, fleet or summary lines: only what went wrong or
                          needs you (with --json: the JSON alone on stdout)
  -v, --verbose           also a line per checkpoint saved
  -h, --help              this text`,
  checkpoint: `usage: troupe checkpoint inspect <dir>
       troupe checkpoint export <dir> --config <job-config> --out <model-dir>

inspect: the checkpoint's step, the run's configuration and every layer weight with its shape
(a faulty newest checkpoint is reported and the previous one shown). export: the job's whole
model with the checkpoint's weights, as a TensorFlow.js model directory (model.json +
weights.bin): in Node, loadModel(dir) from 'troupe' loads it (plain @tensorflow/tfjs has no
file:// loader); in a browser, tf.loadLayersModel('<url>/model.json').`,
  'pool-worker': `usage: troupe pool-worker --nats <url> --pool <name> --task <module> [--concurrency <n>] [--inspect]

Joins task pool <name> and answers its tasks with the default export of <module>, a function
of (input, index), running up to <n> at once (default 1), each in a child process: a task
past its deadline is stopped by killing that process. Workers may join and leave at any time;
a caller's Pool sends a task whose worker died or went silent to another. Stops on SIGTERM
(running tasks get 5 s, then go back to their callers; a second signal cuts that short).`,
  worker: `usage: troupe worker --nats <url> --job <id> --rank <r>[,<r>...] --config <job-config> [--backend <name>]

Builds stage <r> of the job from the config module and serves it on NATS until the driver
stops it (or SIGTERM). The driver waits for every rank and sends the weights. A process
manager may set the environment instead of the flags (a flag wins): TROUPE_NATS_URL,
TROUPE_JOB, TROUPE_RANK, TROUPE_CONFIG (and TROUPE_BACKEND, TROUPE_NATS_CREDENTIALS).

options:
  --nats <url>        the job's NATS server (or TROUPE_NATS_URL)
  --job <id>          the job id the driver printed (or TROUPE_JOB)
  --rank <r>[,<r>...] which stage this process runs (0-based); several for the stages of
                      one device (virtual stages), which then take turns (or TROUPE_RANK)
  --boundaries <i,..> the cut to use (first layer of stages 1..p-1) instead of the config's
                      stages; troupe up passes its own
  --replica <i> --replicas <k>
                      data parallel: these stages belong to replica i of k
  --config <file>     the job config module, the same file as the driver's (or TROUPE_CONFIG)
  --backend <name>    node-gpu, webgpu, node, wasm or cpu (default: TROUPE_BACKEND, else the best available)
  --inspect           publish the stage actor's inspection events
  -q, --quiet         no start and stop lines
  -h, --help          this text`,
  inspect: `usage: troupe inspect --nats <url> --job <id> [--port <n>] [--stately]

Serves on 127.0.0.1 a page that works offline: every actor's state machine with its current
state highlighted live, the pipeline timeline of the current and last steps with the
measured and theoretical bubble, each stage's counters, the first error and refused frames.
Start it before or after the job: joining late, it asks the job's actors who is there and
shows them in their current state, with the errors and refusals so far. Run the job with
'troupe up --inspect' so its actors publish their inspection events (that also serves this
page itself). Against the nats-server 'troupe up' started, set TROUPE_NATS_CREDENTIALS to
the credentials file it printed.

options:
  --nats <url>        the job's NATS server
  --job <id>          the job id
  --port <n>          HTTP port (default: a free one, printed)
  --stately           also relay the events in the @statelyai/inspect WebSocket format on
                      /ws, and serve /stately, a page embedding Stately's (online) inspector
  -h, --help          this text`,
  schedule: `usage: troupe schedule show <gpipe|1f1b|zbh1|interleaved|loopedbfs|table-file> -p <stages> -m <microbatches>
         [-v <stages per device>] [--forward <t>] [--backward <t>] [--weight <t>] [--comm <t>] [--svg <file>]

Simulates one step of the schedule with per-action costs and prints the timeline (a row per
device), the step time, the bubble next to the formula ((d-1)/v)/(m+(d-1)/v) for d = p/v
devices, (p-1)/(m+p-1) with one stage each, and the peak activations per stage; --svg also
writes the picture. Costs in time units: --forward 1; --backward 1, the input-gradient part
of a backward; --weight 1, its weight-gradient part (a W action where the schedule splits
the backward, else part of B); --comm 0 per message between stages.`,
};

export { UsageError } from '../errors.js';

function backendOf(v: string | undefined): BackendName | undefined {
  if (v === undefined) return undefined;
  if (!Object.values(BackendName).includes(v as BackendName))
    throw new UsageError(`--backend must be one of ${Object.values(BackendName).join(', ')}, got "${v}"`);
  return v as BackendName;
}

function intOf(flag: string, v: string | undefined, min: number): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < min) throw new UsageError(`${flag} must be an integer >= ${min}, got "${v}"`);
  return Number(v);
}

async function up(args: string[]): Promise<number> {
  const { inspect: inspectPort, argv } = inspectFlag(args);
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
      trace: { type: 'string' },
      restarts: { type: 'string' },
      'keep-every': { type: 'string' },
      json: { type: 'boolean' },
      quiet: { type: 'boolean', short: 'q' },
      verbose: { type: 'boolean', short: 'v' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return print(HELP['up']!);
  if (positionals.length !== 1) throw new UsageError('troupe up takes exactly one job config file');
  if (values.quiet && values.verbose) throw new UsageError('troupe up takes -q or -v, not both');
  // With --json, stdout carries the JSON alone: everything for people goes to stderr.
  const out = values.json ? process.stderr : process.stdout;
  const ac = new AbortController();
  const onSigint = () => {
    // A second Ctrl-C while every process is asked to stop (which can take 10 s and more): out at once. The workers are
    // killed as this process exits, nats-server and the secret and configuration files go with it (tied to its life).
    if (ac.signal.aborted) {
      process.stderr.write('troupe up: interrupted again, exiting now\n');
      process.exit(130);
    }
    process.stderr.write('\ntroupe up: interrupted, stopping every process\n');
    ac.abort();
  };
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigint);
  try {
    const steps = intOf('--steps', values.steps, 1);
    const ready = intOf('--ready-timeout', values['ready-timeout'], 1);
    const restarts = intOf('--restarts', values.restarts, 0);
    const keepEvery = intOf('--keep-every', values['keep-every'], 1);
    const backend = backendOf(values.backend);
    const result = await runJob({
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
      inspect: inspectPort !== undefined,
      ...(inspectPort !== undefined ? { inspectPort } : {}),
      ...(values.trace ? { trace: values.trace } : {}),
      ...(restarts !== undefined ? { restarts } : {}),
      ...(keepEvery !== undefined ? { keepEvery } : {}),
      verbosity: values.quiet ? 'quiet' : values.verbose ? 'verbose' : 'normal',
      out,
      signal: ac.signal,
    });
    if (values.json) process.stdout.write(`${JSON.stringify(summaryOf(result))}\n`);
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
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { config: { type: 'string' }, out: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) return print(HELP['checkpoint']!);
  const [verb, dir, ...extra] = positionals;
  if (!dir || extra.length || (verb !== 'inspect' && verb !== 'export'))
    throw new UsageError('usage: troupe checkpoint inspect <dir> | troupe checkpoint export <dir> --config <job-config> --out <model-dir>');
  if (verb === 'inspect') return print(await describeCheckpoint(dir));
  if (!values.config || !values.out) throw new UsageError('troupe checkpoint export needs --config and --out');
  const r = await exportCheckpoint(dir, values.config, values.out);
  return print(
    `exported step ${r.step} (${r.weights} weights) to ${values.out}/model.json; load it in Node with loadModel(${JSON.stringify(values.out)}) from 'troupe'`,
  );
}

async function poolWorker(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      nats: { type: 'string' },
      pool: { type: 'string' },
      task: { type: 'string' },
      concurrency: { type: 'string' },
      inspect: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return print(HELP['pool-worker']!);
  if (positionals.length > 0) throw new UsageError(`troupe pool-worker takes no positional arguments, got ${positionals.join(' ')}`);
  for (const f of ['nats', 'pool', 'task'] as const) if (!values[f]) throw new UsageError(`troupe pool-worker needs --${f}`);
  await runPoolWorker({
    nats: values.nats!,
    pool: values.pool!,
    task: values.task!,
    concurrency: intOf('--concurrency', values.concurrency, 1) ?? 1,
    inspect: values.inspect ?? false,
  });
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
      quiet: { type: 'boolean', short: 'q' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return print(HELP['worker']!);
  if (positionals.length > 0) throw new UsageError(`troupe worker takes no positional arguments, got ${positionals.join(' ')}`);
  // A process manager (systemd, Kubernetes, supervisord) may give the environment instead of flags.
  const env = process.env;
  const given = {
    nats: values.nats ?? env['TROUPE_NATS_URL'],
    job: values.job ?? env['TROUPE_JOB'],
    rank: values.rank ?? env['TROUPE_RANK'],
    config: values.config ?? env['TROUPE_CONFIG'],
  };
  const variable = { nats: 'TROUPE_NATS_URL', job: 'TROUPE_JOB', rank: 'TROUPE_RANK', config: 'TROUPE_CONFIG' } as const;
  for (const f of ['nats', 'job', 'rank', 'config'] as const)
    if (!given[f]) throw new UsageError(`troupe worker needs --${f} (or ${variable[f]} in the environment)`);
  const backend = backendOf(values.backend);
  await runWorker({
    nats: given.nats!,
    job: given.job!,
    ranks: ranksOf(given.rank!),
    ...(values.boundaries !== undefined ? { boundaries: boundariesOf(values.boundaries) } : {}),
    ...(values.replicas !== undefined ? { replicas: intOf('--replicas', values.replicas, 1)!, replica: intOf('--replica', values.replica ?? '0', 0)! } : {}),
    config: given.config!,
    inspect: values.inspect ?? false,
    ...(backend ? { backend } : {}),
    ...(values.quiet ? { log: () => {} } : {}),
  });
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
  for (const f of ['nats', 'job'] as const)
    if (!values[f]) throw new UsageError(`troupe inspect needs --${f}${f === 'nats' ? " (the URL 'troupe up' printed)" : ''}`);
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
  if (verb !== 'show' || !name || extra.length)
    throw new UsageError(`usage: troupe schedule show <${Object.values(ScheduleName).join('|')}|table-file> -p <stages> -m <microbatches>`);
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

/**
 * `--inspect` or `--inspect=<port>` (parseArgs has no option with an optional value): the
 * port to serve the inspector on (0: a free one), undefined without the flag, and the rest.
 */
function inspectFlag(argv: readonly string[]): { inspect: number | undefined; argv: string[] } {
  let inspect: number | undefined;
  const rest: string[] = [];
  for (const a of argv) {
    const m = /^--inspect(?:=(.*))?$/.exec(a);
    if (!m) rest.push(a);
    else inspect = m[1] === undefined ? 0 : intOf('--inspect', m[1], 0)!;
  }
  return { inspect, argv: rest };
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
    if (cmd === '--version' || cmd === '-V') return print(`troupe ${packageVersion()}`);
    if (cmd === 'up') return await up(rest);
    if (cmd === 'worker') return await worker(rest);
    if (cmd === 'pool-worker') return await poolWorker(rest);
    if (cmd === 'checkpoint') return await checkpoint(rest);
    if (cmd === 'inspect') return await inspect(rest);
    if (cmd === 'schedule') return await schedule(rest);
    throw new UsageError(`unknown command "${cmd}" (try troupe --help)`);
  } catch (err) {
    const usage = err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
    process.stderr.write(
      `troupe: ${err instanceof ConfigError || err instanceof TroupeError || usage ? messageOf(err) : ((err as Error)?.stack ?? String(err))}\n`,
    );
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
