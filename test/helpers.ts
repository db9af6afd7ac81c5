/**
 * Shared test tools: server processes driven through test/fixtures/echo-server.ts, and
 * in-process clients that check every echoed 4-byte sequence number.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { RollbackReport } from '#lib/stats.js';

export const distDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const fixture = path.join(distDir, 'test', 'fixtures', 'echo-server.js');
/** Ordinary async applications (HTTP, Express, ws, a delayed TCP echo) made take-over-able. */
export const appFixture = path.join(distDir, 'test', 'fixtures', 'app-server.js');

/** A fresh private directory (mode 0700) for channel paths; removed by the returned cleanup. */
export function tempDir(mode = 0o700): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'takeover-test-'));
  fs.chmodSync(dir, mode);
  return dir;
}

export interface ServerEvent {
  event: string;
  pid: number;
  code?: string;
  reason?: string;
  message?: string;
  successor?: boolean;
  state?: string;
  channelExists?: boolean;
  report?: RollbackReport;
  addresses?: net.AddressInfo[];
  address?: net.AddressInfo;
  stats?: {
    connections: number;
    retained: number;
    deferred: number;
    closed: number;
    waves: number;
    bytesIn: number;
    bytesOut: number;
    stateBytes: number;
    maxPauseMs: number;
  };
}

export interface ServerConfig {
  path: string;
  listen: ({ port: number; host?: string; backlog?: number } | { path: string })[];
  mode?: 'auto' | 'fresh' | 'successor';
  timeoutMs?: number;
  waveSize?: number;
  allowUids?: number[];
  failCapture?: boolean;
}

const live = new Set<{ kill(): void }>();
/** Every server process's pipes: a successor it started shares them, and may outlive it. */
const pipes = new Set<NodeJS.ReadableStream & { destroy(): void }>();

/**
 * Kills every server process and closes every client the tests started. Register it with
 * `after(cleanup)` in each file: a failed assertion must not leave children that keep the
 * test process (and CI) waiting. A successor the test never learnt of keeps a server's pipes
 * open: this end of them is closed too.
 */
export function cleanup(): void {
  for (const thing of live) thing.kill();
  live.clear();
  for (const pipe of pipes) pipe.destroy();
  pipes.clear();
}

/** SIGKILLs each of these processes still alive, and forgets them: for a test file's afterEach. */
export function killPids(pids: Set<number>): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone, as it should be.
    }
  }
  pids.clear();
}

/** A process the test did not start as a {@link ServerProcess} (a successor, say): {@link cleanup} kills it. */
export function killAtCleanup(pid: number): void {
  live.add({
    kill: () => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Gone already.
      }
    },
  });
}

/** One echo-server process; its JSON event lines are queued for {@link next}. */
export class ServerProcess {
  readonly proc: ChildProcess;
  /** At 'exit', which can come before the process's last lines are read: see {@link closed}. */
  readonly exited: Promise<number | null>;
  /**
   * Once stdout and stderr are read to their end: every line the process wrote is queued (a
   * successor it started may share them and keep them open longer).
   */
  readonly closed: Promise<void>;
  readonly stderr: string[] = [];
  private readonly events: ServerEvent[] = [];
  private readonly waiters: (() => void)[] = [];
  private openStreams = 2;

