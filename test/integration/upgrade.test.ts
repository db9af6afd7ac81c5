/**
 * `takeover.upgrade()`: the library starts the successor itself (the same program, the same
 * arguments) and reports how it went.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import * as net from 'node:net';
import * as path from 'node:path';
import { cleanup, distDir, killAtCleanup, ServerProcess, tempDir, waitFor, waitStopped } from '../helpers.js';

after(cleanup);

const script = path.join(distDir, 'test', 'fixtures', 'upgrade-app.js');

/** The fixture takes its channel path as its only argument, which ServerProcess passes as JSON. */
function start(env: NodeJS.ProcessEnv = {}) {
  const channel = path.join(tempDir(), 'channel');
  return new ServerProcess(channel as unknown as object, { script, env: { ...env, UPGRADE_TEST_SUCCESSOR: '0' } });
}

async function echo(socket: net.Socket, text: string): Promise<void> {
  socket.write(text);
  let got = '';
  while (got.length < text.length) got += ((await once(socket, 'data')) as [Buffer])[0].toString();
  assert.equal(got, text);
}

test('upgrade() starts this program again, which takes over; it resolves with the stats and the old process is done', {
  timeout: 30_000,
}, async () => {
  const server = start();
  const ready = await server.next('ready');
  assert.equal(ready.state, 'serving');
  const client = net.connect(ready.address!.port, '127.0.0.1');
  await echo(client, 'before');
  server.proc.kill('SIGUSR2');
  const spawned = (await server.next('spawned')) as { child?: number };
  killAtCleanup(spawned.child!);
  const upgraded = await server.next('upgraded');
  assert.equal(upgraded.stats!.connections, 1);
  assert.equal((upgraded.stats as unknown as { successorPid: number }).successorPid, spawned.child);
  await server.next('exit');
  assert.equal(await server.exited, 0);
  await echo(client, 'after, served by the successor');
  client.destroy();
  process.kill(spawned.child!, 'SIGKILL');
});

for (const [fail, code] of [
  ['before-start', 'ERR_TAKEOVER_SUCCESSOR_FAILED'],
  ['before-ready', 'ERR_TAKEOVER_PEER_CLOSED'],
] as const) {
  test(`a successor that exits ${fail.replace('-', ' ')} makes upgrade() reject with ${code}; the old process serves on`, {
    timeout: 30_000,
  }, async () => {
    const server = start({ UPGRADE_TEST_FAIL: fail });
    const ready = await server.next('ready');
    const client = net.connect(ready.address!.port, '127.0.0.1');
    await echo(client, 'before');
    server.proc.kill('SIGUSR2');
    const failed = await server.next('upgrade-failed');
    assert.equal(failed.code, code);
    assert.equal(failed.state, 'serving');
    await echo(client, 'still served by the old process');
    // The next upgrade is not refused as busy.
    server.proc.kill('SIGUSR2');
    assert.equal((await server.next('upgrade-failed')).code, code);
    client.destroy();
    server.kill();
  });
}

test('upgrade() asked for while the process takes over waits until it serves, then upgrades', { timeout: 30_000 }, async () => {
  const server = start({ UPGRADE_TEST_PAUSE_AT: 'prepare' });
  const ready = await server.next('ready');
  const client = net.connect(ready.address!.port, '127.0.0.1');
  await echo(client, 'before');
  server.proc.kill('SIGUSR2');
  assert.equal((await server.next('upgrading')).state, 'serving');
  const child = ((await server.next('spawned')) as { child?: number }).child!;
  // Killed at cleanup even if the test fails first: a successor left running (or stopped) holds
  // the test's stdout pipe, and the test file never ends.
  killAtCleanup(child);
  await waitStopped(child);
  // Pending while it is stopped, handled as it goes on: in the middle of its own takeover. The
  // old process is stopped meanwhile: the signal may be handled in another thread of the child,
  // which a loaded machine can leave waiting while the main thread completes the takeover.
  process.kill(server.pid, 'SIGSTOP');
  await waitStopped(server.pid);
  process.kill(child, 'SIGUSR2');
  process.kill(child, 'SIGCONT');
  // Its successors write to the same stdout; the first process exits before they are done.
  const from = (event: string, pid: number) => server.pending(event).find((e) => e.pid === pid);
  await waitFor(() => from('upgrading', child) !== undefined, "the child's 'upgrading'");
  process.kill(server.pid, 'SIGCONT');
  assert.ok(['started', 'readying'].includes(from('upgrading', child)!.state!), from('upgrading', child)!.state);
  assert.equal(await server.exited, 0, 'the first process handed over');
  await waitFor(() => from('spawned', child) !== undefined, 'the child to start its own successor');
  const grandchild = (from('spawned', child) as { child?: number }).child!;
  killAtCleanup(grandchild);
  await waitStopped(grandchild);
  process.kill(grandchild, 'SIGCONT');
  await waitFor(() => from('ready', grandchild) !== undefined, 'the grandchild to take over');
  assert.equal((from('ready', grandchild)!.stats as unknown as { predecessorPid: number }).predecessorPid, child);
  await echo(client, 'after two takeovers');
  client.destroy();
  process.kill(grandchild, 'SIGKILL');
});
