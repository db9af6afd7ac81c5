import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { cleanup, drainAll, openClients, probeEcho, SeqClient, ServerProcess, tempDir, waitFor, type ServerConfig } from '../helpers.js';

after(cleanup);

const LISTEN_BOTH: ServerConfig['listen'] = [
  { port: 0, host: '127.0.0.1' },
  { port: 0, host: '::1' },
];

async function startFresh(config: ServerConfig): Promise<{ server: ServerProcess; addresses: { port: number; host: string }[] }> {
  const server = new ServerProcess(config);
  const ready = await server.next('ready');
  assert.equal(ready.successor, false);
  const addresses = ready.addresses!.map((a) => ({ port: a.port, host: a.address }));
  return { server, addresses };
}

test('600 idle, busy and bulk connections on IPv4 and IPv6 move to a successor with nothing lost; new connects never fail', {
  timeout: 90_000,
}, async () => {
  const dir = tempDir();
  const config: ServerConfig = { path: path.join(dir, 'channel'), listen: LISTEN_BOTH };
  const { server: old, addresses } = await startFresh(config);
  const clients = await openClients(600, addresses, (i) =>
    i % 30 === 0
      ? { framesPerBurst: 1000, intervalMs: 100 }
      : i % 2 === 0
        ? { framesPerBurst: 2, intervalMs: 50, splitFrames: true }
        : { framesPerBurst: 0, intervalMs: 0 },
  );
  for (const client of clients) {
    client.burst(1);
    client.start();
  }

  // Short connections all through the takeover: the listener must never refuse or reset one.
  let probing = true;
  const probeFailures: string[] = [];
  let probes = 0;
  const prober = (async () => {
    while (probing) {
      const target = addresses[probes++ % addresses.length]!;
      await probeEcho(target.port, target.host).catch((error: Error) => probeFailures.push(error.message));
    }
  })();

  const successor = new ServerProcess(config);
  const ready = await successor.next('ready');
  const handover = await old.next('handover');
  await old.next('exit');
  assert.equal(await old.exited, 0, 'the old process exits cleanly once it has nothing left');
  probing = false;
  await prober;

  assert.equal(ready.successor, true);
  assert.deepEqual(
    ready.addresses!.map((a) => a.port),
    addresses.map((a) => a.port),
    'the successor serves the same ports',
  );
  assert.ok(ready.stats!.connections >= 600, `moved ${ready.stats!.connections} connections`);
  assert.equal(handover.stats!.connections, ready.stats!.connections);
  assert.ok(ready.stats!.waves >= 3, 'several waves');

  // Idle clients speak only now, to the successor.
  for (const client of clients) client.burst(3);
  const problems = await drainAll(clients);
  assert.deepEqual(problems, []);
  assert.deepEqual(probeFailures, []);
  assert.ok(probes > 0);
  for (const client of clients) client.close();
  successor.kill('SIGTERM');
  await successor.exited;
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a half-received frame and the pending output of a client that stopped reading survive a takeover', { timeout: 60_000 }, async () => {
  const dir = tempDir();
  const config: ServerConfig = { path: path.join(dir, 'channel'), listen: [{ port: 0, host: '127.0.0.1' }] };
  const { server: old, addresses } = await startFresh(config);
  const [{ port, host }] = addresses as [{ port: number; host: string }];

  // Frame 0 and half of frame 1 in one write: once frame 0 is echoed, the half is the server's state.
  const half = new SeqClient(port, host, { framesPerBurst: 0, intervalMs: 0 });
  await half.connected();
  half.socket.write(Buffer.from([0, 0, 0, 0, 0, 0]));
  half.sent = 2;
  await waitFor(() => half.received >= 1, 'the echo of frame 0');

  // 32 MiB echoed to a client that does not read: more than both kernels' buffers hold.
  const stalled = new SeqClient(port, host, { framesPerBurst: 0, intervalMs: 0 });
  await stalled.connected();
  stalled.pauseReading();
  const frames = 8 * 1024 * 1024;
  await new Promise<void>((resolve) => {
    const data = Buffer.allocUnsafe(frames * 4);
    for (let i = 0; i < frames; i++) data.writeUInt32BE(i, i * 4);
    stalled.sent = frames;
    stalled.socket.write(data, () => resolve());
  });

  const successor = new ServerProcess(config);
  const ready = await successor.next('ready');
  await old.next('exit');
  assert.ok(ready.stats!.stateBytes >= 2, `state bytes moved: ${ready.stats!.stateBytes}`);
  assert.ok(ready.stats!.bytesOut > 0, `pending output moved: ${ready.stats!.bytesOut}`);

  half.socket.write(Buffer.from([0, 1]));
  stalled.resumeReading();
  assert.deepEqual(await drainAll([half, stalled]), []);
  assert.equal(stalled.received, frames);
  half.close();
  stalled.close();
  successor.kill('SIGTERM');
  await successor.exited;
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a Unix stream listener and its connections are handed over; the socket file stays', { timeout: 30_000 }, async () => {
  const dir = tempDir();
  const socketPath = path.join(dir, 'app.sock');
  const config: ServerConfig = { path: path.join(dir, 'channel'), listen: [{ path: socketPath }] };
  const old = new ServerProcess(config);
  await old.next('ready');
  const clients: net.Socket[] = [];
  const echoes: Buffer[][] = [];
  for (let i = 0; i < 5; i++) {
    const socket = net.connect(socketPath);
    const got: Buffer[] = [];
    socket.on('data', (d: Buffer) => got.push(d));
    await new Promise((r) => socket.once('connect', r));
    socket.write(Buffer.from([0, 0, 0, i]));
    clients.push(socket);
    echoes.push(got);
  }
  const successor = new ServerProcess(config);
  const ready = await successor.next('ready');
  await old.exited;
  assert.equal(ready.stats!.connections, 5);
  assert.ok(fs.statSync(socketPath).isSocket(), 'the socket file outlives the old process');
  for (const [i, socket] of clients.entries()) socket.write(Buffer.from([0, 0, 1, i]));
  for (const [i, got] of echoes.entries()) {
    await waitFor(() => Buffer.concat(got).length >= 8, `both echoes on Unix connection ${i}`);
    assert.deepEqual(Buffer.concat(got), Buffer.from([0, 0, 0, i, 0, 0, 1, i]));
  }
  // New connections reach the successor through the same file.
  const fresh = net.connect(socketPath);
  await new Promise((r) => fresh.once('connect', r));
  fresh.write(Buffer.from([1, 2, 3, 4]));
  const [echo] = (await new Promise((r) => fresh.once('data', (d) => r([d])))) as Buffer[];
  assert.deepEqual(echo, Buffer.from([1, 2, 3, 4]));
  for (const socket of [...clients, fresh]) socket.destroy();
  successor.kill('SIGTERM');
  await successor.exited;
  fs.rmSync(dir, { recursive: true, force: true });
});
