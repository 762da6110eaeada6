/** Splitting a batch into microbatches. */
import { ConfigError } from '../errors.js';

/**
 * Sizes of `m` microbatches of a batch of `batch` examples: as equal as possible, the
 * first `batch % m` one larger (as torch.tensor_split does).
 *
 * @example
 * microbatchSizes(10, 4) // [3, 3, 2, 2]
 */
export function microbatchSizes(batch: number, m: number): number[] {
  if (!Number.isInteger(batch) || batch < 1) throw new ConfigError(`batch size ${batch} must be a positive integer`);
  if (!Number.isInteger(m) || m < 1) throw new ConfigError(`microbatches ${m} must be a positive integer`);
  if (batch < m) throw new ConfigError(`a batch of ${batch} examples cannot be split into ${m} microbatches`);
  const base = Math.floor(batch / m);
  return Array.from({ length: m }, (_, i) => base + (i < batch % m ? 1 : 0));
}

/** First example of each microbatch. */
export function microbatchOffsets(sizes: readonly number[]): number[] {
  const out: number[] = [];
  let at = 0;
  for (const s of sizes) {
    out.push(at);
    at += s;
  }
  return out;
}
