/**
 * Guards on the Node internals src/sockets.ts relies on (see its header comment). Each test pins
 * one behaviour on real loopback connections, so a Node upgrade that changes an internal fails
 * here, by name, rather than as lost or duplicated bytes somewhere in a takeover.
 *
 * "The bytes are still in the kernel" is observed with a Poller on a dup of the connection's fd,
 * followed by a full loop turn: a libuv handle still reading that connection has taken them by then.
 */
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { tempDir } from '../helpers.js';
import * as native from '#lib/native.js';
import {
  freezeSocket,
  releaseMoved,
  replayCarried,
  acceptOptions,
  serverFd,
  socketFd,
  startInherited,
  stopAccepting,
  thawSocket,
  trackWrites,
  wrapInherited,
} from '#lib/sockets.js';

/** How a plain net.Server accepts, for sockets wrapped as a successor would wrap them. */
const plain = acceptOptions(net.createServer());
/** A late write in these tests is a bug in the test itself. */
const lateUse = (_socket: net.Socket, what: string) => {
  throw new Error(`${what}() after the release`);
};

const MiB = 1024 * 1024;
/** A broken internal usually shows up as a hang (bytes that never arrive): fail it instead. */
const limit = { timeout: 15_000 };

let baseline = 0;
before(() => {
  baseline = native.openFdCount();
});
// Node itself may close an fd of its own meanwhile (seen on Node 22); more fds than before is a leak.
after(() =>
  assert.ok(native.openFdCount() <= baseline, `fds leaked across the test file: ${native.openFdCount()} open, ${baseline} before`),
);

/** Everything one test opens, closed when it ends, pass or fail, so a failure does not cascade into the leak check. */
class Scope {
  private readonly closers = new Map<object | number, () => void>();

  constructor(t: TestContext) {
    t.after(() => {
      for (const close of [...this.closers.values()].reverse()) close();
      this.closers.clear();
    });
  }

  socket<T extends net.Socket>(socket: T): T {
    // A reset during cleanup must not crash the file; read() and the tests watch 'error' where it matters.
    socket.on('error', () => {});
    this.closers.set(socket, () => socket.destroy());
    return socket;
  }

  server<T extends net.Server>(server: T): T {
    server.on('connection', (socket: net.Socket) => this.socket(socket));
    this.closers.set(server, () => server.close());
    return server;
  }

  /** A raw fd, closed at the end unless {@link handOver} gave it to a Node object. */
  fd(fd: number): number {
    this.closers.set(fd, () => native.close(fd));
    return fd;
  }

  handOver(fd: number): number {
    this.closers.delete(fd);
    return fd;
  }

  /** Resolves once the connection behind `fd` has unread bytes in the kernel, then lets the loop turn once. */
  async kernelHasData(fd: number): Promise<void> {
    const dup = this.fd(native.dup(fd));
    // Exactly once: a second close() on a Poller libuv has already freed is a use-after-free.
    let poller: native.Poller | undefined;
    const stop = () => {
      poller?.close();
      poller = undefined;
    };
    this.closers.set(stop, stop);
    await new Promise<void>((resolve, reject) => {
      poller = native.poll(dup, (status) => {
        stop();
        if (status === 0) resolve();
        else reject(new Error(`poll status ${status}`));
      });
      poller.start(true, false);
    });
    this.closers.delete(stop);
    native.close(this.handOver(dup));
    // One setImmediate from a poll callback runs before the next poll phase: two are needed.
    await new Promise((resolve) => setImmediate(() => setImmediate(resolve)));
  }
}

/** A loopback connection to `server` (a fresh one by default): the server's accepted socket and the client. */
async function connection(scope: Scope, server: net.Server = scope.server(net.createServer())) {
  if (!server.listening) {
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
  }
  const client = scope.socket(net.connect((server.address() as net.AddressInfo).port, '127.0.0.1'));
  const [[accepted]] = await Promise.all([once(server, 'connection'), once(client, 'connect')]);
  return { server, client, accepted: accepted as net.Socket };
}

/** Reads (resuming the socket) until `done` holds for what arrived, then pauses it again. */
function read(socket: net.Socket, done: (got: Buffer) => boolean): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const settle = (error?: Error) => {
      socket.off('data', onData).off('end', onEnd).off('error', settle);
      socket.pause();
      if (error) reject(error);
      else resolve(got);
    };
    const onData = (chunk: Buffer) => {
      got = Buffer.concat([got, chunk]);
      if (done(got)) settle();
    };
    const onEnd = () => (done(got) ? settle() : settle(new Error(`stream ended after ${got.length} bytes`)));
    socket.on('data', onData).on('end', onEnd).on('error', settle);
    socket.resume();
  });
}

