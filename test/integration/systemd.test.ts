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
import { ErrorCodes, fdOf, TakeoverError } from '#lib/index.js';
import { Systemd } from '#lib/systemd.js';
import {
  cleanup,
  distDir,
  drainAll,
  killAtCleanup,
  openClients,
  probeEcho,
  ServerProcess,
  tempDir,
  waitFor,
  waitStopped,
} from '../helpers.js';

const SERVER = fileURLToPath(import.meta.resolve('#lib/cli/server.js'));
const RECORDER = path.resolve(distDir, '..', 'test', 'fixtures', 'notify-recorder.py');
const timeout = 60_000;

const dirs: string[] = [];
const recorders: Recorder[] = [];

afterEach(() => {
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
  private bound = false;

  private constructor(
    readonly proc: ChildProcess,
    readonly path: string,
  ) {
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      const record = JSON.parse(line) as Notification & { spawned?: number; listening?: string };
      if (record.spawned !== undefined) this.spawned.push(record.spawned);
      else if (record.listening !== undefined) this.bound = true;
      else this.messages.push(record);
    });
    createInterface({ input: proc.stderr! }).on('line', (line) => this.stderr.push(line));
  }

  static async start(socketPath = path.join(privateDir(), 'notify.sock')): Promise<Recorder> {
    const proc = spawn('python3', [RECORDER, socketPath], { stdio: ['pipe', 'pipe', 'pipe'] });
    const recorder = new Recorder(proc, socketPath);
    recorders.push(recorder);
    await waitFor(() => recorder.bound, 'the notify socket', 20_000);
    return recorder;
  }

  /** The first message at or after `from` that `match` accepts, and its index. */
  async next(match: (m: Notification) => boolean, what: string, from = 0): Promise<Notification & { index: number }> {
    const find = () => this.messages.findIndex((m, i) => i >= from && match(m));
    await waitFor(
      () => find() >= 0,
      () => `${what}; messages: ${JSON.stringify(this.messages.map((m) => ({ pid: m.pid, ...m.fields })))}`,
      30_000,
      10,
    );
    const index = find();
    return { ...this.messages[index]!, index };
  }

  /** Puts a marker in the queue: whatever is recorded before it was sent before this call. */
  async mark(text: string): Promise<number> {
    native.sdNotify(this.path, Buffer.from(`TEST=${text}\n`), [], 1000);
    return (await this.next((m) => m.fields.TEST === text, `the marker ${text}`)).index;
  }

  /** Starts argv as systemd would, with the fd store's fds as LISTEN_FDS; resolves with its pid. */
  async spawn(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
    const count = this.spawned.length;
    this.proc.stdin!.write(`${JSON.stringify({ spawn: argv, env })}\n`);
    await waitFor(() => this.spawned.length > count, 'the recorder to spawn', 20_000);
    const pid = this.spawned[count]!;
    killAtCleanup(pid);
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
    killAtCleanup(this.child.pid!);
    this.exited = once(this.child, 'exit');
    createInterface({ input: this.child.stdout! }).on('line', (line) => this.out.push(line));
    createInterface({ input: this.child.stderr! }).on('line', (line) => this.err.push(line));
  }

  get pid(): number {
    return this.child.pid!;
  }

  async line(pattern: RegExp, stream: 'out' | 'err' = 'out'): Promise<RegExpMatchArray> {
    const find = () => this[stream].map((l) => l.match(pattern)).find((m) => m !== null);
    await waitFor(
      () => find() !== undefined,
      () => `${pattern} on std${stream} of ${this.pid}; stdout: ${this.out.join('\n')}; stderr: ${this.err.join('\n')}`,
      30_000,
      10,
    );
    return find()!;
  }

  async port(): Promise<number> {
    return Number((await this.line(/Starting TCP server on \[127\.0\.0\.1\]:(\d+)/))[1]);
  }
}

function takeoverServer(args: string[], env: NodeJS.ProcessEnv, options: { shellPrefix?: string; stdio?: StdioOptions } = {}): Proc {
  return new Proc(process.execPath, [SERVER, ...args], env, options);
}

