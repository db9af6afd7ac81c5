/**
 * http.Server keep-alive connections across real takeovers, with handlers that answer
 * asynchronously: a connection moves only between requests, and nothing a client sent or was
 * promised is lost, answered twice, or answered by the wrong process.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { once } from 'node:events';
import { Takeover } from '#lib/index.js';
import { appFixture, cleanup, ServerProcess, tempDir, waitFor, within } from '../helpers.js';

after(cleanup);

const timeout = 60_000;

interface App {
  config: { path: string; app: string; port: number; host: string; [key: string]: unknown };
  current: ServerProcess;
  port: number;
}

async function startApp(app: string, extra: Record<string, unknown> = {}): Promise<App> {
  const config = { path: path.join(tempDir(), 'channel'), app, port: 0, host: '127.0.0.1', ...extra };
  const current = new ServerProcess(config, { script: appFixture });
  const ready = await current.next('ready');
  // Successors listen on the same name (the target as given), so the port stays 0 in the config.
  return { config, current, port: ready.address!.port };
}

/** Starts a successor with the same configuration; resolves with its stats once it took over. */
async function takeOver(app: App): Promise<NonNullable<Awaited<ReturnType<ServerProcess['next']>>['stats']>> {
  const next = new ServerProcess(app.config, { script: appFixture });
  const ready = await next.next('ready');
  assert.equal(ready.successor, true);
  const old = app.current;
  app.current = next;
  assert.equal(await old.exited, 0, `old process ${old.pid} exits once it has nothing left`);
  // A warning written just before the exit is in only once the output is read to the end.
  await within(old.closed, `the output of old process ${old.pid} to end`);
  assert.deepEqual(old.pending('warning'), [], 'the old process warned');
  return ready.stats!;
}

function get(port: number, agent: http.Agent, urlPath: string): Promise<{ body: string; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ body, reused: req.reusedSocket }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

/** Reads `count` HTTP/1.1 responses (Content-Length or chunked bodies) from a raw socket. */
function readResponses(socket: net.Socket, count: number): Promise<string[]> {
  return new Promise((resolve, reject) => {
    let data = Buffer.alloc(0);
    const bodies: string[] = [];
    const onData = (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      for (;;) {
        const end = data.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = data.subarray(0, end).toString('latin1');
        const length = /content-length: (\d+)/i.exec(head);
        if (!length) return reject(new Error(`response without content-length: ${head}`));
        const total = end + 4 + Number(length[1]);
        if (data.length < total) return;
        bodies.push(data.subarray(end + 4, total).toString());
        data = data.subarray(total);
        if (bodies.length === count) {
          socket.off('data', onData);
          return resolve(bodies);
        }
      }
    };
    socket.on('data', onData);
    socket.once('close', () => reject(new Error(`closed after ${bodies.length} of ${count} responses`)));
  });
}

async function rawClient(port: number): Promise<net.Socket> {
  const socket = net.connect(port, '127.0.0.1');
  await once(socket, 'connect');
  return socket;
}

const pidOf = (body: string) => (JSON.parse(body) as { pid: number }).pid;