const readBytes = (socket: net.Socket, n: number) => read(socket, (got) => got.length >= n);

/** Everything up to EOF. */
function readAll(socket: net.Socket): Promise<Buffer> {
  let ended = false;
  socket.once('end', () => (ended = true));
  return read(socket, () => ended);
}

/**
 * Counts what libuv pushes into a socket's readable buffer. Wraps push() because a 'readable'
 * listener, the public way to see this, would itself change the flowing mode under test.
 */
function watchPushes(socket: net.Socket) {
  const events = new EventEmitter();
  /** `full`: a push returned false, so Node stopped the handle itself (backpressure). */
  const log = { bytes: 0, eof: false, full: false };
  const push = socket.push;
  socket.push = (chunk: Buffer | null, encoding?: BufferEncoding) => {
    if (chunk === null) log.eof = true;
    else log.bytes += chunk.length;
    const more = push.call(socket, chunk, encoding);
    log.full ||= !more;
    events.emit('push');
    return more;
  };
  return {
    log,
    async until(done: () => boolean): Promise<void> {
      while (!done()) await once(events, 'push');
    },
    /** Rejects at the next push. */
    async none(): Promise<never> {
      await once(events, 'push');
      throw new Error(`the handle read ${log.bytes} bytes from the kernel`);
    },
  };
}

/** What a takeover does to one connection: freeze and release it here, wrap a dup of its fd as the successor does. */
function handOff(scope: Scope, socket: net.Socket) {
  const frozen = freezeSocket(socket);
  const successor = scope.socket(wrapInherited(native.dup(socketFd(socket)), 'tcp', plain, false));
  releaseMoved(socket, lateUse);
  return { frozen, successor };
}

test('serverFd and socketFd return the kernel fds, and -1 once closed', limit, async (t) => {
  const scope = new Scope(t);
  const { server, client, accepted } = await connection(scope);
  const fds = [serverFd(server), socketFd(accepted), socketFd(client)];
  for (const fd of fds) assert.ok(fs.fstatSync(fd).isSocket(), `fd ${fd} is not a socket`);
  assert.equal(new Set(fds).size, 3);
  assert.equal(native.socketInfo(fds[0]!).listening, true);
  assert.equal(native.socketInfo(fds[1]!).listening, false);
  assert.equal(socketFd(new net.Socket()), -1);

  accepted.destroy();
  client.destroy();
  server.close();
  assert.deepEqual([serverFd(server), socketFd(accepted), socketFd(client)], [-1, -1, -1]);
});

test('wrapInherited does not read: bytes stay in the kernel until startInherited', limit, async (t) => {
  const scope = new Scope(t);
  const { server, client, accepted } = await connection(scope);
  const { successor } = handOff(scope, accepted);
  const pushes = watchPushes(successor);
  client.write('sent before the start');
  await Promise.race([scope.kernelHasData(socketFd(successor)), pushes.none()]);
  assert.equal(successor.bytesRead, 0);

  const received = new Promise<Buffer>((resolve) => server.once('connection', (s: net.Socket) => resolve(readBytes(s, 21))));
  replayCarried(successor, Buffer.alloc(0), Buffer.alloc(0));
  startInherited(successor, server, () => {});
  assert.equal((await received).toString(), 'sent before the start');
});

for (const kind of ['tcp', 'unix'] as const) {
  test(
    `wrapInherited: ${kind} sockets after the first get Node's own handle class without libuv guessing it, and carry bytes both ways`,
    limit,
    async (t) => {
      const scope = new Scope(t);
      const dir = tempDir();
      t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
      const server = scope.server(net.createServer());
      if (kind === 'unix') server.listen(path.join(dir, 'wrap.sock'));
      else server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      for (let i = 0; i < 3; i++) {
        const client = scope.socket(
          kind === 'unix' ? net.connect(path.join(dir, 'wrap.sock')) : net.connect((server.address() as net.AddressInfo).port, '127.0.0.1'),
        );
        const [[accepted]] = await Promise.all([once(server, 'connection'), once(client, 'connect')]);
        const nodeClass = (accepted as unknown as { _handle: object })._handle.constructor;
        const wrapped = scope.socket(wrapInherited(native.dup(socketFd(accepted as net.Socket)), kind, plain, false));
        assert.equal((wrapped as unknown as { _handle: object })._handle.constructor, nodeClass);
        releaseMoved(accepted as net.Socket, lateUse);
        wrapped.write(`to client ${i}`);
        assert.equal((await readBytes(client, 11)).toString(), `to client ${i}`);
        client.write(`to server ${i}`);
        wrapped.read(0);
        assert.equal((await readBytes(wrapped, 11)).toString(), `to server ${i}`);
      }
    },
  );
}

