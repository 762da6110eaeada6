/** Contiguous split of a list of costs into stages that minimises the largest stage's cost. */
import { PartitionError } from '../errors.js';

/**
 * Returns the start index of each of `p` stages plus the end (length p + 1), every stage
 * non-empty, minimising the largest stage sum (linear partition by dynamic programming).
 *
 * @example
 * balanceByCost([4, 1, 1, 4], 2) // [0, 2, 4]
 */
export function balanceByCost(costs: readonly number[], p: number): number[] {
  const n = costs.length;
  if (p < 1 || p > n) throw new PartitionError(`cannot cut ${n} layers into ${p} stages`);
  const prefix = [0];
  for (const c of costs) prefix.push(prefix[prefix.length - 1]! + c);
  const sum = (i: number, j: number) => prefix[j]! - prefix[i]!;
  // best[k][j]: minimal max-cost of splitting the first j items into k stages; cut[k][j] the last start.
  const best: number[][] = Array.from({ length: p + 1 }, () => new Array<number>(n + 1).fill(Infinity));
  const cut: number[][] = Array.from({ length: p + 1 }, () => new Array<number>(n + 1).fill(0));
  best[0]![0] = 0;
  for (let k = 1; k <= p; k++) {
    for (let j = k; j <= n; j++) {
      for (let i = k - 1; i < j; i++) {
        const v = Math.max(best[k - 1]![i]!, sum(i, j));
        if (v < best[k]![j]!) {
          best[k]![j] = v;
          cut[k]![j] = i;
        }
      }
    }
  }
  const starts = [n];
  for (let k = p, j = n; k >= 1; k--) {
    j = cut[k]![j]!;
    starts.unshift(j);
  }
  return starts;
}
