/**
 * The file operations checkpoints use, in one object: a test makes one of them fail as a full
 * disk does (writing to /dev/full gives a real ENOSPC), which no unprivileged test can cause
 * on the real directory.
 */
import { mkdir, open, readFile, readdir, rename, rm } from 'node:fs/promises';

export const checkpointIo = { mkdir, open, readFile, readdir, rename, rm };
