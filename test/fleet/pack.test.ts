/**
 * Troupe as another project gets it: `npm pack`, the tarball installed into a fresh project
 * beside that project's own @tensorflow/tfjs and wasm backend (from npm's cache when it has
 * them), then used from plain .mjs files, from TypeScript, and through its `troupe` bin.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const TFJS = '4.22.0';

interface Ran {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command to its end (never throws: the caller asserts on the code and output). */
function run(cmd: string, args: readonly string[], cwd: string, timeoutMs = 120_000, env: Record<string, string> = {}): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd, timeout: timeoutMs, maxBuffer: 64 << 20, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout, stderr });
    });
  });
}

let root = '';
let app = '';
let packed: { filename: string; files: { path: string }[] };
let install: Ran;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'troupe-pack-'));
  // npm pack runs prepack, which builds dist/.
  const pack = await run('npm', ['pack', '--json', '--pack-destination', root], REPO);
  expect(pack.code, pack.stderr).toBe(0);
  packed = (JSON.parse(pack.stdout) as (typeof packed)[])[0]!;
  app = join(root, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  install = await run(
    'npm',
    [
      'install',
      '--prefer-offline',
      '--no-audit',
      '--no-fund',
      join(root, packed.filename),
      `@tensorflow/tfjs@${TFJS}`,
      `@tensorflow/tfjs-backend-wasm@${TFJS}`,
    ],
    app,
    150_000,
  );
  expect(install.code, install.stderr).toBe(0);
}, 200_000);

afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

/** Every installed copy of a package under the app's node_modules. */
function copiesOf(name: string, dir = join(app, 'node_modules')): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (!entry.isDirectory()) continue;
    const path = join(dir, entry.name);
    if (entry.name.startsWith('@')) {
      found.push(...copiesOf(name, path));
      continue;
    }
    try {
      if ((JSON.parse(readFileSync(join(path, 'package.json'), 'utf8')) as { name?: string }).name === name) found.push(path);
    } catch {
      // not a package
    }
    try {
      found.push(...copiesOf(name, join(path, 'node_modules')));
    } catch {
      // no nested node_modules
    }
  }
  return found;
}

/** The README's "Use it from code" example, as written. */
function readmeExample(): string {
  const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Use it from code'));
  const m = /```js\n([\s\S]*?)```/.exec(section);
  expect(m, 'README: "Use it from code" has a ```js block').not.toBeNull();
  return m![1]!;
}

