import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { Phase } from '../../src/protocol/phase.js';
import {
  CtlVerb,
  SchedEvent,
  checkJobId,
  checkScope,
  ctlSubject,
  everyScope,
  jobOfScope,
  presentSubject,
  replicaScope,
  scopeOfSubject,
  statsSubject,
  whoSubject,
  ctlWildcard,
  inspectSubject,
  lastToken,
  schedSubject,
  parseSchedSubject,
  schedWildcard,
  stageSubject,
  stageWildcard,
} from '../../src/protocol/subjects.js';

/** NATS subject matching: `*` matches exactly one token, `>` one or more trailing tokens. */
function matches(wildcard: string, subject: string): boolean {
  const w = wildcard.split('.');
  const s = subject.split('.');
  for (let i = 0; i < w.length; i++) {
    if (w[i] === '>') return s.length > i;
    if (i >= s.length) return false;
    if (w[i] !== '*' && w[i] !== s[i]) return false;
  }
  return w.length === s.length;
}

/** A valid NATS subject: non-empty tokens with no space or wildcard characters. */
function isPlainSubject(s: string): boolean {
  return s.split('.').every((t) => t.length > 0 && !/[\s*>]/.test(t));
}

describe('subject builders', () => {
  it('build the documented scheme', () => {
    expect(stageSubject('mnist', 0, Phase.INPUT)).toBe('troupe.mnist.stage.0.INPUT');
    expect(stageSubject('mnist', 3, Phase.FORWARD)).toBe('troupe.mnist.stage.3.FORWARD');
    expect(stageSubject('a-b_9', 12, Phase.BACKWARD)).toBe('troupe.a-b_9.stage.12.BACKWARD');
    expect(stageSubject('mnist', 1, Phase.UPDATE)).toBe('troupe.mnist.stage.1.UPDATE');
    expect(stageWildcard('mnist', 2)).toBe('troupe.mnist.stage.2.*');
    expect(ctlSubject('mnist', 0, CtlVerb.STEP)).toBe('troupe.mnist.ctl.0.step');
    expect(ctlSubject('mnist', 4, CtlVerb.ABORT)).toBe('troupe.mnist.ctl.4.abort');
    expect(ctlSubject('mnist', 4, CtlVerb.STOP)).toBe('troupe.mnist.ctl.4.stop');
    expect(ctlWildcard('mnist', 4)).toBe('troupe.mnist.ctl.4.*');
    expect(schedSubject('mnist', 0, SchedEvent.ACTION)).toBe('troupe.mnist.sched.0.action');
    expect(schedSubject('mnist', 1, SchedEvent.LOSS)).toBe('troupe.mnist.sched.1.loss');
    expect(schedSubject('mnist', 2, SchedEvent.DONE)).toBe('troupe.mnist.sched.2.done');
    expect(schedSubject('mnist', 0, SchedEvent.UPDATED)).toBe('troupe.mnist.sched.0.updated');
    expect(schedSubject('mnist', 3, SchedEvent.ERROR)).toBe('troupe.mnist.sched.3.error');
    expect(schedSubject('mnist', 0, SchedEvent.REJECT)).toBe('troupe.mnist.sched.0.reject');
    expect(schedWildcard('mnist')).toBe('troupe.mnist.sched.*.*');
    expect(schedWildcard('mnist', SchedEvent.ACTION)).toBe('troupe.mnist.sched.*.action');
    expect(parseSchedSubject('troupe.mnist.r1.sched.12.done')).toEqual({ rank: 12, event: 'done' });
    expect(parseSchedSubject('troupe.mnist.sched.done')).toBeNull();
    expect(inspectSubject('mnist', 'stage-1')).toBe('troupe.mnist.inspect.stage-1');
  });

  it('put a replica in a token of its own, so one wildcard covers every replica of a job', () => {
    expect(replicaScope('mnist', 0, 1)).toBe('mnist');
    expect(replicaScope('mnist', 1, 3)).toBe('mnist.r1');
    expect(stageSubject(replicaScope('mnist', 1, 3), 0, Phase.INPUT)).toBe('troupe.mnist.r1.stage.0.INPUT');
    expect(inspectSubject('mnist.r2', 'scheduler')).toBe('troupe.mnist.r2.inspect.scheduler');
    expect(presentSubject('mnist.r2', 'stage-1')).toBe('troupe.mnist.r2.present.stage-1');
    // One request per job: every replica's actors answer it.
    expect(whoSubject('mnist.r2')).toBe('troupe.mnist.who');
    expect(whoSubject('mnist')).toBe('troupe.mnist.who');
    expect(jobOfScope('mnist.r2')).toBe('mnist');
    const scopes = [0, 1, 2].map((i) => replicaScope('mnist', i, 3));
    for (const sc of scopes) {
      expect(matches('troupe.mnist.>', statsSubject(sc, 1))).toBe(true);
      expect(matches('troupe.mnist.*.inspect.*', inspectSubject(sc, 'stage-0'))).toBe(true);
      expect(matches(everyScope('mnist', 'stats')[1], statsSubject(sc, 1))).toBe(true);
      expect(scopeOfSubject('mnist', statsSubject(sc, 1))).toBe(sc);
    }
    // Another job's replicas are not covered, nor does the job's own wildcard reach them.
    expect(matches('troupe.mnist.>', statsSubject('mnist2.r0', 1))).toBe(false);
    expect(scopeOfSubject('mnist', statsSubject('mnist', 1))).toBe('mnist');
    expect(matches(everyScope('mnist', 'stats')[0], statsSubject('mnist', 1))).toBe(true);
    expect(scopeOfSubject('mnist', 'troupe.other.stats.1')).toBeNull();
    expect(() => replicaScope('mnist', 3, 3)).toThrow(ConfigError);
    expect(() => checkScope('mnist.r')).toThrow(ConfigError);
    expect(() => checkScope('mnist.x1')).toThrow(ConfigError);
    expect(() => checkScope('a.b.r1')).toThrow(ConfigError);
  });

  it('inspectSubject turns characters a token cannot hold into "_"', () => {
    expect(inspectSubject('mnist', 'stage.1 x*>y')).toBe('troupe.mnist.inspect.stage_1_x__y');
    expect(isPlainSubject(inspectSubject('mnist', 'a.b.c'))).toBe(true);
  });

  it("each wildcard takes its own subjects and no one else's", () => {
    for (const phase of Object.values(Phase)) {
      const s = stageSubject('j', 1, phase);
      expect(matches(stageWildcard('j', 1), s)).toBe(true);
      expect(matches(stageWildcard('j', 0), s)).toBe(false);
      expect(matches(stageWildcard('j', 11), s)).toBe(false);
      expect(matches(stageWildcard('k', 1), s)).toBe(false);
      expect(matches(ctlWildcard('j', 1), s)).toBe(false);
      expect(matches(schedWildcard('j'), s)).toBe(false);
      expect(lastToken(s)).toBe(phase);
    }
    for (const verb of Object.values(CtlVerb)) {
      const s = ctlSubject('j', 2, verb);
      expect(matches(ctlWildcard('j', 2), s)).toBe(true);
      expect(matches(stageWildcard('j', 2), s)).toBe(false);
      expect(lastToken(s)).toBe(verb);
    }
    for (const ev of Object.values(SchedEvent)) {
      const s = schedSubject('j', 1, ev);
      expect(matches(schedWildcard('j'), s)).toBe(true);
      expect(matches(schedWildcard('j-2'), s)).toBe(false);
      expect(lastToken(s)).toBe(ev);
    }
  });

  it('lastToken returns what follows the last dot', () => {
    expect(lastToken('a.b.c')).toBe('c');
    expect(lastToken('abc')).toBe('abc');
    expect(lastToken('a.b.')).toBe('');
  });
});

