/** Contiguous splits of a list into stages that minimise the largest stage's cost. */
import { PartitionError } from '../errors.js';

/**
 * The cut of `n` items into `p` contiguous, non-empty stages whose largest cost is smallest
 * (linear partition by dynamic programming). `cost(from, to, stage)` is the cost of items
 * [from, to) as stage `stage`; it may depend on the stage (a stage's activations depend on
 * how many microbatches its schedule row holds). Returns each stage's start plus the end
 * (length p + 1).
 *
 * @example
 * minMaxCut(4, 2, (i, j) => [4, 1, 1, 4].slice(i, j).reduce((a, b) => a + b, 0)) // [0, 2, 4]
 */
export function minMaxCut(n: number, p: number, cost: (from: number, to: number, stage: number) => number): number[] {
  if (!Number.isInteger(p) || p < 1 || p > n) throw new PartitionError(`cannot cut ${n} layers into ${p} stages`);
  // best[k][j]: the smallest largest-stage cost of the first j items in k stages; from[k][j] the last stage's start.
  const best = Array.from({ length: p + 1 }, () => new Array<number>(n + 1).fill(Infinity));
  const from = Array.from({ length: p + 1 }, () => new Array<number>(n + 1).fill(0));
  best[0]![0] = 0;
  for (let k = 1; k <= p; k++) {
    for (let j = k; j <= n; j++) {
      for (let i = k - 1; i < j; i++) {
        const v = Math.max(best[k - 1]![i]!, cost(i, j, k - 1));
        if (v < best[k]![j]!) {
          best[k]![j] = v;
          from[k]![j] = i;
        }
      }
    }
  }
  const starts = [n];
  for (let k = p, j = n; k >= 1; k--) {
    j = from[k]![j]!;
    starts.unshift(j);
  }
  return starts;
}

/**
 * Returns the start index of each of `p` stages plus the end (length p + 1), every stage
 * non-empty, minimising the largest stage sum.
 *
 * @example
 * balanceByCost([4, 1, 1, 4], 2) // [0, 2, 4]
 */
export function balanceByCost(costs: readonly number[], p: number): number[] {
  const prefix = [0];
  for (const c of costs) prefix.push(prefix[prefix.length - 1]! + c);
  return minMaxCut(costs.length, p, (i, j) => prefix[j]! - prefix[i]!);
}