// Waves of 3: 10 waves per takeover, pipelined (2 in flight) while handlers still answer.
for (const waveSize of [undefined, 3]) {
  test(`keep-alive clients request in a loop across 5 chained takeovers${waveSize ? `, in waves of ${waveSize}` : ''}, handlers answer after 0-50 ms: none fails, none reconnects`, {
    timeout,
  }, async () => {
    const app = await startApp('http', waveSize ? { waveSize } : {});
    const clients = Array.from({ length: 30 }, () => new http.Agent({ keepAlive: true, maxSockets: 1 }));
    let stop = false;
    const answeredBy = new Set<number>();
    let done = 0;
    const loops = clients.map(async (agent, c) => {
      let fresh = 0;
      for (let i = 0; !stop; i++) {
        const { body, reused } = await get(app.port, agent, `/delay?ms=${(c * 7 + i * 13) % 51}&id=${c}-${i}`);
        assert.deepEqual(JSON.parse(body).id, `${c}-${i}`);
        answeredBy.add(pidOf(body));
        if (!reused) fresh++;
        done++;
      }
      return fresh;
    });
    const pids = [app.current.pid];
    for (let t = 0; t < 5; t++) {
      const before = done;
      await waitFor(
        () => done >= before + 60,
        () => `60 more requests answered before takeover ${t + 1} (${done - before} so far)`,
        20_000,
      );
      const stats = await takeOver(app);
      assert.equal(stats.connections, clients.length, `takeover ${t + 1} moved every connection`);
      if (waveSize) assert.ok(stats.waves >= clients.length / waveSize, `${stats.waves} waves`);
      pids.push(app.current.pid);
    }
    const before = done;
    await waitFor(
      () => done >= before + 60,
      () => `60 more requests answered after the last takeover (${done - before} so far)`,
      20_000,
    );
    stop = true;
    const fresh = await Promise.all(loops);
    assert.deepEqual(
      fresh,
      clients.map(() => 1),
      'each client opened exactly one connection',
    );
    assert.deepEqual([...answeredBy].sort(), [...pids].sort(), 'every process in the chain answered');
    for (const agent of clients) agent.destroy();
    app.current.kill('SIGTERM');
  });
}

test('a request whose headers are split across the takeover is answered once, by the old process', { timeout }, async () => {
  const app = await startApp('http');
  const socket = await rawClient(app.port);
  socket.write('GET /delay?ms=0&id=split HTTP/1.1\r\nHost: x\r\nX-Half: ');
  const successor = new ServerProcess(app.config, { script: appFixture });
  await app.current.next('defer');
  const responses = readResponses(socket, 2);
  socket.write('yes\r\n\r\n');
  const ready = await successor.next('ready');
  assert.equal(ready.stats!.deferred, 1);
  assert.equal(ready.stats!.connections, 1, 'once quiet, the connection moved');
  socket.write('GET /delay?ms=0&id=after HTTP/1.1\r\nHost: x\r\n\r\n');
  const [first, second] = await responses;
  assert.deepEqual(JSON.parse(first!), { pid: app.current.pid, id: 'split' });
  assert.deepEqual(JSON.parse(second!), { pid: successor.pid, id: 'after' });
  assert.equal(await app.current.exited, 0);
  socket.destroy();
  successor.kill('SIGTERM');
});

test('pipelined requests split across the takeover: each answered once, in order', { timeout }, async () => {
  const app = await startApp('http');
  const socket = await rawClient(app.port);
  const responses = readResponses(socket, 3);
  socket.write('GET /delay?ms=100&id=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /delay?ms=0&id=2 HTTP/1.1\r\nHo');
  const successor = new ServerProcess(app.config, { script: appFixture });
  await app.current.next('defer');
  socket.write('st: x\r\n\r\n');
  await successor.next('ready');
  socket.write('GET /delay?ms=0&id=3 HTTP/1.1\r\nHost: x\r\n\r\n');
  const bodies = (await responses).map((b) => JSON.parse(b) as { pid: number; id: string });
  assert.deepEqual(
    bodies.map((b) => b.id),
    ['1', '2', '3'],
  );
  assert.deepEqual(
    bodies.map((b) => b.pid),
    [app.current.pid, app.current.pid, successor.pid],
  );
  socket.destroy();
  successor.kill('SIGTERM');
});

test('a POST body streaming across the takeover arrives whole, once', { timeout }, async () => {
  const app = await startApp('http');
  const socket = await rawClient(app.port);
  const body = Buffer.from(Array.from({ length: 200_000 }, (_, i) => (i * 31) & 0xff));
  let sum = 0;
  for (const b of body) sum = (sum + b) % 65521;
  const responses = readResponses(socket, 2);
  socket.write(`POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n\r\n`);
  socket.write(body.subarray(0, 70_000));
  const successor = new ServerProcess(app.config, { script: appFixture });
  await app.current.next('defer');
  socket.write(body.subarray(70_000));
  await successor.next('ready');
  socket.write('GET /delay?ms=0&id=next HTTP/1.1\r\nHost: x\r\n\r\n');
  const [upload, next] = await responses;
  assert.deepEqual(JSON.parse(upload!), { pid: app.current.pid, bytes: body.length, sum });
  assert.equal(pidOf(next!), successor.pid);
  socket.destroy();
  successor.kill('SIGTERM');
});

