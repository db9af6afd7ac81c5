/**
 * `listen(server, { port, reusePort: true })`: the addon makes the listener (SO_REUSEADDR and
 * SO_REUSEPORT before bind) and the server adopts it, on every Node line, Node 20 included.
 * Real sockets on 127.0.0.1 and ::1; each Takeover is fresh and closed at the end.
 */
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Takeover, ErrorCodes, type TakeoverError } from '#lib/index.js';
import { ipv6Available, tempDir } from '../helpers.js';

const opened: { takeover: Takeover; server: net.Server }[] = [];
let dir = '';

afterEach(async () => {
  for (const { takeover, server } of opened.splice(0)) {
    await takeover.close();
    server.close();
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
  dir = '';
});

/** A fresh Takeover whose server counts the connections it accepts. */
async function worker(name: string): Promise<{ takeover: Takeover; server: net.Server; accepted: () => number }> {
  dir ||= tempDir();
  const takeover = await Takeover.start({ path: path.join(dir, name), mode: 'fresh' });
  let accepted = 0;
  const server = net.createServer((socket) => {
    accepted++;
    socket.end();
  });
  opened.push({ takeover, server });
  return { takeover, server, accepted: () => accepted };
}

async function connectAll(count: number, port: number, host: string): Promise<void> {
  await Promise.all(
    Array.from({ length: count }, async () => {
      const socket = net.connect({ port, host });
      socket.resume();
      await once(socket, 'close');
    }),
  );
}

test('two listeners share a port through SO_REUSEPORT, and both get connections', async () => {
  const a = await worker('a.sock');
  const b = await worker('b.sock');
  await a.takeover.listen(a.server, { port: 0, host: '127.0.0.1', reusePort: true });
  const { port } = a.server.address() as net.AddressInfo;
  await b.takeover.listen(b.server, { port, host: '127.0.0.1', reusePort: true, backlog: 64 });
  await Promise.all([a.takeover.ready(), b.takeover.ready()]);
  await connectAll(60, port, '127.0.0.1');
  assert.equal(a.accepted() + b.accepted(), 60);
  // The kernel hashes each connection's source port: 60 of them all on one side would be a bug.
  assert.ok(a.accepted() > 0 && b.accepted() > 0, `a ${a.accepted()}, b ${b.accepted()}`);
});

test('IPv6, and the dual-stack wildcard unless ipv6Only', async (t) => {
  if (!(await ipv6Available())) return t.diagnostic('no IPv6 loopback on this machine: the IPv6 cases cannot run');
  const a = await worker('a.sock');
  await a.takeover.listen(a.server, { port: 0, host: '::1', reusePort: true });
  const { port, family } = a.server.address() as net.AddressInfo;
  assert.equal(family, 'IPv6');
  await connectAll(2, port, '::1');
  assert.equal(a.accepted(), 2);

  const dual = await worker('dual.sock');
  await dual.takeover.listen(dual.server, { port: 0, reusePort: true });
  const dualPort = (dual.server.address() as net.AddressInfo).port;
  await connectAll(1, dualPort, '127.0.0.1');
  assert.equal(dual.accepted(), 1);

  const v6 = await worker('v6.sock');
  await v6.takeover.listen(v6.server, { port: 0, host: '::', ipv6Only: true, reusePort: true });
  const v6Port = (v6.server.address() as net.AddressInfo).port;
  const refused = net.connect({ port: v6Port, host: '127.0.0.1' });
  const [error] = (await once(refused, 'error').catch((e: unknown) => [e])) as [NodeJS.ErrnoException];
  assert.equal(error.code, 'ECONNREFUSED');
});

test('a port held without SO_REUSEPORT is ERR_TAKEOVER_SYSTEM with EADDRINUSE as its cause', async () => {
  const plain = net.createServer();
  plain.listen(0, '127.0.0.1');
  await once(plain, 'listening');
  const { port } = plain.address() as net.AddressInfo;
  const a = await worker('a.sock');
  try {
    assert.throws(
      () => a.takeover.listen(a.server, { port, host: '127.0.0.1', reusePort: true }),
      (error: TakeoverError) => {
        assert.equal(error.code, ErrorCodes.SYSTEM);
        assert.equal((error.cause as NodeJS.ErrnoException).code, 'EADDRINUSE');
        assert.match(error.message, /listen \[127\.0\.0\.1\]:\d+ with SO_REUSEPORT: EADDRINUSE/);
        return true;
      },
    );
  } finally {
    plain.close();
  }
});

test('reusePort takes only an IP literal for host, and booleans', async () => {
  const a = await worker('a.sock');
  const invalid = (target: object, message: RegExp) =>
    assert.throws(
      () => a.takeover.listen(a.server, target as { port: number }),
      (error: TakeoverError) => error.code === ErrorCodes.INVALID_OPTION && message.test(error.message),
    );
  invalid({ port: 0, host: 'localhost', reusePort: true }, /must be an IP address with reusePort/);
  invalid({ port: 0, reusePort: 'yes' }, /reusePort must be a boolean/);
  invalid({ port: 0, ipv6Only: 1 }, /ipv6Only must be a boolean/);
});
