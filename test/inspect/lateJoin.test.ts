/**
 * Inspectors that join a job already running, as users start them: `troupe up --inspect`
 * first (2 worker processes), then, once steps have run, `troupe inspect` in another process.
 * The late inspector asks who is there: a WebSocket viewer and the page in Chromium get every
 * actor with its machine and current state at once, and the frames refused before they
 * opened.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { decodeMessage } from '../../src/protocol/messages.js';
import { Bus } from '../../src/transport/bus.js';
import { launchChromium } from '../helpers/browser.js';
import { troupe, type CliRun } from '../helpers/troupeCli.js';

const CONFIG = fileURLToPath(new URL('../fixtures/tiny.job.ts', import.meta.url));
const JOB = 'late';

interface Frame {
  type: string;
  name: string;
  sessionId: string;
  parentId?: string;
  definition: string;
  snapshot: { status: string; value: unknown; context: { step?: number } };
}

/** The dotted paths of a state value (`{ running: 'waiting' }` -> running, running.waiting). */
function paths(v: unknown, prefix = ''): string[] {
  if (typeof v === 'string') return [prefix + v];
  return Object.entries(v as Record<string, unknown>).flatMap(([k, c]) => [prefix + k, ...paths(c, `${prefix}${k}.`)]);
}

/** Whether every path of `value` is a state of the machine `def`. */
function isStateOf(def: { states?: Record<string, unknown> }, value: unknown): boolean {
  return paths(value).every((p) => {
    let node: { states?: Record<string, unknown> } | undefined = def;
    for (const k of p.split('.')) node = node?.states?.[k] as typeof node;
    return node !== undefined;
  });
}

let up: CliRun;
let nats = '';
let credentials = '';
let pageUrl = '';
const late: CliRun[] = [];

