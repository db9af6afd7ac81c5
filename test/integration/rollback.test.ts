import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { once } from 'node:events';
import * as path from 'node:path';
import {
  cleanup,
  copyForNobody,
  drainAll,
  NOBODY,
  openClients,
  probeEcho,
  ServerProcess,
  tempDir,
  waitFor,
  waitStopped,
  type ServerConfig,
  type SeqClient,
} from '../helpers.js';
import { WAVES_IN_FLIGHT } from '#lib/predecessor.js';

after(cleanup);

/** Waves of the mid-wave cases: small enough that some of the 300 connections never leave. */
const MID_WAVE_SIZE = 60;
/**
 * A successor stopped with wave 1 in hand has acknowledged wave 0, so the old process has sent
 * waves 0 to WAVES_IN_FLIGHT; the rest never left it.
 */
const MID_WAVE_SENT = (WAVES_IN_FLIGHT + 1) * MID_WAVE_SIZE;
const MID_WAVE_REST = 300 - MID_WAVE_SENT;

interface Running {
  dir: string;
  config: ServerConfig;
  old: ServerProcess;
  address: { port: number; host: string };
  clients: SeqClient[];
}

/** A server with 300 connections, half of them busy (split frames), as every rollback's starting point. */
async function running(extra: Partial<ServerConfig> = {}, dirMode = 0o700, env: Record<string, string> = {}): Promise<Running> {
  const dir = tempDir(dirMode);
  const config: ServerConfig = { path: path.join(dir, 'channel'), listen: [{ port: 0, host: '127.0.0.1' }], ...extra };
  const old = new ServerProcess(config, { env });
  const ready = await old.next('ready');
  const address = { port: ready.addresses![0]!.port, host: '127.0.0.1' };
  const clients = await openClients(300, [address], (i) =>
    i % 2 === 0 ? { framesPerBurst: 3, intervalMs: 40, splitFrames: true } : { framesPerBurst: 0, intervalMs: 0 },
  );
  for (const c of clients) {
    c.burst(1);
    c.start();
  }
  return { dir, config, old, address, clients };
}

/** Once the successor took everything: the old process exits, every client is still served, then all is stopped. */
async function finishOn(successor: ServerProcess, r: Running): Promise<void> {
  assert.equal(await r.old.exited, 0);
  for (const c of r.clients) c.burst(1);
  assert.deepEqual(await drainAll(r.clients), []);
  for (const c of r.clients) c.close();
  successor.kill('SIGTERM');
  await successor.exited;
  fs.rmSync(r.dir, { recursive: true, force: true });
}

/** A partial handover: every client is still served (by the old process or by `last`); the old process exits once they close. */
async function finishSplit(r: Running, last: ServerProcess): Promise<void> {
  for (const c of r.clients) c.burst(2);
  await probeEcho(r.address.port, r.address.host);
  assert.deepEqual(await drainAll(r.clients), []);
  for (const c of r.clients) c.close();
  assert.equal(await r.old.exited, 0, 'the old process exits once its last connection closed');
  last.kill('SIGTERM');
  await last.exited;
  fs.rmSync(r.dir, { recursive: true, force: true });
}

/** After a rollback: the old process still serves every connection and the listener, and can still be taken over. */
async function assertOldServesEverything(r: Running): Promise<void> {
  for (const c of r.clients) c.burst(2);
  await probeEcho(r.address.port, r.address.host);
  assert.deepEqual(await drainAll(r.clients), []);
  const successor = new ServerProcess(r.config);
  const ready = await successor.next('ready');
  assert.equal(ready.stats!.connections, r.clients.length, 'a later takeover still moves every connection');
  await finishOn(successor, r);
}

for (const step of ['hello', 'listeners', 'precopy', 'prepare'] as const) {
  test(`a successor killed at '${step}' leaves the old process serving everything`, { timeout: 60_000 }, async () => {
    const r = await running();
    const doomed = new ServerProcess(r.config, { env: { SOCKET_TAKEOVER_TEST_PAUSE_AT: step } });
    await waitStopped(doomed.pid);
    doomed.kill('SIGKILL');
    const rollback = await r.old.next('rollback');
    assert.equal(rollback.code, 'ERR_TAKEOVER_PEER_CLOSED');
    await assertOldServesEverything(r);
  });
}