test('a 3 s streamed response finishes in the old process; the connection then moves', { timeout }, async () => {
  const app = await startApp('http');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const streamed = new Promise<string>((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port: app.port, path: '/stream?ms=3000&every=100', agent }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => resolve(text));
      })
      .on('error', reject);
  });
  const successor = new ServerProcess(app.config, { script: appFixture });
  await app.current.next('defer');
  const text = await streamed;
  const expected = `${Array.from({ length: 30 }, (_, i) => `${i}\n`).join('')}end ${app.current.pid}\n`;
  assert.equal(text, expected);
  const ready = await successor.next('ready');
  assert.equal(ready.stats!.connections, 1);
  const { body, reused } = await get(app.port, agent, '/delay?ms=0&id=after');
  assert.equal(reused, true);
  assert.equal(pidOf(body), successor.pid);
  agent.destroy();
  successor.kill('SIGTERM');
});

test('a client that half-closes after a takeover, on an allowHalfOpen server, gets its answer', { timeout }, async () => {
  const app = await startApp('net-async');
  const socket = await rawClient(app.port);
  const stats = await takeOver(app);
  assert.equal(stats.connections, 1);
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  socket.end(Buffer.from([0, 0, 0, 42]));
  await once(socket, 'end');
  assert.deepEqual(Buffer.concat(chunks), Buffer.from([0, 0, 0, 42]));
  app.current.kill('SIGTERM');
});

test('a busy connection past quiesceTimeoutMs stays in the old process, which answers and closes it', { timeout }, async () => {
  const app = await startApp('http', { quiesceTimeoutMs: 200 });
  const socket = await rawClient(app.port);
  const response = readResponses(socket, 1);
  // Answered 1.5 s after the takeover deferred it, well past the 200 ms quiet wait: timed from the
  // deferral, not from the request, however long the successor took to start.
  socket.write('GET /delay?afterDefer&ms=1500&id=slow&report HTTP/1.1\r\nHost: x\r\n\r\n');
  await app.current.next('request');
  const successor = new ServerProcess(app.config, { script: appFixture });
  const ready = await successor.next('ready');
  assert.equal(ready.stats!.retained, 1);
  const [body] = await response;
  assert.deepEqual(JSON.parse(body!), { pid: app.current.pid, id: 'slow' });
  await once(socket, 'close');
  assert.equal(await app.current.exited, 0, 'the old process exits once its last connection closed');
  successor.kill('SIGTERM');
});