/** A port nobody listens on now, for a process that binds it itself. */
async function freePort(): Promise<number> {
  const probe = net.createServer().listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const { port } = probe.address() as net.AddressInfo;
  probe.close();
  return port;
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
  // The predecessor's pid from its WELCOME: the channel's SO_PEERCRED names the chain's first process.
  assert.equal(main.fields.STATUS, `Taking over from pid ${old}`);
  await exitOf(old);
  const exit = await recorder.mark(`${old} exited`);
  assert.ok(reloading.index < main.index && main.index < exit, 'RELOADING=1, then MAINPID/READY=1, then the old process exits');
  const status = await recorder.next((m) => m.pid === successor && /^Took over/.test(m.fields.STATUS ?? ''), 'the STATUS', from);
  assert.match(
    status.fields.STATUS!,
    new RegExp(`^Took over from pid ${old}: 1 connection, \\d+ waves?, max pause [\\d.]+ ms, total \\d+ ms$`),
  );
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

test('an abstract NOTIFY_SOCKET (@name) is reached too', { timeout }, async () => {
  const recorder = await Recorder.start(`@takeover-test-${process.pid}`);
  const server = takeoverServer(['-p', '0', '-t', path.join(privateDir(), 'channel'), '-q'], { NOTIFY_SOCKET: recorder.path });
  await recorder.next((m) => m.pid === server.pid && m.fields.READY === '1', 'READY=1');
  server.child.kill('SIGTERM');
  await server.exited;
  const stopping = await recorder.next((m) => m.pid === server.pid && m.fields.STOPPING === '1', 'STOPPING=1 at close()');
  assert.match(stopping.fields.STATUS!, /^Shutting down/);
});

test("a burst larger than the manager's queue (net.unix.max_dgram_qlen) waits for room instead of losing notifications", {
  timeout,
}, async () => {
  const recorder = await Recorder.start();
  for (let i = 0; i < 100; i++) native.sdNotify(recorder.path, Buffer.from(`STATUS=${i}\n`), [], 5000);
  await recorder.next((m) => m.fields.STATUS === '99', 'the last one');
  assert.deepEqual(
    recorder.messages.map((m) => m.fields.STATUS),
    Array.from({ length: 100 }, (_, i) => String(i)),
  );
  // A manager that does not read at all: the wait is bounded, and the send fails with EAGAIN.
  recorder.proc.kill('SIGSTOP');
  try {
    // kill() only sends the signal: until the recorder is stopped it may still empty its queue.
    await waitStopped(recorder.proc.pid!);
    const qlen = Number(fs.readFileSync('/proc/sys/net/unix/max_dgram_qlen', 'utf8'));
    assert.throws(
      () => {
        for (let i = 0; i <= qlen + 1; i++) native.sdNotify(recorder.path, Buffer.from('STATUS=stuck\n'), [], 50);
      },
      { code: 'EAGAIN' },
    );
  } finally {
    recorder.proc.kill('SIGCONT');
  }
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
    killAtCleanup(successor);
    const reloading = await checkHandover(recorder, old, successor, from);
    const at = BigInt(reloading.fields.MONOTONIC_USEC!);
    assert.ok(before <= at && at <= micros(), `MONOTONIC_USEC ${at} is the reload's time (${before}..)`);
    old = successor;
  }
  assert.deepEqual(await drainAll([client!]), []);
  client!.close();
});

