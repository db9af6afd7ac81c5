/**
 * WebSockets on `ws` across real takeovers: each moves at a frame boundary, and neither the
 * server's numbered push stream nor the client's echoed messages lose, repeat or reorder a frame.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { once } from 'node:events';
import { WebSocket } from 'ws';
import { appFixture, cleanup, ServerProcess, tempDir, waitFor, within } from '../helpers.js';

after(cleanup);

const timeout = 60_000;

interface Client {
  ws: WebSocket;
  pushes: number[];
  echoes: string[];
  closed: boolean;
}

async function connect(port: number, deflate: boolean): Promise<Client> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: deflate ? { threshold: 0 } : false });
  const client: Client = { ws, pushes: [], echoes: [], closed: false };
  ws.on('message', (data, isBinary) => {
    const text = data.toString();
    if (!isBinary && text.startsWith('echo:')) client.echoes.push(text.slice(5));
    else if (!isBinary) client.pushes.push((JSON.parse(text) as { push: number }).push);
  });
  ws.on('close', () => (client.closed = true));
  await once(ws, 'open');
  return client;
}

// The oldest supported ws (the peer dependency's floor) and the newest, on the server side.
// Waves of 2: 10 waves per takeover, pipelined (2 in flight) while pushes and echoes go on.
for (const [wsModule, deflate, waveSize] of [
  ['ws', false, undefined],
  ['ws', true, undefined],
  ['ws-8.18', false, undefined],
  ['ws-8.18', true, undefined],
  ['ws', false, 2],
] as const) {
  test(`WebSockets (${wsModule === 'ws' ? 'newest ws' : 'ws 8.18.0'}${deflate ? ', permessage-deflate' : ''}${waveSize ? `, waves of ${waveSize}` : ''}) across 5 chained takeovers: numbered pushes and echoes both ways, no gap, no duplicate, no close`, {
    timeout,
  }, async () => {
    // Every message compressed in the thread pool, both ways: at 5 ms a loaded 2-core box can
    // keep a sender busy without a pause, which quiescence cannot wait out (see the README's Limits).
    const everyMs = deflate ? 20 : 5;
    const config = {
      path: path.join(tempDir(), 'channel'),
      app: 'ws',
      port: 0,
      host: '127.0.0.1',
      pushEveryMs: everyMs,
      deflate,
      wsModule,
      waveSize,
    };
    let current = new ServerProcess(config, { script: appFixture });
    const port = (await current.next('ready')).address!.port;
    const clients = await Promise.all(Array.from({ length: 20 }, () => connect(port, deflate)));
    assert.equal(clients[0]!.ws.extensions.includes('permessage-deflate'), deflate);
    let sent = 0;
    const sender = setInterval(() => {
      for (const c of clients) c.ws.send(`m${sent}`);
      sent++;
    }, everyMs);
    for (let t = 0; t < 5; t++) {
      const seen = clients[0]!.pushes.length;
      await waitFor(() => clients[0]!.pushes.length > seen + 10, `10 more pushes before takeover ${t + 1}`, 20_000);
      const next = new ServerProcess(config, { script: appFixture });
      const stats = (await next.next('ready')).stats!;
      assert.equal(stats.connections, clients.length, `takeover ${t + 1} moved every WebSocket`);
      if (waveSize) assert.ok(stats.waves >= clients.length / waveSize, `${stats.waves} waves`);
      assert.equal(await current.exited, 0);
      // A warning written just before the exit is in only once the output is read to the end.
      await within(current.closed, `the output of old process ${current.pid} to end`);
      assert.deepEqual(current.pending('warning'), []);
      current = next;
    }
    clearInterval(sender);
    const pushed = clients[0]!.pushes.length;
    await waitFor(
      () => clients.every((c) => c.echoes.length === sent && c.pushes.length > pushed),
      () => `every echo of ${sent} and a new push on every client (echoes: ${clients.map((c) => c.echoes.length).join(', ')})`,
      20_000,
    );
    for (const c of clients) {
      assert.equal(c.closed, false);
      assert.deepEqual(
        c.echoes,
        Array.from({ length: sent }, (_, i) => `m${i}`),
      );
      assert.deepEqual(
        c.pushes,
        Array.from({ length: c.pushes.length }, (_, i) => i),
      );
      c.ws.terminate();
    }
    current.kill('SIGTERM');
  });
}

test('a fragmented message in flight at the takeover arrives whole, once', { timeout }, async () => {
  const config = { path: path.join(tempDir(), 'channel'), app: 'ws', port: 0, host: '127.0.0.1' };
  const current = new ServerProcess(config, { script: appFixture });
  const port = (await current.next('ready')).address!.port;
  const client = await connect(port, false);
  client.ws.send('first half,', { fin: false });
  const next = new ServerProcess(config, { script: appFixture });
  await current.next('defer');
  client.ws.send(' second half', { fin: true });
  const ready = await next.next('ready');
  assert.equal(ready.stats!.deferred, 1);
  assert.equal(ready.stats!.connections, 1);
  client.ws.send('after');
  await waitFor(() => client.echoes.length === 2, 'both echoes');
  assert.deepEqual(client.echoes, ['first half, second half', 'after']);
  assert.equal(client.closed, false);
  client.ws.terminate();
  next.kill('SIGTERM');
});

test('two WebSocketServers routed by path in the app: each WebSocket comes back to its own server', { timeout }, async () => {
  const config = { path: path.join(tempDir(), 'channel'), app: 'ws-routes', port: 0, host: '127.0.0.1' };
  const current = new ServerProcess(config, { script: appFixture });
  const port = (await current.next('ready')).address!.port;
  const open = async (route: string) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${route}`);
    await once(ws, 'open');
    return ws;
  };
  const ask = async (ws: WebSocket, text: string) => {
    ws.send(text);
    const [data] = (await once(ws, 'message')) as [Buffer];
    return data.toString();
  };
  const a = await open('/a');
  const b = await open('/b');
  assert.deepEqual([await ask(a, 'x'), await ask(b, 'y')], ['/a:x', '/b:y']);
  const next = new ServerProcess(config, { script: appFixture });
  assert.equal((await next.next('ready')).stats!.connections, 2);
  assert.deepEqual([await ask(a, 'x'), await ask(b, 'y')], ['/a:x', '/b:y']);
  a.terminate();
  b.terminate();
  next.kill('SIGTERM');
});
