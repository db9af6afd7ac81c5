/**
 * What the old process's application sees of a connection that moved, with both ends of a real
 * takeover in this one process (fd passing works within a process too): the writes it made
 * before the freeze succeed, the socket says 'moved' instead of 'close', and a write after the
 * move is reported, never silently dropped. And what the new process's sockets inherit.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { Takeover, type TakeoverError } from '#lib/index.js';
import { SocketInspection } from '#lib/native.js';
import { socketFd } from '#lib/sockets.js';
import { tempDir, within } from '../helpers.js';

async function pair(options: { server?: () => net.Server } = {}) {
  const channel = path.join(tempDir(), 'channel');
  const make = options.server ?? (() => net.createServer());
  const old = await Takeover.start({ path: channel, mode: 'fresh' });
  const oldServer = make();
  await old.listen(oldServer, { port: 0, host: '127.0.0.1', name: 'app' });
  await old.ready();
  const port = (oldServer.address() as net.AddressInfo).port;
  const takeOver = async () => {
    const successor = await Takeover.start({ path: channel, mode: 'successor' });
    const newServer = make();
    const adopted = once(newServer, 'connection') as Promise<[net.Socket]>;
    void successor.listen(newServer, { name: 'app' });
    const stats = await successor.ready();
    return { successor, newServer, stats: stats!, adopted: adopted.then(([socket]) => socket) };
  };
  /** A client, and the old server's socket for it. */
  const connect = async () => {
    const connection = once(oldServer, 'connection') as Promise<[net.Socket]>;
    const client = net.connect(port, '127.0.0.1');
    const [accepted] = await connection;
    return { client, accepted };
  };
  return { old, oldServer, port, channel, takeOver, connect };
}

/** Whether the socket's fd has TCP_NODELAY, as the kernel says. */
function hasNoDelay(socket: net.Socket): boolean {
  const inspection = new SocketInspection(1);
  inspection.fds[0] = socketFd(socket);
  inspection.inspect(1);
  return inspection.noDelay(0);
}

test('writes made before the freeze succeed in the old process and reach the client through the successor; the socket emits moved, not close', {
  timeout: 30_000,
}, async () => {
  const { old, oldServer, port, takeOver } = await pair();
  const accepted = once(oldServer, 'connection') as Promise<[net.Socket]>;
  const client = net.connect(port, '127.0.0.1');
  client.pause(); // a client that does not read: the old process's output backs up
  const [socket] = await accepted;
  const chunk = Buffer.alloc(64 * 1024, 7);
  const results: (Error | null | undefined)[] = [];
  for (let i = 0; i < 128; i++) socket.write(chunk, (error) => results.push(error));
  const events: string[] = [];
  for (const event of ['close', 'end', 'error', 'moved']) socket.on(event, () => events.push(event));

  const { successor, newServer, stats } = await takeOver();
  assert.equal(stats.connections, 1);
  assert.ok(stats.bytesOut > 0, 'output was pending at the freeze');
  let received = 0;
  client.on('data', (d: Buffer) => (received += d.length));
  client.resume();
  while (received < 128 * chunk.length) await once(client, 'data');
  assert.equal(received, 128 * chunk.length);
  await new Promise((r) => setImmediate(r));
  assert.equal(results.length, 128);
  assert.deepEqual(
    results.filter((e) => e),
    [],
    'no write callback failed',
  );
  assert.deepEqual(events, ['moved']);
  client.destroy();
  await successor.close();
  newServer.close();
  await old.done();
});

test('a write to a moved connection is reported (ERR_TAKEOVER_CONNECTION_MOVED, with the socket) and fails its callback', {
  timeout: 30_000,
}, async () => {
  const { old, takeOver, connect } = await pair();
  const { client, accepted } = await connect();
  const warnings: TakeoverError[] = [];
  old.on('warning', (error) => warnings.push(error));
  const { successor, newServer } = await takeOver();
  const failed = await new Promise<Error | null | undefined>((resolve) => accepted.write('late', resolve));
  assert.equal((failed as TakeoverError).code, 'ERR_TAKEOVER_CONNECTION_MOVED');
  accepted.end();
  assert.deepEqual(
    warnings.map((w) => w.code),
    ['ERR_TAKEOVER_CONNECTION_MOVED', 'ERR_TAKEOVER_CONNECTION_MOVED'],
  );
  assert.equal(warnings[0]!.socket, accepted);
  client.destroy();
  await successor.close();
  newServer.close();
});

