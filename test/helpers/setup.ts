/** Every test file runs on the wasm backend, the real one on these machines. */
import { beforeAll } from 'vitest';
import { selectBackend } from '../../src/compute/backend.js';

beforeAll(async () => {
  await selectBackend({ prefer: process.env['TROUPE_BACKEND'] ? undefined : 'wasm', log: null });
});