/** Whether the fd has TCP_NODELAY, as the successor reads it. */
function hasNoDelay(fd: number): boolean {
  const inspection = new native.SocketInspection(1);
  inspection.fds[0] = fd;
  inspection.inspect(1);
  return inspection.noDelay(0);
}

test(
  "wrapInherited: an fd that has TCP_NODELAY costs no setsockopt, not even at the app's setNoDelay(true), and the app's setNoDelay(false) still clears it; one without it gets it when the server wants it",
  limit,
  async (t) => {
    const scope = new Scope(t);
    const withNoDelay = acceptOptions(net.createServer({ noDelay: true }));
    const fast = await connection(scope, scope.server(net.createServer({ noDelay: true })));
    const slow = await connection(scope);
    assert.equal(hasNoDelay(socketFd(fast.accepted)), true);
    assert.equal(hasNoDelay(socketFd(slow.accepted)), false);
    // Every setNoDelay that reaches libuv (a setsockopt), whichever socket makes it.
    const proto = (fast.accepted as unknown as { _handle: object })._handle.constructor.prototype as { setNoDelay(on: boolean): number };
    const original = proto.setNoDelay;
    const calls: boolean[] = [];
    proto.setNoDelay = function (this: unknown, on: boolean) {
      calls.push(on);
      return original.call(this, on);
    };
    t.after(() => {
      proto.setNoDelay = original;
    });

    for (const options of [withNoDelay, plain]) {
      const had = scope.socket(wrapInherited(native.dup(socketFd(fast.accepted)), 'tcp', options, true));
      had.setNoDelay(true);
      assert.deepEqual(calls, [], `noDelay ${options.noDelay}: no setsockopt`);
      had.setNoDelay(false);
      assert.deepEqual(calls.splice(0), [false]);
      assert.equal(hasNoDelay(socketFd(had)), false, 'the app cleared TCP_NODELAY on the fd');
      had.setNoDelay(true);
      assert.deepEqual(calls.splice(0), [true]);
    }

    const lacked = scope.socket(wrapInherited(native.dup(socketFd(slow.accepted)), 'tcp', withNoDelay, false));
    assert.deepEqual(calls.splice(0), [true]);
    assert.equal(hasNoDelay(socketFd(lacked)), true);
    lacked.setNoDelay(true);
    assert.deepEqual(calls, [], 'set once');
  },
);

test(
  'freezeSocket takes every chunk a paused app left buffered, not just the first (Node 26 read() returns one chunk)',
  limit,
  async (t) => {
    const scope = new Scope(t);
    const { client, accepted } = await connection(scope);
    const pushes = watchPushes(accepted);
    accepted.pause();
    for (const part of ['first;', 'second;', 'third']) {
      const before = pushes.log.bytes;
      client.write(part);
      await pushes.until(() => pushes.log.bytes === before + part.length);
    }
    const frozen = freezeSocket(accepted);
    assert.equal(frozen.fate, 'moved');
    assert.equal(frozen.fate === 'moved' && frozen.input.toString(), 'first;second;third');
    assert.equal(accepted.readableLength, 0);
    releaseMoved(accepted, lateUse);
  },
);

