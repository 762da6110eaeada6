/**
 * Least privilege on the project's nats.conf: no anonymous access, the inspector only
 * listens, a stage talks to its neighbours and the scheduler only. Every refusal is seen as
 * a permission error on the offending connection, and the message never arrives.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { TransportError } from '../../src/errors.js';
import { Bus, type BusStatus } from '../../src/transport/bus.js';
import { passwordVariable } from '../../src/transport/credentials.js';
import { startNatsCluster } from '../../src/fleet/natsCluster.js';
import { startNatsServer, type NatsServer } from '../../src/fleet/natsServer.js';
import { encodeJson } from '../../src/protocol/messages.js';
import { SchedEvent, schedSubject } from '../../src/protocol/subjects.js';
import { SchedulerHost } from '../../src/runtime/schedulerHost.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const enc = new TextEncoder();

/** Publishes as `role`; resolves to the permission errors its connection got and whether an admin saw the message. */
async function tryPublish(role: string, subject: string): Promise<{ violations: string[]; delivered: boolean }> {
  const admin = await Bus.connect({ role: 'admin', servers: nats.server.url });
  const bus = await Bus.connect({ role, servers: nats.server.url });
  const violations: string[] = [];
  bus.onStatus((s: BusStatus) => {
    if (/permissions violation/i.test(s.detail)) violations.push(s.detail);
  });
  let delivered = false;
  const sub = admin.subscribe(subject, () => (delivered = true));
  try {
    await admin.flush();
    await bus.publish(subject, enc.encode('x'));
    await bus.flush(); // the server has handled the publish (and sent its -ERR) before the PONG
    await admin.flush();
    return { violations, delivered };
  } finally {
    await sub.drain();
    await bus.close();
    await admin.close();
  }
}

