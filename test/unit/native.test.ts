/**
 * Tests for the native addon through src/native.ts, on real sockets.
 *
 * Raw fds are tracked per test in an FdSet that closes whatever is still open when
 * the test ends, so a failing test does not cascade into the file-wide leak check.
 */
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import * as dgram from 'node:dgram';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import * as native from '#lib/native.js';
import { FdZoo } from '../chaos/fuzz.js';
import { addonFile, waitFor } from '../helpers.js';

const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const nativeModuleUrl = import.meta.resolve('#lib/native.js');

let dir = '';
let baseline = 0;
let socketCounter = 0;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'takeover-native-'));
  // Node opens its SIGCHLD signal pipe on the first spawn and keeps it: open it now,
  // before the baseline, so the leak check counts only fds the tests are responsible for.
  await once(spawn('true'), 'close');
  baseline = native.openFdCount();
});

after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(native.openFdCount(), baseline, 'fds leaked across the test file');
});

/** Raw fds owned by one test; whatever is left is closed when the test ends. */
class FdSet {
  private readonly fds = new Set<number>();
  constructor(t: TestContext) {
    t.after(() => {
      for (const fd of this.fds) native.close(fd);
      this.fds.clear();
    });
  }
  add(fd: number): number {
    assert.ok(Number.isInteger(fd) && fd >= 0, `bad fd ${fd}`);
    this.fds.add(fd);
    return fd;
  }
  close(fd: number): void {
    assert.ok(this.fds.delete(fd), `fd ${fd} is not tracked`);
    native.close(fd);
  }
  /** Forget an fd that something else (a net.Socket, the kernel) now owns. */
  release(fd: number): void {
    this.fds.delete(fd);
  }
}

function socketPath(): string {
  return path.join(dir, `s${socketCounter++}.sock`);
}

function listenAt(p: string, fds: FdSet, type: 'seqpacket' | 'stream' = 'seqpacket', backlog = 16): number {
  return fds.add(native.unixListen(p, type, backlog));
}

/** A connected SOCK_SEQPACKET pair plus its listener. Unix connects complete at once. */
function pair(fds: FdSet): { listener: number; client: number; server: number } {
  const p = socketPath();
  const listener = listenAt(p, fds);
  const client = fds.add(native.unixConnect(p));
  const server = fds.add(native.accept(listener));
  return { listener, client, server };
}

/** File status and fd flags as the kernel reports them. */
function fdFlags(fd: number): number {
  const m = /flags:\s*([0-7]+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  assert.ok(m?.[1] !== undefined, `no flags for fd ${fd}`);
  return parseInt(m[1], 8);
}

/** Resolves once `fd` is readable (or writable): a one-shot Poller. */
function whenReady(fd: number, writable = false): { ready: Promise<void>; cancel(): void } {
  let poller: native.Poller | undefined;
  const ready = new Promise<void>((resolve, reject) => {
    poller = native.poll(fd, (status) => {
      poller?.close();
      if (status === 0) resolve();
      else reject(new Error(`poll status ${status}`));
    });
  });
  poller?.start(!writable, writable);
  return { ready, cancel: () => poller?.close() };
}

/**
 * Resolves after the event loop has run at least one poll phase from now, so a level-triggered
 * Poller whose condition already holds has fired. One setImmediate is not enough: called from
 * a poll callback, it runs in the check phase of the same iteration, before any new poll.
 */
function afterPollPhase(): Promise<void> {
  return new Promise((resolve) => setImmediate(() => setImmediate(resolve)));
}

async function readBytes(socket: net.Socket, n: number): Promise<string> {
  let got = '';
  while (got.length < n) {
    const [chunk] = (await once(socket, 'data')) as [Buffer];
    got += chunk.toString();
  }
  return got;
}

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Run `node [nodeFlags...] script args...`, optionally under `ulimit -n`. Killed after 20 s
 * so a hang fails.
 */
function runChild(script: string, args: string[], fdLimit?: number, nodeFlags: string[] = []): Promise<ChildResult> {
  const argv = [process.execPath, ...nodeFlags, script, ...args];
  const child =
    fdLimit === undefined
      ? spawn(argv[0]!, argv.slice(1), { timeout: 20_000 })
      : spawn('sh', ['-c', `ulimit -n ${fdLimit}; exec "$@"`, 'sh', ...argv], { timeout: 20_000 });
  let stdout = '';
  let stderr = '';
  // Capped: a child stuck in a loop of writes must not flood the test report.
  child.stdout.on('data', (d: Buffer) => (stdout = (stdout + d.toString()).slice(0, 65536)));
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(0, 65536)));
  return once(child, 'close').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
    stdout,
    stderr,
  }));
}