for (const [fail, code] of [
  ['before-start', 'ERR_TAKEOVER_SUCCESSOR_FAILED'],
  ['before-ready', 'ERR_TAKEOVER_PEER_CLOSED'],
] as const) {
  test(`an upgrade() whose successor fails ${fail.replace('-', ' ')}: the old process ends the reload with READY=1 and says why (${code})`, {
    timeout,
  }, async () => {
    const recorder = await Recorder.start();
    const channel = path.join(privateDir(), 'channel');
    const script = path.join(distDir, 'test', 'fixtures', 'upgrade-app.js');
    const server = new ServerProcess(channel as unknown as object, {
      script,
      env: { NOTIFY_SOCKET: recorder.path, UPGRADE_TEST_FAIL: fail, UPGRADE_TEST_SUCCESSOR: '0' },
    });
    await server.next('ready');
    await recorder.next((m) => m.pid === server.pid && m.fields.READY === '1', 'READY=1');
    const from = recorder.messages.length;
    server.proc.kill('SIGUSR2');
    assert.equal((await server.next('upgrade-failed')).code, code);
    const reloading = await recorder.next((m) => m.pid === server.pid && m.fields.RELOADING === '1', 'RELOADING=1', from);
    const resumed = await recorder.next((m) => m.pid === server.pid && m.fields.READY === '1', 'READY=1 again', from);
    assert.ok(reloading.index < resumed.index);
    assert.equal(resumed.fields.MAINPID, String(server.pid));
    assert.equal(resumed.fields.STATUS, `Takeover failed (${code}), still serving (pid ${server.pid})`);
    assert.deepEqual(
      recorder.messages.slice(from).filter((m) => m.pid !== server.pid && m.fields.TEST === undefined),
      [],
      'the failed successor never claimed the service',
    );
    server.kill();
  });
}

test('fd store: the listener is stored once (not again by its successor), and after a crash the socket systemd hands back is adopted: connects made meanwhile are served', {
  timeout,
}, async () => {
  const recorder = await Recorder.start();
  const env = { NOTIFY_SOCKET: recorder.path };
  const channel = path.join(privateDir(), 'channel');
  const first = takeoverServer(['-p', '0', '-t', channel, '-q', '--fd-store'], env);
  const port = await first.port();
  const stored = await recorder.next((m) => m.fields.FDSTORE === '1', 'FDSTORE=1');
  assert.equal(stored.pid, first.pid);
  assert.equal(stored.fields.FDNAME, 'tcp%3A127.0.0.1%3A0');
  assert.deepEqual(stored.fds, [{ family: 'inet', type: 'stream', listening: true, port }]);
  const ready = await recorder.next((m) => m.pid === first.pid && m.fields.READY === '1', 'READY=1');
  assert.ok(stored.index < ready.index, 'stored before READY=1');

  const [client] = await openClients(1, [{ port, host: '127.0.0.1' }], () => ({ framesPerBurst: 2, intervalMs: 10 }));
  client!.start();
  const from = recorder.messages.length;
  const successor = takeoverServer(['-T', channel, '-q', '--fd-store'], env);
  await checkHandover(recorder, first.pid, successor.pid, from);
  assert.deepEqual(await drainAll([client!]), []);
  assert.deepEqual(
    recorder.messages.filter((m) => m.fields.FDSTORE !== undefined).map((m) => m.pid),
    [first.pid],
    'the successor stores nothing: its listener is the one already stored',
  );

  // A crash: nobody serves the port, but the store keeps the socket, so connects are accepted
  // (they wait in its backlog) instead of refused.
  successor.child.kill('SIGKILL');
  await successor.exited;
  const waiting = await openClients(3, [{ port, host: '127.0.0.1' }], () => ({ framesPerBurst: 1, intervalMs: 10 }));
  for (const c of waiting) c.burst(3);
  const restarted = await recorder.spawn([process.execPath, SERVER, '-p', '0', '-t', channel, '-q', '--fd-store'], env);
  const back = await recorder.next((m) => m.pid === restarted && m.fields.READY === '1', 'READY=1 after the restart', from);
  assert.deepEqual(await drainAll(waiting), []);
  assert.ok(!recorder.messages.slice(from).some((m) => m.pid === restarted && m.fields.FDSTORE !== undefined), 'not stored again');
  assert.deepEqual(back.store, ['tcp%3A127.0.0.1%3A0']);
  for (const c of [client!, ...waiting]) c.close();
});