for (const step of ['precopy', 'prepare'] as const) {
  test(`a successor that hangs at '${step}' is dropped after the timeout`, { timeout: 60_000 }, async () => {
    const r = await running({ timeoutMs: 1000 });
    const hung = new ServerProcess({ ...r.config, timeoutMs: 60_000 }, { env: { SOCKET_TAKEOVER_TEST_PAUSE_AT: step } });
    await waitStopped(hung.pid);
    const rollback = await r.old.next('rollback');
    assert.equal(rollback.code, 'ERR_TAKEOVER_TIMEOUT');
    hung.kill('SIGKILL');
    await assertOldServesEverything(r);
  });
}

test('a successor whose RLIMIT_NOFILE is too low refuses with ERR_TAKEOVER_FD_LIMIT', { timeout: 60_000 }, async () => {
  const r = await running();
  const small = new ServerProcess(r.config, { shellPrefix: 'ulimit -n 200' });
  const error = await small.next('error');
  assert.equal(error.code, 'ERR_TAKEOVER_FD_LIMIT');
  assert.equal(await small.exited, 1);
  const rollback = await r.old.next('rollback');
  assert.equal(rollback.code, 'ERR_TAKEOVER_ABORTED');
  assert.equal(rollback.reason, 'ERR_TAKEOVER_FD_LIMIT');
  await assertOldServesEverything(r);
});

test('a second successor during a takeover is refused; the first can still fail and roll back', { timeout: 60_000 }, async () => {
  const r = await running();
  const first = new ServerProcess(r.config, { env: { SOCKET_TAKEOVER_TEST_PAUSE_AT: 'prepare' } });
  await waitStopped(first.pid);
  const second = new ServerProcess(r.config);
  const error = await second.next('error');
  assert.equal(error.code, 'ERR_TAKEOVER_ABORTED');
  assert.equal(error.reason, 'ERR_TAKEOVER_BUSY');
  assert.equal((await r.old.next('refused')).code, 'ERR_TAKEOVER_BUSY');
  first.kill('SIGKILL');
  assert.equal((await r.old.next('rollback')).code, 'ERR_TAKEOVER_PEER_CLOSED');
  await assertOldServesEverything(r);
});

test('a successor running as another uid is refused by SO_PEERCRED, even when the socket file lets it connect', {
  timeout: 60_000,
}, async () => {
  const script = copyForNobody().script;
  const r = await running({}, 0o755);
  const asNobody = { script, spawn: { uid: NOBODY, gid: NOBODY } };

  // Mode 0600 keeps it out at connect() already.
  const blocked = new ServerProcess({ ...r.config, mode: 'successor', allowUids: [0, NOBODY] }, asNobody);
  const denied = await blocked.next('error');
  assert.equal(denied.code, 'ERR_TAKEOVER_PATH_UNSAFE');
  assert.match(denied.message!, /is a socket of uid 0, which this user may not connect to \(EACCES\)/);

  // With the file opened up, the uid check is what refuses it.
  fs.chmodSync(r.config.path, 0o666);
  const intruder = new ServerProcess({ ...r.config, mode: 'successor', allowUids: [0, NOBODY] }, asNobody);
  const refused = await intruder.next('error');
  assert.equal(refused.code, 'ERR_TAKEOVER_ABORTED');
  assert.equal(refused.reason, 'ERR_TAKEOVER_PEER_REJECTED');
  assert.equal((await r.old.next('refused')).code, 'ERR_TAKEOVER_PEER_REJECTED');
  assert.equal(r.old.pending('rollback').length, 0, 'a refused peer never starts a takeover');
  fs.chmodSync(r.config.path, 0o600);
  await assertOldServesEverything(r);
  fs.rmSync(path.resolve(script, '../../../..'), { recursive: true, force: true });
});