beforeAll(async () => {
  // A job that does not end on its own; the inspector comes later.
  // The admin password is the test's own (the printed file holds the inspector's only).
  const adminPass = `k${randomBytes(16).toString('hex')}`;
  up = troupe(['up', CONFIG, '--job', JOB, '--inspect'], { TINY_EPOCHS: '100000', TROUPE_NATS_PASS_ADMIN: adminPass });
  credentials = (await up.waitFor(/TROUPE_NATS_CREDENTIALS=(\S+)/))[1]!;
  pageUrl = (await up.waitFor(/inspector at (http:\/\/\S+)/))[1]!;
  nats = (await up.waitFor(/NATS (nats:\/\/\S+) \(nats-server pid/))[1]!;
  expect(Object.keys(JSON.parse(readFileSync(credentials, 'utf8')) as Record<string, string>)).toEqual(['inspector']);
  const admin = await Bus.connect({ servers: nats, user: 'admin', pass: adminPass });
  try {
    // Steps have run (both stages counted step 3 done): the job is well under way before anything else joins.
    const ranks = new Set<number>();
    await new Promise<void>((resolve) =>
      admin.subscribe(`troupe.${JOB}.stats.*`, (m) => {
        const s = decodeMessage('stats', m.data);
        if (s.step >= 3) ranks.add(s.rank);
        if (ranks.size === 2) resolve();
      }),
    );
    // A frame refused before the late inspector exists: it must show up there all the same.
    const refused = new Promise<void>((resolve) => admin.subscribe(`troupe.${JOB}.sched.*.reject`, () => resolve()));
    await admin.flush();
    await admin.publish(`troupe.${JOB}.stage.0.INPUT`, new TextEncoder().encode('not a frame'));
    await refused;
  } finally {
    await admin.close();
  }
}, 180_000);

afterAll(async () => {
  for (const c of late) c.child.kill('SIGINT');
  await Promise.all(late.map((c) => c.exit));
  up?.child.kill('SIGINT');
  await up?.exit;
});

/** Starts `troupe inspect` for the job now, with the credentials `troupe up` printed. */
async function inspectNow(): Promise<{ url: string; ws: string }> {
  const cli = troupe(['inspect', '--nats', nats, '--job', JOB, '--stately'], { TROUPE_NATS_CREDENTIALS: credentials });
  late.push(cli);
  const [, url, ws] = await cli.waitFor(/job \S+ at (http:\/\/\S+)\n\s+Stately relay: (ws:\/\/\S+)/);
  return { url: url!, ws: ws! };
}

describe('an inspector joining a running job', () => {
  it('a WebSocket viewer gets every actor with its machine and current state within a second', async () => {
    const { ws: wsUrl } = await inspectNow();
    const ws = new WebSocket(wsUrl);
    const roots = new Map<string, Frame>();
    const all = new Promise<void>((resolve) => {
      ws.on('message', (d) => {
        const f = JSON.parse(d.toString()) as Frame;
        if (f.type === '@xstate.actor' && f.parentId === undefined) roots.set(f.name, f);
        if (roots.size === 4) resolve();
      });
    });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    const opened = performance.now();
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        all,
        new Promise(
          (_, reject) => (timer = setTimeout(() => reject(new Error(`within 1 s the viewer got only ${[...roots.keys()].join(', ') || 'no actor'}`)), 1000)),
        ),
      ]);
      expect(performance.now() - opened).toBeLessThan(1000);
    } finally {
      clearTimeout(timer);
      ws.close();
    }
    // The driver's job actor, its scheduler and the two stages.
    expect([...roots.keys()].sort()).toEqual(['job', 'scheduler', 'stage-0', 'stage-1']);
    for (const [name, f] of roots) {
      expect(f.sessionId).toBe(`${JOB}:${name}`);
      // The machine, with its guards and actions named as the library names them.
      const def = JSON.parse(f.definition) as { id: string; states: Record<string, unknown> };
      expect(def.id).toBe(name.startsWith('stage') ? 'stage' : name);
      expect(f.definition).toContain('{"type":"and"}');
      expect(f.definition).toContain('{"type":"assign"}');
      // Its current state: a state of that machine, in a job steps into.
      expect(f.snapshot.status).toBe('active');
      expect(isStateOf(def, f.snapshot.value), `${name}: ${JSON.stringify(f.snapshot.value)}`).toBe(true);
      if (name !== 'scheduler') expect(f.snapshot.context.step).toBeGreaterThanOrEqual(3);
    }
  });

  it('the page in Chromium shows every actor in its state, and the frame refused before it opened', async () => {
    const { url } = await inspectNow();
    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      await page.goto(url);
      await page.waitForFunction(
        () =>
          ['job', 'scheduler', 'stage-0', 'stage-1'].every(
            (n) =>
              document.querySelector(`.actor[data-name="${n}"] g.state.active`) &&
              document.querySelector(`.actor[data-name="${n}"]`)?.getAttribute('data-state'),
          ),
        undefined,
        { timeout: 1000 },
      );
      expect(await page.locator('#actor-count').textContent()).toBe('4');
      await page.waitForFunction(() => /\d+ frames refused/.test(document.querySelector('.rejects')?.textContent ?? ''), undefined, { timeout: 1000 });
      expect(await page.locator('.rejects').textContent()).toMatch(/stage 0 \w+/);
    } finally {
      await browser.close();
    }
  });

  it('troupe up --inspect serves the page itself, at the URL it printed', async () => {
    const html = await (await fetch(pageUrl)).text();
    expect(html).toContain(`troupe inspect · job ${JOB}`);
    const model = (await (await fetch(`${pageUrl}model`)).json()) as { kind: string; actor?: { name: string } }[];
    expect(
      model
        .filter((u) => u.kind === 'actor')
        .map((u) => u.actor!.name)
        .sort(),
    ).toEqual(['job', 'scheduler', 'stage-0', 'stage-1']);
    expect(model.some((u) => u.kind === 'reject')).toBe(true);
  });

  it('troupe inspect without credentials says which variable to set', async () => {
    const cli = troupe(['inspect', '--nats', nats, '--job', JOB], { TROUPE_NATS_CREDENTIALS: '' });
    const { code } = await cli.exit;
    expect(code).toBe(1);
    expect(cli.output()).toMatch(/refused the inspector: it needs credentials\. Set TROUPE_NATS_CREDENTIALS/);
  });
});