test("a reload signal that reaches the old process once its successor serves (past LISTENING) is answered at once: the successor's READY=1 may be gone already", {
  timeout,
}, async () => {
  const recorder = await Recorder.start();
  const env = { NOTIFY_SOCKET: recorder.path };
  const channel = path.join(privateDir(), 'channel');
  const old = takeoverServer(['-p', '0', '-t', channel, '-q'], env);
  await recorder.next((m) => m.pid === old.pid && m.fields.READY === '1', 'READY=1');
  const [client] = await openClients(1, [{ port: await old.port(), host: '127.0.0.1' }], () => ({ framesPerBurst: 2, intervalMs: 10 }));
  client!.start();
  // The successor stops as wave 0 reaches it: it has sent MAINPID= and READY=1, the old process waits for its WAVE_ACK.
  const preload = path.join(distDir, 'test', 'fixtures', 'pause-at.js');
  const successor = takeoverServer(['-T', channel, '-q'], {
    ...env,
    SOCKET_TAKEOVER_TEST_PAUSE_AT: 'wave0',
    NODE_OPTIONS: `--import ${preload}`,
  });
  const main = await recorder.next((m) => m.pid === successor.pid && m.fields.READY === '1', "the successor's READY=1");
  await waitStopped(successor.pid);
  // systemd's ReloadSignal, sent to the old process before systemd read the successor's MAINPID=.
  old.child.kill('SIGUSR2');
  const answer = await recorder.next((m) => m.pid === old.pid && m.fields.RELOADING === '1', 'RELOADING=1', main.index);
  assert.equal(answer.fields.READY, '1', 'the reload ends in the same message');
  assert.equal(answer.fields.STATUS, undefined, "no STATUS over the successor's");
  process.kill(successor.pid, 'SIGCONT');
  await exitOf(old.pid);
  assert.deepEqual(await drainAll([client!]), []);
  client!.close();
});

test('a successor that systemd also gave the fd store (LISTEN_FDS) serves the inherited listener and leaves it stored: a crash after it loses no connect', {
  timeout,
}, async () => {
  const recorder = await Recorder.start();
  const env = { NOTIFY_SOCKET: recorder.path };
  const channel = path.join(privateDir(), 'channel');
  const first = await recorder.spawn([process.execPath, SERVER, '-p', '0', '-t', channel, '-q', '--fd-store'], env);
  const stored = await recorder.next((m) => m.pid === first && m.fields.FDSTORE === '1', 'FDSTORE=1');
  const port = stored.fds[0]!.port!;
  await recorder.next((m) => m.pid === first && m.fields.READY === '1', 'READY=1');
  const [client] = await openClients(1, [{ port, host: '127.0.0.1' }], () => ({ framesPerBurst: 2, intervalMs: 10 }));
  client!.start();
  // Started as systemd starts any process of the service: with the store's fds, the very
  // listener it inherits from its predecessor among them.
  const from = recorder.messages.length;
  const successor = await recorder.spawn([process.execPath, SERVER, '-T', channel, '-q', '--fd-store'], env);
  await checkHandover(recorder, first, successor, from);
  assert.deepEqual(
    recorder.messages.slice(from).filter((m) => m.fields.FDSTOREREMOVE !== undefined),
    [],
    'nothing leaves the store',
  );
  assert.deepEqual(recorder.messages.at(-1)!.store, [stored.fields.FDNAME]);
  assert.deepEqual(await drainAll([client!]), []);

  process.kill(successor, 'SIGKILL');
  await exitOf(successor);
  const waiting = await openClients(2, [{ port, host: '127.0.0.1' }], () => ({ framesPerBurst: 1, intervalMs: 10 }));
  for (const c of waiting) c.burst(3);
  const restarted = await recorder.spawn([process.execPath, SERVER, '-p', '0', '-t', channel, '-q', '--fd-store'], env);
  await recorder.next((m) => m.pid === restarted && m.fields.READY === '1', 'READY=1 after the restart', from);
  assert.deepEqual(await drainAll(waiting), []);
  for (const c of [client!, ...waiting]) c.close();
});

