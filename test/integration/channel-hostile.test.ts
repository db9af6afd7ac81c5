/**
 * Hostile peers on the channel (issue #9, items 4 and 6): a flood of connections does not
 * exhaust the server's fds nor its log, and a peer that sends what the server cannot take
 * (a bad frame before HELLO, an oversized frame, too many fds, a zero-length message) gets
 * an ABORT with a code, and the server says so. A fake predecessor cannot fill a successor's fd
 * table either, nor pass a TCP socket still connecting as a connection (item 5).
 */
import { after, test, type TestContext } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { MAX_OPEN_CHANNELS } from '#lib/channel-listener.js';
import * as native from '#lib/native.js';
import { closeFrameFds, decodeFrame, digestIds, encode, MAX_FRAME_SIZE, type Frame } from '#lib/protocol.js';
import { serverFd, socketFd } from '#lib/sockets.js';
import { FdZoo } from '../chaos/fuzz.js';
import { cleanup, openFds, probeEcho, ServerProcess, tempDir, waitFor, within, type ServerConfig } from '../helpers.js';

after(cleanup);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function fresh(
  options: { shellPrefix?: string } = {},
): Promise<{ dir: string; config: ServerConfig; server: ServerProcess; port: number }> {
  const dir = tempDir();
  const config: ServerConfig = { path: path.join(dir, 'channel'), listen: [{ port: 0, host: '127.0.0.1' }] };
  const server = new ServerProcess(config, options);
  const ready = await server.next('ready');
  return { dir, config, server, port: ready.addresses![0]!.port };
}

/** The first frame the server sends on `fd`: what it told the hostile peer before closing. */
async function nextFrame(fd: number): Promise<Frame> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const message = native.receiveMessage(fd, MAX_FRAME_SIZE);
    if (message !== null) {
      assert.ok(message.data.length > 0, 'the server closed without a word');
      return decodeFrame(message.data, message.fds);
    }
    if (Date.now() > deadline) throw new Error('no frame from the server');
    await sleep(10);
  }
}

/** Waits until the server holds `fds` fds again: every channel it opened is closed. */
async function settled(pid: number, fds: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (openFds(pid) > fds) {
    if (Date.now() > deadline) throw new Error(`server ${pid} still holds ${openFds(pid)} fds, ${fds} before`);
    await sleep(20);
  }
}

