/**
 * Backend choice and the wasm BatchMatMul override. test/helpers/setup.ts has already
 * called selectBackend (wasm unless TROUPE_BACKEND says otherwise) before these run.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { matMulPlan } from '../../src/compute/wasmMatMul.js';
import { selectBackend } from '../../src/compute/backend.js';

const env = process.env['TROUPE_BACKEND'];
const onWasm = env === undefined || env === 'wasm';

/** Plain-JS reference: a @ b for row-major [batch, n, k] x [batch, k, m]. */
function refMatMul(a: Float32Array, b: Float32Array, batch: number, n: number, k: number, m: number): Float32Array {
  const out = new Float32Array(batch * n * m);
  for (let z = 0; z < batch; z++)
    for (let i = 0; i < n; i++)
      for (let j = 0; j < m; j++) {
        let s = 0;
        for (let t = 0; t < k; t++) s += a[z * n * k + i * k + t]! * b[z * k * m + t * m + j]!;
        out[z * n * m + i * m + j] = s;
      }
  return out;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst;
}

/** Swaps the last two axes. */
const flip = (x: tf.Tensor) =>
  tf.transpose(
    x,
    x.shape.map((_, i, s) => (i < s.length - 2 ? i : i === s.length - 2 ? s.length - 1 : s.length - 2)),
  );

describe('selectBackend', () => {
  it('is memoised: the same promise and the same choice on every call', async () => {
    const p1 = selectBackend({ log: null });
    const p2 = selectBackend({ prefer: 'cpu', log: null });
    expect(p2).toBe(p1);
    const [c1, c2] = await Promise.all([p1, p2]);
    expect(c2).toBe(c1);
    expect(c1.tfName).toBe(tf.getBackend());
  });

  it.skipIf(!onWasm)('chose wasm under the test setup', async () => {
    const choice = await selectBackend({ log: null });
    expect(choice.name).toBe('wasm');
    expect(choice.tfName).toBe('wasm');
    expect(tf.getBackend()).toBe('wasm');
  });

  it('an unknown preference does not throw once a backend is chosen: the memoised choice is returned', async () => {
    // The choice is made once per process (setup.ts made it), so `prefer` is not read again
    // and an unknown name cannot be reported here; the validation runs only on a first call.
    const first = await selectBackend({ log: null });
    await expect(selectBackend({ prefer: 'nope' as never, log: null })).resolves.toBe(first);
  });
});

describe.skipIf(!onWasm)('wasm BatchMatMul override', () => {
  const cases = [
    { name: '2-D transposeA', ta: true, tb: false, a: [4, 3], b: [4, 5] },
    { name: '2-D transposeB', ta: false, tb: true, a: [3, 4], b: [5, 4] },
    { name: '2-D both', ta: true, tb: true, a: [4, 3], b: [5, 4] },
    { name: '3-D transposeA', ta: true, tb: false, a: [2, 6, 3], b: [2, 6, 5] },
    { name: '3-D transposeB', ta: false, tb: true, a: [2, 3, 6], b: [2, 5, 6] },
    { name: '3-D both', ta: true, tb: true, a: [3, 7, 4], b: [3, 5, 7] },
    { name: 'neither', ta: false, tb: false, a: [3, 4], b: [4, 5] },
    // Few rows against a large matrix: the swapped plan, (b · aᵀ)ᵀ, transposes less.
    { name: 'swapped transposeB (few rows x big weight)', ta: false, tb: true, a: [2, 40], b: [48, 40] },
    { name: 'swapped transposeA', ta: true, tb: false, a: [40, 48], b: [40, 2] },
    { name: 'swapped 3-D transposeB', ta: false, tb: true, a: [2, 3, 30], b: [2, 32, 30] },
  ] as const;

  it('plans the transposes that move fewer elements', () => {
    expect(matMulPlan([16, 1024], [1024, 1024], false, true)).toBe('swapped'); // dy · Wᵀ of a small microbatch
    expect(matMulPlan([1024, 16], [1024, 2], true, false)).toBe('swapped');
    expect(matMulPlan([256, 16], [256, 1024], true, false)).toBe('direct'); // xᵀ · dy: the weight gradient
    expect(matMulPlan([3, 4], [5, 4], false, true)).toBe('direct');
  });

  it('is installed in place of the original kernel', () => {
    expect(tf.getKernel('BatchMatMul', 'wasm')?.kernelFunc.name).toBe('fast');
  });

  it.each(cases)('$name equals an explicit transpose + matMul and a JS reference within 1e-5', ({ ta, tb, a: sa, b: sb }) => {
    const a = tf.randomUniform([...sa], -1, 1, 'float32', 1);
    const b = tf.randomUniform([...sb], -1, 1, 'float32', 2);
    const backend = tf.engine().backend;
    const tensorsBefore = tf.memory().numTensors;
    const dataBefore = backend.numDataIds();

    const fused = tf.matMul(a, b, ta, tb);
    const aa = ta ? flip(a) : a;
    const bb = tb ? flip(b) : b;
    const explicit = tf.matMul(aa, bb);
    expect(fused.shape).toEqual(explicit.shape);
    expect(maxAbsDiff(fused.dataSync(), explicit.dataSync())).toBeLessThan(1e-5);

    const batched = sa.length === 3;
    const [z, n, k] = batched ? aa.shape : [1, ...aa.shape];
    const m = bb.shape[bb.shape.length - 1]!;
    const ref = refMatMul(aa.dataSync() as Float32Array, bb.dataSync() as Float32Array, z!, n!, k!, m);
    expect(maxAbsDiff(fused.dataSync(), ref)).toBeLessThan(1e-5);

    // The transposed copies the override makes are freed: only our own results remain.
    const ours = [fused, explicit, ...(aa !== a ? [aa] : []), ...(bb !== b ? [bb] : [])];
    expect(tf.memory().numTensors).toBe(tensorsBefore + ours.length);
    expect(backend.numDataIds()).toBe(dataBefore + ours.length);
    tf.dispose(ours);
    tf.dispose([a, b]);
  });

  it('gradients of a dense layer (which transpose one side) match the JS reference', () => {
    const x = tf.randomUniform([5, 3], -1, 1, 'float32', 3);
    const w = tf.randomUniform([3, 4], -1, 1, 'float32', 4);
    const dy = tf.randomUniform([5, 4], -1, 1, 'float32', 5);
    // d(x @ w)/dw = x^T @ dy, d/dx = dy @ w^T: both use the transposed paths.
    const [dx, dw] = tf.grads((xx: tf.Tensor, ww: tf.Tensor) => tf.matMul(xx, ww))([x, w], dy);
    const xT = flip(x);
    const wT = flip(w);
    expect(maxAbsDiff(dw!.dataSync(), refMatMul(xT.dataSync() as Float32Array, dy.dataSync() as Float32Array, 1, 3, 5, 4))).toBeLessThan(1e-5);
    expect(maxAbsDiff(dx!.dataSync(), refMatMul(dy.dataSync() as Float32Array, wT.dataSync() as Float32Array, 1, 5, 4, 3))).toBeLessThan(1e-5);
    tf.dispose([x, w, dy, dx!, dw!, xT, wT]);
  });
});