test('a manager that stops reading stalls a process once, not at every notification', { timeout }, async () => {
  const recorder = await Recorder.start();
  const warnings: TakeoverError[] = [];
  const systemd = new Systemd({ enabled: true, fdStore: false }, (error) => warnings.push(error), { NOTIFY_SOCKET: recorder.path });
  let queued = 0;
  recorder.proc.kill('SIGSTOP');
  try {
    // kill() only sends the signal: until the recorder is stopped it may still empty its queue.
    await waitStopped(recorder.proc.pid!);
    // Fill its queue, whatever net.unix.max_dgram_qlen is.
    assert.throws(
      () => {
        for (; ; queued++) native.sdNotify(recorder.path, Buffer.from('STATUS=filler\n'), [], 0);
      },
      { code: 'EAGAIN' },
    );
    // What one process sends through a fresh start, a takeover of it, and its own chained takeover:
    // the first send waits its timeout in vain; from then on none waits, until one gets through.
    assert.ok(systemd.waitsForRoom);
    systemd.serving([]);
    assert.ok(!systemd.waitsForRoom, 'a send waited in vain: the next ones do not wait');
    for (let round = 0; round < 4; round++) {
      systemd.handingOver('Upgrading');
      systemd.refused(new TakeoverError(ErrorCodes.BUSY, 'busy'));
      systemd.resumed(new TakeoverError(ErrorCodes.PEER_CLOSED, 'gone'));
      assert.ok(!systemd.waitsForRoom, 'still not waiting while the queue stays full');
    }
    systemd.stopping();
    assert.deepEqual(
      warnings.map((w) => [w.code, (w.cause as { code?: string }).code]),
      [['ERR_TAKEOVER_NOTIFY_FAILED', 'EAGAIN']],
    );
  } finally {
    recorder.proc.kill('SIGCONT');
  }
  // Once it reads again, notifications get through again.
  await waitFor(() => recorder.messages.length >= queued, 'the queue drained');
  systemd.serving([]);
  const ready = await recorder.next((m) => m.fields.STATUS !== 'filler' && m.fields.READY === '1', 'READY=1', queued);
  assert.equal(ready.fields.MAINPID, String(process.pid));
  assert.ok(systemd.waitsForRoom, 'a send got through: the next one may wait again');
});

test('takeover-server --workers under a notify socket: the supervisor is the main process, and no worker claims the service', {
  timeout,
}, async () => {
  const recorder = await Recorder.start();
  const dir = privateDir();
  const port = await freePort();
  const pool = takeoverServer(['--workers', '2', '-p', String(port), '-t', dir, '-q'], { NOTIFY_SOCKET: recorder.path });
  try {
    const ready = await recorder.next((m) => m.fields.READY === '1', 'READY=1');
    assert.equal(ready.pid, pool.pid);
    assert.equal(ready.fields.MAINPID, String(pool.pid));
    await probeEcho(port, '127.0.0.1');
    // systemd's ReloadSignal: a rolling upgrade of the workers, one reload.
    const from = recorder.messages.length;
    pool.child.kill('SIGUSR2');
    const reloading = await recorder.next((m) => m.fields.RELOADING === '1', 'RELOADING=1', from);
    const reloaded = await recorder.next((m) => m.fields.READY === '1', 'READY=1 once upgraded', reloading.index);
    assert.equal(reloaded.fields.STATUS, `Pool upgraded: 2 workers (supervisor pid ${pool.pid})`);
    await probeEcho(port, '127.0.0.1');
  } finally {
    // The supervisor stops its workers (detached: nothing else would).
    pool.child.kill('SIGTERM');
    await pool.exited;
  }
  await recorder.next((m) => m.fields.STOPPING === '1', 'STOPPING=1');
  assert.deepEqual(
    recorder.messages.filter((m) => m.pid !== pool.pid || (m.fields.MAINPID ?? String(pool.pid)) !== String(pool.pid)),
    [],
    'only the supervisor speaks, and only for itself',
  );
});

