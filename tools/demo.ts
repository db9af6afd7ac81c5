/**
 * `npm run demo`: one takeover-server, 200 clients talking to it without pause, and five
 * chained takeovers under them (spawning `-T` and sending SIGUSR2, in turn). Ends with a table
 * of the chain and the clients' verdict; exits 1 if anything was lost, errored or hung.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { isAlive } from '#lib/processes.js';
import type { TakeoverStats } from 'socket-takeover';
import { runEchoLoad, type EchoLoadRun, type EchoLoadSummary } from './echo-load.js';

const SERVER = fileURLToPath(import.meta.resolve('#lib/cli/server.js'));
const HOST = '127.0.0.1';
const CLIENTS = 200;
const TAKEOVERS = 5;
const INTERVAL_MS = 50;
/** Traffic between two takeovers, so each one starts from a steady state. */
const GAP_MS = 1500;
/** Longest wait for any one step before the demo gives up. */
const STEP_TIMEOUT_MS = 15_000;

interface LogRecord {
  msg: string;
  pid: number;
  level: string;
  port?: number;
  successorPid?: number;
  stats?: TakeoverStats;
}

interface Step {
  how: '-T' | 'SIGUSR2';
  predecessor: TakeoverStats;
  oldExited: boolean;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Every server's stdout, successors started by SIGUSR2 included (they inherit it). */
class ServerLogs {
  private readonly records: LogRecord[] = [];
  private readonly waiters = new Set<() => void>();
  /** Servers to stop on the way out; a SIGUSR2 successor is not our child, so its pid is all we have. */
  readonly pids = new Set<number>();