describe('job ids', () => {
  const good = ['a', 'mnist', 'A-b_9', '-', '_', 'x'.repeat(64)];
  const bad = ['', 'a.b', '.', 'a*', '*', 'a>', '>', 'a b', ' a', 'a ', 'a\tb', 'a\n', 'x'.repeat(65), 'é', 'a/b', 'a:b'];

  it.each(good)('accepts %j', (job) => {
    expect(checkJobId(job)).toBe(job);
    expect(isPlainSubject(stageSubject(job, 0, Phase.INPUT))).toBe(true);
    expect(stageSubject(job, 0, Phase.INPUT).split('.')).toHaveLength(5);
  });

  it.each(bad)('refuses %j in every builder with a ConfigError', (job) => {
    const calls: Array<() => string> = [
      () => checkJobId(job),
      () => stageSubject(job, 0, Phase.INPUT),
      () => stageWildcard(job, 0),
      () => ctlSubject(job, 0, CtlVerb.STEP),
      () => ctlWildcard(job, 0),
      () => schedSubject(job, 0, SchedEvent.LOSS),
      () => schedWildcard(job),
      () => inspectSubject(job, 'x'),
    ];
    for (const call of calls) {
      expect(call).toThrow(ConfigError);
      expect(call).toThrow(/job id "[\s\S]*" must be 1-64 letters, digits, "_" or "-"/);
    }
  });
});

