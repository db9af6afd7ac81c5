/**
 * systemd end to end, without systemd as PID 1: a real notify socket (test/fixtures/notify-recorder.py,
 * a Unix datagram socket that records every message with its sender's pid, and keeps an fd store)
 * and listeners passed exactly as systemd passes them, by systemd-socket-activate or by the
 * recorder. The order of messages is the order of the socket's queue; the test marks a process's
 * exit in that queue by sending a message of its own once it has seen the exit.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import * as native from '#lib/native.js';
import { cleanup, distDir, drainAll, openClients, probeEcho, SeqClient, ServerProcess, tempDir, waitFor } from '../helpers.js';

const SERVER = fileURLToPath(import.meta.resolve('#lib/cli/server.js'));
const RECORDER = path.resolve(distDir, '..', 'test', 'fixtures', 'notify-recorder.py');
const timeout = 60_000;

const pids = new Set<number>();
const dirs: string[] = [];
const recorders: Recorder[] = [];

afterEach(() => {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
  pids.clear();
  for (const recorder of recorders.splice(0)) recorder.proc.kill();
  cleanup();
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

function privateDir(): string {
  const dir = tempDir();
  dirs.push(dir);
  return dir;
}

interface Notification {
  pid: number;
  fields: Record<string, string>;
  fds: { family: string; type: string; listening: boolean; port?: number }[];
  store: string[];
}

/** The notify socket: every datagram in arrival order. */
class Recorder {
  readonly messages: Notification[] = [];
  readonly stderr: string[] = [];
  private spawned: number[] = [];

  private constructor(
    readonly proc: ChildProcess,
    readonly path: string,
  ) {
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      const record = JSON.parse(line) as Notification & { spawned?: number; listening?: string };
      if (record.spawned !== undefined) this.spawned.push(record.spawned);
      else if (record.listening === undefined) this.messages.push(record);
    });
    createInterface({ input: proc.stderr! }).on('line', (line) => this.stderr.push(line));
  }

  static async start(socketPath = path.join(privateDir(), 'notify.sock')): Promise<Recorder> {
    const proc = spawn('python3', [RECORDER, socketPath], { stdio: ['pipe', 'pipe', 'pipe'] });
    const recorder = new Recorder(proc, socketPath);
    recorders.push(recorder);
    await waitFor(() => socketPath.startsWith('@') || fs.existsSync(socketPath), 'the notify socket', 20_000);
    return recorder;
  }

  /** The first message at or after `from` that `match` accepts, and its index. */
  async next(match: (m: Notification) => boolean, what: string, from = 0): Promise<Notification & { index: number }> {
    let index = -1;
    await waitFor(
      () => (index = this.messages.findIndex((m, i) => i >= from && match(m))) >= 0,
      () => `${what}; messages: ${JSON.stringify(this.messages.map((m) => ({ pid: m.pid, ...m.fields })))}`,
      30_000,
      10,
    );
    return { ...this.messages[index]!, index };
  }

  /** Puts a marker in the queue: whatever is recorded before it was sent before this call. */
  async mark(text: string): Promise<number> {
    native.sdNotify(this.path, Buffer.from(`TEST=${text}\n`), []);
    return (await this.next((m) => m.fields.TEST === text, `the marker ${text}`)).index;
  }

  /** Starts argv as systemd would, with the fd store's fds as LISTEN_FDS; resolves with its pid. */
  async spawn(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
    const count = this.spawned.length;
    this.proc.stdin!.write(`${JSON.stringify({ spawn: argv, env })}\n`);
    await waitFor(() => this.spawned.length > count, 'the recorder to spawn', 20_000);
    const pid = this.spawned[count]!;
    pids.add(pid);
    return pid;
  }
}

/** A process whose output lines can be awaited. */
class Proc {
  readonly child: ChildProcess;
  readonly out: string[] = [];
  readonly err: string[] = [];
  readonly exited: Promise<unknown>;

  constructor(command: string, args: string[], env: NodeJS.ProcessEnv, options: { shellPrefix?: string; stdio?: StdioOptions } = {}) {
    const spawnOptions = { stdio: options.stdio ?? 'pipe', env: { ...process.env, ...env } } as const;
    this.child = options.shellPrefix
      ? spawn('sh', ['-c', `${options.shellPrefix}; exec "$0" "$@"`, command, ...args], spawnOptions)
      : spawn(command, args, spawnOptions);
    pids.add(this.child.pid!);
    this.exited = once(this.child, 'exit');
    createInterface({ input: this.child.stdout! }).on('line', (line) => this.out.push(line));
    createInterface({ input: this.child.stderr! }).on('line', (line) => this.err.push(line));
  }

  get pid(): number {
    return this.child.pid!;
  }

  async line(pattern: RegExp, stream: 'out' | 'err' = 'out'): Promise<RegExpMatchArray> {
    let found: RegExpMatchArray | null = null;
    await waitFor(
      () => (found = this[stream].map((l) => l.match(pattern)).find((m) => m !== null) ?? null) !== null,
      () => `${pattern} on std${stream} of ${this.pid}; stdout: ${this.out.join('\n')}; stderr: ${this.err.join('\n')}`,
      30_000,
      10,
    );
    return found!;
  }