// Below the high-water mark the handle is still reading when the app pauses; above it Node has
// stopped the handle, and read() inside the freeze would start it again through _read().
for (const size of [13, 256 * 1024]) {
  test(`freezeSocket takes what a paused app left buffered (${size} bytes sent), emits none of it, stops the handle`, limit, async (t) => {
    const scope = new Scope(t);
    const { client, accepted } = await connection(scope);
    const pushes = watchPushes(accepted);
    const seen: Buffer[] = [];
    accepted.on('data', (chunk: Buffer) => seen.push(chunk));
    client.write('consumed');
    await pushes.until(() => pushes.log.bytes === 8);
    accepted.pause();
    const sent = randomBytes(size);
    client.write(sent);
    await pushes.until(() => pushes.log.bytes === 8 + size || pushes.log.full);
    const buffered = accepted.readableLength;

    const frozen = freezeSocket(accepted);
    assert.equal(frozen.fate, 'moved');
    if (frozen.fate !== 'moved') return;
    assert.equal(frozen.input.length, buffered);
    assert.equal(frozen.output.length, 0);
    assert.equal(Buffer.concat(seen).toString(), 'consumed');

    client.write('after the freeze');
    await Promise.race([scope.kernelHasData(socketFd(accepted)), pushes.none()]);
    const successor = scope.socket(new net.Socket({ fd: native.dup(socketFd(accepted)) }));
    releaseMoved(accepted, lateUse);
    const rest = await readBytes(successor, size + 16 - frozen.input.length);
    assert.ok(
      Buffer.concat([frozen.input, rest]).equals(Buffer.concat([sent, Buffer.from('after the freeze')])),
      'input ++ kernel bytes differ from what was sent',
    );
    assert.equal(Buffer.concat(seen).toString(), 'consumed');
  });
}

test('freezeSocket under setEncoding: the input is the raw bytes, or the connection is retained', limit, async (t) => {
  const scope = new Scope(t);
  const server = scope.server(net.createServer());
  const cases: [BufferEncoding, number[]][] = [
    ['utf8', [0x41, 0xe2, 0x82]], // '€' cut after two of its three bytes: the decoder holds them
    ['utf8', [0x41, 0xff, 0x42]], // not UTF-8: decoded as U+FFFD
    ['base64', [1, 2, 3, 4]], // the fourth byte waits in the decoder for a full 3-byte group
  ];
  for (const [encoding, bytes] of cases) {
    const { client, accepted } = await connection(scope, server);
    accepted.setEncoding(encoding);
    accepted.pause();
    const pushes = watchPushes(accepted);
    client.write(Buffer.from(bytes));
    await pushes.until(() => pushes.log.bytes === bytes.length);
    const frozen = freezeSocket(accepted);
    if (frozen.fate === 'moved') assert.deepEqual(frozen.input, Buffer.from(bytes), `${encoding} ${bytes}`);
    else assert.equal(frozen.fate, 'retained');
  }
});

/** Ways to leave output pending on a socket whose peer reads nothing; each returns every byte written, in order. */
const pendingOutput: { name: string; write(socket: net.Socket): Buffer }[] = [
  {
    name: 'one huge write, partly taken by the kernel',
    write(socket) {
      const data = randomBytes(16 * MiB);
      socket.write(data);
      return data;
    },
  },
  {
    name: 'writes queued behind the one in flight, strings in several encodings',
    write(socket) {
      const chunks: [Buffer | string, BufferEncoding | undefined][] = [
        [randomBytes(8 * MiB), undefined],
        ['00ff7f80', 'hex'],
        ['AAEC/w==', 'base64'],
        ['ÿé\u00ad', 'latin1'],
        ['ü€\u{1d11e}', 'utf16le'],
        ['ü€ utf8', undefined],
        [randomBytes(1 * MiB), undefined],
      ];
      for (const [chunk, encoding] of chunks) socket.write(chunk, encoding as BufferEncoding);
      return Buffer.concat(chunks.map(([chunk, encoding]) => (Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk, encoding))));
    },
  },
  {
    name: 'a corked batch in flight as one writev, more queued behind it',
    write(socket) {
      const [a, b, c] = [randomBytes(4 * MiB), randomBytes(4 * MiB), randomBytes(MiB)];
      socket.cork();
      socket.write(a);
      socket.write('c0ffee', 'hex');
      socket.write(b);
      socket.uncork();
      socket.write('tail ÿ', 'latin1');
      socket.write(c);
      return Buffer.concat([a, Buffer.from('c0ffee', 'hex'), b, Buffer.from('tail ÿ', 'latin1'), c]);
    },
  },
  {
    name: 'a huge string in flight in a non-default encoding',
    write(socket) {
      const data = randomBytes(12 * MiB);
      socket.write(data.toString('base64'), 'base64');
      socket.write('€', 'utf16le');
      return Buffer.concat([data, Buffer.from('€', 'utf16le')]);
    },
  },
  {
    name: 'corked: nothing handed to libuv yet',
    write(socket) {
      socket.cork();
      socket.write('first ');
      socket.write('c2Vjb25k', 'base64');
      return Buffer.from('first second');
    },
  },
];

