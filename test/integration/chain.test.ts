import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cleanup, drainAll, openClients, openFds, ServerProcess, tempDir, type ServerConfig } from '../helpers.js';

after(cleanup);

test('20 chained takeovers under load: every old process exits, nothing is lost, fd counts do not grow', {
  timeout: 180_000,
}, async (t) => {
  const dir = tempDir();
  const config: ServerConfig = {
    path: path.join(dir, 'channel'),
    listen: [
      { port: 0, host: '127.0.0.1' },
      { port: 0, host: '::1' },
    ],
  };
  let current = new ServerProcess(config);
  const ready = await current.next('ready');
  const addresses = ready.addresses!.map((a) => ({ port: a.port, host: a.address }));
  const clients = await openClients(120, addresses, (i) =>
    i % 3 === 0 ? { framesPerBurst: 0, intervalMs: 0 } : { framesPerBurst: 4, intervalMs: 30, splitFrames: i % 2 === 0 },
  );
  for (const c of clients) {
    c.burst(1);
    c.start();
  }

  const fdCounts: number[] = [];
  const pids = [current.pid];
  for (let i = 0; i < 20; i++) {
    const next = new ServerProcess(config);
    const stats = (await next.next('ready')).stats!;
    assert.equal(stats.connections, clients.length, `takeover ${i + 1} moved every connection`);
    assert.equal(await current.exited, 0, `old process ${current.pid} exited cleanly`);
    fdCounts.push(openFds(next.pid));
    pids.push(next.pid);
    current = next;
  }
  assert.equal(new Set(pids).size, 21);
  t.diagnostic(`open fds of each successor after its takeover: ${fdCounts.join(', ')}`);
  // The first successors may still be warming up Node's own fds; after that, the count is flat.
  const settled = fdCounts.slice(2);
  assert.ok(Math.max(...settled) - Math.min(...settled) <= 2, `fd counts per successor: ${fdCounts.join(', ')}`);

  for (const c of clients) c.burst(2);
  assert.deepEqual(await drainAll(clients), []);
  for (const c of clients) c.close();
  current.kill('SIGTERM');
  await current.exited;
  fs.rmSync(dir, { recursive: true, force: true });
});
