/**
 * Starting a successor: this program again, with the same arguments, as tableflip's Upgrade()
 * does. The child runs detached in its own process group: it outlives this process, and a
 * signal meant for the old process's group (a terminal's Ctrl-C) does not reach it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { invalidOption } from './options.js';
import { ErrorCodes, TakeoverError, systemError } from './errors.js';
import type { TakeoverStats } from './stats.js';

export interface UpgradeOptions {
  /** The successor's arguments for `node` (default: this process's `execArgv` and `argv`). */
  args?: readonly string[];
  /** Its environment (default: this process's). */
  env?: NodeJS.ProcessEnv;
  /** Its standard streams (default: this process's, `'inherit'`). */
  stdio?: 'inherit' | 'ignore';
}

/** An `upgrade()` in flight: the lifecycle resolves it at the handover and rejects it at a rollback. */
export interface Upgrade {
  readonly successor: { pid: number; args: readonly string[] };
  resolve(stats: TakeoverStats): void;
  reject(error: TakeoverError): void;
}

/** What an upgrade needs to know of the process it upgrades. */
export interface UpgradeHost {
  readonly timeoutMs: number;
  /** A successor is on the channel: its session's own deadlines apply, not the upgrade's. */
  hasSuccessor(): boolean;
  isHandedOver(): boolean;
  /** The child runs; a throw here rejects the upgrade. */
  onStart(upgrade: Upgrade): void;
  onSettled(upgrade: Upgrade): void;
}

/** Spawns the successor; the promise also fails when the child exits, cannot start, or never connects. */
export function startUpgrade(options: UpgradeOptions, host: UpgradeHost): Promise<TakeoverStats> {
  let child: ChildProcess;
  try {
    child = spawnSuccessor(options);
  } catch (error) {
    return Promise.reject(systemError('spawn', error));
  }
  return new Promise<TakeoverStats>((resolve, reject) => {
    const failed = (message: string) => new TakeoverError(ErrorCodes.SUCCESSOR_FAILED, `successor pid ${child.pid} ${message}`);
    const timer = setTimeout(() => {
      // A child that has no pid could not start: its 'error' says so.
      if (child.pid === undefined || host.hasSuccessor()) return;
      child.kill('SIGKILL');
      upgrade.reject(failed(`did not take over within ${host.timeoutMs} ms`));
    }, host.timeoutMs);
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
      // Exiting is the successor's right once it has confirmed; before, it is a failure.
      if (host.isHandedOver()) return;
      upgrade.reject(failed(`exited (${signal ?? `code ${code}`}) before the takeover finished`));
    };
    const upgrade: Upgrade = {
      successor: { pid: child.pid ?? -1, args: child.spawnargs.slice(1) },
      resolve: (stats) => {
        cleanup();
        resolve(stats);
      },
      reject: (error) => {
        cleanup();
        reject(error);
      },
    };
    const cleanup = () => {
      clearTimeout(timer);
      child.off('exit', onExit);
      child.off('error', onError);
      host.onSettled(upgrade);
    };
    const onError = (error: Error) => upgrade.reject(Object.assign(failed(`could not start: ${error.message}`), { cause: error }));
    child.once('exit', onExit);
    child.once('error', onError);
    host.onStart(upgrade);
  });
}

function spawnSuccessor(options: UpgradeOptions): ChildProcess {
  if (options === null || typeof options !== 'object') throw invalidOption('upgrade options must be an object');
  const { args = [...process.execArgv, ...process.argv.slice(1)], env = process.env, stdio = 'inherit' } = options;
  if (!Array.isArray(args) || args.some((a) => typeof a !== 'string')) throw invalidOption('upgrade args must be an array of strings');
  if (stdio !== 'inherit' && stdio !== 'ignore') throw invalidOption(`upgrade stdio must be 'inherit' or 'ignore'`);
  const child = spawn(process.execPath, args, { detached: true, stdio, env });
  child.unref();
  return child;
}