for (const scenario of pendingOutput) {
  test(`freezeSocket returns exactly the output the peer has not received: ${scenario.name}`, limit, async (t) => {
    const scope = new Scope(t);
    const { client, accepted } = await connection(scope);
    client.pause();
    trackWrites(accepted);
    const written = scenario.write(accepted);
    const frozen = freezeSocket(accepted);
    releaseMoved(accepted, lateUse);
    assert.equal(frozen.fate, 'moved');
    if (frozen.fate !== 'moved') return;
    assert.ok(frozen.output.length > 0, 'the scenario left no output pending');

    const delivered = await readAll(client);
    assert.equal(delivered.length + frozen.output.length, written.length, `${delivered.length} delivered + ${frozen.output.length} frozen`);
    assert.ok(Buffer.concat([delivered, frozen.output]).equals(written), 'delivered ++ output differs from what was written');
  });
}

test('freezeSocket: retained after EOF was read or end() was called, closed once destroyed', limit, async (t) => {
  const scope = new Scope(t);
  const halfClosed = await connection(scope);
  const pushes = watchPushes(halfClosed.accepted);
  halfClosed.accepted.pause();
  halfClosed.client.end('last words');
  await pushes.until(() => pushes.log.eof);
  assert.equal(halfClosed.accepted.readableEnded, false, "'end' must not have been emitted yet");
  assert.deepEqual(freezeSocket(halfClosed.accepted), { fate: 'retained' });
  // This process finishes a retained connection: the freeze must not have touched it.
  assert.equal((await readAll(halfClosed.accepted)).toString(), 'last words');

  const ending = await connection(scope, halfClosed.server);
  ending.accepted.end();
  assert.deepEqual(freezeSocket(ending.accepted), { fate: 'retained' });

  const destroyed = await connection(scope, halfClosed.server);
  destroyed.accepted.destroy();
  assert.deepEqual(freezeSocket(destroyed.accepted), { fate: 'closed' });
});

test('releaseSocket closes only its own fd: the connection lives on through a dup', limit, async (t) => {
  const scope = new Scope(t);
  const { client, accepted } = await connection(scope);
  const peerSaw: string[] = [];
  client.on('end', () => peerSaw.push('end')).on('error', (e) => peerSaw.push(String(e)));
  freezeSocket(accepted);
  const dup = scope.fd(native.dup(socketFd(accepted)));
  // Unread bytes at close() would make the kernel reset the connection if this were its last fd.
  client.write('ping');
  await scope.kernelHasData(dup);
  releaseMoved(accepted, lateUse);
  assert.equal(accepted.destroyed, true);
  assert.equal(socketFd(accepted), -1);

  const successor = scope.socket(new net.Socket({ fd: scope.handOver(dup) }));
  assert.equal((await readBytes(successor, 4)).toString(), 'ping');
  successor.write('pong');
  assert.equal((await readBytes(client, 4)).toString(), 'pong');
  client.write('ping again');
  assert.equal((await readBytes(successor, 10)).toString(), 'ping again');
  assert.deepEqual(peerSaw, []);
});

test(
  'releaseMoved: the app hears moved and nothing else, keeps its listeners and bytesRead; late writes and ends reach the reporter',
  limit,
  async (t) => {
    const scope = new Scope(t);
    const { server, client, accepted } = await connection(scope);
    const onData = () => {};
    accepted.on('data', onData);
    client.write('abc');
    await readBytes(accepted, 3);
    const heard: string[] = [];
    for (const event of ['close', 'end', 'error', 'finish', 'moved', 'removeListener', 'newListener'])
      accepted.on(event, () => heard.push(event));
    trackWrites(accepted);

    const frozen = freezeSocket(accepted);
    assert.equal(frozen.fate, 'moved');
    assert.deepEqual(accepted.listeners('data'), [onData], 'the freeze hid the data listeners without removing them');
    const dup = scope.fd(native.dup(socketFd(accepted)));
    const reported: [net.Socket, string][] = [];
    releaseMoved(accepted, (socket, what) => {
      reported.push([socket, what]);
      return new Error(`late ${what}`);
    });
    assert.equal(accepted.destroyed, true);
    assert.equal(accepted.bytesRead, 3);
    assert.equal(await new Promise((resolve) => server.getConnections((_error, count) => resolve(count))), 0);

    const failed = await new Promise<Error | null | undefined>((resolve) => accepted.write('late', resolve));
    assert.equal(failed?.message, 'late write');
    accepted.end('last');
    accepted.end();
    accepted.destroy(new Error('the app gives up on it'));
    // A full loop turn: the close callbacks and every tick queued by the release have run.
    await new Promise((resolve) => setImmediate(() => setImmediate(resolve)));
    assert.deepEqual(
      reported.map(([socket, what]) => [socket === accepted, what]),
      [
        [true, 'write'],
        [true, 'write'],
        [true, 'end'],
      ],
    );
    assert.deepEqual(heard, ['moved']);
    native.close(scope.handOver(dup));
  },
);