  constructor(
    config: ServerConfig | object,
    options: { env?: NodeJS.ProcessEnv; shellPrefix?: string; spawn?: SpawnOptions; script?: string } = {},
  ) {
    const script = options.script ?? fixture;
    const args = [script, JSON.stringify(config)];
    const spawnOptions: SpawnOptions = { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...options.env }, ...options.spawn };
    this.proc = options.shellPrefix
      ? spawn('sh', ['-c', `${options.shellPrefix}; exec "$0" "$@"`, process.execPath, ...args], spawnOptions)
      : spawn(process.execPath, args, spawnOptions);
    live.add(this);
    pipes.add(this.proc.stdout!);
    pipes.add(this.proc.stderr!);
    this.exited = new Promise((resolve) =>
      this.proc.once('exit', (code) => {
        live.delete(this);
        resolve(code);
      }),
    );
    const out = createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      this.events.push(JSON.parse(line) as ServerEvent);
      for (const wake of this.waiters.splice(0)) wake();
    });
    const err = createInterface({ input: this.proc.stderr! }).on('line', (line) => this.stderr.push(line));
    for (const lines of [out, err]) {
      lines.once('close', () => {
        this.openStreams--;
        for (const wake of this.waiters.splice(0)) wake();
      });
    }
    this.closed = Promise.all([once(out, 'close'), once(err, 'close')]).then(() => {});
  }

  /** True once both output streams ended: no event can arrive any more. */
  get outputEnded(): boolean {
    return this.openStreams === 0;
  }

  get pid(): number {
    return this.proc.pid!;
  }

  /** Resolves with (and consumes) the first queued event of that name; rejects after `timeoutMs` or on exit. */
  async next(name: string, timeoutMs = 20_000): Promise<ServerEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = this.events.findIndex((e) => e.event === name);
      if (index >= 0) return this.events.splice(index, 1)[0]!;
      // Not at 'exit': the line written just before the exit may not have been read yet.
      if (this.outputEnded) {
        throw new Error(
          `server ${this.pid} exited (${this.proc.exitCode ?? this.proc.signalCode}) before '${name}'; events: ${JSON.stringify(this.events)}; stderr: ${this.stderr.join('\n')}`,
        );
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no '${name}' from server ${this.pid} within ${timeoutMs} ms; events: ${JSON.stringify(this.events)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 200));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Events of that name seen and not consumed yet. */
  pending(name: string): ServerEvent[] {
    return this.events.filter((e) => e.event === name);
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
  }
}

/** Resolves once the process is stopped (state T), i.e. it reached its test pause point. */
export async function waitStopped(pid: number, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('T')) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`process ${pid} did not stop within ${timeoutMs} ms`);
}