test("a write or end() from a 'freeze' or 'release' listener is reported like one after the move, never dropped with a successful callback", {
  timeout: 30_000,
}, async () => {
  const { old, oldServer, port, takeOver } = await pair();
  const accepted = once(oldServer, 'connection') as Promise<[net.Socket]>;
  const client = net.connect(port, '127.0.0.1');
  client.pause(); // output backs up: the Writable buffers what the listeners write
  const [socket] = await accepted;
  const chunk = Buffer.alloc(64 * 1024, 7);
  for (let i = 0; i < 64; i++) socket.write(chunk);
  const warnings: TakeoverError[] = [];
  old.on('warning', (error) => warnings.push(error));
  const written = new Promise<Error | null | undefined>((resolve) => old.on('freeze', (s) => s.write('Z', resolve)));
  old.on('release', (s) => s.end());
  const events: string[] = [];
  for (const event of ['close', 'end', 'error', 'finish', 'moved']) socket.on(event, () => events.push(event));

  const { successor, newServer } = await takeOver();
  assert.equal(((await within(written, 'the write callback')) as TakeoverError | undefined)?.code, 'ERR_TAKEOVER_CONNECTION_MOVED');
  assert.deepEqual(
    warnings.map((w) => w.code),
    ['ERR_TAKEOVER_CONNECTION_MOVED', 'ERR_TAKEOVER_CONNECTION_MOVED'],
  );
  assert.ok(warnings.every((w) => w.socket === socket));
  let received = 0;
  client.on('data', (d: Buffer) => (received += d.length));
  client.resume();
  while (received < 64 * chunk.length) await once(client, 'data');
  assert.equal(received, 64 * chunk.length);
  assert.deepEqual(events, ['moved']);
  client.destroy();
  await successor.close();
  newServer.close();
  await old.done();
});

test('adopted sockets get their server accept options: allowHalfOpen, highWaterMark, noDelay, pauseOnConnect', {
  timeout: 30_000,
}, async () => {
  const make = () => net.createServer({ allowHalfOpen: true, highWaterMark: 1234, noDelay: true, pauseOnConnect: true });
  const { old, port, takeOver } = await pair({ server: make });
  const client = net.connect(port, '127.0.0.1');
  await once(client, 'connect');
  const { successor, newServer, adopted } = await takeOver();
  const socket = await adopted;
  assert.equal(socket.allowHalfOpen, true);
  assert.equal(socket.readableHighWaterMark, 1234);
  assert.equal(socket.writableHighWaterMark, 1234);
  assert.equal(socket.isPaused(), true, 'pauseOnConnect: not reading until the app resumes');
  // The fd came with TCP_NODELAY (no setsockopt for it here), and the socket knows it has it.
  assert.equal(hasNoDelay(socket), true);
  socket.setNoDelay(false);
  assert.equal(hasNoDelay(socket), false, "the app's setNoDelay(false) reaches the fd");
  client.write('x');
  socket.resume();
  const [data] = (await once(socket, 'data')) as [Buffer];
  assert.equal(data.toString(), 'x');
  client.destroy();
  await successor.close();
  newServer.close();
  await old.done();
});

test('an idle keep-alive connection keeps the rest of its keepAliveTimeout, not a fresh one', { timeout: 30_000 }, async () => {
  const make = () => {
    const server = http.createServer((_req, res) => res.end('ok'));
    // Long enough that the takeover after the 1 s wait below finds it still open on a loaded machine.
    server.keepAliveTimeout = 3000;
    return server;
  };
  const { port, takeOver } = await pair({ server: make });
  // A raw client: Node's agent would close its idle socket itself, from the Keep-Alive hint.
  const client = net.connect(port, '127.0.0.1');
  client.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await once(client, 'data');
  await new Promise((r) => setTimeout(r, 1000));
  const { successor, newServer, adopted: first } = await takeOver();
  const adopted = await first;
  // At least 1,000 of its 3,000 ms had passed in the old process: what is left is the timer.
  assert.ok(adopted.timeout! > 0 && adopted.timeout! <= 2000, `idle timer of ${adopted.timeout} ms`);
  await once(client, 'end');
  await successor.close();
  newServer.close();
});

