/** Writing a file so that readers see the old content or the new, never half of it. */
import { rename, writeFile } from 'node:fs/promises';

/** Writes `data` to a temporary file beside `path`, then renames it into place. */
export async function writeAtomically(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, data);
  await rename(tmp, path);
}
