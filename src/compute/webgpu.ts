/**
 * WebGPU in Node for TensorFlow.js: Dawn's binding (the `webgpu` npm package, its binary
 * inside the package) behind `navigator.gpu`, and `@tensorflow/tfjs-backend-webgpu` on top.
 * On Linux Dawn reaches the GPU through Vulkan: it needs the Vulkan loader (libvulkan.so.1)
 * and the driver's ICD file. Without them `requestAdapter()` gives none, and Dawn prints a
 * warning of its own; the loader is looked for first so a machine without one stays quiet.
 */
import { existsSync, readFileSync } from 'node:fs';
import { delimiter } from 'node:path';

/** Why WebGPU cannot start here; the backend choice logs it and goes on. */
export class NoGpuAdapter extends Error {
  override readonly name = 'NoGpuAdapter';
}

/** The reason a machine without a usable GPU gives (the same words whatever is missing). */
export const NO_ADAPTER = 'no GPU adapter (Vulkan loader or driver missing)';

const LIB_DIRS = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib', '/lib/x86_64-linux-gnu', '/lib64', '/usr/local/lib'];

/** Where drivers in containers put NVIDIA's ICD file when it is not in the loader's own folders. */
const NVIDIA_ICDS = ['/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json', '/usr/share/vulkan/icd.d/nvidia_icd.json', '/etc/vulkan/icd.d/nvidia_icd.json'];

/** Whether the Vulkan loader can be found the way the dynamic linker would find it (Linux only). */
function vulkanLoaderFound(): boolean {
  if (process.platform !== 'linux') return true;
  const dirs = [...(process.env['LD_LIBRARY_PATH'] ?? '').split(delimiter).filter(Boolean), ...LIB_DIRS];
  if (dirs.some((d) => existsSync(`${d}/libvulkan.so.1`))) return true;
  try {
    return readFileSync('/etc/ld.so.cache').includes('libvulkan.so.1');
  } catch {
    return false;
  }
}

/** Points the Vulkan loader at NVIDIA's ICD file when nothing else names one and the driver ships it. */
function pointAtNvidiaIcd(): void {
  if (process.env['VK_DRIVER_FILES'] || process.env['VK_ICD_FILENAMES']) return;
  const icd = NVIDIA_ICDS.find((f) => existsSync(f));
  // The loader reads these when Dawn creates its Vulkan instance, after this (setenv reaches native code).
  if (icd) process.env['VK_DRIVER_FILES'] = process.env['VK_ICD_FILENAMES'] = icd;
}

interface DawnModule {
  create(flags: string[]): DawnGpu;
  globals: Record<string, unknown>;
}

interface DawnGpu {
  requestAdapter(options?: object): Promise<{ info?: { device?: string; vendor?: string; description?: string } } | null>;
}

async function loadDawn(): Promise<DawnModule> {
  // The package's entry loads its platform's binary (dist/<platform>-<arch>/dawn.node).
  return (await import('webgpu')) as unknown as DawnModule;
}

/**
 * The names of the GPU adapters Dawn sees, in its order (empty without a GPU). Dawn lists them
 * in the error it gives for an adapter name that matches none.
 */
export async function listGpuAdapters(): Promise<string[]> {
  if (!vulkanLoaderFound()) return [];
  pointAtNvidiaIcd();
  let dawn: DawnModule;
  try {
    dawn = await loadDawn();
  } catch {
    return [];
  }
  try {
    // No adapter has this name: Dawn answers with the list of those it has (or none at all).
    await dawn.create(['adapter=troupe-no-such-adapter']).requestAdapter();
    return [];
  } catch (err) {
    const text = err instanceof Error ? err.message : String(err);
    return [...text.matchAll(/name: '([^']*)'/g)].map((m) => m[1]!);
  }
}

/** What `startWebGpu` found. */
export interface WebGpuDevice {
  /** The adapter's name (`NVIDIA H200`). */
  readonly adapter: string;
  /** Its index among the adapters, when one was asked for. */
  readonly index: number | null;
}

/**
 * Starts Dawn behind `navigator.gpu` and registers tfjs's webgpu backend. `index` picks the
 * adapter (from `listGpuAdapters`; Dawn selects by name, so among adapters of one name it
 * takes the first). Throws `NoGpuAdapter` when there is no adapter.
 */
export async function startWebGpu(index: number | null): Promise<WebGpuDevice> {
  if (!vulkanLoaderFound()) throw new NoGpuAdapter(NO_ADAPTER);
  pointAtNvidiaIcd();
  const dawn = await loadDawn();
  let name: string | undefined;
  if (index !== null) {
    const names = await listGpuAdapters();
    name = names.length > 0 ? names[index % names.length] : undefined;
  }
  const gpu = dawn.create(name ? [`adapter=${name}`] : []);
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) throw new NoGpuAdapter(NO_ADAPTER);
  Object.assign(globalThis, dawn.globals);
  // Node 21+ has a navigator of its own (read-only): replace it with one that also has `gpu`.
  const nav = (globalThis as { navigator?: object }).navigator ?? {};
  Object.defineProperty(globalThis, 'navigator', { value: Object.assign(Object.create(nav) as object, { gpu }), configurable: true, writable: true });
  await import('@tensorflow/tfjs-backend-webgpu');
  return { adapter: adapter.info?.device || adapter.info?.description || name || 'GPU', index };
}