describe.skipIf(!onWasm)('wasm Identity override (shares the buffer)', () => {
  it('is installed in place of the copying kernel', () => {
    expect(tf.getKernel('Identity', 'wasm')?.kernelFunc.name).toBe('shared');
  });

  it('a clone shares its buffer, reads the same, and outlives the original', () => {
    const backend = tf.engine().backend;
    const dataBefore = backend.numDataIds();
    const bytesBefore = tf.memory().numBytes;
    const x = tf.tensor2d([1, 2, 3, 4, 5, 6], [2, 3]);
    const c = tf.clone(x);
    // One buffer, counted once by the backend; the engine counts each tensor's bytes.
    expect(backend.numDataIds()).toBe(dataBefore + 1);
    expect(Array.from(c.dataSync())).toEqual([1, 2, 3, 4, 5, 6]);
    x.dispose();
    expect(c.isDisposed).toBe(false);
    expect(Array.from(c.dataSync())).toEqual([1, 2, 3, 4, 5, 6]);
    expect(backend.numDataIds()).toBe(dataBefore + 1);
    c.dispose();
    expect(backend.numDataIds()).toBe(dataBefore);
    expect(tf.memory().numBytes).toBe(bytesBefore);
  });

  it('taped gradients equal a plain-JS backward, and every buffer is freed', () => {
    // The tape clones each kernel's saved inputs and outputs through Identity.
    const grads = () =>
      tf.tidy(() => {
        const x = tf.randomUniform([6, 5], -1, 1, 'float32', 11);
        const w1 = tf.randomUniform([5, 7], -1, 1, 'float32', 12);
        const w2 = tf.randomUniform([7, 3], -1, 1, 'float32', 13);
        const f = (a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.square(tf.matMul(tf.relu(tf.matMul(x, a)), b)));
        return tf
          .grads(f)([w1, w2])
          .map((g) => Array.from(g.dataSync()));
      });
    const backend = tf.engine().backend;
    const dataBefore = backend.numDataIds();
    const shared = grads();
    expect(backend.numDataIds()).toBe(dataBefore);
    // The reference: a plain-JS forward and backward of the same function.
    const get = (shape: [number, number], seed: number) => tf.tidy(() => Array.from(tf.randomUniform(shape, -1, 1, 'float32', seed).dataSync()));
    const [x, w1, w2] = [get([6, 5], 11), get([5, 7], 12), get([7, 3], 13)];
    const h = Array.from({ length: 6 * 7 }, (_, i) => {
      const r = Math.floor(i / 7),
        c = i % 7;
      let s = 0;
      for (let k = 0; k < 5; k++) s += x[r * 5 + k]! * w1[k * 7 + c]!;
      return s;
    });
    const a = h.map((v) => Math.max(0, v));
    const y = Array.from({ length: 6 * 3 }, (_, i) => {
      const r = Math.floor(i / 3),
        c = i % 3;
      let s = 0;
      for (let k = 0; k < 7; k++) s += a[r * 7 + k]! * w2[k * 3 + c]!;
      return s;
    });
    const dy = y.map((v) => 2 * v);
    const dw2 = Array.from({ length: 7 * 3 }, (_, i) => {
      const r = Math.floor(i / 3),
        c = i % 3;
      let s = 0;
      for (let n = 0; n < 6; n++) s += a[n * 7 + r]! * dy[n * 3 + c]!;
      return s;
    });
    const da = Array.from({ length: 6 * 7 }, (_, i) => {
      const n = Math.floor(i / 7),
        r = i % 7;
      let s = 0;
      for (let c = 0; c < 3; c++) s += dy[n * 3 + c]! * w2[r * 3 + c]!;
      return h[i]! > 0 ? s : 0;
    });
    const dw1 = Array.from({ length: 5 * 7 }, (_, i) => {
      const k = Math.floor(i / 7),
        c = i % 7;
      let s = 0;
      for (let n = 0; n < 6; n++) s += x[n * 5 + k]! * da[n * 7 + c]!;
      return s;
    });
    expect(maxAbsDiff(shared[0]!, dw1)).toBeLessThan(1e-4);
    expect(maxAbsDiff(shared[1]!, dw2)).toBeLessThan(1e-4);
  });
});