describe("nats.conf's users and permissions", () => {
  it('refuses an anonymous client and a wrong password, naming the authorization failure', async () => {
    const anon = Bus.connect({ servers: nats.server.url, maxReconnectAttempts: 0 });
    await expect(anon).rejects.toThrow(TransportError);
    await expect(anon).rejects.toThrow(/authorization/i);
    await expect(Bus.connect({ servers: nats.server.url, user: 'driver', pass: 'wrongpassword1', maxReconnectAttempts: 0 })).rejects.toThrow(/authorization/i);
    // The right one, from the environment, is let in.
    expect(process.env[passwordVariable('driver')]).toMatch(/^[A-Za-z]/);
    const ok = await Bus.connect({ role: 'driver', servers: nats.server.url });
    await ok.close();
  });

  it.each([
    ['inspector', 'troupe.job.stage.0.UPDATE'],
    ['inspector', 'troupe.job.stage.1.INPUT'],
    ['inspector', 'troupe.job.ctl.0.abort'],
    ['stage0', 'troupe.job.stage.2.FORWARD'],
    ['stage1', 'troupe.job.stage.2.BACKWARD'],
    ['stage2', 'troupe.job.stage.0.BACKWARD'],
    ['stage1', 'troupe.job.stage.1.INPUT'],
    ['stage1', 'troupe.job.ctl.0.stop'],
    ['stage1', 'troupe.job.state.0'],
    ['driver', 'troupe.job.stage.1.FORWARD'],
    // The same within a replica's scope (troupe.<job>.r<i>...): no wider.
    ['stage0', 'troupe.job.r1.stage.2.FORWARD'],
    ['stage1', 'troupe.job.r1.stage.1.INPUT'],
    ['stage1', 'troupe.job.r0.ctl.0.stop'],
    ['driver', 'troupe.job.r1.stage.1.FORWARD'],
    // The inspector may ask who is there, and nothing else; only the actor itself answers for it.
    ['inspector', 'troupe.job.r1.stage.0.INPUT'],
    ['inspector', 'troupe.job.present.scheduler'],
    ['stage0', 'troupe.job.present.stage-1'],
    ['stage0', 'troupe.job.who'],
    ['driver', 'troupe.job.present.stage-0'],
    ['stage0', 'troupe.job.inspect.job'],
  ])('%s may not publish on %s: a permission error, and nothing arrives', async (role, subject) => {
    const r = await tryPublish(role, subject);
    expect(r.delivered).toBe(false);
    expect(r.violations.join('\n')).toMatch(new RegExp(`Permissions Violation for Publish to "?${subject.replace(/\./g, '\\.')}`, 'i'));
  });

  it.each([
    ['stage0', 'troupe.job.stage.1.FORWARD'],
    ['stage1', 'troupe.job.stage.0.BACKWARD'],
    ['stage1', 'troupe.job.stage.2.FORWARD'],
    ['stage1', 'troupe.job.sched.1.done'],
    ['driver', 'troupe.job.stage.0.INPUT'],
    ['driver', 'troupe.job.stage.3.UPDATE'],
    ['stage0', 'troupe.job.r1.stage.1.FORWARD'],
    ['stage1', 'troupe.job.r0.stage.0.BACKWARD'],
    ['stage1', 'troupe.job.r1.sched.1.done'],
    ['driver', 'troupe.job.r1.stage.0.INPUT'],
    ['driver', 'troupe.job.r1.ctl.1.step'],
    ['inspector', 'troupe.job.who'],
    ['stage1', 'troupe.job.present.stage-1'],
    ['stage1', 'troupe.job.r1.present.stage-1'],
    ['driver', 'troupe.job.r0.present.scheduler'],
    // troupe up's job actor, shown to inspectors under its own name.
    ['driver', 'troupe.job.inspect.job'],
    ['driver', 'troupe.job.present.job'],
  ])('%s may publish on %s', async (role, subject) => {
    const r = await tryPublish(role, subject);
    expect(r.violations).toEqual([]);
    expect(r.delivered).toBe(true);
  });

  it('the inspector may listen to what it shows, and a stage may not listen to another stage', async () => {
    for (const [role, subject, allowed] of [
      ['inspector', 'troupe.job.inspect.*', true],
      ['inspector', 'troupe.job.r1.present.*', true],
      ['inspector', 'troupe.job.sched.*.*', true],
      ['inspector', 'troupe.job.r1.stats.*', true],
      // Not frames, plans or states: it shows none of them.
      ['inspector', 'troupe.job.stage.1.FORWARD', false],
      ['inspector', 'troupe.job.r1.stage.1.FORWARD', false],
      ['inspector', 'troupe.job.ctl.1.step', false],
      ['inspector', 'troupe.job.state.0', false],
      ['stage0', 'troupe.job.who', true],
      ['driver', 'troupe.job.who', true],
      ['stage0', 'troupe.job.stage.1.FORWARD', false],
      ['stage0', 'troupe.job.r1.stage.1.FORWARD', false],
    ] as const) {
      const bus = await Bus.connect({ role, servers: nats.server.url });
      const violations: string[] = [];
      bus.onStatus((s) => /permissions violation/i.test(s.detail) && violations.push(s.detail));
      bus.subscribe(subject, () => {});
      await bus.flush();
      if (allowed) expect(violations).toEqual([]);
      else expect(violations.join('\n')).toMatch(new RegExp(`Permissions Violation for Subscription to "?${subject.replace(/\./g, '\\.')}`, 'i'));
      await bus.close();
    }
  });
});