test('allowUids lets another uid take over', { timeout: 60_000 }, async () => {
  const script = copyForNobody().script;
  const r = await running({ allowUids: [0, NOBODY] }, 0o755);
  fs.chmodSync(r.config.path, 0o666);
  const successor = new ServerProcess({ ...r.config, mode: 'successor' }, { script, spawn: { uid: NOBODY, gid: NOBODY } });
  const ready = await successor.next('ready');
  assert.equal(ready.stats!.connections, 300);
  await finishOn(successor, r);
  fs.rmSync(path.resolve(script, '../../../..'), { recursive: true, force: true });
});

test('a successor whose own new listener fails does not commit: the old process keeps everything', { timeout: 60_000 }, async () => {
  const r = await running();
  const squatter = net.createServer();
  await new Promise<void>((resolve) => squatter.listen(0, '127.0.0.1', resolve));
  const taken = (squatter.address() as net.AddressInfo).port;
  const successor = new ServerProcess({ ...r.config, listen: [...r.config.listen, { port: taken, host: '127.0.0.1' }] });
  const error = await successor.next('error');
  assert.match(error.message!, /EADDRINUSE/);
  const rollback = await r.old.next('rollback');
  assert.equal(rollback.code, 'ERR_TAKEOVER_ABORTED');
  squatter.close();
  await assertOldServesEverything(r);
});

test('the ACK timeout is not postponed by connections opening and closing on the old process', { timeout: 60_000 }, async () => {
  const r = await running({ timeoutMs: 1000 });
  const hung = new ServerProcess({ ...r.config, timeoutMs: 60_000 }, { env: { SOCKET_TAKEOVER_TEST_PAUSE_AT: 'precopy' } });
  await waitStopped(hung.pid);
  // Churn: every probe is a connection added then closed, each a reason for the old process to
  // pump. It goes on, a probe every few ms, until the rollback: a deadline that each pump re-armed
  // (1000 ms) would never expire, and next() would fail.
  let churning = true;
  let probes = 0;
  const churn = (async () => {
    for (; churning; probes++) await probeEcho(r.address.port, r.address.host);
  })();
  const rollback = await r.old.next('rollback', 10_000);
  const probesBefore = probes;
  churning = false;
  await churn;
  assert.equal(rollback.code, 'ERR_TAKEOVER_TIMEOUT');
  assert.ok(probesBefore > 0, 'the churn ran while the old process waited for the ACK');
  hung.kill('SIGKILL');
  await assertOldServesEverything(r);
});

test('a captureState hook that throws leaves those connections with the old process, served to the end', { timeout: 60_000 }, async () => {
  const r = await running({ failCapture: true });
  const successor = new ServerProcess({ ...r.config, failCapture: false });
  const ready = await successor.next('ready');
  assert.equal(ready.stats!.connections, 0);
  assert.equal(ready.stats!.retained, r.clients.length);
  // Waited for, not looked up: the old process's line comes through its own pipe, and the successor's 'ready' can overtake it.
  await r.old.next('warning');
  // The old process serves its retained connections, the successor the new ones.
  await finishSplit(r, successor);
});

test('a successor that stalls mid-waves keeps what it started; the old process finishes the rest, nothing is lost', {
  timeout: 60_000,
}, async () => {
  const r = await running({ timeoutMs: 1000, waveSize: MID_WAVE_SIZE });
  const successor = new ServerProcess({ ...r.config, timeoutMs: 10_000 }, { env: { SOCKET_TAKEOVER_TEST_PAUSE_AT: 'wave1' } });
  await waitStopped(successor.pid);
  // The old process gives up on WAVE_ACK 1 but must not take the listeners back from a live successor.
  const warning = await r.old.next('warning');
  assert.equal(warning.code, 'ERR_TAKEOVER_TIMEOUT');
  const handover = await r.old.next('handover');
  assert.equal(handover.stats!.retained, MID_WAVE_REST, 'the waves after those in flight never left the old process');
  process.kill(successor.pid, 'SIGCONT');
  const ready = await successor.next('ready');
  assert.equal(ready.stats!.connections, MID_WAVE_SENT, 'the successor started every wave it was sent');
  // Waited for: nothing orders the successor's warning before its 'ready'.
  await successor.next('warning');
  assert.equal(successor.pending('warning').length, 0, 'and says the takeover ended early, once');
  for (const c of r.clients) c.burst(2);
  await probeEcho(r.address.port, r.address.host);
  assert.deepEqual(await drainAll(r.clients), []);
  for (const c of r.clients) c.close();
  assert.equal(await r.old.exited, 0, 'the old process exits once its retained connections closed');
  await probeEcho(r.address.port, r.address.host);
  successor.kill('SIGTERM');
  await successor.exited;
  fs.rmSync(r.dir, { recursive: true, force: true });
});

