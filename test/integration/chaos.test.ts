/**
 * The short part of `npm run chaos` (test/chaos/): a few process faults under load, a few hundred
 * fuzzed frames both ways, 20 chained takeovers. The whole suite, every step and fault repeated,
 * and its table: npm run chaos, docs/RELIABILITY.md.
 */
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cleanup, ServerProcess, tempDir, waitStopped } from '../helpers.js';
import { runFault, type FaultOutcome } from '../chaos/faults.js';
import { loadedClients } from '../chaos/load.js';
import { fuzzServer, fuzzSuccessor } from '../chaos/fuzz.js';
import { soak } from '../chaos/soak.js';

after(cleanup);

function summary(o: FaultOutcome): string {
  const { problems, ...counts } = o.tally;
  return JSON.stringify({ ...o, tally: counts, problems: problems.slice(0, 5) });
}

test('a successor killed as wave 0 reaches it: the old process takes the listeners back, every time (4 runs)', {
  timeout: 120_000,
}, async () => {
  // A killed process closes its fds before it turns into a zombie: an old process that asked
  // in between found it "alive", left the listeners to it, and the port refused every connect.
  for (let run = 0; run < 4; run++) {
    const o = await runFault('kill-successor', 'wave0');
    assert.equal(o.listener, 'old', summary(o));
    assert.equal(o.newConnects.refused, 0, summary(o));
    assert.ok(o.ok, summary(o));
  }
});

test('the load starts only once the server has echoed every client, not when the kernel completed the connects', {
  timeout: 60_000,
}, async () => {
  // A connect completes in the listener's accept queue. A fault case whose clients were still
  // queued at COMMIT saw the successor accept them after LISTENING and lose them when it was
  // killed: counted as the old process's, they were "cut" beyond the waves the successor held.
  const dir = tempDir();
  const server = new ServerProcess({ path: path.join(dir, 'channel'), listen: [{ port: 0, host: '127.0.0.1' }] });
  const port = (await server.next('ready')).addresses![0]!.port;
  process.kill(server.pid, 'SIGSTOP');
  await waitStopped(server.pid);
  const loading = loadedClients(20, port);
  // Bounded: while the server is stopped its accept queue completes the connects, not it.
  await Promise.race([loading, new Promise((resolve) => setTimeout(resolve, 500))]);
  process.kill(server.pid, 'SIGCONT');
  const clients = await loading;
  const unserved = clients.filter((c) => c.received === 0).length;
  for (const c of clients) c.close();
  server.kill('SIGTERM');
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(unserved, 0);
});

test('an old process stopped past the timeout while a wave is acknowledged sends no wave after the ABORT it has not read yet', {
  timeout: 60_000,
}, async () => {
  // The successor acks wave 0, times out waiting for wave 1 and sends ABORT; the old process wakes
  // with both queued. It used to act on the ACK first: froze wave 1, sent it to a successor that
  // had given up, and released it: 100 connections cut.
  const o = await runFault('stop-old', 'wave0');
  assert.equal(o.tally.cut, 0, summary(o));
  assert.equal(o.listener, 'successor', summary(o));
  assert.ok(o.ok, summary(o));
});

test('the old process killed mid-waves: the successor keeps the waves it started and the listener, and exits nothing', {
  timeout: 60_000,
}, async () => {
  const o = await runFault('kill-old', 'wave1');
  assert.equal(o.listener, 'successor', summary(o));
  assert.ok(o.ok, summary(o));
});

test('the old process killed before COMMIT: the successor drops the copies it holds and exits with a code', {
  timeout: 60_000,
}, async () => {
  const o = await runFault('kill-old', 'prepare');
  assert.equal(o.successorEvent, 'error ERR_TAKEOVER_PEER_CLOSED', summary(o));
  assert.equal(o.tally.kept, 0, summary(o));
  assert.ok(o.ok, summary(o));
});

test('300 fuzzed frames against a live server: each refused with a code, the clients unharmed, the fds back', {
  timeout: 60_000,
}, async () => {
  const r = await fuzzServer(300, 9);
  const { problems, ...clients } = r.clients;
  assert.ok(r.ok, JSON.stringify({ ...r, clients, problems: problems.slice(0, 5) }));
});

test('16 successors fed a broken frame by a fake predecessor: each refuses with a code and exits', { timeout: 60_000 }, async () => {
  const r = await fuzzSuccessor(16, 9);
  assert.deepEqual(
    Object.values(r.categories).flatMap((c) => c.failures),
    [],
  );
  assert.equal(r.crashes, 0);
  assert.equal(r.hangs, 0);
});

test('20 chained takeovers of 200 connections under a stream of new ones: nothing lost, no process left, fds flat', {
  timeout: 120_000,
}, async () => {
  const r = await soak(20, 200);
  const { problems, ...tally } = r.tally;
  assert.ok(r.ok, JSON.stringify({ ...r, tally, problems: problems.slice(0, 5) }));
});