test('a flood of channel connections: fds stay within the cap, warnings are summed up, a real successor then takes over', {
  timeout: 120_000,
}, async () => {
  const { dir, config, server, port } = await fresh();
  const baseline = openFds(server.pid);
  const held: number[] = [];
  let peak = baseline;
  // Held open and never read: without the cap the server keeps one fd per connection.
  const deadline = performance.now() + 60_000;
  while (held.length < 3000) {
    try {
      held.push(native.unixConnect(config.path));
    } catch (error) {
      assert.equal((error as { code?: string }).code, 'EAGAIN', String(error)); // backlog full: let the server accept
      if (performance.now() > deadline) throw new Error(`the server stopped accepting channel connections after ${held.length}`);
      await sleep(1);
    }
    if (held.length % 100 === 0) peak = Math.max(peak, openFds(server.pid));
  }
  peak = Math.max(peak, openFds(server.pid));
  // One more than the cap: the connection the server has just accepted and is about to close.
  assert.ok(peak <= baseline + MAX_OPEN_CHANNELS + 1, `the server went from ${baseline} to ${peak} fds`);

  for (const fd of held) native.close(fd);
  await settled(server.pid, baseline);

  const successor = new ServerProcess({ ...config, mode: 'successor' });
  const ready = await successor.next('ready');
  assert.equal(ready.successor, true);
  assert.equal(await server.exited, 0);
  await probeEcho(port, '127.0.0.1');

  // The old process let go of its channel at the handover, which sends out what was held back:
  // just before its exit, so every line is in only once its output is read to the end.
  await within(server.closed, "the old process's output to end");
  const dropped = server.pending('warning').filter((w) => w.code === 'ERR_TAKEOVER_BUSY');
  assert.ok(dropped.length < 3000 / 10, `${dropped.length} warnings for 3000 connections`);
  const summaries = dropped.filter((w) =>
    /^\d+ more like this in the last 1000 ms, the last: 16 takeover channel connections are open: closed a new one from pid \d+ \(uid 0\) at once$/.test(
      w.message!,
    ),
  );
  assert.ok(summaries.length >= 1, JSON.stringify(dropped));
  successor.kill('SIGTERM');
  await successor.exited;
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Connects as a hostile peer, does `act`, and returns the ABORT the server answered with and its warning. */
async function hostile(
  act: (fd: number, channelPath: string) => void,
  options: { shellPrefix?: string } = {},
): Promise<{ abort: Frame; warning: { code?: string; message?: string } }> {
  const { dir, config, server, port } = await fresh(options);
  const fd = native.unixConnect(config.path);
  act(fd, config.path);
  const abort = await nextFrame(fd);
  native.close(fd);
  const warning = await server.next('warning');
  await probeEcho(port, '127.0.0.1'); // still serving
  server.kill('SIGTERM');
  await server.exited;
  fs.rmSync(dir, { recursive: true, force: true });
  return { abort, warning };
}

test('a bad frame before HELLO: ABORT ERR_TAKEOVER_PROTOCOL, and a warning that says so', { timeout: 60_000 }, async () => {
  const { abort, warning } = await hostile((fd) => native.sendMessage(fd, Buffer.from('GET / HTTP/1.1\r\n\r\n'), []));
  assert.deepEqual(abort, { type: 'abort', code: 'ERR_TAKEOVER_PROTOCOL', message: 'bad frame magic', listening: false });
  assert.equal(warning.code, 'ERR_TAKEOVER_PROTOCOL');
  assert.match(warning.message!, /^takeover channel from pid \d+ \(uid 0\), before HELLO: bad frame magic$/);
});

test('a valid frame other than HELLO first is reported too', { timeout: 60_000 }, async () => {
  const { abort, warning } = await hostile((fd) => native.sendMessage(fd, encode.commit().data, []));
  assert.equal(abort.type === 'abort' && abort.code, 'ERR_TAKEOVER_PROTOCOL');
  assert.equal(warning.code, 'ERR_TAKEOVER_PROTOCOL');
  assert.match(warning.message!, /^takeover channel from pid \d+ \(uid 0\): a commit frame before HELLO$/);
});

test('a frame over 64 KiB: ABORT ERR_TAKEOVER_PROTOCOL, not a silent close', { timeout: 60_000 }, async () => {
  const { abort, warning } = await hostile((fd) => native.sendMessage(fd, Buffer.alloc(MAX_FRAME_SIZE + 1), []));
  assert.equal(abort.type === 'abort' && abort.code, 'ERR_TAKEOVER_PROTOCOL');
  assert.equal(warning.code, 'ERR_TAKEOVER_PROTOCOL');
  assert.match(warning.message!, /a channel frame larger than the protocol allows \(65536 bytes\)$/);
});

test('more fds than the receiver can hold: ABORT ERR_TAKEOVER_FD_LIMIT', { timeout: 60_000 }, async () => {
  const { abort, warning } = await hostile(
    (fd) => {
      const fds = Array.from({ length: 200 }, () => native.dup(fd));
      native.sendMessage(fd, encode.hello(process.pid).data, fds);
      for (const f of fds) native.close(f);
    },
    { shellPrefix: 'ulimit -n 150' },
  );
  assert.equal(abort.type === 'abort' && abort.code, 'ERR_TAKEOVER_FD_LIMIT');
  assert.equal(warning.code, 'ERR_TAKEOVER_FD_LIMIT');
  assert.match(warning.message!, /before HELLO: file descriptors were lost in transit \(MSG_CTRUNC\)/);
});

/** A zero-length SOCK_SEQPACKET message, which the addon refuses to send: Python's socket module does. */
function sendZeroLengthThenClose(socketPath: string): ReturnType<typeof spawnSync> {
  const script = [
    'import socket, sys',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)',
    's.connect(sys.argv[1])',
    's.send(b"")',
    's.send(b"after")',
  ].join('\n');
  return spawnSync('python3', ['-c', script, socketPath], { encoding: 'utf8', timeout: 20_000 });
}

test('native: a zero-length message is ERR_EMPTY_MESSAGE, not EOF; EOF still reads as EOF', () => {
  const dir = tempDir();
  const listenPath = path.join(dir, 'l');
  const listener = native.unixListen(listenPath, 'seqpacket', 4);
  const run = sendZeroLengthThenClose(listenPath);
  assert.equal(run.status, 0, String(run.stderr));
  const fd = native.accept(listener);
  assert.throws(() => native.receiveMessage(fd, 100), { code: 'ERR_EMPTY_MESSAGE', closedFds: 0 });
  assert.deepEqual(native.receiveMessage(fd, 100), { data: Buffer.from('after'), fds: [] }, 'the messages after it are intact');
  assert.deepEqual(native.receiveMessage(fd, 100), { data: Buffer.alloc(0), fds: [] }, 'then the real EOF');
  for (const f of [fd, listener]) native.close(f);
  fs.rmSync(dir, { recursive: true });
});

test('a zero-length message is not taken as the peer closing: ABORT ERR_TAKEOVER_PROTOCOL', { timeout: 60_000 }, async () => {
  const { dir, config, server, port } = await fresh();
  const baseline = openFds(server.pid);
  // A peer that connects and closes is no fault: no warning for it.
  native.close(native.unixConnect(config.path));
  await settled(server.pid, baseline);
  // Python waits for the answer, so the server reads the message from a peer that is still there.
  const run = spawnSync(
    'python3',
    [
      '-c',
      [
        'import socket, sys',
        's = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)',
        's.connect(sys.argv[1])',
        's.send(b"")',
        'sys.stdout.write(s.recv(65536).hex())',
      ].join('\n'),
      config.path,
    ],
    { encoding: 'utf8', timeout: 20_000 },
  );
  assert.equal(run.status, 0, run.stderr);
  const abort = decodeFrame(Buffer.from(run.stdout, 'hex'), []);
  assert.equal(abort.type === 'abort' && abort.code, 'ERR_TAKEOVER_PROTOCOL');
  const warning = await server.next('warning');
  assert.match(warning.message!, /before HELLO: a zero-length message on the takeover channel$/);
  assert.equal(server.pending('warning').length, 0, 'one warning: the peer that only connected and closed made none');
  await probeEcho(port, '127.0.0.1');
  server.kill('SIGTERM');
  await server.exited;
  fs.rmSync(dir, { recursive: true, force: true });
});

/**
 * Plays the old process: a successor started here connects, says HELLO, and gets WELCOME
 * (announcing one connection) and LISTENERS. `client` is a real connected TCP client.
 */
async function fakePredecessor(
  t: TestContext,
  options: { shellPrefix?: string } = {},
): Promise<{ fd: number; successor: ServerProcess; client: net.Socket }> {
  const dir = tempDir();
  const channelPath = path.join(dir, 'channel');
  const listener = native.unixListen(channelPath, 'seqpacket', 4);
  const tcp = net.createServer();
  tcp.listen(0, '127.0.0.1');
  await once(tcp, 'listening');
  const client = net.connect((tcp.address() as net.AddressInfo).port, '127.0.0.1');
  await once(client, 'connect');
  const channelListener = native.unixListen(path.join(dir, 'next'), 'seqpacket', 4);
  let fd = -1;
  t.after(() => {
    for (const f of [fd, listener, channelListener]) if (f >= 0) native.close(f);
    client.destroy();
    tcp.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const successor = new ServerProcess({ path: channelPath, mode: 'successor', listen: [{ port: 0, host: '127.0.0.1' }] }, options);
  await waitFor(() => {
    fd = native.accept(listener);
    return fd >= 0;
  }, 'the successor to connect');
  assert.equal((await nextFrame(fd)).type, 'hello');
  native.sendMessage(fd, encode.welcome(process.pid, 2, 1).data, []);
  const listeners = encode.listeners([
    { name: 'tcp:test', kind: 'tcp', backlog: 511, fd: serverFd(tcp) },
    { name: 'takeover-channel', kind: 'channel', backlog: 511, fd: channelListener },
  ]);
  native.sendMessage(fd, listeners.data, listeners.fds);
  return { fd, successor, client };
}

test('a fake predecessor sending more connections than WELCOME announced: the successor takes half its fd room at most, then ABORT ERR_TAKEOVER_FD_LIMIT and exits', {
  timeout: 60_000,
}, async (t) => {
  // With 300 fds, half the room left after WELCOME's 1 connection is about 110 connections.
  const { fd, successor, client } = await fakePredecessor(t, { shellPrefix: 'ulimit -n 300' });
  // One fd sent 100 times per frame arrives as 100 fds.
  const batch = (first: number) =>
    encode.conns(Array.from({ length: 100 }, (_, i) => ({ id: first + i, listener: 0, fd: socketFd(client) })));
  for (const first of [1, 101]) {
    const message = batch(first);
    native.sendMessage(fd, message.data, message.fds);
  }
  assert.deepEqual(await nextFrame(fd), { type: 'ack', seq: 0 }, 'the first 100 fit');
  const abort = await nextFrame(fd);
  assert.equal(abort.type === 'abort' && abort.code, 'ERR_TAKEOVER_FD_LIMIT', JSON.stringify(abort));
  const error = await successor.next('error');
  assert.equal(error.code, 'ERR_TAKEOVER_FD_LIMIT');
  assert.equal(await successor.exited, 1);
});

test('a fake predecessor passing a TCP socket still connecting (SYN_SENT) as a connection: ABORT ERR_TAKEOVER_PROTOCOL naming the connection and its state', {
  timeout: 60_000,
}, async (t) => {
  const zooDir = tempDir();
  const zoo = await FdZoo.create(zooDir);
  t.after(async () => {
    await zoo.close();
    fs.rmSync(zooDir, { recursive: true, force: true });
  });
  const { fd, successor } = await fakePredecessor(t);
  const connecting = zoo.kinds['tcp never connected']!();
  const inspection = new native.SocketInspection(1);
  inspection.fds[0] = connecting;
  inspection.inspect(1);
  assert.equal(inspection.tcpState(0), 'SYN_SENT');
  const conns = encode.conns([{ id: 1, listener: 0, fd: connecting }]);
  native.sendMessage(fd, conns.data, conns.fds);
  native.close(connecting);
  assert.deepEqual(await nextFrame(fd), { type: 'ack', seq: 0 });
  // Connections are checked after PREPARE.
  const digest = digestIds([1]);
  native.sendMessage(fd, encode.prepare(digest.connections, digest.idSum, digest.idXor).data, []);
  const abort = await nextFrame(fd);
  assert.equal(abort.type === 'abort' && abort.code, 'ERR_TAKEOVER_PROTOCOL', JSON.stringify(abort));
  const error = await successor.next('error');
  assert.equal(error.code, 'ERR_TAKEOVER_PROTOCOL');
  assert.match(error.message ?? '', /inherited connection 1 is not a tcp connection: its state is SYN_SENT/);
  assert.equal(await successor.exited, 1);
});

/**
 * Plays a successor up to LISTENING against a real old process with no connections: returns the
 * channel fd, the listener fds it was passed, and the old process (`port`: where it served).
 */
async function fakeSuccessorAtListening(
  t: TestContext,
): Promise<{ fd: number; listenerFds: number[]; server: ServerProcess; port: number }> {
  const { dir, server, config, port } = await fresh();
  const fd = native.unixConnect(config.path);
  const listenerFds: number[] = [];
  t.after(() => {
    native.close(fd);
    for (const f of listenerFds) native.close(f);
    server.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  native.sendMessage(fd, encode.hello(process.pid).data, []);
  let acks = 0;
  for (;;) {
    const frame = await nextFrame(fd);
    if (frame.type === 'listeners') listenerFds.push(...frame.listeners.map((l) => l.fd));
    if (frame.type === 'conns') native.sendMessage(fd, encode.ack(acks++).data, []);
    if (frame.type === 'prepare') break;
    assert.ok(frame.type !== 'abort', `the old process aborted: ${JSON.stringify(frame)}`);
  }
  native.sendMessage(fd, encode.commit().data, []);
  for (;;) {
    const frame = await nextFrame(fd);
    if (frame.type === 'listening') break;
    assert.ok(frame.type !== 'abort', `the old process aborted: ${JSON.stringify(frame)}`);
  }
  return { fd, listenerFds, server, port };
}

test('a successor whose ABORT crossed LISTENING (it gave up before reading it, alive): the old process takes the listeners back, no port left without an acceptor', {
  timeout: 60_000,
}, async (t) => {
  const { fd, listenerFds, server, port } = await fakeSuccessorAtListening(t);
  // What a successor that timed out waiting for LISTENING does: closes its copies, says why
  // (not listening), and lingers alive.
  for (const f of listenerFds.splice(0)) native.close(f);
  native.sendMessage(fd, encode.abort('ERR_TAKEOVER_TIMEOUT', 'the predecessor sent no LISTENING within 10000 ms').data, []);
  const rollback = await server.next('rollback');
  assert.equal(rollback.report?.listenersResumed, 1);
  await probeEcho(port, '127.0.0.1');
});

test("a successor's ABORT that claims the listeners before COMMIT (listening: true) changes nothing: the old process rolls back and serves on", {
  timeout: 60_000,
}, async (t) => {
  const { dir, server, config, port } = await fresh();
  const fd = native.unixConnect(config.path);
  t.after(() => {
    native.close(fd);
    server.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  native.sendMessage(fd, encode.hello(process.pid).data, []);
  for (;;) {
    const frame = await nextFrame(fd);
    closeFrameFds(frame);
    if (frame.type === 'prepare') break;
  }
  native.sendMessage(fd, encode.abort('ERR_TAKEOVER_ABORTED', 'hostile', true).data, []);
  const rollback = await server.next('rollback');
  assert.equal(rollback.code, 'ERR_TAKEOVER_ABORTED');
  await probeEcho(port, '127.0.0.1');
});