describe('least privilege (#20 item 2)', () => {
  /** Subscribes as `role`; resolves to the permission errors its connection got. */
  async function trySubscribe(url: string, role: string, subject: string): Promise<string[]> {
    const bus = await Bus.connect({ role, servers: url });
    const violations: string[] = [];
    bus.onStatus((s) => /permissions violation/i.test(s.detail) && violations.push(s.detail));
    try {
      bus.subscribe(subject, () => {});
      await bus.flush(); // the server has handled the SUB (and sent its -ERR) before the PONG
      return violations;
    } finally {
      await bus.close();
    }
  }
  const violation = (kind: 'Publish' | 'Subscription', subject: string) =>
    new RegExp(`Permissions Violation for ${kind} (to|of) "?${subject.replace(/[.*>]/g, (c) => `\\${c}`)}`, 'i');

  it.each([
    ['stage1', 'troupe.job.sched.0.done'],
    ['stage1', 'troupe.job.sched.2.error'],
    ['stage0', 'troupe.job.r1.sched.1.loss'],
    ['stage2', 'troupe.job.sched.0.reject'],
  ])('a stage publishes scheduler events under its own rank only: %s may not publish on %s', async (role, subject) => {
    const r = await tryPublish(role, subject);
    expect(r.delivered).toBe(false);
    expect(r.violations.join('\n')).toMatch(violation('Publish', subject));
  });

  it.each([
    ['driver', '_INBOX.>'],
    ['driver', '_INBOX.pool.>'],
    ['driver', '_INBOX.stage0.>'],
    ['pool', '_INBOX.>'],
    ['pool', '_INBOX.driver.>'],
    ['stage0', '_INBOX.driver.>'],
    ['inspector', '_INBOX.>'],
  ])('%s may not read the replies of others: subscribing to %s is refused', async (role, subject) => {
    expect((await trySubscribe(nats.server.url, role, subject)).join('\n')).toMatch(violation('Subscription', subject));
  });

  it('the driver and pools read replies under their own inbox prefix, which requests use', async () => {
    expect(await trySubscribe(nats.server.url, 'driver', '_INBOX.driver.>')).toEqual([]);
    expect(await trySubscribe(nats.server.url, 'pool', '_INBOX.pool.>')).toEqual([]);
    // A request round trip: the stage answers on the driver's prefix, which only the driver may read.
    const stage = await Bus.connect({ role: 'stage0', servers: nats.server.url });
    const driver = await Bus.connect({ role: 'driver', servers: nats.server.url });
    try {
      stage.subscribe('troupe.job.ctl.0.ping', (m) => m.respond(enc.encode('pong')));
      await stage.flush();
      expect(new TextDecoder().decode(await driver.request('troupe.job.ctl.0.ping', enc.encode('ping'), 5_000))).toBe('pong');
    } finally {
      await stage.close();
      await driver.close();
    }
  });
});

describe('a server of one job (startNatsServer({ job }), as troupe up starts it)', () => {
  let server: NatsServer;
  beforeAll(async () => {
    server = await startNatsServer({ job: 'jobA' });
  });
  afterAll(async () => {
    await server?.stop();
  });

  /** As tryPublish, on this server; `admin` sees what arrives. */
  async function publishHere(role: string, subject: string): Promise<{ violations: string[]; delivered: boolean }> {
    const admin = await Bus.connect({ role: 'admin', servers: server.url });
    const bus = await Bus.connect({ role, servers: server.url });
    const violations: string[] = [];
    bus.onStatus((s) => /permissions violation/i.test(s.detail) && violations.push(s.detail));
    let delivered = false;
    admin.subscribe(subject, () => (delivered = true));
    try {
      await admin.flush();
      await bus.publish(subject, enc.encode('x'));
      await bus.flush();
      await admin.flush();
      return { violations, delivered };
    } finally {
      await bus.close();
      await admin.close();
    }
  }

  it.each([
    ['stage0', 'troupe.jobB.stage.1.FORWARD'],
    ['stage0', 'troupe.jobB.r1.stage.1.FORWARD'],
    ['stage1', 'troupe.jobB.sched.1.done'],
    ['driver', 'troupe.jobB.stage.0.INPUT'],
    ['driver', 'troupe.jobB.state.1'],
    ['inspector', 'troupe.jobB.who'],
  ])('%s of job jobA may not publish into job jobB: %s', async (role, subject) => {
    const r = await publishHere(role, subject);
    expect(r.delivered).toBe(false);
    expect(r.violations.join('\n')).toMatch(new RegExp(`Permissions Violation for Publish to "?${subject.replace(/\./g, '\\.')}`, 'i'));
  });

  it.each([
    ['stage0', 'troupe.jobA.stage.1.FORWARD'],
    ['stage1', 'troupe.jobA.r0.sched.1.done'],
    ['driver', 'troupe.jobA.stage.0.INPUT'],
  ])('%s may publish in its own job: %s', async (role, subject) => {
    const r = await publishHere(role, subject);
    expect(r.violations).toEqual([]);
    expect(r.delivered).toBe(true);
  });

  it.each([
    ['stage0', 'troupe.jobB.stage.0.INPUT'],
    ['stage1', 'troupe.jobB.state.1'],
    ['stage1', 'troupe.jobB.ctl.1.step'],
    ['driver', 'troupe.jobB.snapshot.*'],
    ['inspector', 'troupe.jobB.stats.*'],
  ])("%s of job jobA may not read job jobB's inputs, weights or plans: %s", async (role, subject) => {
    const bus = await Bus.connect({ role, servers: server.url });
    const violations: string[] = [];
    bus.onStatus((s) => /permissions violation/i.test(s.detail) && violations.push(s.detail));
    try {
      bus.subscribe(subject, () => {});
      await bus.flush();
      expect(violations.join('\n')).toMatch(new RegExp(`Permissions Violation for Subscription to "?${subject.replace(/[.*]/g, (c) => `\\${c}`)}`, 'i'));
    } finally {
      await bus.close();
    }
  });
});

