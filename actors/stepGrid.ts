/**
 * A step's action grid, a row per stage: the actions done, the one it is at in brackets, what
 * that one waits for, and the stage's state as its last probe answer gave it. STEP_STALLED,
 * STAGE_SILENT and an interrupted `troupe up` print it.
 *
 * ```
 * step 4, 4 microbatches:
 *   stage 0  running.waiting   F0 F1 [B0] ·· ·· ·· ·· ··   waiting for BACKWARD:0
 *   stage 1  (no answer)       F0 [B0] ·· ·· ·· ·· ·· ··   at B0
 * ```
 */
import type { ProbeReply } from '../src/protocol/messages.js';

/** What the grid is drawn from. */
export interface GridInput {
  readonly step: number;
  readonly microbatches: number;
  readonly forwardOnly: boolean;
  /** Each stage's action list, as its plan gives it (`F0 F1 B0 ...`). */
  readonly actions: readonly string[];
  /** The actions each stage reported done in the step. */
  readonly ran: readonly (readonly string[])[];
  /** Each stage's last answer to a liveness probe (of any step), or null. */
  readonly probes: readonly (ProbeReply | null)[];
}

const listOf = (actions: string | undefined) => (actions ?? '').split(' ').filter(Boolean);

/** The first stage with an action it has not reported done (0 when none). */
export function firstStuck(actions: readonly string[], ran: readonly (readonly string[])[]): number {
  const r = actions.findIndex((list, rank) => listOf(list).some((a) => !(ran[rank] ?? []).includes(a)));
  return Math.max(0, r);
}

/** The grid as text. */
export function stepGrid(g: GridInput): string {
  const lines = [`step ${g.step}, ${g.microbatches} microbatches${g.forwardOnly ? ', forward only' : ''}:`];
  const rows = g.actions.map((list, r) => {
    const actions = listOf(list);
    const done = new Set(g.ran[r] ?? []);
    const at = actions.findIndex((a) => !done.has(a));
    const probe = g.probes[r] ?? null;
    const state = probe && probe.step === g.step ? probe.state : probe ? `step ${probe.step} ${probe.state}` : '(no answer)';
    const grid = actions.map((a, i) => (i === at ? `[${a}]` : done.has(a) ? a : '·'.repeat(a.length))).join(' ');
    const waits = at < 0 ? 'done' : probe && probe.step === g.step && probe.awaiting.length ? `waiting for ${probe.awaiting.join(', ')}` : `at ${actions[at]}`;
    return { r, state, grid, waits };
  });
  const width = Math.max(...rows.map((x) => x.state.length));
  for (const x of rows) lines.push(`  stage ${x.r}  ${x.state.padEnd(width)}  ${x.grid}   ${x.waits}`);
  return lines.join('\n');
}
