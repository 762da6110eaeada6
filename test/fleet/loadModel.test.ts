import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, loadModel } from '../../src/index.js';
import { saveModel } from '../../src/fleet/index.js';
import { mlp, skipModel } from '../helpers/models.js';

const tmp = mkdtempSync(join(tmpdir(), 'troupe-load-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function bytesOf(m: tf.LayersModel): Promise<Uint8Array[]> {
  return Promise.all(m.weights.map(async (w) => new Uint8Array((await w.read().data()).buffer.slice(0))));
}

describe('loadModel', () => {
  it('plain @tensorflow/tfjs cannot load file:// in Node, which is why Troupe ships a loader', async () => {
    const dir = join(tmp, 'plain');
    await saveModel(mlp([4, 3, 2]), dir);
    await expect(tf.loadLayersModel(pathToFileURL(join(dir, 'model.json')).href)).rejects.toThrow();
  });

  it.each([
    ['a sequential MLP', () => mlp([6, 5, 3], 11)],
    ['a functional model with a skip connection', () => skipModel(12)],
  ])('loads what saveModel wrote (%s): the same weight bytes, the same predictions', async (_, build) => {
    const model = build();
    const dir = join(tmp, `m${Math.random().toString(36).slice(2)}`);
    await saveModel(model, dir);
    const loaded = await loadModel(dir);
    expect(loaded.weights.map((w) => w.originalName)).toEqual(model.weights.map((w) => w.originalName));
    expect(await bytesOf(loaded)).toEqual(await bytesOf(model));
    const x = tf.randomNormal([3, model.inputs[0]!.shape[1]!], 0, 1, 'float32', 5);
    const [a, b] = [model.predict(x) as tf.Tensor, loaded.predict(x) as tf.Tensor];
    expect(new Uint8Array((await b.data()).buffer)).toEqual(new Uint8Array((await a.data()).buffer));
    tf.dispose([x, a, b]);
    model.dispose();
    loaded.dispose();
  });

  it('names the directory and what is wrong with it', async () => {
    await expect(loadModel(join(tmp, 'nowhere'))).rejects.toThrow(ConfigError);
    await expect(loadModel(join(tmp, 'nowhere'))).rejects.toThrow(/model directory .*nowhere: cannot read model.json/);
    const dir = join(tmp, 'no-weights');
    await saveModel(mlp([4, 2]), dir);
    rmSync(join(dir, 'weights.bin'));
    await expect(loadModel(dir)).rejects.toThrow(/a weight file model.json names cannot be read/);
    writeFileSync(join(dir, 'model.json'), '{}');
    await expect(loadModel(dir)).rejects.toThrow(/has no modelTopology/);
  });
});
