import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { useNatsServer } from '../helpers/nats.js';
import { alive, troupe, troupeToEnd } from '../helpers/troupeCli.js';

const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));
const nats = useNatsServer();
const tmp = mkdtempSync(join(tmpdir(), 'troupe-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('troupe command line', () => {
  it('prints help for itself and every subcommand', async () => {
    for (const args of [['--help'], ['up', '--help'], ['worker', '--help']]) {
      const { code, output } = await troupeToEnd(args);
      expect(code).toBe(0);
      expect(output).toMatch(/usage: troupe/);
    }
  });

  it('refuses unknown commands and flags with exit code 2', async () => {
    expect(await troupeToEnd(['fly'])).toMatchObject({ code: 2, output: expect.stringMatching(/unknown command "fly"/) });
    expect(await troupeToEnd(['up', fixture('tiny.job.ts'), '--bogus'])).toMatchObject({ code: 2, output: expect.stringMatching(/--bogus/) });
    expect(await troupeToEnd(['up', fixture('tiny.job.ts'), '--steps', 'many'])).toMatchObject({
      code: 2,
      output: expect.stringMatching(/--steps must be an integer/),
    });
    expect(await troupeToEnd(['worker', '--nats', nats.server.url, '--job', 'x', '--rank', '0'])).toMatchObject({
      code: 2,
      output: expect.stringMatching(/needs --config/),
    });
  });

  it.each([
    ['bad-no-model.job.ts', /field "model" must be a function/],
    ['bad-stages.job.ts', /field "stages": cannot cut 3 layers into 7 stages/],
    ['bad-schedule.job.ts', /field "schedule" must be one of gpipe, 1f1b, zbh1, interleaved, loopedbfs, got "zigzag"/],
  ])('%s fails before any process starts, naming the field', async (file, message) => {
    const { code, output } = await troupeToEnd(['up', fixture(file)]);
    expect(code).toBe(1);
    expect(output).toMatch(message);
    expect(output).not.toMatch(/nats-server pid|rank \d: pid/);
  });

  it('--no-spawn waits for workers and names the missing ranks on timeout', async () => {
    const { code, output } = await troupeToEnd([
      'up',
      fixture('tiny.job.ts'),
      '--nats',
      nats.server.url,
      '--job',
      'lonely',
      '--no-spawn',
      '--ready-timeout',
      '1',
    ]);
    expect(code).toBe(1);
    expect(output).toMatch(/job lonely: no worker for rank 0, 1 after 1000 ms/);
  });

  it('workers started separately (as on other hosts) join a --no-spawn fleet and are stopped at the end', async () => {
    const driver = troupe(['up', fixture('tiny.job.ts'), '--nats', nats.server.url, '--job', 'joined', '--no-spawn', '--steps', '3']);
    await driver.waitFor(/waiting for 2 workers/);
    const workers = [0, 1].map((rank) =>
      troupe(['worker', '--nats', nats.server.url, '--job', 'joined', '--rank', String(rank), '--config', fixture('tiny.job.ts')]),
    );
    const { code } = await driver.exit;
    expect(code, driver.output()).toBe(0);
    expect(driver.output()).toMatch(/step 3\/3/);
    for (const w of workers) {
      expect((await w.exit).code, w.output()).toBe(0);
      expect(w.output()).toMatch(/stopping \(stop requested\)/);
      expect(alive(w.child.pid!)).toBe(false);
    }
  });

  it('a worker for a rank the job does not have says so', async () => {
    const { code, output } = await troupeToEnd(['worker', '--nats', nats.server.url, '--job', 'tiny', '--rank', '5', '--config', fixture('tiny.job.ts')]);
    expect(code).toBe(1);
    expect(output).toMatch(/rank 5 does not exist: job tiny has 2 stages/);
  });

  it('schedule show draws a simulated timeline, prints the bubble beside the formula and writes an SVG', async () => {
    const svg = join(tmpdir(), `troupe-schedule-${process.pid}.svg`);
    try {
      const { code, output } = await troupeToEnd(['schedule', 'show', '1f1b', '-p', '4', '-m', '8', '--svg', svg]);
      expect(code, output).toBe(0);
      expect(output).toMatch(/1f1b, p=4, m=8: step 33 time units/);
      expect(output.split('\n').filter((l) => /^ \d \|/.test(l))).toHaveLength(4);
      expect(output).toMatch(/bubble: simulated 27\.3%, \(p-1\)\/\(m\+p-1\) = 27\.3%/);
      expect(output).toMatch(/peak activations per stage: 4 3 2 1/);
      expect(readFileSync(svg, 'utf8').match(/<rect /g)).toHaveLength(4 * 8 * 2);
    } finally {
      rmSync(svg, { force: true });
    }
    // ZB-H1: B and W apart (unit costs each), W filling the bubbles: 28 units against 1F1B's 33, same peak.
    const zb = await troupeToEnd(['schedule', 'show', 'zbh1', '-p', '4', '-m', '8']);
    expect(zb.output).toMatch(/zbh1, p=4, m=8: step 28 time units/);
    expect(zb.output).toMatch(/bubble: simulated 14\.3%/);
    expect(zb.output).toMatch(/peak activations per stage: 4 4 4 3/);
    // Interleaved: 4 stages on 2 devices, a row per device, the bubble of 1F1B divided by v.
    const il = await troupeToEnd(['schedule', 'show', 'interleaved', '-p', '4', '-v', '2', '-m', '4']);
    expect(il.output).toMatch(/interleaved, p=4 on 2 devices, m=4: step 27 time units/);
    expect(il.output.split('\n').filter((l) => /^ \d \|/.test(l))).toHaveLength(2);
    expect(il.output).toMatch(/bubble: simulated 11\.1%, \(\(d-1\)\/v\)\/\(m\+\(d-1\)\/v\) = 11\.1%/);
    expect(await troupeToEnd(['schedule', 'show', 'zigzag', '-p', '2', '-m', '2'])).toMatchObject({
      code: 1,
      output: expect.stringMatching(/unknown schedule "zigzag"/),
    });
    expect(await troupeToEnd(['schedule', 'show', 'gpipe', '-p', 'two', '-m', '2'])).toMatchObject({
      code: 2,
      output: expect.stringMatching(/-p must be an integer/),
    });
  });
});