  async port(): Promise<number> {
    return Number((await this.line(/Starting TCP server on \[127\.0\.0\.1\]:(\d+)/))[1]);
  }
}

function takeoverServer(args: string[], env: NodeJS.ProcessEnv, options: { shellPrefix?: string; stdio?: StdioOptions } = {}): Proc {
  return new Proc(process.execPath, [SERVER, ...args], env, options);
}

const micros = () => process.hrtime.bigint() / 1000n;

/** Resolves once `pid` has exited (gone, or a zombie nobody reaped yet): for processes that are not the test's children. */
function exitOf(pid: number): Promise<void> {
  const gone = () => {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
    } catch {
      return true;
    }
  };
  return waitFor(gone, `pid ${pid} to exit`, 30_000, 10);
}

/**
 * `successor` took over from `old`: RELOADING=1 from the old process, then MAINPID and READY=1
 * from the successor itself, before the old process exited, then the takeover's figures; the old
 * process says nothing once the successor speaks for the service.
 */
async function checkHandover(recorder: Recorder, old: number, successor: number, from: number): Promise<Notification> {
  const reloading = await recorder.next((m) => m.pid === old && m.fields.RELOADING === '1', 'RELOADING=1 from the old process', from);
  assert.match(reloading.fields.MONOTONIC_USEC!, /^[1-9][0-9]*$/);
  const main = await recorder.next((m) => m.pid !== old && m.fields.READY === '1', 'READY=1 from the successor', from);
  assert.equal(main.pid, successor);
  assert.equal(main.fields.MAINPID, String(successor));
  await exitOf(old);
  const exit = await recorder.mark(`${old} exited`);
  assert.ok(reloading.index < main.index && main.index < exit, 'RELOADING=1, then MAINPID/READY=1, then the old process exits');
  const status = await recorder.next((m) => m.pid === successor && /^Took over/.test(m.fields.STATUS ?? ''), 'the STATUS', from);
  assert.match(status.fields.STATUS!, new RegExp(`^Took over from pid ${old}: 1 connection, \\d+ waves?, max pause [\\d.]+ ms, total \\d+ ms$`));
  assert.deepEqual(
    recorder.messages.slice(main.index).filter((m) => m.pid === old),
    [],
    'the old process says nothing once the successor speaks for the service',
  );
  return reloading;
}

test('takeover-server under a notify socket: READY=1 once serving, then through chained takeovers (-T) MAINPID and READY=1 from each successor before its predecessor exits', {
  timeout,
}, async () => {
  const recorder = await Recorder.start();
  const env = { NOTIFY_SOCKET: recorder.path };
  const channel = path.join(privateDir(), 'channel');
  let old = takeoverServer(['-p', '0', '-t', channel, '-q'], env);
  const ready = await recorder.next((m) => m.pid === old.pid && m.fields.READY === '1', 'READY=1');
  assert.equal(ready.fields.MAINPID, String(old.pid));
  assert.match(ready.fields.STATUS!, /^Serving/);
  const [client] = await openClients(1, [{ port: await old.port(), host: '127.0.0.1' }], () => ({ framesPerBurst: 2, intervalMs: 10 }));
  client!.start();
  for (let round = 0; round < 2; round++) {
    const from = recorder.messages.length;
    const successor = takeoverServer(['-T', channel, '-q'], env);
    await checkHandover(recorder, old.pid, successor.pid, from);
    old = successor;
  }
  assert.deepEqual(await drainAll([client!]), []);
  client!.close();
});

test('SIGUSR2 as systemd ReloadSignal: RELOADING=1 with the CLOCK_MONOTONIC time of the reload, READY=1 from the new main process, twice in a chain', {
  timeout,
}, async () => {
  const recorder = await Recorder.start();
  const channel = path.join(privateDir(), 'channel');
  const first = takeoverServer(['-p', '0', '-t', channel, '-q'], { NOTIFY_SOCKET: recorder.path });
  await recorder.next((m) => m.pid === first.pid && m.fields.READY === '1', 'READY=1');
  const [client] = await openClients(1, [{ port: await first.port(), host: '127.0.0.1' }], () => ({ framesPerBurst: 2, intervalMs: 10 }));
  client!.start();
  let old = first.pid;
  for (let round = 1; round <= 2; round++) {
    const from = recorder.messages.length;
    const before = micros();
    process.kill(old, 'SIGUSR2');
    // Successors write to the first process's stdout.
    await waitFor(() => first.out.filter((l) => l.startsWith('SIGUSR2: starting successor pid')).length === round, 'the successor');
    const successor = Number(first.out.filter((l) => l.startsWith('SIGUSR2: starting successor pid'))[round - 1]!.match(/(\d+)$/)![1]);
    pids.add(successor);
    const reloading = await checkHandover(recorder, old, successor, from);
    const at = BigInt(reloading.fields.MONOTONIC_USEC!);
    assert.ok(before <= at && at <= micros(), `MONOTONIC_USEC ${at} is the reload's time (${before}..)`);
    old = successor;
  }
  assert.deepEqual(await drainAll([client!]), []);
  client!.close();
});