export function openFds(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

export interface CheckerOptions {
  /** Frames written per burst; bursts are written every `intervalMs`. 0 makes a client idle. */
  framesPerBurst: number;
  intervalMs: number;
  /** Write each frame in two halves, the second on the next burst, so the server often holds a partial frame. */
  splitFrames?: boolean;
}

/**
 * One client connection that writes consecutive u32 sequence numbers and checks that the
 * echoes come back complete and in order. Any gap, duplicate, error or close is recorded.
 */
export class SeqClient {
  readonly socket: net.Socket;
  sent = 0;
  received = 0;
  readonly problems: string[] = [];
  private pendingHalf: Buffer | undefined;
  private inbox: Buffer = Buffer.alloc(0);
  private timer: NodeJS.Timeout | undefined;
  private drainWaiters: (() => void)[] = [];
  private closedByUs = false;

  constructor(
    port: number,
    host: string,
    private options: CheckerOptions,
  ) {
    this.socket = net.connect({ port, host });
    live.add({ kill: () => this.close() });
    this.socket.setNoDelay(true);
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('error', (error) => this.problems.push(`error ${(error as NodeJS.ErrnoException).code}`));
    this.socket.on('close', () => {
      if (!this.closedByUs) this.problems.push('closed by the server');
      for (const wake of this.drainWaiters.splice(0)) wake();
    });
  }

  connected(): Promise<unknown> {
    return this.socket.connecting ? once(this.socket, 'connect') : Promise.resolve();
  }

  start(options: CheckerOptions = this.options): void {
    this.options = options;
    this.stopWriting();
    if (options.framesPerBurst === 0) return;
    this.timer = setInterval(() => this.burst(), options.intervalMs);
  }

  /** Writes `frames` frames now. */
  burst(frames = this.options.framesPerBurst): void {
    if (this.pendingHalf) {
      this.socket.write(this.pendingHalf);
      this.pendingHalf = undefined;
    }
    const data = Buffer.allocUnsafe(frames * 4);
    for (let i = 0; i < frames; i++) data.writeUInt32BE(this.sent++, i * 4);
    if (this.options.splitFrames && frames > 0) {
      this.socket.write(data.subarray(0, data.length - 2));
      this.pendingHalf = data.subarray(data.length - 2);
    } else {
      this.socket.write(data);
    }
  }

  stopWriting(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.pendingHalf) {
      this.socket.write(this.pendingHalf);
      this.pendingHalf = undefined;
    }
  }

  /** Stops writing and resolves once every frame sent has come back (or the connection died). */
  async drain(timeoutMs = 20_000): Promise<void> {
    this.stopWriting();
    const deadline = Date.now() + timeoutMs;
    while (this.received < this.sent && !this.socket.destroyed) {
      if (Date.now() > deadline) {
        this.problems.push(`only ${this.received} of ${this.sent} echoes came back`);
        return;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.drainWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    if (this.received < this.sent) this.problems.push(`only ${this.received} of ${this.sent} echoes came back`);
  }

  /** Stops reading: echoes pile up in the server, which must hand them over as pending output. */
  pauseReading(): void {
    this.socket.pause();
  }

  resumeReading(): void {
    this.socket.resume();
  }

  close(): void {
    this.stopWriting();
    this.closedByUs = true;
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    this.inbox = this.inbox.length === 0 ? chunk : Buffer.concat([this.inbox, chunk]);
    let at = 0;
    for (; at + 4 <= this.inbox.length; at += 4) {
      const value = this.inbox.readUInt32BE(at);
      if (value !== this.received && this.problems.length < 10) this.problems.push(`got ${value}, expected ${this.received}`);
      this.received = value + 1;
    }
    this.inbox = this.inbox.subarray(at);
    if (this.received >= this.sent) for (const wake of this.drainWaiters.splice(0)) wake();
  }
}

/** Opens `count` clients round-robin over the given addresses and waits until all are connected. */
export async function openClients(
  count: number,
  addresses: { port: number; host: string }[],
  options: (i: number) => CheckerOptions,
): Promise<SeqClient[]> {
  const clients: SeqClient[] = [];
  for (let i = 0; i < count; i++) {
    const { port, host } = addresses[i % addresses.length]!;
    clients.push(new SeqClient(port, host, options(i)));
  }
  await Promise.all(clients.map((c) => c.connected()));
  return clients;
}

/** Drains every client and returns every problem seen, prefixed with the client's index. */
export async function drainAll(clients: SeqClient[]): Promise<string[]> {
  await Promise.all(clients.map((c) => c.drain()));
  return clients.flatMap((c, i) => c.problems.map((p) => `client ${i}: ${p}`));
}

/** Connects, echoes one frame, closes: proves a listener accepts and serves. */
export async function probeEcho(port: number, host: string): Promise<void> {
  const client = new SeqClient(port, host, { framesPerBurst: 0, intervalMs: 0 });
  await client.connected();
  client.burst(1);
  await client.drain(10_000);
  client.close();
  if (client.problems.length > 0) throw new Error(`probe of [${host}]:${port}: ${client.problems.join(', ')}`);
}

/** False on a machine without IPv6 loopback: IPv6 cases then say so instead of failing. */
export async function ipv6Available(): Promise<boolean> {
  const server = net.createServer();
  try {
    server.listen(0, '::1');
    await once(server, 'listening');
    server.close();
    return true;
  } catch {
    return false;
  }
}

/** The addon file that the library loads by default: node-gyp-build's pick from the package root. */
export function addonFile(): string {
  const nodeGypBuild = createRequire(import.meta.url)('node-gyp-build') as { resolve(dir: string): string };
  return nodeGypBuild.resolve(path.resolve(distDir, '..'));
}

/** The uid of `nobody`, for tests of peers that run as another user. */
export const NOBODY = 65534;

/**
 * What a process running as `nobody` needs, in a directory it can read (the checkout may not
 * be): the package, the library, the test fixtures and the addon. `root` is the caller's to remove.
 */
export function copyForNobody(): { root: string; script: string } {
  const root = tempDir(0o755);
  const top = path.resolve(distDir, '..');
  fs.cpSync(path.join(top, 'package.json'), path.join(root, 'package.json'));
  fs.cpSync(path.join(top, 'dist'), path.join(root, 'dist'), { recursive: true });
  fs.cpSync(path.join(distDir, 'test', 'fixtures'), path.join(root, 'dist-dev', 'test', 'fixtures'), { recursive: true });
  fs.cpSync(addonFile(), path.join(root, 'build', 'Release', 'takeover.node'));
  // native.js finds the addon through node-gyp-build, the package's one dependency.
  fs.cpSync(path.join(top, 'node_modules', 'node-gyp-build'), path.join(root, 'node_modules', 'node-gyp-build'), { recursive: true });
  return { root, script: path.join(root, 'dist-dev', 'test', 'fixtures', 'echo-server.js') };
}

/**
 * Resolves once `condition()` holds, checking every `intervalMs`; rejects with `what` after
 * `timeoutMs`, so a test that waits for something that never happens says what it waited for.
 * A function for `what` describes the state at the timeout, not at the call.
 */
export async function waitFor(condition: () => boolean, what: string | (() => string), timeoutMs = 10_000, intervalMs = 5): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'string' ? what : what()}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** Rejects with `what` unless `promise` settles within `timeoutMs`: an awaited event that never comes fails with a name. */
export function within<T>(promise: Promise<T>, what: string, timeoutMs = 10_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