test('an old process stopped in the middle of building a wave, past the timeout of the successor: the successor, which gave up, still starts that wave when it arrives; nothing is lost', {
  timeout: 60_000,
}, async () => {
  // Stopped as it freezes a connection of wave 1, before the wave is sent and released.
  const r = await running({ waveSize: MID_WAVE_SIZE }, 0o700, { SOCKET_TAKEOVER_TEST_PAUSE_AT_FREEZE: String(MID_WAVE_SIZE + 10) });
  const successor = new ServerProcess({ ...r.config, timeoutMs: 1000 });
  await waitStopped(r.old.pid);
  const ready = await successor.next('ready');
  assert.equal(ready.stats!.connections, MID_WAVE_SIZE, 'only wave 0 had arrived when the successor gave up');
  assert.equal((await successor.next('warning')).code, 'ERR_TAKEOVER_TIMEOUT');
  // The old process wakes in the middle of wave 1: it sends and releases it, then reads the ABORT.
  process.kill(r.old.pid, 'SIGCONT');
  const handover = await r.old.next('handover');
  assert.equal(handover.stats!.connections, 2 * MID_WAVE_SIZE, 'waves 0 and 1 left the old process');
  assert.equal(handover.stats!.retained, 300 - 2 * MID_WAVE_SIZE);
  for (const c of r.clients) c.burst(2);
  await probeEcho(r.address.port, r.address.host);
  assert.deepEqual(await drainAll(r.clients), [], 'wave 1 is served by the successor, the rest by the old process');
  for (const c of r.clients) c.close();
  assert.equal(await r.old.exited, 0, 'the old process exits once its retained connections closed');
  assert.equal(successor.pending('warning').length, 0, 'the old process closed the channel: no second warning');
  successor.kill('SIGTERM');
  await successor.exited;
  fs.rmSync(r.dir, { recursive: true, force: true });
});