async function tcpConnection(host: string): Promise<{ server: net.Server; client: net.Socket; conn: net.Socket; close(): Promise<void> }> {
  const server = net.createServer();
  server.listen(0, host);
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  const connP = once(server, 'connection');
  const client = net.connect(port, host);
  const [[conn]] = (await Promise.all([connP, once(client, 'connect')])) as [[net.Socket], unknown];
  return {
    server,
    client,
    conn,
    async close() {
      const closed = [once(client, 'close'), once(conn, 'close')];
      client.destroy();
      conn.destroy();
      await Promise.all(closed);
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * A TCP server on ::1, closed with its connections after the test; undefined, with a diagnostic,
 * where there is no IPv6 loopback.
 */
async function listenOnIpv6Loopback(t: TestContext): Promise<net.Server | undefined> {
  const server = net.createServer();
  const listened = await new Promise<boolean>((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(0, '::1', () => resolve(true));
  });
  if (!listened) {
    t.diagnostic('no IPv6 loopback here: inet6 not checked');
    return undefined;
  }
  server.on('connection', (socket: net.Socket) => t.after(() => socket.destroy()));
  t.after(() => server.close());
  return server;
}

/** A UDP socket bound on 127.0.0.1, closed after the test. */
async function boundUdp(t: TestContext): Promise<dgram.Socket> {
  const udp = dgram.createSocket('udp4');
  udp.bind(0, '127.0.0.1');
  await once(udp, 'listening');
  t.after(() => new Promise<void>((resolve) => udp.close(() => resolve())));
  return udp;
}

/** The fd under a libuv handle (private fields; dgram keeps its handle behind a symbol). */
function handleFd(owner: net.Socket | net.Server | dgram.Socket): number {
  let handle: { fd: number };
  if (owner instanceof dgram.Socket) {
    const state = Object.getOwnPropertySymbols(owner).find((s) => s.description === 'state symbol');
    assert.ok(state, 'dgram internals changed');
    handle = (owner as unknown as Record<symbol, { handle: { fd: number } }>)[state].handle;
  } else {
    handle = (owner as unknown as { _handle: { fd: number } })._handle;
  }
  const fd = handle.fd;
  assert.ok(Number.isInteger(fd) && fd >= 0);
  return fd;
}

test('unixListen/unixConnect/accept give a non-blocking, close-on-exec seqpacket pair', (t) => {
  const fds = new FdSet(t);
  const p = socketPath();
  const listener = listenAt(p, fds);
  assert.equal(native.accept(listener), -1, 'nothing waiting yet');
  const client = fds.add(native.unixConnect(p));
  const server = fds.add(native.accept(listener));
  assert.equal(native.accept(listener), -1);
  for (const fd of [listener, client, server]) {
    const flags = fdFlags(fd);
    assert.ok(flags & O_NONBLOCK, `fd ${fd} is not O_NONBLOCK`);
    assert.ok(flags & O_CLOEXEC, `fd ${fd} is not close-on-exec`);
  }
  assert.deepEqual(native.socketInfo(listener), { domain: 'unix', type: 'seqpacket', listening: true });
  assert.deepEqual(native.socketInfo(client), { domain: 'unix', type: 'seqpacket', listening: false });
  assert.deepEqual(native.socketInfo(server), { domain: 'unix', type: 'seqpacket', listening: false });
  assert.equal(native.sendMessage(client, Buffer.from('ping'), []), true);
  assert.equal(native.receiveMessage(server, 16)?.data.toString(), 'ping');
});

test('peerCredentials reports this process on both ends', (t) => {
  const { client, server } = pair(new FdSet(t));
  const me = { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() };
  assert.deepEqual(native.peerCredentials(server), me);
  assert.deepEqual(native.peerCredentials(client), me);
});

test('a TCP socket, a FIFO and a file arrive as distinct new working fds', async (t) => {
  const fds = new FdSet(t);
  const { client, server } = pair(fds);
  const tcp = await tcpConnection('127.0.0.1');
  t.after(() => tcp.close());
  const tcpFd = handleFd(tcp.conn);
  const fifoPath = path.join(dir, 'fifo');
  execFileSync('mkfifo', [fifoPath]);
  const fifoFd = fs.openSync(fifoPath, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  const fileFd = fs.openSync(path.join(dir, 'file'), 'w+');
  t.after(() => {
    fs.closeSync(fifoFd);
    fs.closeSync(fileFd);
  });

  const before = native.openFdCount();
  assert.equal(native.sendMessage(client, Buffer.from('three'), [tcpFd, fifoFd, fileFd]), true);
  const msg = native.receiveMessage(server, 100);
  assert.ok(msg);
  assert.equal(msg.data.toString(), 'three');
  assert.equal(msg.fds.length, 3);
  msg.fds.forEach((fd) => fds.add(fd));
  assert.equal(native.openFdCount(), before + 3);
  assert.equal(new Set(msg.fds).size, 3);
  for (const fd of msg.fds) {
    assert.ok(![tcpFd, fifoFd, fileFd, client, server].includes(fd), `fd ${fd} is not new`);
    assert.ok(fdFlags(fd) & O_CLOEXEC, `received fd ${fd} is not close-on-exec`);
  }
  const [gotTcp, gotFifo, gotFile] = msg.fds as [number, number, number];

  // TCP: the received fd is the same connection; write through it, read at the client.
  assert.deepEqual(native.socketInfo(gotTcp), { domain: 'inet', type: 'stream', listening: false });
  fds.release(gotTcp); // the net.Socket owns it from here
  const wrapped = new net.Socket({ fd: gotTcp });
  const reading = readBytes(tcp.client, 'via received fd'.length);
  wrapped.write('via received fd');
  assert.equal(await reading, 'via received fd');
  const wrappedClosed = once(wrapped, 'close');
  wrapped.destroy();
  await wrappedClosed;

  // FIFO: write through the received fd, read through the original.
  fs.writeSync(gotFifo, 'fifo');
  const buf = Buffer.alloc(16);
  assert.equal(buf.toString('utf8', 0, fs.readSync(fifoFd, buf)), 'fifo');

  // File: same open file description; read back from offset 0 through the original.
  fs.writeSync(gotFile, 'file');
  assert.equal(buf.toString('utf8', 0, fs.readSync(fileFd, buf, 0, 16, 0)), 'file');
  fds.close(gotFifo);
  fds.close(gotFile);
});

// native/takeover.c cannot import MAX_FDS_PER_MESSAGE: sending exactly that many, then one more,
// checks that its own MAX_FDS agrees.
test('MAX_FDS_PER_MESSAGE (253, SCM_MAX_FD) fds in one message arrive as distinct fds; one more is a RangeError', (t) => {
  const fds = new FdSet(t);
  const { client, server } = pair(fds);
  const devNull = fds.add(fs.openSync('/dev/null', 'r'));
  const max = native.MAX_FDS_PER_MESSAGE;
  assert.equal(max, 253);

  assert.throws(() => native.sendMessage(client, Buffer.from('x'), new Array<number>(max + 1).fill(devNull)), {
    name: 'RangeError',
    code: 'ERR_OUT_OF_RANGE',
  });
  assert.equal(native.receiveMessage(server, 16), null, 'the refused message must not be sent');

  const before = native.openFdCount();
  assert.equal(native.sendMessage(client, Buffer.from('many'), new Array<number>(max).fill(devNull)), true);
  const msg = native.receiveMessage(server, 16);
  assert.ok(msg);
  msg.fds.forEach((fd) => fds.add(fd));
  assert.equal(msg.data.toString(), 'many');
  assert.equal(msg.fds.length, max);
  assert.equal(new Set(msg.fds).size, max);
  assert.equal(native.openFdCount(), before + max);
  msg.fds.forEach((fd) => fds.close(fd));
  assert.equal(native.openFdCount(), before);
});

test('message boundaries are kept; null when empty; EOF shape after the peer closes', (t) => {
  const fds = new FdSet(t);
  const { client, server } = pair(fds);
  assert.equal(native.receiveMessage(server, 100), null);
  for (const s of ['a', 'bb', 'ccc']) assert.equal(native.sendMessage(client, Buffer.from(s), []), true);
  for (const s of ['a', 'bb', 'ccc']) {
    const msg = native.receiveMessage(server, 100);
    assert.deepEqual(msg, { data: Buffer.from(s), fds: [] });
  }
  assert.equal(native.receiveMessage(server, 100), null);
  // A message of fds only is not EOF.
  const devNull = fds.add(fs.openSync('/dev/null', 'r'));
  assert.equal(native.sendMessage(client, Buffer.alloc(0), [devNull]), true);
  const fdOnly = native.receiveMessage(server, 100);
  assert.ok(fdOnly);
  assert.equal(fdOnly.data.length, 0);
  assert.equal(fdOnly.fds.length, 1);
  fds.add(fdOnly.fds[0]!);

  fds.close(client);
  assert.deepEqual(native.receiveMessage(server, 100), { data: Buffer.alloc(0), fds: [] });
});

test('a message longer than maxBytes throws ERR_MESSAGE_TRUNCATED and closes its fds', (t) => {
  const fds = new FdSet(t);
  const { client, server } = pair(fds);
  const devNull = fds.add(fs.openSync('/dev/null', 'r'));
  const before = native.openFdCount();
  assert.equal(native.sendMessage(client, Buffer.alloc(100, 1), [devNull, devNull]), true);
  assert.equal(native.sendMessage(client, Buffer.from('next'), []), true);
  assert.throws(() => native.receiveMessage(server, 10), { code: 'ERR_MESSAGE_TRUNCATED', closedFds: 2 });
  assert.equal(native.openFdCount(), before, 'the fds of the truncated message were not closed');
  assert.deepEqual(native.receiveMessage(server, 10), { data: Buffer.from('next'), fds: [] });
});

test('fds lost to the receiver fd limit throw ERR_FDS_TRUNCATED and leak nothing (child process)', async (t) => {
  const fds = new FdSet(t);
  const sock = socketPath();
  const listener = listenAt(sock, fds);
  const script = path.join(dir, 'ctrunc-child.mjs');
  fs.writeFileSync(
    script,
    `import * as n from ${JSON.stringify(nativeModuleUrl)};
const fd = n.unixConnect(process.argv[2]);
const before = n.openFdCount();
const poller = n.poll(fd, (status, readable) => {
  poller.close();
  const result = { status, readable, soft: n.fdLimit().soft };
  try {
    const msg = n.receiveMessage(fd, 64);
    result.received = msg && msg.fds.length;
    if (msg) msg.fds.forEach((f) => n.close(f));
  } catch (e) {
    result.code = e.code;
    result.closedFds = e.closedFds;
  }
  result.leaked = n.openFdCount() - before;
  n.close(fd);
  process.stdout.write(JSON.stringify(result));
});
poller.start(true, false);
`,
  );
  const childDone = runChild(script, [sock], 40);
  const acceptable = whenReady(listener);
  let winner: string;
  try {
    winner = await Promise.race([acceptable.ready.then(() => 'connected'), childDone.then(() => 'exited')]);
  } finally {
    acceptable.cancel();
  }
  if (winner !== 'connected') assert.fail(`child exited before connecting: ${(await childDone).stderr}`);
  const conn = fds.add(native.accept(listener));
  const devNull = fds.add(fs.openSync('/dev/null', 'r'));
  assert.equal(native.sendMessage(conn, Buffer.from('fds'), new Array<number>(253).fill(devNull)), true);

  const res = await childDone;
  assert.equal(res.signal, null, `child killed: ${res.stderr.slice(0, 300)}`);
  assert.equal(res.code, 0, res.stderr);
  const out = JSON.parse(res.stdout) as Record<string, unknown>;
  assert.equal(out.soft, 40, 'the child did not run under the low fd limit');
  assert.equal(out.status, 0);
  assert.equal(out.code, 'ERR_FDS_TRUNCATED', `child result: ${res.stdout}`);
  assert.ok(typeof out.closedFds === 'number' && out.closedFds > 0 && out.closedFds < 253, res.stdout);
  assert.equal(out.leaked, 0);
});

test('sendMessage returns false on a full channel; poll reports writable once drained', async (t) => {
  const fds = new FdSet(t);
  const { client, server } = pair(fds);
  const chunk = Buffer.alloc(4096);
  let sent = 0;
  while (sent < 100_000 && native.sendMessage(client, chunk, [])) sent++;
  assert.ok(sent > 0 && sent < 100_000, `sent ${sent} messages without EAGAIN`);

  const events: Array<[number, boolean, boolean]> = [];
  let wake: () => void = () => {};
  const poller = native.poll(client, (status, readable, writable) => {
    events.push([status, readable, writable]);
    poller.stop();
    wake();
  });
  t.after(() => poller.close());
  poller.start(false, true);
  await afterPollPhase();
  assert.deepEqual(events, [], 'a full channel reported writable');

  const woke = new Promise<void>((resolve) => (wake = resolve));
  let drained = 0;
  while (native.receiveMessage(server, chunk.length) !== null) drained++;
  assert.equal(drained, sent);
  await woke;
  assert.deepEqual(events, [[0, false, true]]);
  assert.equal(native.sendMessage(client, chunk, []), true);
});

test('poll: readable events, `this` is the Poller, stop() pauses, close() is idempotent', async (t) => {
  const fds = new FdSet(t);
  const { client, server } = pair(fds);
  const events: Array<[number, boolean, boolean]> = [];
  let receiver: unknown;
  let wake: () => void = () => {};
  const poller = native.poll(server, function (this: unknown, status, readable, writable) {
    receiver = this;
    events.push([status, readable, writable]);
    if (readable) native.receiveMessage(server, 16); // level-triggered: consume or it fires again
    wake();
  });
  t.after(() => poller.close());
  let next = new Promise<void>((resolve) => (wake = resolve));

  poller.start(true, false);
  await afterPollPhase();
  assert.deepEqual(events, [], 'fired with nothing to read');
  native.sendMessage(client, Buffer.from('x'), []);
  await next;
  assert.deepEqual(events, [[0, true, false]]);
  assert.equal(receiver, poller);

  poller.stop();
  native.sendMessage(client, Buffer.from('y'), []);
  await afterPollPhase();
  assert.equal(events.length, 1, 'a stopped poller fired');
  next = new Promise<void>((resolve) => (wake = resolve));
  poller.start(true, false);
  await next;
  assert.deepEqual(events, [
    [0, true, false],
    [0, true, false],
  ]);

  // Writable fires at once on an idle socket.
  poller.stop();
  next = new Promise<void>((resolve) => (wake = resolve));
  poller.start(false, true);
  await next;
  assert.deepEqual(events[2], [0, false, true]);

  poller.close();
  poller.close();
  poller.stop();
  assert.throws(() => poller.start(true, false), { code: 'ERR_POLLER_CLOSED' });
});

test('Poller: close() twice, stop() and start() after close stay safe once the close callback has run', async (t) => {
  const fds = new FdSet(t);
  const { client, server } = pair(fds);
  let calls = 0;
  // A batch, started and closed one by one (libuv allows one started poller per fd):
  // the bug freed each Poller's memory in the close callback, and the Pollers created
  // below would then reuse it, so the stale calls hit live handles and crashed.
  const closed = Array.from({ length: 100 }, () => {
    const p = native.poll(server, () => calls++);
    p.start(true, false);
    p.close();
    return p;
  });
  native.sendMessage(client, Buffer.from('x'), []); // server readable: a closed Poller must not fire
  await afterPollPhase();
  await afterPollPhase(); // both turns ran their close callbacks
  const fresh = Array.from({ length: 100 }, () => native.poll(client, () => {}));
  t.after(() => fresh.forEach((p) => p.close()));

  for (const p of closed) {
    p.close();
    p.stop();
    assert.throws(() => p.start(true, false), { code: 'ERR_POLLER_CLOSED' });
  }
  // The fresh Pollers are untouched by those calls: each still starts, and fires.
  let fired = 0;
  const woke = new Promise<void>((resolve) => {
    const p = native.poll(server, () => {
      fired++;
      p.close();
      resolve();
    });
    p.start(true, false);
  });
  await woke;
  for (const p of fresh) p.close();
  await afterPollPhase();
  for (const p of [...closed, ...fresh]) {
    p.close();
    p.stop();
    assert.throws(() => p.start(false, true), { code: 'ERR_POLLER_CLOSED' });
  }
  assert.equal(calls, 0, 'a closed Poller fired');
  assert.equal(fired, 1);
});

test('Poller methods only work on their Poller: detached or rebound they throw ERR_INVALID_THIS', (t) => {
  const fds = new FdSet(t);
  const { server } = pair(fds);
  const poller = native.poll(server, () => {});
  t.after(() => poller.close());
  const invalidThis = { name: 'TypeError', code: 'ERR_INVALID_THIS' };
  const { start, stop, close } = poller;
  assert.throws(() => start(true, false), invalidThis);
  assert.throws(() => stop(), invalidThis);
  assert.throws(() => close(), invalidThis);
  assert.throws(() => stop.call({}), invalidThis);
  assert.throws(() => close.call(Object.create(poller)), invalidThis);
  poller.start(true, false); // still open and usable
  poller.close();
  assert.throws(() => close.call(undefined), invalidThis);
});

test('many Pollers created and closed under GC: no crash, and a closed Poller keeps neither itself nor its callback alive (child process)', async () => {
  const script = path.join(dir, 'gc-child.mjs');
  fs.writeFileSync(
    script,
    `import * as n from ${JSON.stringify(nativeModuleUrl)};
if (typeof gc !== 'function') throw new Error('run with --expose-gc');
const tick = () => new Promise((resolve) => setImmediate(resolve));
const listener = n.unixListen(process.argv[2], 'seqpacket', 1);
const ROUNDS = 20, PER_ROUND = 500, KEEP = 20;
const collected = { callback: 0, poller: 0 };
const registry = new FinalizationRegistry((kind) => collected[kind]++);
const kept = []; // closed Pollers kept reachable, and called again after later rounds and GCs
let staleThrows = 0;
// Not inlined in the async loop below: a suspended async function saves its registers,
// which would keep the last Poller and callback reachable.
function churn(round) {
  for (let i = 0; i < PER_ROUND; i++) {
    const payload = new Array(64).fill(i); // what the callback closure keeps alive
    const callback = () => payload;
    const p = n.poll(listener, callback);
    registry.register(callback, 'callback');
    if (i % 2) p.start(true, false);
    if (i % 3 === 0) p.stop();
    p.close();
    if (i % 5 === 0) p.close();
    if (round === 0 && i < KEEP) kept.push(p);
    else registry.register(p, 'poller');
  }
}
for (let round = 0; round < ROUNDS; round++) {
  churn(round);
  await tick();
  await tick();
  gc();
  for (const p of kept) {
    p.close();
    p.stop();
    try { p.start(true, false); } catch (e) { if (e.code !== 'ERR_POLLER_CLOSED') throw e; staleThrows++; }
  }
}
// FinalizationRegistry callbacks run in tasks after a GC: give them a few turns.
const total = ROUNDS * PER_ROUND;
for (let i = 0; i < 100 && (collected.callback < total || collected.poller < total - KEEP); i++) {
  gc();
  await new Promise((resolve) => setTimeout(resolve, 5));
}
// Still reachable and closed: only now may they go.
const keptAlive = kept.length;
kept.forEach((p) => p.close());
n.close(listener);
process.stdout.write(JSON.stringify({ total, keptAlive, staleThrows, ...collected }));
`,
  );
  const res = await runChild(script, [socketPath()], undefined, ['--expose-gc']);
  assert.equal(res.signal, null, `child crashed or hung: ${res.stderr.slice(0, 500)}`);
  assert.equal(res.code, 0, res.stderr);
  const out = JSON.parse(res.stdout) as Record<string, number>;
  assert.equal(out.staleThrows, 20 * 20, res.stdout);
  // Every callback goes, including those of the closed Pollers still referenced.
  assert.equal(out.callback, out.total, `callbacks kept alive after close(): ${res.stdout}`);
  assert.equal(out.poller, out.total! - out.keptAlive!, `closed Pollers never collected: ${res.stdout}`);
});

test('Pollers never closed, or closed just before, are torn down with their worker thread (child process)', async () => {
  const script = path.join(dir, 'worker-child.mjs');
  fs.writeFileSync(
    script,
    `import * as n from ${JSON.stringify(nativeModuleUrl)};
import { once } from 'node:events';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
if (isMainThread) {
  const listener = n.unixListen(process.argv[2], 'seqpacket', 1);
  let runs = 0;
  for (const how of ['exit', 'terminate']) {
    for (let i = 0; i < 10; i++) {
      const worker = new Worker(new URL(import.meta.url), { workerData: { fd: listener, how } });
      if (how === 'terminate') {
        await once(worker, 'message');
        await worker.terminate();
      } else {
        const [code] = await once(worker, 'exit');
        if (code !== 0) throw new Error('worker exited with ' + code);
      }
      runs++;
    }
  }
  n.close(listener);
  process.stdout.write(JSON.stringify({ runs }));
} else {
  // One fd each: libuv refuses a second started poller on an fd. The worker's fds are
  // left open on purpose; closing them first would be the caller's bug, not this test.
  const { fd, how } = workerData;
  const stopped = n.poll(n.dup(fd), () => {});
  const started = n.poll(n.dup(fd), () => {});
  started.start(true, true);
  const closing = n.poll(n.dup(fd), () => {});
  closing.close(); // its close callback is still pending when the thread goes
  void stopped;
  if (how === 'exit') process.exit(0);
  parentPort.postMessage('ready');
}
`,
  );
  const res = await runChild(script, [socketPath()]);
  // A handle left open at thread exit aborts in uv_loop_close; a double free crashes.
  assert.equal(res.signal, null, `child crashed or hung: ${res.stderr.slice(0, 500)}`);
  assert.equal(res.code, 0, res.stderr);
  assert.deepEqual(JSON.parse(res.stdout), { runs: 20 });
});

test('a throw in a poll callback is an uncaughtException; a stopped Poller lets the process exit', async () => {
  const script = path.join(dir, 'throw-child.mjs');
  fs.writeFileSync(
    script,
    `import * as n from ${JSON.stringify(nativeModuleUrl)};
const path = process.argv[2];
const listener = n.unixListen(path, 'seqpacket', 1);
const client = n.unixConnect(path);
const server = n.accept(listener);
n.sendMessage(client, Buffer.from('x'), []);
const poller = n.poll(server, () => { throw new Error('boom from poll'); });
process.on('uncaughtException', (err) => {
  // Stopped but not closed: the process must still exit on its own.
  poller.stop();
  process.stdout.write(JSON.stringify({ caught: err.message }));
});
poller.start(true, false);
`,
  );
  const res = await runChild(script, [socketPath()]);
  assert.equal(res.signal, null, `child hung and was killed: ${res.stdout.slice(0, 300)} ${res.stderr.slice(0, 300)}`);
  assert.equal(res.code, 0, res.stderr);
  assert.deepEqual(JSON.parse(res.stdout), { caught: 'boom from poll' });
});

test('dup gives a close-on-exec copy; close releases it', (t) => {
  const fds = new FdSet(t);
  const { client, server } = pair(fds);
  const copy = fds.add(native.dup(client));
  assert.notEqual(copy, client);
  assert.ok(fdFlags(copy) & O_CLOEXEC);
  assert.ok(fdFlags(copy) & O_NONBLOCK, 'the copy shares the open file, so it is non-blocking too');
  assert.equal(native.sendMessage(copy, Buffer.from('via dup'), []), true);
  assert.equal(native.receiveMessage(server, 16)?.data.toString(), 'via dup');
  const before = native.openFdCount();
  fds.close(copy);
  assert.equal(native.openFdCount(), before - 1);
  assert.throws(() => native.close(copy), { code: 'EBADF', errno: -9, syscall: 'close' });
  assert.throws(() => native.dup(copy), { code: 'EBADF', syscall: 'fcntl' });
  // The original is untouched.
  assert.equal(native.sendMessage(client, Buffer.from('still'), []), true);
  assert.equal(native.receiveMessage(server, 16)?.data.toString(), 'still');
});

test('socketInfo tells inet, inet6, unix, dgram and listening apart; ENOTSOCK otherwise', async (t) => {
  const fds = new FdSet(t);
  const tcp4 = net.createServer().listen(0, '127.0.0.1');
  t.after(() => new Promise((resolve) => tcp4.close(resolve)));
  await once(tcp4, 'listening');
  assert.deepEqual(native.socketInfo(handleFd(tcp4)), { domain: 'inet', type: 'stream', listening: true });

  const tcp6 = await listenOnIpv6Loopback(t);
  if (tcp6) assert.deepEqual(native.socketInfo(handleFd(tcp6)), { domain: 'inet6', type: 'stream', listening: true });

  const udp = await boundUdp(t);
  assert.deepEqual(native.socketInfo(handleFd(udp)), { domain: 'inet', type: 'dgram', listening: false });

  const stream = listenAt(socketPath(), fds, 'stream');
  assert.deepEqual(native.socketInfo(stream), { domain: 'unix', type: 'stream', listening: true });
  const { listener, client } = pair(fds);
  assert.deepEqual(native.socketInfo(listener), { domain: 'unix', type: 'seqpacket', listening: true });
  assert.deepEqual(native.socketInfo(client), { domain: 'unix', type: 'seqpacket', listening: false });

  const file = fds.add(fs.openSync('/dev/null', 'r'));
  assert.throws(() => native.socketInfo(file), {
    code: 'ENOTSOCK',
    errno: -88,
    syscall: 'getsockopt',
    message: 'getsockopt ENOTSOCK',
  });
});

/** Everything a SocketInspection found about the fd at index i. */
function report(inspection: native.SocketInspection, i: number) {
  return {
    domain: inspection.domain(i),
    type: inspection.type(i),
    listening: inspection.listening(i),
    tcpState: inspection.tcpState(i),
    noDelay: inspection.noDelay(i),
    error: inspection.error(i),
  };
}

test('SocketInspection reads every kind of fd in one call: TCP v4/v6 (LISTEN, ESTABLISHED, SYN_SENT, CLOSE, TCP_NODELAY), unix stream/seqpacket, udp; a file, a closed and a negative fd give their errno', async (t) => {
  const fds = new FdSet(t);
  const server = net.createServer();
  // Closed without waiting: a failed assertion may leave its connections open.
  t.after(() => server.close());
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection');
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const [[conn]] = (await Promise.all([accepted, once(client, 'connect')])) as [[net.Socket], unknown];
  t.after(() => {
    client.destroy();
    conn.destroy();
  });
  conn.on('error', () => {});
  client.setNoDelay(true);
  // A copy of the accepted fd: Node closes its own when it reads the reset.
  const kept = fds.add(native.dup(handleFd(conn)));

  const tcp6 = await listenOnIpv6Loopback(t);
  let client6: net.Socket | undefined;
  if (tcp6) {
    client6 = net.connect((tcp6.address() as net.AddressInfo).port, '::1');
    t.after(() => client6!.destroy());
    await once(client6, 'connect');
  }
  const udp = await boundUdp(t);
  const zoo = await FdZoo.create(fs.mkdtempSync(path.join(dir, 'zoo-')));
  t.after(() => zoo.close());
  const { listener, client: seqpacket } = pair(fds);
  const neverConnected = fds.add(zoo.kinds['tcp never connected']!());
  const unixStream = listenAt(socketPath(), fds, 'stream');
  const file = fds.add(fs.openSync('/dev/null', 'r'));
  // Last, so that no fd opened after it takes its number.
  const closed = native.dup(seqpacket);
  native.close(closed);

  const tcp = { domain: 'inet', type: 'stream', listening: false, noDelay: false, error: undefined } as const;
  const none = { listening: false, tcpState: undefined, noDelay: false, error: undefined } as const;
  const notSocket = { domain: 'other', type: 'other', listening: false, tcpState: undefined, noDelay: false } as const;
  const cases: [string, number, ReturnType<typeof report>][] = [
    ['tcp listener', handleFd(server), { ...tcp, listening: true, tcpState: 'LISTEN' }],
    ['tcp accepted', kept, { ...tcp, tcpState: 'ESTABLISHED' }],
    ['tcp client with setNoDelay(true)', handleFd(client), { ...tcp, tcpState: 'ESTABLISHED', noDelay: true }],
    ['tcp never connected', neverConnected, { ...tcp, tcpState: 'SYN_SENT' }],
    ['unix stream listener', unixStream, { ...none, domain: 'unix', type: 'stream', listening: true }],
    ['unix seqpacket listener', listener, { ...none, domain: 'unix', type: 'seqpacket', listening: true }],
    ['unix seqpacket', seqpacket, { ...none, domain: 'unix', type: 'seqpacket' }],
    ['udp', handleFd(udp), { ...none, domain: 'inet', type: 'dgram' }],
    ['file', file, { ...notSocket, error: 'ENOTSOCK' }],
    ['closed fd', closed, { ...notSocket, error: 'EBADF' }],
    ['negative fd', -1, { ...notSocket, error: 'EBADF' }],
  ];
  if (client6) cases.push(['tcp6 client', handleFd(client6), { ...tcp, domain: 'inet6', tcpState: 'ESTABLISHED' }]);
  const inspection = new native.SocketInspection(cases.length + 1);
  cases.forEach(([, fd], i) => {
    inspection.fds[i] = fd;
  });
  inspection.inspect(cases.length);
  for (const [i, [what, , expected]] of cases.entries()) assert.deepEqual(report(inspection, i), expected, what);

  client.setNoDelay(false);
  client.resetAndDestroy();
  inspection.fds[0] = kept;
  await waitFor(
    () => {
      inspection.inspect(1);
      return inspection.tcpState(0) === 'CLOSE';
    },
    () => `the reset connection is ${inspection.tcpState(0)}`,
  );
  assert.deepEqual(report(inspection, 0), { ...tcp, tcpState: 'CLOSE' });
});

test('inspectSockets refuses bad arrays: TypeError ERR_INVALID_ARG_TYPE for anything but an Int32Array, RangeError ERR_OUT_OF_RANGE when out is short', () => {
  const addon = createRequire(import.meta.url)(addonFile()) as { inspectSockets(fds: unknown, out: unknown): void };
  const typeError = { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' };
  const rangeError = { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' };
  assert.throws(() => addon.inspectSockets([0], new Int32Array(6)), { ...typeError, message: 'The "fds" argument must be an Int32Array' });
  assert.throws(() => addon.inspectSockets(new Uint32Array(1), new Int32Array(6)), typeError);
  assert.throws(() => addon.inspectSockets(new Int32Array(1), new Float64Array(6)), {
    ...typeError,
    message: 'The "out" argument must be an Int32Array',
  });
  assert.throws(() => addon.inspectSockets(new Int32Array(1), undefined), typeError);
  assert.throws(() => addon.inspectSockets(new Int32Array(2), new Int32Array(11)), rangeError);
  const out = new Int32Array(12).fill(7);
  addon.inspectSockets(new Int32Array(0), out);
  assert.deepEqual([...out], new Array(12).fill(7), 'no fd, nothing written');
  const inspection = new native.SocketInspection(2);
  assert.throws(() => inspection.inspect(3), rangeError);
  assert.throws(() => inspection.inspect(-1), rangeError);
});

test('unixConnect/unixListen errors: ENOENT, ECONNREFUSED, EAGAIN, EADDRINUSE, ENAMETOOLONG', (t) => {
  const fds = new FdSet(t);
  assert.throws(() => native.unixConnect(path.join(dir, 'missing.sock')), {
    name: 'Error',
    code: 'ENOENT',
    errno: -2,
    syscall: 'connect',
    message: 'connect ENOENT',
  });

  const stale = socketPath();
  fds.close(listenAt(stale, fds));
  assert.ok(fs.existsSync(stale), 'unixListen/close must not unlink the socket file');
  assert.throws(() => native.unixConnect(stale), { code: 'ECONNREFUSED', errno: -111, syscall: 'connect' });
  assert.throws(() => native.unixListen(stale, 'seqpacket', 1), { code: 'EADDRINUSE', syscall: 'bind' });

  // Backlog 0 admits one pending connection; the next one would block.
  const full = socketPath();
  listenAt(full, fds, 'seqpacket', 0);
  fds.add(native.unixConnect(full));
  assert.throws(() => native.unixConnect(full), { code: 'EAGAIN', syscall: 'connect' });

  assert.throws(() => native.unixConnect(path.join(dir, 'x'.repeat(120))), { code: 'ENAMETOOLONG' });
});

test('growFdTable grows the fd table without opening or clobbering fds', (t) => {
  const fds = new FdSet(t);
  const { client, server } = pair(fds);
  const fdTableSize = () => Number(/FDSize:\s*(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1]);
  const { soft, hard } = native.fdLimit();
  assert.ok(soft > 0 && soft <= hard, `fdLimit ${soft}/${hard}`);
  const before = native.openFdCount();

  const target = Math.min(4000, soft - 1);
  native.growFdTable(target);
  assert.ok(fdTableSize() > target, `FDSize ${fdTableSize()} after growFdTable(${target})`);
  native.growFdTable(soft + 1000); // capped below the limit, not an error
  assert.ok(fdTableSize() >= soft - 1);
  assert.equal(native.openFdCount(), before);

  // An fd in use is never replaced (dup2 onto it would have closed it).
  native.growFdTable(client);
  assert.deepEqual(native.socketInfo(client), { domain: 'unix', type: 'seqpacket', listening: false });
  assert.equal(native.sendMessage(client, Buffer.from('alive'), []), true);
  assert.equal(native.receiveMessage(server, 16)?.data.toString(), 'alive');
  assert.equal(native.openFdCount(), before);
});

test('bad arguments throw TypeError ERR_INVALID_ARG_TYPE or RangeError ERR_OUT_OF_RANGE', (t) => {
  const fds = new FdSet(t);
  const { client, server } = pair(fds);
  const bad = (v: unknown) => v as never;
  const typeError = { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' };
  const rangeError = { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' };
  assert.throws(() => native.accept(bad('3')), typeError);
  assert.throws(() => native.accept(bad(undefined)), typeError);
  assert.throws(() => native.accept(-1), rangeError);
  assert.throws(() => native.accept(1.5), rangeError);
  assert.throws(() => native.unixConnect(bad(5)), typeError);
  assert.throws(() => native.unixListen(socketPath(), bad('dgram'), 1), { name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' });
  assert.throws(() => native.sendMessage(client, bad('str'), []), typeError);
  assert.throws(() => native.sendMessage(client, Buffer.from('x'), bad('fds')), typeError);
  assert.throws(() => native.sendMessage(client, Buffer.from('x'), bad(['3'])), typeError);
  assert.throws(() => native.sendMessage(client, Buffer.alloc(0), []), rangeError);
  assert.throws(() => native.receiveMessage(server, -1), rangeError);
  assert.throws(() => native.poll(server, bad(null)), typeError);
  assert.throws(() => native.growFdTable(bad('1')), typeError);
  assert.equal(native.receiveMessage(server, 16), null, 'nothing was sent by the failed calls');
});

/**
 * Imports native.js (the checkout's, or another copy's) in a child process, with SOCKET_TAKEOVER_ADDON
 * set when `addon` is given; what the import threw, or 'loaded'.
 */
function loadNative(
  addon: string | undefined,
  moduleUrl = nativeModuleUrl,
): { code?: string; causeCode?: string; message?: string } | 'loaded' {
  const script = `import(${JSON.stringify(moduleUrl)}).then(
  (n) => process.stdout.write(JSON.stringify(n.fdLimit().soft > 0 ? 'loaded' : 'no fd limit')),
  (e) => process.stdout.write(JSON.stringify({ code: e.code, causeCode: e.cause?.code, message: e.message })),
);`;
  const env = { ...process.env };
  if (addon === undefined) delete env.SOCKET_TAKEOVER_ADDON;
  else env.SOCKET_TAKEOVER_ADDON = addon;
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env, encoding: 'utf8', timeout: 20_000 });
  assert.equal(child.status, 0, child.stderr);
  return JSON.parse(child.stdout) as ReturnType<typeof loadNative>;
}

test('SOCKET_TAKEOVER_ADDON loads that file, and only that one; a failure is ERR_TAKEOVER_ADDON_LOAD with the cause', () => {
  const copy = path.join(dir, 'copy.node');
  fs.copyFileSync(addonFile(), copy);
  assert.equal(loadNative(copy), 'loaded');

  const missing = loadNative(path.join(dir, 'missing.node'));
  assert.ok(missing !== 'loaded');
  assert.equal(missing.code, 'ERR_TAKEOVER_ADDON_LOAD');
  assert.equal(missing.causeCode, 'MODULE_NOT_FOUND');
  assert.match(missing.message!, /missing\.node .*check SOCKET_TAKEOVER_ADDON/);

  const notAnAddon = path.join(dir, 'text.node');
  fs.writeFileSync(notAnAddon, 'not a shared object');
  const broken = loadNative(notAnAddon);
  assert.ok(broken !== 'loaded');
  assert.equal(broken.code, 'ERR_TAKEOVER_ADDON_LOAD');
  assert.equal(broken.causeCode, 'ERR_DLOPEN_FAILED');
});

test("threadCpuMs is this thread's CPU clock: it moves with work done here, not with another thread's", async () => {
  const spin = (ms: number): void => {
    const until = Date.now() + ms;
    while (Date.now() < until);
  };
  const start = native.threadCpuMs();
  spin(20);
  const afterWork = native.threadCpuMs();
  assert.ok(afterWork > start, `${afterWork} after ${start}`);
  // A worker thread's busy loop is not this thread's CPU time: the clock here moves by far less.
  const { Worker } = await import('node:worker_threads');
  const worker = new Worker('const until = Date.now() + 300; while (Date.now() < until);', { eval: true });
  const beforeWorker = native.threadCpuMs();
  await once(worker, 'exit');
  assert.ok(native.threadCpuMs() - beforeWorker < 250, 'the worker spun for 300 ms of its own CPU');
});

test('a package with neither a build nor a prebuild for this system: ERR_TAKEOVER_ADDON_LOAD saying how to build one', () => {
  const top = path.join(dir, 'unbuilt');
  const dist = new URL('./', nativeModuleUrl);
  for (const file of ['native.js', 'errors.js']) fs.cpSync(new URL(file, dist), path.join(top, 'dist', file));
  fs.cpSync(new URL('../package.json', dist), path.join(top, 'package.json'));
  fs.cpSync(new URL('../node_modules/node-gyp-build', dist), path.join(top, 'node_modules', 'node-gyp-build'), { recursive: true });
  fs.mkdirSync(path.join(top, 'prebuilds', 'linux-x64'), { recursive: true });
  fs.copyFileSync(addonFile(), path.join(top, 'prebuilds', 'linux-x64', 'socket-takeover.musl.node'));

  const result = loadNative(undefined, pathToFileURL(path.join(top, 'dist', 'native.js')).href);
  assert.ok(result !== 'loaded', 'a musl prebuild is not loaded on glibc');
  assert.equal(result.code, 'ERR_TAKEOVER_ADDON_LOAD');
  assert.match(result.message!, /no takeover addon built or prebuilt for this system .*npm rebuild socket-takeover/);
});
