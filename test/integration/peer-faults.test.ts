/**
 * Fixes from the faults-and-hostile-peers review (issue #9) that live in the two sessions: a
 * silent peer does not hold the takeover slot for the whole timeout, ACKs are checked, the listen
 * backlog survives a takeover, and the one holding the slot is named.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import * as net from 'node:net';
import * as path from 'node:path';
import * as native from '#lib/native.js';
import { decodeFrame, encode, MAX_FRAME_SIZE, type Frame } from '#lib/protocol.js';
import { cleanup, probeEcho, ServerProcess, tempDir, type ServerConfig } from '../helpers.js';

after(cleanup);

async function fresh(listen: ServerConfig['listen'] = [{ port: 0, host: '127.0.0.1' }]) {
  const config: ServerConfig = { path: path.join(tempDir(), 'channel'), listen, timeoutMs: 10_000 };
  const server = new ServerProcess(config);
  const ready = await server.next('ready');
  return { config, server, port: ready.addresses![0]!.port };
}

/** Every frame the server sends on `fd` until it closes it (bounded by `timeoutMs`). */
async function framesUntilClosed(fd: number, timeoutMs = 10_000): Promise<Frame[]> {
  const frames: Frame[] = [];
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const message = native.receiveMessage(fd, MAX_FRAME_SIZE);
    if (message !== null) {
      if (message.data.length === 0) return frames;
      frames.push(decodeFrame(message.data, message.fds));
      for (const received of message.fds) native.close(received);
      continue;
    }
    if (performance.now() > deadline) throw new Error(`the server kept the channel open; frames: ${frames.map((f) => f.type)}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('a peer that connects and says nothing is dropped well before timeoutMs; a real successor then takes over', {
  timeout: 60_000,
}, async () => {
  const { config, server, port } = await fresh();
  const squatter = native.unixConnect(config.path);
  const started = performance.now();
  const frames = await framesUntilClosed(squatter, 5_000);
  native.close(squatter);
  assert.deepEqual(
    frames.map((f) => f.type),
    ['abort'],
  );
  assert.equal((frames[0] as Extract<Frame, { type: 'abort' }>).code, 'ERR_TAKEOVER_TIMEOUT');
  // The slot is free long before the 10 s timeout: the real successor is not refused.
  const successor = new ServerProcess({ ...config, mode: 'successor' });
  assert.equal((await successor.next('ready')).successor, true);
  assert.ok(performance.now() - started < 10_000);
  await probeEcho(port, '127.0.0.1');
  successor.kill();
  server.kill();
});

test('an ACK for a batch that was not sent is a protocol error: the server aborts and serves on', { timeout: 60_000 }, async () => {
  const { config, server, port } = await fresh();
  // One connection: one CONNS batch, so one ACK is due and the next ones are not.
  const client = net.connect(port, '127.0.0.1');
  await once(client, 'connect');
  const peer = native.unixConnect(config.path);
  native.sendMessage(peer, encode.hello(process.pid).data, []);
  for (let i = 0; i < 5; i++) native.sendMessage(peer, encode.ack(i).data, []);
  const frames = await framesUntilClosed(peer);
  native.close(peer);
  const abort = frames.find((f) => f.type === 'abort') as Extract<Frame, { type: 'abort' }> | undefined;
  assert.equal(abort?.code, 'ERR_TAKEOVER_PROTOCOL', JSON.stringify(frames.map((f) => f.type)));
  await probeEcho(port, '127.0.0.1');
  client.destroy();
  server.kill();
});

test('the listen backlog survives a takeover (not reset to 511)', { timeout: 60_000 }, async () => {
  const { config, server, port } = await fresh([{ port: 0, host: '127.0.0.1', backlog: 64 }]);
  const backlog = () => {
    const out = spawnSync('ss', ['-Hltn', `sport = :${port}`], { encoding: 'utf8' }).stdout.trim();
    return Number(out.split(/\s+/)[2]);
  };
  assert.equal(backlog(), 64);
  const successor = new ServerProcess({ ...config, mode: 'successor' });
  await successor.next('ready');
  assert.equal(await server.exited, 0);
  assert.equal(backlog(), 64);
  successor.kill();
});