test('a successor that stalls while a wave bigger than the channel can hold is on its way: the old process gives up, the wave still reaches it, nothing is lost', {
  timeout: 60_000,
}, async () => {
  const dir = tempDir();
  const config: ServerConfig = { path: path.join(dir, 'channel'), listen: [{ port: 0, host: '127.0.0.1' }], timeoutMs: 1000, waveSize: 1 };
  // The old process stops itself at its commit, so that the successor can be stopped before any wave.
  const old = new ServerProcess(config, { env: { SOCKET_TAKEOVER_TEST_PAUSE_AT: 'stop-accepting' } });
  const port = (await old.next('ready')).addresses![0]!.port;
  // Clients that send 16 MiB and read none of the echo yet: past what the kernel buffers on both
  // ends, the old process holds the echo as unsent output, which the connection's wave carries:
  // far more than the channel's socket buffer.
  const size = 16 * 1024 * 1024;
  const clients = await Promise.all(
    [0, 1].map(async (i) => {
      const socket = net.connect(port, '127.0.0.1');
      await once(socket, 'connect');
      socket.pause();
      const sent = Buffer.alloc(size, 97 + i);
      await new Promise<void>((resolve, reject) => socket.write(sent, (error) => (error ? reject(error) : resolve())));
      return { socket, sent };
    }),
  );
  const successor = new ServerProcess({ ...config, timeoutMs: 10_000 });
  await waitStopped(old.pid);
  process.kill(successor.pid, 'SIGSTOP');
  await waitStopped(successor.pid);
  process.kill(old.pid, 'SIGCONT');
  // Wave 0 cannot all go out: the stopped successor reads nothing. The old process gives up on
  // its WAVE_ACK after 1 s; its connection was released already, so the rest of the wave must
  // still reach the successor, however late.
  await Promise.race([old.exited, new Promise((resolve) => setTimeout(resolve, 3000))]);
  process.kill(successor.pid, 'SIGCONT');
  assert.equal((await successor.next('ready')).stats!.connections, 1, 'the successor started wave 0');
  const handover = await old.next('handover');
  assert.equal(handover.stats!.connections, 1, 'wave 0 moved');
  assert.equal(handover.stats!.retained, 1, 'the other connection stayed with the old process');
  for (const { socket, sent } of clients) {
    const received: Buffer[] = [];
    let length = 0;
    socket.on('data', (chunk: Buffer) => {
      received.push(chunk);
      length += chunk.length;
    });
    socket.resume();
    socket.write('ping');
    await waitFor(() => length === size + 4 || socket.destroyed, 'the whole echo and the ping back, or the close', 30_000);
    assert.ok(Buffer.concat(received).equals(Buffer.concat([sent, Buffer.from('ping')])), `got ${length} of ${size + 4} bytes`);
    socket.destroy();
  }
  assert.equal(await old.exited, 0, 'the old process exits once its connection closed');
  successor.kill('SIGTERM');
  await successor.exited;
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a successor killed mid-waves: the old process reports the connections lost with it and those it resumed, and accepts again', {
  timeout: 60_000,
}, async () => {
  const r = await running({ waveSize: MID_WAVE_SIZE });
  const doomed = new ServerProcess(r.config, { env: { SOCKET_TAKEOVER_TEST_PAUSE_AT: 'wave1' } });
  await waitStopped(doomed.pid);
  doomed.kill('SIGKILL');
  const rollback = await r.old.next('rollback');
  assert.equal(rollback.code, 'ERR_TAKEOVER_PEER_CLOSED');
  // Waves 0 to WAVES_IN_FLIGHT were sent (wave 1 and later sat unstarted in the stopped successor): all went with it.
  assert.deepEqual(rollback.report, {
    successorPid: doomed.pid,
    committed: true,
    lost: MID_WAVE_SENT,
    resumed: MID_WAVE_REST,
    listenersResumed: 1,
    listenerHolder: 0,
  });
  await probeEcho(r.address.port, r.address.host);
  for (const c of r.clients) c.burst(2);
  await drainAll(r.clients);
  const served = r.clients.filter((c) => c.problems.length === 0);
  assert.equal(served.length, MID_WAVE_REST, 'exactly the connections never frozen are served on');
  for (const c of r.clients) c.close();
  r.old.kill('SIGTERM');
  await r.old.exited;
  fs.rmSync(r.dir, { recursive: true, force: true });
});

test("the old process's close() during a committed takeover lets it finish and leaves the channel to the successor", {
  timeout: 60_000,
}, async () => {
  const r = await running({ timeoutMs: 1000, waveSize: MID_WAVE_SIZE });
  const successor = new ServerProcess({ ...r.config, timeoutMs: 10_000 }, { env: { SOCKET_TAKEOVER_TEST_PAUSE_AT: 'wave1' } });
  await waitStopped(successor.pid);
  r.old.kill('SIGTERM');
  const closed = await r.old.next('closed');
  assert.equal(r.old.pending('handover').length, 1, 'close() waited for the takeover to end');
  assert.equal(closed.channelExists, true, 'the channel path now belongs to the successor');
  assert.equal(await r.old.exited, 0);
  process.kill(successor.pid, 'SIGCONT');
  const ready = await successor.next('ready');
  assert.equal(ready.stats!.connections, MID_WAVE_SENT);
  // The successor owns the listener and the channel: new clients and a further takeover work.
  await probeEcho(r.address.port, r.address.host);
  const next = new ServerProcess(r.config);
  assert.equal((await next.next('ready')).stats!.connections, MID_WAVE_SENT);
  for (const c of r.clients) c.close();
  next.kill('SIGTERM');
  await next.exited;
  fs.rmSync(r.dir, { recursive: true, force: true });
});

