#!/usr/bin/env node
// The `troupe` command. In the repository (tsconfig.json beside bin/) it runs the TypeScript
// sources through tsx, so an edit needs no build; in the installed package, the compiled dist/.
import { existsSync } from 'node:fs';

const inRepository = existsSync(new URL('../tsconfig.json', import.meta.url));
let cli;
if (inRepository) {
  const { register } = await import('tsx/esm/api');
  register();
  cli = await import('../src/fleet/cli.ts');
} else {
  cli = await import('../dist/src/fleet/cli.js');
}
// Exit explicitly: a GPU backend (Dawn) keeps the process alive while its device lives.
process.exit(await cli.main(process.argv.slice(2)));