test('a deferred connection that turns quiet and closes while a wave is in flight is recorded as closed (the old process does not crash)', {
  timeout,
}, async () => {
  // Waves of one: wave 0 defers the busy connection, and the successor is slow to acknowledge it.
  const app = await startApp('http', { waveSize: 1, spinAt: 'wave0', spinMs: 1500 });
  const closing = await rawClient(app.port);
  const idle = await rawClient(app.port);
  const response = readResponses(closing, 1);
  // Answered 200 ms after wave 0 deferred it, well inside the successor's 1.5 s spin, however long the start took.
  closing.write('GET /delay?afterDefer&ms=200&id=last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  const successor = new ServerProcess(app.config, { script: appFixture });
  await app.current.next('defer');
  const [body] = await response;
  assert.deepEqual(JSON.parse(body!), { pid: app.current.pid, id: 'last' });
  const ready = await successor.next('ready');
  assert.equal(ready.stats!.closed + ready.stats!.connections, 2);
  assert.equal(await app.current.exited, 0);
  idle.destroy();
  successor.kill('SIGTERM');
});

test('a successor that stalls past the timeout before acknowledging wave 0 keeps the listeners: never two processes accepting', {
  timeout,
}, async () => {
  const app = await startApp('http', { timeoutMs: 1000, spinAt: 'wave0', spinMs: 2500 });
  const client = await rawClient(app.port);
  const response = readResponses(client, 1);
  const successor = new ServerProcess(app.config, { script: appFixture });
  assert.equal((await app.current.next('warning')).code, 'ERR_TAKEOVER_TIMEOUT');
  // The old process handed over what it had frozen and gave up its listeners for good.
  assert.equal(await app.current.exited, 0);
  await successor.next('ready');
  client.write('GET /delay?ms=0&id=moved HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.equal(pidOf((await response)[0]!), successor.pid);
  const agent = new http.Agent({ keepAlive: false });
  for (let i = 0; i < 10; i++) assert.equal(pidOf((await get(app.port, agent, `/delay?ms=0&id=${i}`)).body), successor.pid);
  client.destroy();
  successor.kill('SIGTERM');
});

test('a successor killed at wave 0: the old process takes its listeners back and serves new connections', { timeout }, async () => {
  const app = await startApp('http');
  const agent = new http.Agent({ keepAlive: false });
  assert.equal(pidOf((await get(app.port, agent, '/delay?ms=0&id=before')).body), app.current.pid);
  const doomed = new ServerProcess({ ...app.config, killAt: 'wave0' }, { script: appFixture });
  assert.equal((await app.current.next('rollback')).code, 'ERR_TAKEOVER_PEER_CLOSED');
  await doomed.exited;
  for (let i = 0; i < 5; i++) assert.equal(pidOf((await get(app.port, agent, `/delay?ms=0&id=${i}`)).body), app.current.pid);
  app.current.kill('SIGTERM');
});

test('an Express app: keep-alive requests keep working across takeovers', { timeout }, async () => {
  const app = await startApp('express');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  assert.equal(pidOf((await get(app.port, agent, '/delay?ms=10&id=a')).body), app.current.pid);
  for (let t = 0; t < 2; t++) {
    await takeOver(app);
    const { body, reused } = await get(app.port, agent, `/delay?ms=10&id=${t}`);
    assert.equal(reused, true);
    assert.equal(pidOf(body), app.current.pid);
  }
  agent.destroy();
  app.current.kill('SIGTERM');
});

// Waves of 1: each connection its own wave, one started per turn of the successor's loop, while
// the replies it owes after 500 ms and the requests of the next round cross them.
for (const waveSize of [undefined, 1]) {
  test(`a net.Server that answers 500 ms after each request, marking it busy: every reply arrives across takeovers${waveSize ? `, in waves of ${waveSize}` : ''}`, {
    timeout,
  }, async () => {
    const app = await startApp('net-async', waveSize ? { waveSize } : {});
    const sockets = await Promise.all(Array.from({ length: 10 }, () => rawClient(app.port)));
    const received = sockets.map(() => [] as number[]);
    sockets.forEach((s, i) =>
      s.on('data', (chunk: Buffer) => {
        for (let at = 0; at + 4 <= chunk.length; at += 4) received[i]!.push(chunk.readUInt32BE(at));
      }),
    );
    let sent = 0;
    const send = () => {
      sent++;
      for (const s of sockets) s.write(Buffer.from([0, 0, 0, sent]));
    };
    for (let t = 0; t < 3; t++) {
      send();
      const successor = takeOver(app);
      await new Promise((r) => setTimeout(r, 100));
      send();
      const stats = await successor;
      if (waveSize) assert.ok(stats.waves >= sockets.length / waveSize, `${stats.waves} waves`);
    }
    await waitFor(
      () => received.every((r) => r.length >= sent),
      () => `every reply of ${sent} (got ${received.map((r) => r.length).join(', ')})`,
      20_000,
    );
    for (const r of received)
      assert.deepEqual(
        r,
        Array.from({ length: sent }, (_, i) => i + 1),
      );
    for (const s of sockets) s.destroy();
    app.current.kill('SIGTERM');
  });
}

test('listen() refuses a TLS server with ERR_TAKEOVER_TLS_UNSUPPORTED', async () => {
  const tls = await import('node:tls');
  const takeover = await Takeover.start({ path: path.join(tempDir(), 'channel'), mode: 'fresh' });
  assert.throws(() => takeover.listen(tls.createServer(), { port: 0 }), { code: 'ERR_TAKEOVER_TLS_UNSUPPORTED' });
  await takeover.close();
});
