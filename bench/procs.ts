/**
 * Child processes of the benchmark: every one is started in its own process group and
 * recorded, so that one synchronous call can kill all of them and their children, whatever
 * way the run ends (finished, failed, interrupted).
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { performance } from 'node:perf_hooks';

/** Milliseconds since the epoch with sub-millisecond resolution; one clock for every timestamp. */
export const now = (): number => performance.timeOrigin + performance.now();

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  at: number;
}

export interface Child {
  readonly name: string;
  readonly pid: number;
  readonly process: ChildProcess;
  readonly exited: Promise<Exit>;
  /** Called with each stdout line and the time it arrived. */
  onLine(listener: (line: string, at: number) => void): void;
  /** The last lines of stderr, for error messages. */
  stderrTail(): string;
}

const STDERR_TAIL_LINES = 20;
const CLOSE_GRACE_MS = 500;

function splitLines(stream: NodeJS.ReadableStream | null, each: (line: string, at: number) => void): void {
  if (!stream) return;
  let rest = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    const at = now();
    const lines = (rest + chunk).split('\n');
    rest = lines.pop()!;
    for (const line of lines) each(line, at);
  });
  stream.on('end', () => {
    if (rest !== '') each(rest, now());
  });
}

export class ProcessGroups {
  private readonly live = new Set<Child>();
  /** Told of every child as it starts: how a run accounts for the CPU its processes use. */
  onSpawn: ((child: Child) => void) | undefined;

  spawn(name: string, command: string, args: string[], options: SpawnOptions = {}): Child {
    const child = spawn(command, args, { ...options, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    if (child.pid === undefined) throw new Error(`cannot start ${name} (${command})`);
    const listeners: ((line: string, at: number) => void)[] = [];
    const stderr: string[] = [];
    splitLines(child.stdout, (line, at) => listeners.forEach((listener) => listener(line, at)));
    splitLines(child.stderr, (line) => {
      stderr.push(line);
      if (stderr.length > STDERR_TAIL_LINES) stderr.shift();
    });
    const record: Child = {
      name,
      pid: child.pid,
      process: child,
      exited: new Promise((resolve) => {
        child.on('exit', (code, signal) => {
          const exit = { code, signal, at: now() };
          this.live.delete(record);
          // 'exit' can come before the last stdout lines are read, and a line such as a summary
          // must reach its listener first; 'close' waits for the pipes, unless a process that
          // outlives the child (pm2's daemon) holds them.
          const timer = setTimeout(() => resolve(exit), CLOSE_GRACE_MS);
          child.once('close', () => {
            clearTimeout(timer);
            resolve(exit);
          });
        });
      }),
      onLine: (listener) => listeners.push(listener),
      stderrTail: () => stderr.join('\n'),
    };
    this.live.add(record);
    this.onSpawn?.(record);
    return record;
  }

  /** Runs a command to completion, killed after `timeoutMs`; the caller judges the exit. */
  async run(
    name: string,
    command: string,
    args: string[],
    options: SpawnOptions,
    timeoutMs: number,
  ): Promise<{ exit: Exit; stdout: string; child: Child }> {
    const child = this.spawn(name, command, args, options);
    const out: string[] = [];
    child.onLine((line) => out.push(line));
    const timer = setTimeout(() => this.kill(child), timeoutMs);
    const exit = await child.exited;
    clearTimeout(timer);
    return { exit, stdout: out.join('\n'), child };
  }

  signal(child: Child, signal: NodeJS.Signals): void {
    if (!this.live.has(child)) return;
    try {
      process.kill(child.pid, signal);
    } catch {
      // Exited between the check and the kill: nothing to signal.
    }
  }

  /** SIGKILL to the child's whole process group: a CLI's own children go with it. */
  kill(child: Child): void {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // The group is already gone.
    }
  }

  /** Synchronous, so it also works from a process 'exit' handler. */
  killAll(): void {
    for (const child of this.live) this.kill(child);
  }
}