  spawn(args: string[]): ChildProcess {
    const child = spawn(process.execPath, [SERVER, '-q', '--log-format', 'json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.pids.add(child.pid!);
    child.on('exit', () => this.pids.delete(child.pid!));
    createInterface({ input: child.stdout! }).on('line', (line) => this.add(line));
    createInterface({ input: child.stderr! }).on('line', (line) => {
      const msg = this.parse(line)?.msg ?? line;
      process.stdout.write(`  server: ${msg}\n`);
    });
    return child;
  }

  private parse(line: string): LogRecord | undefined {
    try {
      return JSON.parse(line) as LogRecord;
    } catch {
      return undefined;
    }
  }

  private add(line: string): void {
    const record = this.parse(line);
    if (!record) return;
    if (record.successorPid !== undefined) this.pids.add(record.successorPid);
    this.records.push(record);
    for (const wake of this.waiters) wake();
  }

  /** Polls: a successor started by SIGUSR2 is nobody's child here, so there is no 'exit' to wait on. */
  async exited(pid: number): Promise<boolean> {
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    while (isAlive(pid)) {
      if (Date.now() > deadline) return false;
      await sleep(20);
    }
    // Forgotten, so that cleanup can never signal a recycled pid.
    this.pids.delete(pid);
    return true;
  }

  async waitFor(what: string, predicate: (record: LogRecord) => boolean): Promise<LogRecord> {
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    for (let i = 0; ; ) {
      for (; i < this.records.length; i++) if (predicate(this.records[i]!)) return this.records[i]!;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${what} within ${STEP_TIMEOUT_MS / 1000} s`);
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer);
          this.waiters.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, left);
        this.waiters.add(wake);
      });
    }
  }
}

const ms = (value: number): string => `${value.toFixed(1)} ms`;

function printTable(chain: number[], steps: Step[], s: EchoLoadSummary): void {
  const rows = [
    ['#', 'how', 'old pid', 'new pid', 'connections', 'waves', 'max pause', 'total', 'old exited'],
    ...steps.map((step, i) => [
      String(i + 1),
      step.how,
      String(step.predecessor.predecessorPid),
      String(step.predecessor.successorPid),
      String(step.predecessor.connections),
      String(step.predecessor.waves),
      ms(step.predecessor.maxPauseMs),
      ms(step.predecessor.phases.totalMs),
      step.oldExited ? 'yes' : 'NO',
    ]),
  ];
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  // Numbers right-aligned, the method left-aligned.
  const out = rows.map((row) => `  ${row.map((cell, c) => (c === 1 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ')}`);
  const errors = Object.values(s.errors).reduce((a, b) => a + b, 0);
  process.stdout.write(
    [
      '',
      `Process chain: ${chain.join(' -> ')}`,
      '',
      ...out,
      '',
      `Clients: ${s.connections} connections, ${s.echoes} echoes in ${(s.elapsedMs / 1000).toFixed(1)} s, ` +
        `lost ${s.lost}, reordered ${s.reordered}, duplicated ${s.duplicated}, errors ${errors}, ` +
        `longest wait for an echo ${ms(s.longestPauseMs)}`,
      '',
    ].join('\n'),
  );
}

async function main(): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'takeover-demo-'));
  fs.chmodSync(dir, 0o700);
  const channel = path.join(dir, 'takeover.sock');
  const logs = new ServerLogs();
  let load: EchoLoadRun | undefined;

  const cleanup = (): void => {
    load?.stop();
    load?.stop();
    for (const pid of logs.pids) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // Already gone.
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const interrupt = (): void => {
    process.stdout.write('\nInterrupted: stopping every server.\n');
    cleanup();
    process.exit(130);
  };
  process.on('SIGINT', interrupt);
  process.on('SIGTERM', interrupt);

  try {
    process.stdout.write(`Starting takeover-server on ${HOST}, takeover channel ${channel}\n`);
    logs.spawn(['-a', HOST, '-p', '0', '-t', channel]);
    const started = await logs.waitFor('server start', (r) => r.msg.startsWith('Starting TCP server'));
    await logs.waitFor('takeover channel', (r) => r.msg.startsWith('Starting Takeover channel'));
    let current = started.pid;
    const chain = [current];

    process.stdout.write(
      `Server pid ${current} listens on port ${started.port}; starting ${CLIENTS} clients, one message each per ${INTERVAL_MS} ms\n`,
    );
    let allOpen!: () => void;
    const opened = new Promise<void>((resolve) => (allOpen = resolve));
    load = runEchoLoad(
      { host: HOST, port: started.port!, connections: CLIENTS, intervalMs: INTERVAL_MS },
      {
        progressIntervalMs: 500,
        onProgress: (p) => {
          process.stdout.write(
            `  ${(p.elapsedMs / 1000).toFixed(1).padStart(5)} s  open ${p.open}  echoes/s ${p.echoesPerSec}  ` +
              `lost ${p.lost}  errors ${p.errors}  longest wait ${ms(p.longestPauseMs)}\n`,
          );
          if (p.open === CLIENTS) allOpen();
        },
      },
    );
    await opened;

    const steps: Step[] = [];
    for (let i = 1; i <= TAKEOVERS; i++) {
      await sleep(GAP_MS);
      const how = i % 2 === 1 ? '-T' : 'SIGUSR2';
      const predecessor = current;
      process.stdout.write(
        `Takeover ${i}/${TAKEOVERS}: ${how === '-T' ? `spawning takeover-server -T ${channel}` : `kill -USR2 ${predecessor}`}\n`,
      );
      if (how === '-T') logs.spawn(['-T', channel]);
      else process.kill(predecessor, 'SIGUSR2');
      const isSummary = (role: TakeoverStats['role']) => (r: LogRecord) => r.stats?.role === role && r.stats.predecessorPid === predecessor;
      const done = await logs.waitFor(`takeover ${i} by a successor`, isSummary('successor'));
      const old = await logs.waitFor(`takeover ${i} summary of pid ${predecessor}`, isSummary('predecessor'));
      current = done.stats!.successorPid;
      chain.push(current);
      const oldExited = await logs.exited(predecessor);
      steps.push({ how, predecessor: old.stats!, oldExited });
      process.stdout.write(`  ${old.msg}${oldExited ? '' : `; pid ${predecessor} DID NOT EXIT`}\n`);
    }

    await sleep(GAP_MS);
    load.stop();
    const summary = await load;
    process.kill(current, 'SIGTERM');
    const stopped = await logs.exited(current);
    printTable(chain, steps, summary);
    const ok = summary.ok && stopped && steps.every((s) => s.oldExited && s.predecessor.connections === CLIENTS);
    process.stdout.write(ok ? 'Result: OK, nothing lost, every connection served throughout\n' : 'Result: FAILED\n');
    return ok ? 0 : 1;
  } catch (error) {
    process.stdout.write(`Demo failed: ${(error as Error).message}\n`);
    return 1;
  } finally {
    cleanup();
  }
}

process.exit(await main());