test('socket activation by systemd-socket-activate: takeover-server -t without -p serves the passed socket; its successor gets it from its predecessor, not from LISTEN_FDS', {
  timeout,
}, async () => {
  const recorder = await Recorder.start();
  const channel = path.join(privateDir(), 'channel');
  const port = await freePort();
  const activator = new Proc(
    'systemd-socket-activate',
    ['-l', `127.0.0.1:${port}`, '--fdname=web', '-E', `NOTIFY_SOCKET=${recorder.path}`, process.execPath, SERVER, '-t', channel, '-q'],
    {},
  );
  await activator.line(new RegExp(`Listening on 127\\.0\\.0\\.1:${port} as 3`), 'err');
  // The first connect starts the service (systemd-socket-activate execs it in its own place).
  const [client] = await openClients(1, [{ port, host: '127.0.0.1' }], () => ({ framesPerBurst: 2, intervalMs: 10 }));
  client!.start();
  const ready = await recorder.next((m) => m.fields.READY === '1', 'READY=1');
  assert.equal(ready.pid, activator.pid);
  await probeEcho(port, '127.0.0.1');

  const from = recorder.messages.length;
  activator.child.kill('SIGUSR2');
  const main = await recorder.next((m) => m.pid !== activator.pid && m.fields.READY === '1', 'READY=1 from the successor', from);
  killAtCleanup(main.pid);
  await checkHandover(recorder, activator.pid, main.pid, from);
  assert.ok(!fs.readFileSync(`/proc/${main.pid}/environ`, 'utf8').includes('LISTEN_FDS='), 'the successor never sees LISTEN_FDS');
  assert.deepEqual(await drainAll([client!]), []);
  await probeEcho(port, '127.0.0.1');
  client!.close();
});

test('an ordinary app given two sockets exactly as systemd gives them adopts them by name and by index, and its successor by inheritance', {
  timeout,
}, async () => {
  const dir = privateDir();
  const tcp = net.createServer().listen(0, '127.0.0.1');
  await once(tcp, 'listening');
  const unixPath = path.join(dir, 'echo.sock');
  const unixFd = native.unixListen(unixPath, 'stream', 16);
  const script = path.join(distDir, 'test', 'fixtures', 'systemd-app.js');
  const app = new ServerProcess(path.join(dir, 'channel') as unknown as object, {
    script,
    shellPrefix: 'export LISTEN_PID=$$',
    env: { LISTEN_FDS: '2', LISTEN_FDNAMES: 'web:echo' },
    spawn: { stdio: ['ignore', 'pipe', 'pipe', native.dup(fdOf(tcp)), unixFd] },
  });
  // The app owns them now; this process's copies go (no libuv handle unlinks the Unix path).
  tcp.close();
  native.close(unixFd);
  const ready = (await app.next('ready')) as unknown as { activated: unknown; address: net.AddressInfo; listenFds: string | null };
  assert.deepEqual(ready.activated, [
    { index: 0, name: 'web', kind: 'tcp' },
    { index: 1, name: 'echo', kind: 'unix' },
  ]);
  assert.equal(ready.listenFds, null, 'LISTEN_* are removed once taken');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const get = () =>
    new Promise<string>((resolve, reject) => {
      http
        .get({ port: ready.address.port, host: '127.0.0.1', agent }, (res) => {
          let body = '';
          res.on('data', (chunk: Buffer) => (body += chunk));
          res.on('end', () => resolve(body));
        })
        .on('error', reject);
    });
  assert.equal(await get(), `pid ${app.pid}`);
  const echo = net.connect(unixPath);
  await once(echo, 'connect');
  const roundTrip = async (text: string) => {
    echo.write(text);
    let got = '';
    while (got.length < text.length) got += ((await once(echo, 'data')) as [Buffer])[0].toString();
    assert.equal(got, text);
  };
  await roundTrip('before');

  app.proc.kill('SIGUSR2');
  const successor = await app.next('ready');
  killAtCleanup(successor.pid);
  assert.equal(successor.successor, true);
  const inherited = successor as unknown as { activated: unknown; listenFds: string | null };
  assert.deepEqual(inherited.activated, [], 'nothing from systemd: it all came from the predecessor');
  assert.equal(inherited.listenFds, null);
  assert.equal(await get(), `pid ${successor.pid}`, 'the keep-alive connection moved');
  await roundTrip('after, from the successor');
  assert.equal(await app.exited, 0);
  echo.destroy();
  agent.destroy();
});