/** The old process stopped in the middle of wave 1 and its successor gave up waiting: it serves wave 0 and the listeners, and reads on. */
async function givenUpWhileOldStopped(timeoutMs = 1000): Promise<{ r: Running; successor: ServerProcess }> {
  // Stopped as it freezes a connection of wave 1, before the wave is sent and released.
  const r = await running({ waveSize: MID_WAVE_SIZE }, 0o700, { SOCKET_TAKEOVER_TEST_PAUSE_AT_FREEZE: String(MID_WAVE_SIZE + 10) });
  const successor = new ServerProcess({ ...r.config, timeoutMs });
  await waitStopped(r.old.pid);
  assert.equal((await successor.next('ready')).stats!.connections, MID_WAVE_SIZE, 'only wave 0 had arrived when the successor gave up');
  assert.equal((await successor.next('warning')).code, 'ERR_TAKEOVER_TIMEOUT');
  return { r, successor };
}

/** Wakes the old process and waits until it ended its takeover (a handover or a rollback). */
async function wakeOld(r: Running): Promise<void> {
  process.kill(r.old.pid, 'SIGCONT');
  await waitFor(
    () => r.old.pending('handover').length + r.old.pending('rollback').length > 0,
    'the old process to end its takeover',
    20_000,
  );
}

test('a successor that gave up and still reads the last waves of its stopped predecessor refuses to be taken over (ERR_TAKEOVER_BUSY); once the predecessor closed the channel it can be', {
  timeout: 60_000,
}, async () => {
  const { r, successor } = await givenUpWhileOldStopped();
  const refused = new ServerProcess(r.config);
  const error = await refused.next('error');
  assert.equal(error.code, 'ERR_TAKEOVER_ABORTED');
  assert.equal(error.reason, 'ERR_TAKEOVER_BUSY');
  assert.match(error.message!, /still reading the last waves/);
  assert.equal((await successor.next('refused')).code, 'ERR_TAKEOVER_BUSY');
  await wakeOld(r);
  assert.equal(r.old.pending('handover').length, 1, 'a partial handover: the successor keeps the listeners');
  const third = new ServerProcess(r.config);
  await third.next('ready');
  assert.equal(await successor.exited, 0, 'the successor handed everything over and exited');
  // Wave 1 reached the successor, then the third process; the rest stayed with the old one.
  await finishSplit(r, third);
});

test('an old process stopped past 3 timeouts after LISTENING, whose given-up successor closed the channel, was itself taken over and exited: on waking it does not accept on the listeners again (the third process does)', {
  timeout: 60_000,
}, async () => {
  const { r, successor } = await givenUpWhileOldStopped();
  assert.equal((await successor.next('warning')).code, 'ERR_TAKEOVER_TIMEOUT', 'the successor stopped reading after 3 timeouts');
  const third = new ServerProcess(r.config);
  await third.next('ready');
  assert.equal(await successor.exited, 0, 'the successor handed everything over and exited');
  await wakeOld(r);
  // Its successor is dead, but it had listened, said so in its ABORT, and passed the listeners on:
  // the third process accepts on them. Taking them back would make two processes accept.
  assert.deepEqual(
    r.old.pending('rollback').map((e) => e.report),
    [],
    'the old process took the listeners back while the third process accepts on them',
  );
  assert.equal(r.old.pending('handover').length, 1, 'a partial handover: its successor said it keeps the listeners');
  // Wave 1 could not reach the successor (it had closed the channel): it stays with the old process.
  await finishSplit(r, third);
});

test('a successor killed right after its ABORT past LISTENING (listening: true), while it still read on (it could not have been taken over): the old process, waking, takes the listeners back: the port is not left with no acceptor', {
  timeout: 60_000,
}, async () => {
  // Its 3 timeouts of reading on (9 s) are far from over when the old process wakes.
  const { r, successor } = await givenUpWhileOldStopped(3000);
  // It gave up, said it keeps the listeners, and reads on (refusing any takeover): then it dies,
  // before the old process read its ABORT.
  successor.kill('SIGKILL');
  await successor.exited;
  await wakeOld(r);
  const rollback = r.old.pending('rollback')[0];
  assert.ok(rollback, `a partial handover, though no process has the listeners now: ${JSON.stringify(r.old.pending('handover'))}`);
  assert.equal(rollback.report?.listenersResumed, 1);
  await probeEcho(r.address.port, r.address.host);
  for (const c of r.clients) c.close();
  r.old.kill('SIGTERM');
  await r.old.exited;
  fs.rmSync(r.dir, { recursive: true, force: true });
});
