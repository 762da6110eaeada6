#!/usr/bin/env node
// The `troupe` command: runs the TypeScript CLI through tsx's loader (job configs may be TypeScript too).
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/fleet/cli.ts');
// Exit explicitly: a GPU backend (Dawn) keeps the process alive while its device lives.
process.exit(await main(process.argv.slice(2)));
