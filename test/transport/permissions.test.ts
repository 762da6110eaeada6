/**
 * Least privilege on the project's nats.conf: no anonymous access, the inspector only
 * listens, a stage talks to its neighbours and the scheduler only. Every refusal is seen as
 * a permission error on the offending connection, and the message never arrives.
 */
import { describe, expect, it } from 'vitest';
import { TransportError } from '../../src/errors.js';
import { Bus, type BusStatus } from '../../src/transport/bus.js';
import { passwordVariable } from '../../src/transport/credentials.js';
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
  ])('%s may not publish on %s: a permission error, and nothing arrives', async (role, subject) => {
    const r = await tryPublish(role, subject);
    expect(r.delivered).toBe(false);
    expect(r.violations.join('\n')).toMatch(new RegExp(`Permissions Violation for Publish to "?${subject.replace(/\./g, '\\.')}`, 'i'));
  });

  it.each([
    ['stage0', 'troupe.job.stage.1.FORWARD'],
    ['stage1', 'troupe.job.stage.0.BACKWARD'],
    ['stage1', 'troupe.job.stage.2.FORWARD'],
    ['stage1', 'troupe.job.sched.done'],
    ['driver', 'troupe.job.stage.0.INPUT'],
    ['driver', 'troupe.job.stage.3.UPDATE'],
    ['stage0', 'troupe.job.r1.stage.1.FORWARD'],
    ['stage1', 'troupe.job.r0.stage.0.BACKWARD'],
    ['stage1', 'troupe.job.r1.sched.done'],
    ['driver', 'troupe.job.r1.stage.0.INPUT'],
    ['driver', 'troupe.job.r1.ctl.1.step'],
    ['inspector', 'troupe.job.who'],
    ['stage1', 'troupe.job.present.stage-1'],
    ['stage1', 'troupe.job.r1.present.stage-1'],
    ['driver', 'troupe.job.r0.present.scheduler'],
  ])('%s may publish on %s', async (role, subject) => {
    const r = await tryPublish(role, subject);
    expect(r.violations).toEqual([]);
    expect(r.delivered).toBe(true);
  });

  it('the inspector may listen to everything of a job, and a stage may not listen to another stage', async () => {
    for (const [role, subject, allowed] of [
      ['inspector', 'troupe.job.stage.1.FORWARD', true],
      ['inspector', 'troupe.job.r1.stage.1.FORWARD', true],
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
