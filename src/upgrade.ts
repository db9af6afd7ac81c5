/**
 * Starting a successor: this program again, with the same arguments, as tableflip's Upgrade()
 * does. The child runs detached in its own process group: it outlives this process, and a
 * signal meant for the old process's group (a terminal's Ctrl-C) does not reach it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { invalidOption } from './options.js';

export interface UpgradeOptions {
  /** The successor's arguments for `node` (default: this process's `execArgv` and `argv`). */
  args?: readonly string[];
  /** Its environment (default: this process's). */
  env?: NodeJS.ProcessEnv;
  /** Its standard streams (default: this process's, `'inherit'`). */
  stdio?: 'inherit' | 'ignore';
}

export function spawnSuccessor(options: UpgradeOptions = {}): ChildProcess {
  if (options === null || typeof options !== 'object') throw invalidOption('upgrade options must be an object');
  const { args = [...process.execArgv, ...process.argv.slice(1)], env = process.env, stdio = 'inherit' } = options;
  if (!Array.isArray(args) || args.some((a) => typeof a !== 'string')) throw invalidOption('upgrade args must be an array of strings');
  if (stdio !== 'inherit' && stdio !== 'ignore') throw invalidOption(`upgrade stdio must be 'inherit' or 'ignore'`);
  const child = spawn(process.execPath, args, { detached: true, stdio, env });
  child.unref();
  return child;
}