test('bad input from the environment is a coded warning and never stops serving', { timeout }, async () => {
  const dir = privateDir();
  const notAFile = fs.openSync(path.join(dir, 'plain-file'), 'w');
  const cases: { env: NodeJS.ProcessEnv; stdio?: StdioOptions; warning: RegExp }[] = [
    { env: { LISTEN_FDS: 'lots' }, warning: /LISTEN_FDS 'lots' is not a count of fds.*\(ERR_TAKEOVER_ACTIVATION_INVALID\)$/ },
    {
      env: { LISTEN_FDS: '1' },
      stdio: ['ignore', 'pipe', 'pipe', notAFile],
      warning: /LISTEN_FDS fd 3 \('unknown'\) is not a socket.*\(ERR_TAKEOVER_ACTIVATION_INVALID\)$/,
    },
    {
      env: { NOTIFY_SOCKET: path.join(dir, 'nobody-here') },
      warning: /sd_notify to NOTIFY_SOCKET .* failed: ENOENT.*\(ERR_TAKEOVER_NOTIFY_FAILED\)$/,
    },
    { env: { NOTIFY_SOCKET: 'relative/path' }, warning: /failed: EINVAL.*\(ERR_TAKEOVER_NOTIFY_FAILED\)$/ },
  ];
  for (const { env, stdio, warning } of cases) {
    const channel = path.join(dir, 'channel');
    const server = takeoverServer(['-p', '0', '-t', channel, '-q'], env, { shellPrefix: 'export LISTEN_PID=$$', stdio });
    await server.line(warning, 'err');
    await probeEcho(await server.port(), '127.0.0.1');
    server.child.kill('SIGTERM');
    await server.exited;
  }
  // LISTEN_PID of another process: its listeners are not ours.
  const other = takeoverServer(['-p', '0', '-t', path.join(dir, 'channel'), '-q'], { LISTEN_PID: '1', LISTEN_FDS: '1' });
  await other.line(/LISTEN_PID is 1, not this process/, 'err');
  await probeEcho(await other.port(), '127.0.0.1');
  other.child.kill('SIGTERM');
  await other.exited;
  fs.closeSync(notAFile);
});

test('a stored listener the next start no longer listens on is closed and leaves the fd store', { timeout }, async () => {
  const recorder = await Recorder.start();
  const env = { NOTIFY_SOCKET: recorder.path };
  const channel = path.join(privateDir(), 'channel');
  const first = takeoverServer(['-p', '0', '-t', channel, '-q', '--fd-store'], env);
  const oldPort = await first.port();
  await recorder.next((m) => m.pid === first.pid && m.fields.READY === '1', 'READY=1');
  first.child.kill('SIGKILL');
  await first.exited;
  // Restarted with another address: systemd hands the old socket back, nothing adopts it.
  const from = recorder.messages.length;
  const restarted = await recorder.spawn([process.execPath, SERVER, '-a', '127.0.0.2', '-p', '0', '-t', channel, '-q', '--fd-store'], env);
  const removed = await recorder.next((m) => m.fields.FDSTOREREMOVE === '1', 'FDSTOREREMOVE=1', from);
  assert.equal(removed.pid, restarted);
  assert.equal(removed.fields.FDNAME, 'tcp%3A127.0.0.1%3A0');
  const ready = await recorder.next((m) => m.pid === restarted && m.fields.READY === '1', 'READY=1', from);
  assert.deepEqual(ready.store, ['tcp%3A127.0.0.2%3A0'], 'only the new listener is stored');
  await assert.rejects(probeEcho(oldPort, '127.0.0.1'), /ECONNREFUSED/, 'nobody holds the old port any more');
});