describe('ranks', () => {
  it.each([-1, -0.5, 1.5, NaN, Infinity, -Infinity])('refuses rank %s with a ConfigError', (rank) => {
    const calls: Array<() => string> = [
      () => stageSubject('j', rank, Phase.FORWARD),
      () => stageWildcard('j', rank),
      () => ctlSubject('j', rank, CtlVerb.STEP),
      () => ctlWildcard('j', rank),
    ];
    for (const call of calls) {
      expect(call).toThrow(ConfigError);
      expect(call).toThrow(new RegExp(`rank ${String(rank)} is not a non-negative integer`));
    }
  });

  it('takes 0 and large integers', () => {
    expect(stageSubject('j', 0, Phase.FORWARD)).toBe('troupe.j.stage.0.FORWARD');
    expect(ctlWildcard('j', 1000)).toBe('troupe.j.ctl.1000.*');
  });
});

describe('the permissions table', () => {
  it('is what the committed nats.conf says (run scripts/nats-conf.ts after changing it)', async () => {
    const { readFileSync } = await import('node:fs');
    const { natsConfText } = await import('../../src/fleet/natsConf.js');
    expect(readFileSync(new URL('../../nats.conf', import.meta.url), 'utf8')).toBe(natsConfText());
  });

  it('builds its patterns from the same shapes as the subjects: each subject a user needs is allowed, in any job and in its own', async () => {
    const { permissionsOf } = await import('../../src/protocol/subjects.js');
    for (const job of ['*', 'mnist']) {
      const allowed = (role: string, kind: 'publish' | 'subscribe', subject: string) => permissionsOf(role, job)[kind].some((p) => matches(p, subject));
      for (const scope of ['mnist', 'mnist.r1']) {
        expect(allowed('stage1', 'publish', stageSubject(scope, 2, Phase.FORWARD))).toBe(true);
        expect(allowed('stage1', 'publish', stageSubject(scope, 0, Phase.BACKWARD))).toBe(true);
        expect(allowed('stage1', 'publish', schedSubject(scope, 1, SchedEvent.DONE))).toBe(true);
        expect(allowed('stage1', 'publish', schedSubject(scope, 0, SchedEvent.DONE))).toBe(false);
        expect(allowed('stage1', 'subscribe', stageWildcard(scope, 1))).toBe(true);
        expect(allowed('stage1', 'subscribe', ctlWildcard(scope, 1))).toBe(true);
        expect(allowed('driver', 'publish', ctlSubject(scope, 3, CtlVerb.KEY))).toBe(true);
        expect(allowed('driver', 'subscribe', schedWildcard(scope))).toBe(true);
        expect(allowed('inspector', 'subscribe', stageWildcard(scope, 1))).toBe(false);
      }
      expect(allowed('stage1', 'publish', stageSubject('other', 2, Phase.FORWARD))).toBe(job === '*');
    }
    expect(() => permissionsOf('stage1', 'a.b')).toThrow(ConfigError);
    expect(() => permissionsOf('root')).toThrow(/no NATS user "root"/);
  });

  it('pool subjects check every token', async () => {
    const { poolSubject } = await import('../../src/protocol/subjects.js');
    expect(poolSubject('p', 'caller', 'c-1')).toBe('troupe.pool.p.caller.c-1');
    expect(() => poolSubject('p', 'caller', 'a.b')).toThrow(ConfigError);
  });
});