describe('the packed package', () => {
  it('holds the compiled dist with its types, the bin, the NATS configurations, README and LICENSE; no tests, benches or CI', () => {
    const paths = packed.files.map((f) => f.path);
    for (const p of [
      'dist/src/index.js',
      'dist/src/index.d.ts',
      'dist/src/index.d.ts.map',
      'dist/actors/index.js',
      'dist/actors/index.d.ts',
      'bin/troupe.mjs',
      'nats.conf',
      'nats-cluster.conf',
      'nats-tls.conf',
      'README.md',
      'LICENSE',
      'package.json',
    ]) {
      expect(paths, p).toContain(p);
    }
    expect(paths.filter((p) => /^(test|bench|\.ci|scripts|examples|node_modules)\//.test(p) || p.startsWith('tsconfig'))).toEqual([]);
  });

  it("installs on this Node without engine warnings, and with one copy of TensorFlow.js: the app's", () => {
    expect(install.stderr).not.toMatch(/EBADENGINE/);
    expect(copiesOf('@tensorflow/tfjs-core')).toEqual([join(app, 'node_modules', '@tensorflow', 'tfjs-core')]);
    expect(copiesOf('@tensorflow/tfjs-backend-wasm')).toEqual([join(app, 'node_modules', '@tensorflow', 'tfjs-backend-wasm')]);
    // Optional peers stay out: nothing native is downloaded, and neither is the 41 MB digit set.
    for (const p of ['@tensorflow/tfjs-node', '@tensorflow/tfjs-node-gpu', 'webgpu', 'mnist', 'tsx']) expect(copiesOf(p), p).toEqual([]);
  });

  it("runs the README's example from a plain .mjs file: a real tf.LayersModel trained on 2 stages over a real nats-server", async () => {
    writeFileSync(join(app, 'readme.mjs'), readmeExample());
    const r = await run('node', ['readme.mjs'], app, 60_000);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout + r.stderr).not.toMatch(/already registered|must be a tf\.LayersModel/);
    const losses = [...r.stdout.matchAll(/step \d: loss ([\d.]+)/g)].map((m) => Number(m[1]));
    expect(losses).toHaveLength(5);
    expect(losses[4]!).toBeLessThan(losses[0]!);
    expect(r.stdout).toMatch(/evaluation: loss [\d.]+/);
  }, 90_000);

  it('exports every subpath entry it declares (to import and to require), and refuses deep imports', async () => {
    const manifest = JSON.parse(readFileSync(join(app, 'node_modules', 'troupe', 'package.json'), 'utf8')) as { exports: Record<string, unknown> };
    const subpaths = Object.keys(manifest.exports).filter((s) => s !== './package.json');
    writeFileSync(
      join(app, 'entries.mjs'),
      `for (const s of ${JSON.stringify(subpaths)}) {\n` +
        "  const m = await import(s === '.' ? 'troupe' : 'troupe/' + s.slice(2));\n" +
        '  console.log(s, Object.keys(m).length);\n}\n' +
        "const { stageMachine, actionRunner, updateRunner } = await import('troupe/actors');\n" +
        "console.log('provide', typeof stageMachine.provide({ actions: { startRun: actionRunner(async () => {}), " +
        'startUpdate: updateRunner(() => {}) } }).provide);\n' +
        `await import('troupe/dist/src/fleet/cli.js').catch((e) => console.log('deep', e.code));\n`,
    );
    const r = await run('node', ['entries.mjs'], app, 60_000);
    expect(r.code, r.stderr).toBe(0);
    const counts = new Map(
      r.stdout
        .split('\n')
        .filter((l) => l.startsWith('.'))
        .map((l) => [l.split(' ')[0]!, Number(l.split(' ')[1])]),
    );
    expect([...counts.keys()]).toEqual(subpaths);
    for (const [s, n] of counts) expect(n, s).toBeGreaterThan(0);
    expect(counts.get('.')).toBeLessThanOrEqual(30);
    expect(r.stdout).toContain('provide function');
    expect(r.stdout).toContain('deep ERR_PACKAGE_PATH_NOT_EXPORTED');
    // CommonJS code gets the same module through require(esm) (Node 20.19 and later).
    writeFileSync(join(app, 'cjs.cjs'), "const { createPipeline } = require('troupe');\nconsole.log('cjs', typeof createPipeline);\n");
    const cjs = await run('node', ['cjs.cjs'], app, 60_000);
    expect(cjs.stdout + cjs.stderr).toMatch(/^cjs function$/m);
  });

  it('type-checks a TypeScript consumer against the declarations of the root, troupe/actors and troupe/fleet', async () => {
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: true, types: [] },
        files: ['consumer.ts'],
      }),
    );
    writeFileSync(
      join(app, 'consumer.ts'),
      [
        "import * as tf from '@tensorflow/tfjs';",
        "import { createPipeline, defineJob, ConfigError, type PipelineOptions, type JobConfig } from 'troupe';",
        "import { stageMachine, actionRunner, type StageEvent, type ExecuteInput } from 'troupe/actors';",
        "import { loadModel, type RunSummary } from 'troupe/fleet';",
        "const options: Omit<PipelineOptions, 'model'> = { stages: 2, microbatches: 4, optimizer: tf.train.sgd(0.1), loss: 'meanSquaredError', " +
          "nats: { servers: 'nats://127.0.0.1:4222' } };",
        'const job: JobConfig = defineJob({ model: () => tf.sequential(), data: () => ({ train: { x: tf.zeros([4, 1]), y: tf.zeros([4, 1]) } }), ' +
          "stages: 2, microbatches: 2, optimizer: { className: 'SGD', config: {} }, loss: 'meanSquaredError', epochs: 1, batchSize: 4 });",
        "const ev: StageEvent = { type: 'UPDATE', step: 1 };",
        'const machine = stageMachine.provide({ actions: { startRun: actionRunner(async (input: ExecuteInput) => void input.action.kind) } });',
        'const summary = (s: RunSummary): number => s.losses.length;',
        '// @ts-expect-error: a value the schema refuses is refused at compile time too',
        "defineJob({ ...job, balance: 'speed' });",
        'export { options, ev, machine, summary, createPipeline, loadModel, ConfigError };',
      ].join('\n'),
    );
    const r = await run('node', [join(REPO, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], app, 60_000);
    expect(r.code, r.stdout + r.stderr).toBe(0);
  }, 90_000);

  it('npx troupe works there: --help, --version, troupe up on a .mjs job config with 2 worker processes, and on a .ts one once tsx is installed', async () => {
    const help = await run('npx', ['--no-install', 'troupe', '--help'], app, 60_000);
    expect(help.code, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/usage: troupe <command>/);
    const version = await run('npx', ['--no-install', 'troupe', '--version'], app, 60_000);
    expect(version.stdout.trim()).toBe(`troupe ${(JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version}`);
    writeFileSync(
      join(app, 'job.mjs'),
      [
        "import * as tf from '@tensorflow/tfjs';",
        "import { defineJob } from 'troupe';",
        'const n = 48;',
        'export default defineJob({',
        "  model: () => tf.sequential({ layers: [tf.layers.dense({ inputShape: [4], units: 8, activation: 'relu', " +
          "kernelInitializer: tf.initializers.glorotUniform({ seed: 1 }) }), tf.layers.dense({ units: 2, activation: 'softmax', " +
          'kernelInitializer: tf.initializers.glorotUniform({ seed: 2 }) })] }),',
        '  data: () => {',
        "    const x = tf.randomNormal([n, 4], 0, 1, 'float32', 3);",
        "    const y = tf.oneHot(tf.tensor1d(Array.from({ length: n }, (_, i) => i % 2), 'int32'), 2);",
        '    return { train: { x, y }, test: { x, y } };',
        '  },',
        "  stages: 2, microbatches: 2, optimizer: { className: 'SGD', config: { learningRate: 0.1 } },",
        "  loss: 'categoricalCrossentropy', metric: 'accuracy', epochs: 1, batchSize: 16,",
        '});',
      ].join('\n'),
    );
    const up = await run('npx', ['--no-install', 'troupe', 'up', 'job.mjs', '--json', '-q'], app, 90_000);
    expect(up.code, up.stderr).toBe(0);
    const s = JSON.parse(up.stdout) as { steps: number; losses: number[]; heldOut: { loss: number }; workers: { backend: string }[] };
    expect(s.steps).toBe(3);
    expect(s.losses).toHaveLength(3);
    expect(s.heldOut.loss).toBeGreaterThan(0);
    expect(s.workers.map((w) => w.backend)).toEqual(['wasm', 'wasm']);
    // TypeScript needs tsx (an optional peer) on a Node without type stripping: the error says so before anything starts.
    if ((process.features as { typescript?: unknown }).typescript) return;
    writeFileSync(join(app, 'job.ts'), "import job from './job.mjs';\nexport default job;\n");
    const ts = await run('npx', ['--no-install', 'troupe', 'up', 'job.ts'], app, 60_000);
    expect(ts.code).toBe(1);
    expect(ts.stderr).toMatch(/job config job\.ts is TypeScript, which Node v[\d.]+ cannot load by itself: install tsx/);
    // ... and with tsx installed as it says, the same config runs, in the driver and in both workers.
    const tsx = await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--save-dev', 'tsx@4'], app, 120_000);
    expect(tsx.code, tsx.stderr).toBe(0);
    writeFileSync(join(app, 'job.ts'), "import job from './job.mjs';\nconst steps: number = 1;\nexport default { ...job, epochs: steps };\n");
    const typed = await run('npx', ['--no-install', 'troupe', 'up', 'job.ts', '--json', '-q'], app, 90_000);
    expect(typed.code, typed.stderr).toBe(0);
    expect((JSON.parse(typed.stdout) as { steps: number }).steps).toBe(3);
  }, 300_000);
});