test(
  'a write and end() made while a socket is frozen are held: a thaw lets them through in order, after the input goes back',
  limit,
  async (t) => {
    const scope = new Scope(t);
    const { client, accepted } = await connection(scope);
    trackWrites(accepted);
    client.write('in');
    await scope.kernelHasData(socketFd(accepted));
    const frozen = freezeSocket(accepted);
    assert.equal(frozen.fate, 'moved');
    const results: (Error | null | undefined)[] = [];
    assert.equal(
      accepted.write('held', (error) => results.push(error)),
      false,
    );
    accepted.end('!');
    thawSocket(accepted, frozen.fate === 'moved' ? frozen.input : Buffer.alloc(0));
    assert.equal((await readBytes(accepted, 2)).toString(), 'in');
    assert.equal((await readAll(client)).toString(), 'held!');
    assert.deepEqual(results, [null]);
  },
);

test('startInherited: output first, input before new bytes, hook before connection, counted by the server', limit, async (t) => {
  const scope = new Scope(t);
  const { client, accepted } = await connection(scope);
  const { successor: socket } = handOff(scope, accepted);
  client.write('NEW');
  await scope.kernelHasData(socketFd(socket));

  const server = scope.server(net.createServer());
  const order: string[] = [];
  let input: Promise<Buffer> | undefined;
  server.on('connection', (s: net.Socket) => {
    order.push(s === socket ? 'connection' : 'another connection');
    s.write('APP');
    input = readBytes(s, 8);
  });
  const peerReceived = readBytes(client, 9);
  replayCarried(socket, Buffer.from('INPUT'), Buffer.from('OUTPUT'));
  startInherited(socket, server, () => order.push('hook'));
  assert.deepEqual(order, ['hook', 'connection']);
  assert.equal((await peerReceived).toString(), 'OUTPUTAPP');
  assert.equal((await input!).toString(), 'INPUTNEW');

  const connections = () => new Promise<number>((resolve, reject) => server.getConnections((e, n) => (e ? reject(e) : resolve(n))));
  assert.equal(await connections(), 1);
  // Set by Node's own accept path; http.Server reads its options through it.
  assert.equal((socket as unknown as { server: net.Server }).server, server);
  socket.destroy();
  await once(socket, 'close');
  assert.equal(await connections(), 0);
});

test('stopAccepting on an http.Server keeps idle keep-alive connections; new connects are not accepted', limit, async (t) => {
  const scope = new Scope(t);
  const server = scope.server(http.createServer((_req, res) => res.end('ok')));
  let accepted = 0;
  server.on('connection', () => accepted++);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const client = scope.socket(net.connect(port, '127.0.0.1'));
  const get = async () => {
    client.write('GET / HTTP/1.1\r\nHost: test\r\n\r\n');
    const response = (await read(client, (got) => got.toString().endsWith('\r\n\r\nok'))).toString();
    assert.match(response, /^HTTP\/1\.1 200 OK\r\n[\s\S]*Connection: keep-alive\r\n/);
  };
  await get();

  const listener = scope.fd(native.dup(serverFd(server)));
  stopAccepting(server);
  assert.equal(serverFd(server), -1);
  await get();

  const late = scope.socket(net.connect(port, '127.0.0.1'));
  await once(late, 'connect');
  await new Promise((resolve) => setImmediate(() => setImmediate(resolve)));
  assert.equal(accepted, 1, 'the server accepted after stopAccepting');
  const other = scope.server(net.createServer());
  other.listen({ fd: scope.handOver(listener) });
  await once(other, 'connection');
});