describe('command line conventions', () => {
  it('--version (or -V) prints the package version', async () => {
    const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) {
      const run = troupe([flag]);
      expect((await run.exit).code, run.output()).toBe(0);
      expect(run.stdout()).toBe(`troupe ${version}\n`);
    }
  });

  it('up without -v prints the progress and summary but no line per checkpoint', async () => {
    const run = troupe(['up', fixture('tiny.job.ts'), '--steps', '3', '--checkpoint-dir', join(tmp, 'plain')]);
    expect((await run.exit).code, run.output()).toBe(0);
    expect(run.stdout()).toMatch(/step 3\/3 epoch 1\/2/);
    expect(run.stdout()).toMatch(/summary: job tiny, 3 steps/);
    expect(run.output()).not.toMatch(/checkpoint step \d+ saved/);
  });

  it('up --json -q prints the JSON summary alone on stdout, and nothing on stderr', async () => {
    const run = troupe(['up', fixture('tiny.job.ts'), '--steps', '3', '--json', '-q', '--checkpoint-dir', join(tmp, 'quiet')]);
    expect((await run.exit).code, run.output()).toBe(0);
    const lines = run.stdout().trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    const s = JSON.parse(lines[0]!);
    expect(s).toMatchObject({ job: 'tiny', steps: 3 });
    expect(s.losses).toHaveLength(3);
    for (const l of s.losses) expect(Number.isFinite(l) && l > 0).toBe(true);
    expect(s.metrics).toHaveLength(3);
    expect(s.last).toEqual({ loss: s.losses[2], metric: s.metrics[2] });
    expect(s.heldOut.loss).toBeGreaterThan(0);
    expect(s.heldOut.metric).toBeGreaterThanOrEqual(0);
    expect(s.heldOut.metric).toBeLessThanOrEqual(1);
    // 3 steps of 4 microbatches, plus the held-out forward in 4.
    expect(s.stages.map((st: { rank: number; forwards: number; backwards: number }) => [st.rank, st.forwards, st.backwards])).toEqual([
      [0, 16, 12],
      [1, 16, 12],
    ]);
    expect(s.workers.map((w: { rank: number; pid: number }) => w.rank)).toEqual([0, 1]);
    expect(run.stderr()).toBe('');
  });

  it('up --json -v: people get the summary and a line per checkpoint on stderr, with the figures the JSON on stdout has', async () => {
    const run = troupe(['up', fixture('tiny.job.ts'), '--steps', '3', '--json', '-v', '--checkpoint-dir', join(tmp, 'verbose')]);
    expect((await run.exit).code, run.output()).toBe(0);
    const s = JSON.parse(run.stdout());
    expect(run.stderr().match(/checkpoint step \d+ saved/g)).toEqual(['checkpoint step 1 saved', 'checkpoint step 2 saved', 'checkpoint step 3 saved']);
    expect(run.stderr()).toMatch(/step 3\/3 epoch 1\/2/);
    expect(run.stderr()).toContain(`summary: job tiny, 3 steps`);
    expect(run.stderr()).toContain(`last loss ${s.last.loss.toFixed(4)}`);
    expect(run.stderr()).toContain(`held-out: loss ${s.heldOut.loss.toFixed(4)}, metric ${(s.heldOut.metric * 100).toFixed(2)}%`);
    expect(await troupeToEnd(['up', fixture('tiny.job.ts'), '-q', '-v'])).toMatchObject({ code: 2, output: expect.stringMatching(/-q or -v, not both/) });
  });

  it('troupe worker takes what it lacks in flags from TROUPE_NATS_URL, TROUPE_JOB, TROUPE_RANK and TROUPE_CONFIG', async () => {
    const driver = troupe(['up', fixture('tiny.job.ts'), '--nats', nats.server.url, '--job', 'fromenv', '--no-spawn', '--steps', '2']);
    await driver.waitFor(/waiting for 2 workers/);
    // As a process manager starts them: the same command line, the rank in the environment.
    const workers = [0, 1].map((rank) =>
      troupe(['worker'], { TROUPE_NATS_URL: nats.server.url, TROUPE_JOB: 'fromenv', TROUPE_RANK: String(rank), TROUPE_CONFIG: fixture('tiny.job.ts') }),
    );
    expect((await driver.exit).code, driver.output()).toBe(0);
    expect(driver.output()).toMatch(/step 2\/2/);
    for (const [rank, w] of workers.entries()) {
      expect((await w.exit).code, w.output()).toBe(0);
      expect(w.output()).toMatch(new RegExp(`job fromenv rank ${rank}/2 pid`));
    }
    // A flag wins over the environment.
    const env = troupe(['worker', '--rank', '5'], {
      TROUPE_NATS_URL: nats.server.url,
      TROUPE_JOB: 'tiny',
      TROUPE_RANK: '0',
      TROUPE_CONFIG: fixture('tiny.job.ts'),
    });
    expect((await env.exit).code).toBe(1);
    expect(env.output()).toMatch(/rank 5 does not exist: job tiny has 2 stages/);
    const none = troupe(['worker'], { TROUPE_NATS_URL: '', TROUPE_JOB: 'x', TROUPE_RANK: '0', TROUPE_CONFIG: 'x.ts' });
    expect((await none.exit).code).toBe(2);
    expect(none.output()).toMatch(/troupe worker needs --nats \(or TROUPE_NATS_URL in the environment\)/);
  });
});
