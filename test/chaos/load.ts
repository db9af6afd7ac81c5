/**
 * What the chaos cases measure a server with: the echo clients of test/helpers.ts (every byte
 * checked), a stream of new connections, who holds a listener (`ss`), and a process's fds and RSS.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { drainAll, openClients, type SeqClient as Client } from '../helpers.js';

/**
 * Half the clients busy (split frames, so the server often holds a partial one), half idle.
 * Returns once the server has echoed a frame on every client: a connect completes in the kernel,
 * before the server accepts it, and a client still in the accept queue when a takeover commits is
 * the successor's to accept (and to lose with it), not a connection the old process served.
 */
export async function loadedClients(count: number, port: number, intervalMs = 40): Promise<Client[]> {
  const clients = await openClients(count, [{ port, host: '127.0.0.1' }], (i) =>
    i % 2 === 0 ? { framesPerBurst: 3, intervalMs, splitFrames: true } : { framesPerBurst: 0, intervalMs: 0 },
  );
  for (const c of clients) c.burst(1);
  // A client that is not echoed keeps its problem, and the tally counts it.
  await drainAll(clients);
  for (const c of clients) c.start();
  return clients;
}

export interface Tally {
  /** Connections open to the end with every byte echoed, in order. */
  kept: number;
  /** Connections the server closed or reset. */
  cut: number;
  /** Bytes sent and never echoed on connections that stayed open: the contract's zero. */
  bytesLost: number;
  /** Bytes sent and never echoed on connections that were cut. */
  bytesOnCut: number;
  /** Echoes out of order, duplicated or with a gap, anywhere. */
  corrupt: number;
  problems: string[];
}

/** One more burst on every client, drain, and count what came back. */
export async function tally(clients: Client[]): Promise<Tally> {
  for (const c of clients) if (!c.socket.destroyed) c.burst(1);
  const problems = await drainAll(clients);
  const t: Tally = { kept: 0, cut: 0, bytesLost: 0, bytesOnCut: 0, corrupt: 0, problems };
  for (const c of clients) {
    const missing = (c.sent - c.received) * 4;
    t.corrupt += c.problems.filter((p) => p.startsWith('got ')).length;
    if (c.socket.destroyed) {
      t.cut++;
      t.bytesOnCut += missing;
    } else {
      t.bytesLost += missing;
      if (c.problems.length === 0) t.kept++;
    }
  }
  return t;
}

export interface NewConnects {
  tried: number;
  served: number;
  refused: number;
  /** The first few failures. */
  failures: string[];
}

/**
 * New connections at a steady rate, each echoing one frame, so a case sees whether the port
 * keeps accepting. A connect that waits in the backlog of a stopped process counts as served
 * once it is echoed; at most `inFlight` wait at once.
 */
export class Churn {
  tried = 0;
  served = 0;
  /** Refused: nothing listened on the port at that instant. */
  refused = 0;
  readonly failures: string[] = [];
  private readonly running = new Set<Promise<void>>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly port: number,
    intervalMs = 20,
    private readonly inFlight = 20,
  ) {
    this.timer = setInterval(() => this.one(), intervalMs);
  }

  private one(): void {
    if (this.running.size >= this.inFlight) return;
    this.tried++;
    const probe = echoOnce(this.port, this.tried).then(
      () => {
        this.served++;
      },
      (error: Error) => {
        if (error.message === 'ECONNREFUSED') this.refused++;
        if (this.failures.length < 5) this.failures.push(error.message);
      },
    );
    this.running.add(probe);
    void probe.finally(() => this.running.delete(probe));
  }

  async stop(): Promise<NewConnects> {
    clearInterval(this.timer);
    await Promise.all(this.running);
    return { tried: this.tried, served: this.served, refused: this.refused, failures: this.failures };
  }
}

/**
 * Connects, sends one frame and checks its echo. Not a SeqClient: those stay registered for the
 * test's cleanup, and a soak opens tens of thousands.
 */
function echoOnce(port: number, value: number, timeoutMs = 30_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const frame = Buffer.alloc(4);
    frame.writeUInt32BE(value >>> 0);
    let echoed = Buffer.alloc(0);
    const timer = setTimeout(() => finish(new Error('no echo within 30 s')), timeoutMs);
    const finish = (error?: Error) => {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve();
    };
    socket.on('connect', () => socket.write(frame));
    socket.on('data', (chunk: Buffer) => {
      echoed = Buffer.concat([echoed, chunk]);
      if (echoed.length >= 4) finish(echoed.equals(frame) ? undefined : new Error(`echo ${echoed.toString('hex')}`));
    });
    socket.on('error', (error: NodeJS.ErrnoException) => finish(new Error(error.code ?? error.message)));
    socket.on('close', () => finish(new Error('closed before the echo')));
  });
}

/** Pids of the processes holding a listening TCP socket on `port` (the kernel's view, via `ss`). */
export function listenerPids(port: number): number[] {
  const out = spawnSync('ss', ['-Hltnp', `sport = :${port}`], { encoding: 'utf8' }).stdout;
  return [...new Set([...out.matchAll(/pid=(\d+)/g)].map((m) => Number(m[1])))].sort((a, b) => a - b);
}

export function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** Resident set size in KiB. */
export function rssKiB(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+)/m.exec(status)![1]);
}

/** Least-squares slope of `ys` over 0..n-1. */
export function slope(ys: readonly number[]): number {
  const n = ys.length;
  if (n < 2) return 0;
  const mx = (n - 1) / 2;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  ys.forEach((y, x) => {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  });
  return num / den;
}