test('options: unknown or misspelled keys and out-of-range numbers are refused with ERR_TAKEOVER_INVALID_OPTION', () => {
  const code = { code: 'ERR_TAKEOVER_INVALID_OPTION' };
  assert.throws(() => new Takeover({ path: '/tmp/x', timeoutMS: 5 } as never), { ...code, message: /unknown option 'timeoutMS'/ });
  assert.throws(() => new Takeover({ path: '/tmp/x', exitOnHandover: true } as never), code);
  assert.throws(() => new Takeover({ path: '/tmp/x', timeoutMs: 2 ** 31 }), code);
  assert.throws(() => new Takeover({ path: '/tmp/x', quiesceTimeoutMs: -1 }), code);
  assert.throws(() => new Takeover({ path: '/tmp/x', mode: 'takeover' as never }), code);
  const takeover = new Takeover({ path: '/tmp/x' });
  assert.equal(takeover.state, 'new');
  assert.throws(() => takeover.busy({} as net.Socket), code);
});

test("an adopted socket's setNoDelay(true) sets TCP_NODELAY even when the old process's application cleared it after the successor wrapped the fd", {
  timeout: 30_000,
}, async () => {
  const { old, takeOver, connect } = await pair();
  const { client, accepted } = await connect();
  accepted.setNoDelay(true);
  // Busy through the pre-copy, in which the successor wraps every connection it was sent; the
  // application then turns Nagle back on, while the connection is still its own, and lets it go.
  const release = old.busy(accepted);
  old.on('defer', (socket: net.Socket) => {
    socket.setNoDelay(false);
    release();
  });
  const { successor, newServer, adopted } = await takeOver();
  const socket = await adopted;
  assert.equal(hasNoDelay(socket), false, 'the fd came as the old application left it');
  socket.setNoDelay(true);
  assert.equal(hasNoDelay(socket), true, "the app's setNoDelay(true) reaches the fd");
  client.destroy();
  await successor.close();
  newServer.close();
  await old.done();
});

test("an application 'connection' listener that throws for an adopted socket: that connection is closed with a warning that says what it threw; the rest of the wave is adopted and served", {
  timeout: 30_000,
}, async () => {
  const { old, port, channel } = await pair();
  const clients = [net.connect(port, '127.0.0.1'), net.connect(port, '127.0.0.1')];
  await Promise.all(clients.map((c) => once(c, 'connect')));
  const successor = await Takeover.start({ path: channel, mode: 'successor' });
  const warnings: TakeoverError[] = [];
  successor.on('warning', (error) => warnings.push(error));
  const newServer = net.createServer();
  let adopted = 0;
  newServer.on('connection', (socket) => {
    if (adopted++ === 0) throw new Error('the app failed on this one');
    socket.on('data', (data) => socket.write(data));
  });
  void successor.listen(newServer, { name: 'app' });
  const stats = await successor.ready();
  assert.equal(stats!.connections, 2);
  assert.equal(warnings.length, 1);
  assert.equal(warnings[0]!.code, 'ERR_TAKEOVER_PROTOCOL');
  assert.match(warnings[0]!.message, /could not be adopted \(the app failed on this one\): it is closed/);
  // One client was closed; the other is echoed by the successor.
  const results = await Promise.all(
    clients.map(
      (c) =>
        new Promise<string>((resolve) => {
          c.once('data', (d) => resolve(d.toString()));
          c.once('close', () => resolve('closed'));
          c.write('hi');
        }),
    ),
  );
  assert.deepEqual(results.sort(), ['closed', 'hi']);
  for (const c of clients) c.destroy();
  await successor.close();
  newServer.close();
  await old.done();
});