describe('cluster routes (nats-cluster.conf)', () => {
  it('a rogue nats-server without the route password is refused, and a client on it hears nothing of a job', async () => {
    const cluster = await startNatsCluster(2);
    const dir = mkdtempSync(join(tmpdir(), 'troupe-rogue-'));
    let rogue: NatsServer | undefined;
    const clients: Bus[] = [];
    try {
      const routePort = /Listening for route connections on [^\s]*:(\d+)/.exec(cluster.nodes[0]!.log())![1]!;
      // A server of the same cluster name, no users, routing to node 0 without credentials.
      writeFileSync(
        join(dir, 'rogue.conf'),
        `listen: 127.0.0.1:-1\ncluster {\n  name: troupe\n  listen: 127.0.0.1:-1\n  routes: ["nats://127.0.0.1:${routePort}"]\n}\n`,
      );
      rogue = await startNatsServer({ config: join(dir, 'rogue.conf') });
      const anon = await Bus.connect({ servers: rogue.url });
      const admin = await Bus.connect({ role: 'admin', servers: cluster.nodes[0]!.url });
      clients.push(anon, admin);
      let heard = 0;
      anon.subscribe('troupe.>', () => heard++);
      await anon.flush();
      // Until node 0 refuses the route, or (were routes open) the rogue's client hears the job.
      const refused = () => /Authentication Failure/.test(cluster.nodes[0]!.log());
      const deadline = Date.now() + 10_000;
      while (!refused() && heard === 0 && Date.now() < deadline) {
        await admin.publish('troupe.job.stage.0.INPUT', enc.encode('weights'));
        await admin.flush();
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(refused()).toBe(true);
      await admin.publish('troupe.job.stage.0.INPUT', enc.encode('weights'));
      await admin.flush();
      await anon.flush();
      expect(heard).toBe(0);
      expect(rogue.log()).toMatch(/Authorization Violation/);
    } finally {
      for (const c of clients) await c.close();
      await rogue?.stop();
      await cluster.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('scheduler events', () => {
  it('the scheduler takes the rank from the subject: an event of stage 0 naming stage 1 is refused, not counted for stage 1', async () => {
    const driver = await Bus.connect({ role: 'driver', servers: nats.server.url });
    const stage0 = await Bus.connect({ role: 'stage0', servers: nats.server.url });
    const sched = await SchedulerHost.start({ bus: driver, job: 'ranks', stages: 2 });
    try {
      await driver.flush();
      await stage0.publish(schedSubject('ranks', 0, SchedEvent.DONE), encodeJson({ rank: 1, step: 1, peakHeld: 0 }));
      await stage0.publish(
        schedSubject('ranks', 0, SchedEvent.REJECT),
        encodeJson({ rank: 1, subject: 'x', code: 'FRAME', message: 'forged', step: null, microbatch: null, phase: null }),
      );
      await stage0.flush();
      await driver.flush();
      // Stage 1's own, on its own subject, is taken.
      const stage1 = await Bus.connect({ role: 'stage1', servers: nats.server.url });
      await stage1.publish(
        schedSubject('ranks', 1, SchedEvent.REJECT),
        encodeJson({ rank: 1, subject: 'y', code: 'FRAME', message: 'bad header', step: null, microbatch: null, phase: null }),
      );
      await stage1.close();
      await vi.waitFor(() => expect(sched.lastRejects).toHaveLength(1));
      expect(sched.lastRejects[0]).toMatchObject({ rank: 1, subject: 'y' });
      expect(sched.malformedEvents).toBe(2);
    } finally {
      await sched.close();
      await stage0.close();
      await driver.close();
    }
  });
});
