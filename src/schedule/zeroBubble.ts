/**
 * ZB-H1, the zero-bubble schedule of Qi et al. (2023) that keeps 1F1B's peak memory: every
 * backward is split into B (input gradients, on the critical path) and W (weight gradients,
 * which nothing downstream waits for), and W actions fill what would be bubbles.
 */
import type { Action, Schedule } from './action.js';
import { checkSize } from './gpipe.js';
import { simulate } from './simulate.js';

/** Limits of one greedy run: W actions owed at most, microbatches held (forward done, W not yet) at most. */
interface Caps {
  readonly owedW: number;
  readonly held: number;
}

/**
 * Runs the stages in unit time steps (F = B = W = 1, as the paper assumes). A free stage runs
 * its next B when the gradient has arrived, else its next F when the input has arrived and
 * it holds fewer than p - rank microbatches awaiting B (1F1B's bound) and fewer than
 * `caps.held` awaiting W, else its oldest W; with `caps.owedW` W actions owed it runs a W first.
 */
function greedy(p: number, m: number, caps: Caps): Action[][] {
  const rows: Action[][] = Array.from({ length: p }, () => []);
  const next = Array.from({ length: p }, () => ({ F: 0, B: 0, W: 0 }));
  const endF = Array.from({ length: p }, () => new Array<number>(m).fill(Infinity));
  const endB = Array.from({ length: p }, () => new Array<number>(m).fill(Infinity));
  for (let t = 0; next.some((n) => n.W < m); t++) {
    for (let s = 0; s < p; s++) {
      const n = next[s]!;
      const owesTooMuch = n.B - n.W >= caps.owedW;
      let kind: 'F' | 'B' | 'W' | null = null;
      if (!owesTooMuch && n.B < n.F && endF[s]![n.B]! <= t && (s === p - 1 || endB[s + 1]![n.B]! <= t)) kind = 'B';
      else if (!owesTooMuch && n.F < m && (s === 0 || endF[s - 1]![n.F]! <= t) && n.F - n.B < p - s && n.F - n.W < caps.held) kind = 'F';
      else if (n.W < n.B) kind = 'W';
      if (!kind) continue;
      const i = n[kind];
      rows[s]!.push({ stage: s, kind, microbatch: i });
      if (kind === 'F') endF[s]![i] = t + 1;
      if (kind === 'B') endB[s]![i] = t + 1;
      n[kind]++;
    }
  }
  return rows;
}

/**
 * The ZB-H1 action lists for `p` stages and `m` microbatches: of the greedy runs whose
 * stages never hold more than p microbatches (1F1B's peak, on its first stage), the one the
 * simulator finds shortest with unit costs. The paper's handcrafted ZB-H1 takes 3m + p - 1
 * units against 1F1B's 3(m + p - 1); this comes within two units of it (p = 1..4, m = p..16).
 *
 * ```
 * p=2 m=4 (13 units; 1F1B: 15)
 * stage 0: F0 F1 B0 W0 B1 F2 W1 F3 B2 W2 B3 W3
 * stage 1: F0 B0 F1 B1 W0 W1 F2 B2 F3 B3 W2 W3
 * ```
 */
export function zeroBubbleH1(p: number, m: number): Schedule {
  checkSize(p, m);
  let best: { rows: Action[][]; time: number } | null = null;
  for (let owedW = 1; owedW <= m; owedW++) {
    const rows = greedy(p, m, { owedW, held: p });
    const time = simulate(rows, { F: 1, B: 1, W: 1 }).stepTime;
    if (!best || time < best.time) best = { rows, time };
  }
  return best!.rows;
}
