/**
 * A pool worker's status file (`--status-file`): who serves the worker's channel now, with how
 * many connections, and what its last takeover did. The process serving the channel writes it
 * (at ready, then each second while it serves), so a supervisor that did not start that process
 * (a new supervisor, or a successor started by the worker's own SIGUSR2) still finds its pid.
 */
import * as fs from 'node:fs';
import type { TakeoverStats } from '../index.js';

export interface WorkerStatus {
  pid: number;
  node: string;
  connections: number;
  /** The takeover that made this process the worker's server; null for a fresh start. */
  lastTakeover: { at: string; predecessorPid: number; connections: number; maxPauseMs: number; totalMs: number } | null;
  updatedAt: string;
}

export function workerStatus(connections: number, stats: TakeoverStats | null): WorkerStatus {
  return {
    pid: process.pid,
    node: process.version,
    connections,
    lastTakeover: stats && {
      at: new Date(stats.committedAt).toISOString(),
      predecessorPid: stats.predecessorPid,
      connections: stats.connections,
      maxPauseMs: stats.maxPauseMs,
      totalMs: stats.phases.totalMs,
    },
    updatedAt: new Date().toISOString(),
  };
}

/** Written whole through a rename: a reader (another process polling it) never sees half a file. */
export function writeJsonFile(file: string, value: object): void {
  const temporary = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(temporary, `${JSON.stringify(value)}\n`, { mode: 0o600 });
  fs.renameSync(temporary, file);
}

const isCount = (n: unknown): boolean => Number.isInteger(n) && (n as number) >= 0;

/** Every field of the shape {@link workerStatus} writes: the supervisor and --status print them. */
function isWorkerStatus(value: unknown): value is WorkerStatus {
  const status = value as Partial<WorkerStatus> | null;
  if (typeof status !== 'object' || status === null) return false;
  const { pid, node, connections, lastTakeover: last, updatedAt } = status;
  const validLast =
    last === null ||
    (typeof last === 'object' &&
      last !== undefined &&
      typeof last.at === 'string' &&
      isCount(last.predecessorPid) &&
      isCount(last.connections) &&
      Number.isFinite(last.maxPauseMs) &&
      Number.isFinite(last.totalMs));
  return (
    isCount(pid) && (pid as number) > 0 && typeof node === 'string' && isCount(connections) && typeof updatedAt === 'string' && validLast
  );
}

/** The status, or undefined when there is none (never written, or not a status file of this shape). */
export function readWorkerStatus(file: string): WorkerStatus | undefined {
  try {
    const status: unknown = JSON.parse(fs.readFileSync(file, 'utf8'));
    return isWorkerStatus(status) ? status : undefined;
  } catch {
    return undefined;
  }
}

export function formatWorkerStatus(index: number, status: WorkerStatus | undefined, alive: boolean): string {
  if (!status) return `Worker ${index}: no status yet`;
  const last = status.lastTakeover;
  const takeover = last
    ? `last takeover at ${last.at} from pid ${last.predecessorPid}: ${last.connections} connections, max pause ${last.maxPauseMs.toFixed(1)} ms, total ${Math.round(last.totalMs)} ms`
    : 'no takeover yet';
  const connections = `${status.connections} connection${status.connections === 1 ? '' : 's'}`;
  return `Worker ${index}: pid ${status.pid}${alive ? '' : ' (not running)'}, node ${status.node}, ${connections}, ${takeover}`;
}
