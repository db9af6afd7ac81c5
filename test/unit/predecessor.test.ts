/**
 * PredecessorSession against a scripted successor: a RawPeer that sends hand-made frames and
 * checks each one it gets, over a real channel pair, with real TCP connections on 127.0.0.1
 * held by a fake host (test/unit/harness.ts). Each test ends with the fd count it predicts.
 */
import { after, before, test, type TestContext } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as native from '#lib/native.js';
import { Channel } from '#lib/channel.js';
import { PredecessorSession, WAVES_IN_FLIGHT } from '#lib/predecessor.js';
import { decodeWave, digestIds, encode, type Frame, type Wave } from '#lib/protocol.js';
import { ErrorCodes, TakeoverError } from '#lib/errors.js';
import type { TakeoverStats } from '#lib/stats.js';
import { serverFd } from '#lib/sockets.js';
import { tempDir, waitFor, within } from '../helpers.js';
import { channelListenerFd, channelPair, type Client, FakePredecessorHost, fdsSettle, OldApp, RawPeer, turns } from './harness.js';

let dir = '';
before(() => {
  dir = tempDir();
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

interface Setup {
  app: OldApp;
  host: FakePredecessorHost;
  peer: RawPeer;
  session: PredecessorSession;
  clients: Client[];
  sockets: net.Socket[];
  ids: number[];
  /** Fds open just before the channel pair existed: the app, its connections, the channel listener. */
  before: number;
  teardown(): Promise<void>;
}

/**
 * An old app with `connections` clients, a fake host and a session on a channel pair whose other
 * end is a RawPeer. If the test fails, whatever it left open is closed after it.
 */
async function setup(t: TestContext, connections: number, options: Partial<FakePredecessorHost['options']> = {}): Promise<Setup> {
  const baseline = native.openFdCount();
  const app = new OldApp();
  await app.listen();
  const channelListener = channelListenerFd(dir);
  const host = new FakePredecessorHost(app, channelListener);
  Object.assign(host.options, options);
  const clients: Client[] = [];
  const sockets: net.Socket[] = [];
  const ids: number[] = [];
  for (let i = 0; i < connections; i++) {
    const { client, socket } = await app.connect();
    clients.push(client);
    sockets.push(socket);
    ids.push(host.add(socket));
  }
  const before = native.openFdCount();
  const [mine, theirs] = channelPair(dir);
  const session = new PredecessorSession(host, new Channel(mine));
  host.session = session;
  const peer = new RawPeer(theirs);
  let tornDown = false;
  t.after(async () => {
    if (tornDown) return;
    session.abort(new TakeoverError(ErrorCodes.ABORTED, 'the test failed'));
    peer.close();
    await app.close();
    native.close(channelListener);
  });
  return {
    app,
    host,
    peer,
    session,
    clients,
    sockets,
    ids,
    before,
    async teardown() {
      tornDown = true;
      peer.close();
      await app.close();
      native.close(channelListener);
      await fdsSettle(baseline, 'everything the test opened is closed');
    },
  };
}

/** HELLO, then WELCOME, LISTENERS and the CONNS batches, each acknowledged, up to PREPARE. */
async function toPrepare(
  s: Setup,
): Promise<{ welcome: Frame; prepare: Extract<Frame, { type: 'prepare' }>; conns: Extract<Frame, { type: 'conns' }>['conns'] }> {
  s.peer.send(encode.hello(999_999));
  const welcome = await s.peer.next('welcome');
  await s.peer.next('listeners');
  const conns: Extract<Frame, { type: 'conns' }>['conns'] = [];
  let acks = 0;
  while (conns.length < s.ids.length) {
    conns.push(...(await s.peer.next('conns')).conns);
    s.peer.send(encode.ack(acks++));
  }
  return { welcome, prepare: await s.peer.next('prepare'), conns };
}

/** Sends HELLO and reads up to the first frame of type `type`. */
async function helloUntil(s: Setup, type: 'conns' | 'prepare'): Promise<void> {
  s.peer.send(encode.hello(1));
  for (;;) {
    const frame = await s.peer.nextAny(`a ${type} frame`);
    if (frame.type === type) return;
    assert.ok(['welcome', 'listeners'].includes(frame.type), `unexpected ${frame.type}`);
  }
}

/** Reads the next wave (one frame or several) and decodes it. */
async function nextWave(peer: RawPeer): Promise<Wave> {
  const chunks: Buffer[] = [];
  for (;;) {
    const frame = await peer.next('wave');
    chunks.push(frame.chunk);
    if (!frame.more) return decodeWave(Buffer.concat(chunks));
  }
}

/** The fates of a wave, compactly: '1:moved', '2:deferred'... */
function fates(wave: Wave): string[] {
  return wave.records.map((r) => `${r.id}:${r.fate}`);
}

/**
 * The peer's copy (from CONNS) is now the connection: it writes, the client reads, and the old
 * process reads nothing. The peer then closes it, and the client's end closes in turn.
 */
async function servedBySuccessor(s: Setup, fd: number, client: Client): Promise<void> {
  const moved = new net.Socket({ fd: s.peer.take(fd) });
  const before = client.received;
  moved.write('from the successor');
  await client.expect(`${before}from the successor`);
  client.write('to the successor');
  const [reply] = (await within(new Promise((r) => moved.once('data', (d) => r([d]))), 'data on the moved socket')) as Buffer[];
  assert.equal(reply!.toString(), 'to the successor');
  moved.destroy();
  await waitFor(() => client.socket.destroyed, 'the client to close after the successor closed the connection');
}

/**
 * The session refused a WAVE_ACK that no wave was owed: ABORT ERR_TAKEOVER_PROTOCOL (and nothing
 * before it), then a partial handover: the live successor may accept, so the listeners stay with it.
 */
async function refusedWithNoWaveInFlight(s: Setup, seq: number): Promise<TakeoverStats> {
  const abort = await s.peer.next('abort');
  assert.equal(abort.code, ErrorCodes.PROTOCOL);
  assert.equal(abort.message, `WAVE_ACK for wave ${seq} while no wave was in flight`);
  const outcome = await within(s.host.outcome, 'the partial handover');
  assert.ok(outcome.kind === 'partial', outcome.kind);
  assert.equal(outcome.error.code, ErrorCodes.PROTOCOL, outcome.error.message);
  assert.equal(s.host.resumed, undefined, 'never resumed: two processes would accept');
  assert.equal(serverFd(s.app.server), -1);
  return outcome.stats;
}

/** The old app still answers on this connection: nothing was stopped for it. */
async function servedByOld(client: Client, text: string): Promise<void> {
  const before = client.received;
  client.write(text);
  await client.expect(`${before}old:${text}`);
}

test('happy path: WELCOME, LISTENERS, CONNS, PREPARE with the digest, COMMIT, LISTENING, a wave, DONE; the successor serves the connections', async (t) => {
  const s = await setup(t, 2, { quiesceTimeoutMs: 777 });
  s.peer.send(encode.hello(999_999));
  assert.deepEqual(await s.peer.next('welcome'), { type: 'welcome', pid: process.pid, listeners: 2, connections: 2 });
  // The kernel's word on who the peer is (SO_PEERCRED), never the pid its HELLO claims.
  assert.deepEqual(s.host.calls, [`hello:${process.pid}`, 'duplicateListeners']);

  const listeners = (await s.peer.next('listeners')).listeners;
  assert.deepEqual(
    listeners.map(({ name, kind }) => `${kind} ${name}`),
    ['tcp tcp:test', 'channel takeover-channel'],
  );
  assert.deepEqual(native.socketInfo(listeners[0]!.fd), { domain: 'inet', type: 'stream', listening: true });
  assert.deepEqual(native.socketInfo(listeners[1]!.fd), { domain: 'unix', type: 'seqpacket', listening: true });
  const conns = (await s.peer.next('conns')).conns;
  assert.deepEqual(
    conns.map((c) => [c.id, c.listener]),
    [
      [1, 0],
      [2, 0],
    ],
  );

  // Bytes the old app has read but not consumed yet travel with the connection.
  s.sockets[0]!.pause();
  s.clients[0]!.write('early');
  await waitFor(() => s.sockets[0]!.readableLength === 5, "'early' buffered in the old process");

  s.peer.send(encode.ack(0));
  const prepare = await s.peer.next('prepare');
  assert.deepEqual(prepare, { type: 'prepare', ...digestIds([1, 2]) });
  await servedByOld(s.clients[1]!, 'still old before the commit');
  assert.ok(!s.host.calls.includes('stopAccepting'), 'nothing stops before COMMIT');

  s.peer.send(encode.commit());
  assert.deepEqual(await s.peer.next('listening'), { type: 'listening', quiesceMs: 777 });
  assert.equal(serverFd(s.app.server), -1, 'the old server stopped accepting at COMMIT');
  const wave = await nextWave(s.peer);
  assert.equal(wave.seq, 0);
  assert.deepEqual(fates(wave), ['1:moved', '2:moved']);
  const [first, second] = wave.records;
  assert.ok(first?.fate === 'moved' && second?.fate === 'moved');
  assert.equal(first.input.toString(), 'early');
  assert.equal(first.adapter, 'net');
  assert.equal(second.input.length, 0);
  assert.deepEqual(s.host.calls.slice(2), ['stopAccepting', 'freeze:1', 'freeze:2', 'release:1', 'release:2']);

  s.peer.send(encode.waveAck(0));
  const done = await s.peer.next('done');
  assert.equal(done.retained, 0);
  await s.peer.next('eof');
  const outcome = await within(s.host.outcome, 'the handover');
  assert.ok(outcome.kind === 'handover');
  assert.equal(outcome.stats.role, 'predecessor');
  assert.equal(outcome.stats.successorPid, process.pid);
  assert.equal(outcome.stats.listeners, 2);
  assert.deepEqual(
    [
      outcome.stats.connections,
      outcome.stats.retained,
      outcome.stats.closed,
      outcome.stats.deferred,
      outcome.stats.waves,
      outcome.stats.bytesIn,
    ],
    [2, 0, 0, 0, 1, 5],
  );
  assert.equal(Math.round(outcome.stats.maxPauseMs * 1000), done.maxPauseUs);

  await servedBySuccessor(s, conns[0]!.fd, s.clients[0]!);

  // The old server's fd, the two released sockets and the client the successor closed are gone,
  // and the session's end of the channel: what is left beyond the test's own fds is what the
  // successor holds.
  await fdsSettle(s.before - 4 + s.peer.heldFds, 'the session closed its listener dups and the channel');
  await s.teardown();
});

test('deltas: connections added and closed during pre-copy, after PREPARE and after COMMIT are all accounted for', async (t) => {
  const s = await setup(t, 2);
  s.peer.send(encode.hello(1));
  await s.peer.next('welcome');
  await s.peer.next('listeners');
  assert.deepEqual(
    (await s.peer.next('conns')).conns.map((c) => c.id),
    [1, 2],
  );
  // Pre-copy: the batch is not acknowledged yet, and the app accepts and loses connections.
  const third = await s.app.connect();
  const id3 = s.host.add(third.socket);
  s.host.close(2);
  assert.deepEqual(
    (await s.peer.next('conns')).conns.map((c) => c.id),
    [id3],
  );
  assert.deepEqual(await s.peer.next('closed'), { type: 'closed', ids: [2] });
  s.peer.send(encode.ack(0));
  s.peer.send(encode.ack(1));
  assert.deepEqual(await s.peer.next('prepare'), { type: 'prepare', ...digestIds([1, id3]) });

  // Prepared: a new connection waits for the commit (the digest is already out), but a closed
  // one is reported at once: the successor's copy would keep it open to its client.
  const fourth = await s.app.connect();
  const id4 = s.host.add(fourth.socket);
  s.host.close(1);
  assert.deepEqual(await s.peer.next('closed'), { type: 'closed', ids: [1] });
  await turns(5);
  assert.deepEqual(s.peer.pending, [], 'no CONNS between PREPARE and COMMIT');
  s.peer.send(encode.commit());
  assert.deepEqual(
    (await s.peer.next('conns')).conns.map((c) => c.id),
    [id4],
  );
  s.peer.send(encode.ack(2));
  await s.peer.next('listening');
  assert.deepEqual(fates(await nextWave(s.peer)), [`${id3}:moved`, `${id4}:moved`]);
  s.peer.send(encode.waveAck(0));
  await s.peer.next('done');
  const outcome = await within(s.host.outcome, 'the handover');
  assert.ok(outcome.kind === 'handover');
  assert.deepEqual([outcome.stats.connections, outcome.stats.closed], [2, 2]);
  await s.teardown();
});

test('the listing HELLO starts is live: a connection accepted before its batch goes out once, one closed before it never', async (t) => {
  const s = await setup(t, 3);
  const late = await s.app.connect();
  s.peer.send(encode.hello(1));
  const welcome = await s.peer.next('welcome');
  assert.equal(welcome.type === 'welcome' && welcome.connections, 3);
  await s.peer.next('listeners');
  // The first batch goes out on a later loop turn than WELCOME: both changes land before it.
  const lateId = s.host.add(late.socket);
  s.host.close(s.ids[1]!);
  const sent: number[] = [];
  let acks = 0;
  for (;;) {
    const frame = await s.peer.nextAny('CONNS or PREPARE');
    if (frame.type === 'prepare') {
      assert.deepEqual(frame, { type: 'prepare', ...digestIds([s.ids[0]!, s.ids[2]!, lateId]) });
      break;
    }
    assert.equal(frame.type, 'conns', `unexpected ${frame.type}`);
    if (frame.type !== 'conns') return;
    sent.push(...frame.conns.map((c) => c.id));
    s.peer.send(encode.ack(acks++));
  }
  assert.deepEqual(
    sent.sort((a, b) => a - b),
    [s.ids[0]!, s.ids[2]!, lateId].sort((a, b) => a - b),
  );
  assert.deepEqual(s.peer.pending, [], 'no CLOSED for a connection that was never sent');
  await s.teardown();
});

test("deferral: a busy connection is 'deferred' once, then moves in the wave its 'maybe quiet' starts", async (t) => {
  const s = await setup(t, 2);
  s.host.readinessOf.set(1, 'busy');
  await toPrepare(s);
  s.peer.send(encode.commit());
  await s.peer.next('listening');
  assert.deepEqual(fates(await nextWave(s.peer)), ['1:deferred', '2:moved']);
  assert.deepEqual(
    s.host.calls.filter((c) => c.startsWith('defer')),
    ['defer:1'],
  );
  s.peer.send(encode.waveAck(0));
  await turns(5);
  await servedByOld(s.clients[0]!, 'busy, still here');

  s.host.readinessOf.set(1, 'quiet');
  s.session.connectionMaybeQuiet(1);
  assert.ok(s.host.calls.includes('freeze:1'), "frozen inside connectionMaybeQuiet(), not on the next retry's timer");
  assert.deepEqual(fates(await nextWave(s.peer)), ['1:moved']);
  s.peer.send(encode.waveAck(1));
  assert.equal((await s.peer.next('done')).retained, 0);
  const outcome = await within(s.host.outcome, 'the handover');
  assert.ok(outcome.kind === 'handover');
  assert.deepEqual([outcome.stats.connections, outcome.stats.deferred, outcome.stats.retained, outcome.stats.waves], [2, 1, 0, 2]);
  assert.deepEqual(
    s.host.calls.filter((c) => c.startsWith('defer')),
    ['defer:1'],
    'deferred once',
  );
  await s.teardown();
});

test("still busy at quiesceTimeoutMs: the connection is 'retained', host.retain() is called, the old process keeps serving it", async (t) => {
  const s = await setup(t, 1, { quiesceTimeoutMs: 50 });
  s.host.readinessOf.set(1, 'busy');
  await toPrepare(s);
  s.peer.send(encode.commit());
  assert.equal((await s.peer.next('listening')).quiesceMs, 50);
  assert.deepEqual(fates(await nextWave(s.peer)), ['1:deferred']);
  s.peer.send(encode.waveAck(0));
  const wave = await nextWave(s.peer);
  assert.deepEqual([wave.seq, ...fates(wave)], [1, '1:retained']);
  assert.deepEqual(
    s.host.calls.filter((c) => /^(retain|freeze|release)/.test(c)),
    ['retain:1'],
  );
  s.peer.send(encode.waveAck(1));
  assert.equal((await s.peer.next('done')).retained, 1);
  const outcome = await within(s.host.outcome, 'the handover');
  assert.ok(outcome.kind === 'handover');
  assert.deepEqual([outcome.stats.connections, outcome.stats.deferred, outcome.stats.retained], [0, 1, 1]);
  await servedByOld(s.clients[0]!, 'retained');
  await s.teardown();
});

test("'never', a failed capture, a connection closed before its wave: retained, retained, closed; one wave each at waveSize 1", async (t) => {
  const s = await setup(t, 4, { waveSize: 1 });
  s.host.readinessOf.set(1, 'never');
  s.host.failCapture.add(2);
  s.host.stateOf.set(3, Buffer.from('app state'));
  await toPrepare(s);
  s.peer.send(encode.commit());
  await s.peer.next('listening');
  assert.deepEqual(fates(await nextWave(s.peer)), ['1:retained']);
  // Before any WAVE_ACK only WAVES_IN_FLIGHT waves are out: not connection 4's.
  s.host.close(4);
  s.peer.send(encode.waveAck(0));
  assert.deepEqual(fates(await nextWave(s.peer)), ['2:retained']);
  s.peer.send(encode.waveAck(1));
  const third = await nextWave(s.peer);
  assert.deepEqual(fates(third), ['3:moved']);
  assert.equal(third.records[0]?.fate === 'moved' && third.records[0].state?.toString(), 'app state');
  s.peer.send(encode.waveAck(2));
  assert.deepEqual(fates(await nextWave(s.peer)), ['4:closed']);
  s.peer.send(encode.waveAck(3));
  assert.equal((await s.peer.next('done')).retained, 2);
  const outcome = await within(s.host.outcome, 'the handover');
  assert.ok(outcome.kind === 'handover');
  const { connections, retained, closed, waves, stateBytes } = outcome.stats;
  assert.deepEqual(
    { connections, retained, closed, waves, stateBytes },
    { connections: 1, retained: 2, closed: 1, waves: 4, stateBytes: 9 },
  );
  assert.deepEqual(
    s.host.calls.filter((c) => c.startsWith('retain')),
    ['retain:1', 'retain:2'],
  );
  await servedByOld(s.clients[0]!, 'never moved');
  await servedByOld(s.clients[1]!, 'capture failed');
  await s.teardown();
});

interface RollbackCase {
  name: string;
  connections?: number;
  options?: Partial<FakePredecessorHost['options']>;
  script(s: Setup): Promise<void>;
  code: string;
  reason?: string;
  started: boolean;
  /** What the successor reads last: the ABORT's code, or only EOF. */
  told: string | 'eof';
}

const rollbacks: RollbackCase[] = [
  {
    name: 'the successor closes before HELLO',
    script: async (s) => s.peer.close(),
    code: ErrorCodes.PEER_CLOSED,
    started: false,
    told: 'closed',
  },
  {
    name: 'no HELLO within timeoutMs',
    options: { timeoutMs: 100 },
    script: async () => {},
    code: ErrorCodes.TIMEOUT,
    started: false,
    told: ErrorCodes.TIMEOUT,
  },
  {
    name: 'a COMMIT before HELLO',
    script: async (s) => s.peer.send(encode.commit()),
    code: ErrorCodes.PROTOCOL,
    started: false,
    told: ErrorCodes.PROTOCOL,
  },
  {
    name: 'an ABORT during pre-copy',
    script: async (s) => {
      await helloUntil(s, 'conns');
      s.peer.send(encode.abort('ERR_TAKEOVER_FD_LIMIT', 'cannot hold them'));
    },
    code: ErrorCodes.ABORTED,
    reason: 'ERR_TAKEOVER_FD_LIMIT',
    started: true,
    told: 'eof',
  },
  {
    name: 'the successor closes during pre-copy',
    script: async (s) => {
      await helloUntil(s, 'conns');
      s.peer.close();
    },
    code: ErrorCodes.PEER_CLOSED,
    started: true,
    told: 'closed',
  },
  {
    name: 'no ACK within timeoutMs',
    options: { timeoutMs: 100 },
    script: async (s) => {
      await helloUntil(s, 'conns');
    },
    code: ErrorCodes.TIMEOUT,
    started: true,
    told: ErrorCodes.TIMEOUT,
  },
  {
    name: 'no COMMIT within timeoutMs',
    options: { timeoutMs: 100 },
    script: async (s) => void (await toPrepare(s)),
    code: ErrorCodes.TIMEOUT,
    started: true,
    told: ErrorCodes.TIMEOUT,
  },
  {
    name: 'a WAVE_ACK before COMMIT',
    script: async (s) => {
      await toPrepare(s);
      s.peer.send(encode.waveAck(0));
    },
    code: ErrorCodes.PROTOCOL,
    started: true,
    told: ErrorCodes.PROTOCOL,
  },
  {
    name: 'a CONNS frame from the successor (its fds are closed)',
    script: async (s) => {
      await toPrepare(s);
      const fds = [native.dup(s.peer.fd), native.dup(s.peer.fd), native.dup(s.peer.fd)];
      s.peer.send(encode.conns(fds.map((fd, i) => ({ id: i, listener: 0, fd }))));
      for (const fd of fds) native.close(fd);
    },
    code: ErrorCodes.PROTOCOL,
    started: true,
    told: ErrorCodes.PROTOCOL,
  },
  {
    name: 'an ACK after PREPARE',
    script: async (s) => {
      await toPrepare(s);
      s.peer.send(encode.ack(1));
    },
    code: ErrorCodes.PROTOCOL,
    started: true,
    told: ErrorCodes.PROTOCOL,
  },
  {
    name: 'a host that cannot duplicate its listeners',
    script: async (s) => {
      s.host.duplicateListeners = () => {
        throw new TakeoverError(ErrorCodes.INVALID_STATE, "server 'tcp:test' is not listening");
      };
      s.peer.send(encode.hello(1));
    },
    code: ErrorCodes.INVALID_STATE,
    started: true,
    told: ErrorCodes.INVALID_STATE,
  },
];

for (const c of rollbacks) {
  test(`rollback before COMMIT: ${c.name} -> ${c.code}; the old process never stopped and keeps no fd of the takeover`, async (t) => {
    const s = await setup(t, c.connections ?? 2, c.options);
    await c.script(s);
    const outcome = await within(s.host.outcome, 'the rollback');
    assert.ok(outcome.kind === 'rollback', outcome.kind);
    assert.equal(outcome.error.code, c.code, outcome.error.message);
    assert.equal(outcome.error.reason, c.reason);
    assert.equal(outcome.started, c.started);
    if (c.told !== 'closed') {
      let last = await s.peer.nextAny();
      while (last.type !== 'eof' && last.type !== 'abort') last = await s.peer.nextAny();
      assert.equal(last.type === 'abort' ? last.code : 'eof', c.told);
    }
    assert.ok(!s.host.calls.includes('stopAccepting') && s.host.resumed === undefined);
    assert.ok(serverFd(s.app.server) >= 0, 'the old server still listens');
    for (const client of s.clients) await servedByOld(client, 'after the rollback');
    s.peer.close();
    await fdsSettle(s.before, 'no listener dup nor channel fd left');
    await s.teardown();
  });
}

test('resume after COMMIT, before LISTENING: the listeners accept again from their dups, nothing was frozen', async (t) => {
  const s = await setup(t, 1);
  await toPrepare(s);
  const late = await s.app.connect();
  s.host.add(late.socket);
  s.peer.send(encode.commit());
  await s.peer.next('conns'); // the last delta; the successor dies before acknowledging it
  s.peer.close();
  const outcome = await within(s.host.outcome, 'the rollback');
  assert.ok(outcome.kind === 'rollback');
  assert.equal(outcome.error.code, ErrorCodes.PEER_CLOSED);
  // The peer closed without an ABORT and its process (this one) lives: it may hold the listeners.
  assert.deepEqual(outcome.report, {
    successorPid: process.pid,
    committed: true,
    lost: 0,
    resumed: 2,
    listenersResumed: 1,
    listenerHolder: process.pid,
  });
  assert.deepEqual(s.host.resumed, ['tcp:test', 'takeover-channel']);
  assert.ok(!s.host.calls.some((c) => c.startsWith('freeze')));
  assert.ok(serverFd(s.app.server) >= 0, 'listening again');
  await fdsSettle(s.before + 2, 'the TCP listener lives on in its dup; the late connection is 2 more fds; no other fd left');
  await servedByOld(s.clients[0]!, 'resumed');
  await servedByOld(late.client, 'resumed too');
  const fresh = await s.app.connect();
  await servedByOld(fresh.client, 'accepted on the resumed listener');
  await s.teardown();
});

test('waves are pipelined: WAVES_IN_FLIGHT go out before any WAVE_ACK and no more, each WAVE_ACK lets one more go, DONE follows the last', async (t) => {
  const total = WAVES_IN_FLIGHT + 2;
  const s = await setup(t, total, { waveSize: 1 });
  await toPrepare(s);
  s.peer.send(encode.commit());
  await s.peer.next('listening');
  for (let seq = 0; seq < WAVES_IN_FLIGHT; seq++) assert.equal((await nextWave(s.peer)).seq, seq);
  await turns(5);
  const frozen = () => s.host.calls.filter((c) => c.startsWith('freeze')).length;
  assert.equal(frozen(), WAVES_IN_FLIGHT, 'the window is full: nothing more is frozen');
  for (let seq = WAVES_IN_FLIGHT; seq < total; seq++) {
    s.peer.send(encode.waveAck(seq - WAVES_IN_FLIGHT));
    assert.deepEqual(fates(await nextWave(s.peer)), [`${seq + 1}:moved`]);
  }
  let ended = false;
  void s.host.outcome.then(() => (ended = true));
  for (let seq = total - WAVES_IN_FLIGHT; seq < total - 1; seq++) s.peer.send(encode.waveAck(seq));
  await turns(5);
  assert.equal(ended, false, 'no DONE while a wave is unacknowledged');
  s.peer.send(encode.waveAck(total - 1));
  assert.equal((await s.peer.next('done')).retained, 0);
  const outcome = await within(s.host.outcome, 'the handover');
  assert.ok(outcome.kind === 'handover');
  assert.deepEqual([outcome.stats.connections, outcome.stats.waves], [total, total]);
  await s.teardown();
});

test('a live successor that aborts after LISTENING, before its first WAVE_ACK, keeps the listeners (it may accept): partial handover; the waves in flight were released, no other wave goes out, the channel closes', async (t) => {
  // One connection more than the waves sent without an acknowledgement.
  const s = await setup(t, WAVES_IN_FLIGHT + 1, { waveSize: 1 });
  await toPrepare(s);
  s.peer.send(encode.commit());
  await s.peer.next('listening');
  const inFlight = Array.from({ length: WAVES_IN_FLIGHT }, (_, i) => i + 1);
  for (const id of inFlight) assert.deepEqual(fates(await nextWave(s.peer)), [`${id}:moved`]);
  s.peer.send(encode.abort('ERR_TAKEOVER_SYSTEM', 'listen failed', true));
  const outcome = await within(s.host.outcome, 'the partial handover');
  assert.ok(outcome.kind === 'partial', outcome.kind);
  assert.equal(outcome.error.reason, 'ERR_TAKEOVER_SYSTEM');
  assert.equal(s.host.resumed, undefined, 'never resumed: two processes would accept');
  assert.deepEqual(
    s.host.calls.filter((c) => c.startsWith('release')),
    inFlight.map((id) => `release:${id}`),
    `connection ${WAVES_IN_FLIGHT + 1} was never frozen: the window was full`,
  );
  await s.peer.next('eof');
  await servedByOld(s.clients[WAVES_IN_FLIGHT]!, 'never frozen, finished here');
  await s.teardown();
});

test('an ABORT that reaches the old process while its next wave waits for its loop turn is read first: that wave is never built, nothing more is released, the channel closes', async (t) => {
  const s = await setup(t, 3, { waveSize: 1 });
  await toPrepare(s);
  s.peer.send(encode.commit());
  await s.peer.next('listening');
  assert.deepEqual(fates(await nextWave(s.peer)), ['1:moved']);
  // Sent as the successor reads wave 0, before the old process's next turn builds wave 1 (the
  // peer reads in the loop's poll phase, the wave is built in the check phase after it).
  s.peer.send(encode.abort(ErrorCodes.TIMEOUT, 'gave up', true));
  const outcome = await within(s.host.outcome, 'the partial handover');
  assert.ok(outcome.kind === 'partial' && outcome.error.reason === ErrorCodes.TIMEOUT, outcome.kind);
  assert.deepEqual(
    s.host.calls.filter((c) => /^(freeze|release)/.test(c)),
    ['freeze:1', 'release:1'],
    'wave 1 was never built',
  );
  await s.peer.next('eof');
  await servedByOld(s.clients[1]!, 'never frozen, finished here');
  await servedByOld(s.clients[2]!, 'never frozen either');
  await s.teardown();
});

test('partial handover: the successor fails after a WAVE_ACK; it keeps the listeners, the old process finishes the rest', async (t) => {
  const s = await setup(t, 3, { waveSize: 1 });
  await toPrepare(s);
  s.peer.send(encode.commit());
  await s.peer.next('listening');
  assert.deepEqual(fates(await nextWave(s.peer)), ['1:moved']);
  s.peer.send(encode.waveAck(0));
  assert.deepEqual(fates(await nextWave(s.peer)), ['2:moved']);
  s.peer.closeChannel();
  const outcome = await within(s.host.outcome, 'the partial handover');
  assert.ok(outcome.kind === 'partial', outcome.kind);
  assert.equal(outcome.error.code, ErrorCodes.PEER_CLOSED);
  assert.deepEqual([outcome.stats.connections, outcome.stats.retained, outcome.stats.waves], [2, 1, 1]);
  assert.equal(s.host.resumed, undefined, 'never resumed: the successor accepts now');
  assert.equal(serverFd(s.app.server), -1);
  await servedByOld(s.clients[2]!, 'finished here');
  await fdsSettle(s.before - 3 + s.peer.heldFds, 'the listener dups and the channel are closed, two sockets released, the server stopped');
  await s.teardown();
});

test('a wave whose send fails (the successor closed as the next wave was frozen) is thawed and served on: only the wave it had is gone', async (t) => {
  const s = await setup(t, 3, { waveSize: 1 });
  // Input the old app has not read yet: frozen into wave 1, it must come back ahead of new input.
  s.sockets[1]!.pause();
  s.clients[1]!.write('early');
  await waitFor(() => s.sockets[1]!.readableLength === 5, "'early' buffered in the old app");
  await toPrepare(s);
  s.peer.send(encode.commit());
  await s.peer.next('listening');
  assert.deepEqual(fates(await nextWave(s.peer)), ['1:moved']);
  // Gone once the old process has frozen wave 1 and before it sends it: the send meets EPIPE. (A
  // peer gone before the old process reads its WAVE_ACK gets no wave at all: the EOF is read first.)
  s.host.afterFreeze = (id) => {
    if (id === 2) s.peer.closeChannel();
  };
  s.peer.send(encode.waveAck(0));
  const outcome = await within(s.host.outcome, 'the partial handover');
  assert.ok(outcome.kind === 'partial', outcome.kind);
  assert.equal(outcome.error.code, ErrorCodes.PEER_CLOSED, outcome.error.message);
  assert.ok(s.host.calls.includes('freeze:2'), 'wave 1 was frozen before its send failed');
  assert.deepEqual(
    s.host.calls.filter((c) => c.startsWith('release')),
    ['release:1'],
    'only wave 0 was released',
  );
  assert.deepEqual([outcome.stats.connections, outcome.stats.retained, outcome.stats.bytesIn], [1, 2, 0]);
  s.sockets[1]!.resume();
  await s.clients[1]!.expect('old:early');
  await servedByOld(s.clients[1]!, 'thawed');
  await servedByOld(s.clients[2]!, 'never frozen');
  await s.teardown();
});

test('a WAVE_ACK out of sequence: ABORT ERR_TAKEOVER_PROTOCOL; the live successor keeps the listeners, before any good one as after', async (t) => {
  const first = await setup(t, 1);
  await toPrepare(first);
  first.peer.send(encode.commit());
  await first.peer.next('listening');
  await nextWave(first.peer);
  first.peer.send(encode.waveAck(1));
  assert.match((await first.peer.next('abort')).message, /WAVE_ACK for wave 1, expected 0/);
  const early = await within(first.host.outcome, 'the partial handover');
  assert.ok(early.kind === 'partial' && early.error.code === ErrorCodes.PROTOCOL);
  assert.equal(first.host.resumed, undefined);
  await first.teardown();

  const second = await setup(t, 2, { waveSize: 1 });
  await toPrepare(second);
  second.peer.send(encode.commit());
  await second.peer.next('listening');
  await nextWave(second.peer);
  second.peer.send(encode.waveAck(0));
  await nextWave(second.peer);
  second.peer.send(encode.waveAck(0));
  assert.match((await second.peer.next('abort')).message, /WAVE_ACK for wave 0, expected 1/);
  const partial = await within(second.host.outcome, 'the partial handover');
  assert.ok(partial.kind === 'partial' && partial.error.code === ErrorCodes.PROTOCOL);
  await second.teardown();
});

test('a WAVE_ACK for the next wave right behind the good one, before that wave left: ABORT ERR_TAKEOVER_PROTOCOL; the successor keeps wave 0, the old process finishes the rest', async (t) => {
  const s = await setup(t, 3, { waveSize: 1 });
  s.sockets[0]!.pause();
  s.clients[0]!.write('early');
  await waitFor(() => s.sockets[0]!.readableLength === 5, "'early' buffered in the old app");
  const { conns } = await toPrepare(s);
  s.peer.send(encode.commit());
  await s.peer.next('listening');
  const wave = await nextWave(s.peer);
  assert.deepEqual(fates(wave), ['1:moved']);
  assert.equal(wave.records[0]?.fate === 'moved' && wave.records[0].input.toString(), 'early');
  // Sent in one tick, so the old process reads both in one go: the second before wave 1 is built.
  s.peer.send(encode.waveAck(0));
  s.peer.send(encode.waveAck(1));
  const stats = await refusedWithNoWaveInFlight(s, 1);
  assert.deepEqual([stats.connections, stats.retained, stats.waves], [1, 2, 1]);
  assert.deepEqual(
    s.host.calls.filter((c) => /^(freeze|release)/.test(c)),
    ['freeze:1', 'release:1'],
    'wave 1 was never built',
  );
  await servedBySuccessor(s, conns[0]!.fd, s.clients[0]!);
  await servedByOld(s.clients[1]!, 'never frozen, finished here');
  await servedByOld(s.clients[2]!, 'never frozen either');
  // The successor closes the channel (not what it holds): the session's end closes without lingering.
  s.peer.closeChannel();
  await fdsSettle(s.before - 3 + s.peer.heldFds, 'the listener dups and the channel closed, the server stopped, one connection gone');
  await s.teardown();
});

test('a WAVE_ACK while only a deferred connection is left (the retry timer runs, no wave in flight): ABORT ERR_TAKEOVER_PROTOCOL; the deferred connection is retained here', async (t) => {
  // Far from the quiescence bound: the retry timer would run on for the whole test.
  const s = await setup(t, 2, { quiesceTimeoutMs: 60_000 });
  s.host.readinessOf.set(1, 'busy');
  const { conns } = await toPrepare(s);
  s.peer.send(encode.commit());
  await s.peer.next('listening');
  assert.deepEqual(fates(await nextWave(s.peer)), ['1:deferred', '2:moved']);
  s.peer.send(encode.waveAck(0));
  // Asked in wave 0, once its WAVE_ACK came, then on the retry timer.
  await waitFor(() => s.host.calls.filter((c) => c === 'settle:1').length >= 3, 'a retry of the deferred connection');
  assert.deepEqual(s.peer.pending, [], 'no wave while it is busy');
  s.peer.send(encode.waveAck(1));
  const stats = await refusedWithNoWaveInFlight(s, 1);
  assert.deepEqual([stats.connections, stats.deferred, stats.retained, stats.waves], [1, 1, 1, 1]);
  assert.ok(s.host.calls.includes('retain:1'));
  await servedBySuccessor(s, conns[1]!.fd, s.clients[1]!);
  await servedByOld(s.clients[0]!, 'deferred, finished here');
  // The successor closes the channel (not what it holds): the session's end closes without lingering.
  s.peer.closeChannel();
  await fdsSettle(s.before - 3 + s.peer.heldFds, 'the listener dups and the channel closed, the server stopped, one connection gone');
  await s.teardown();
});

test('a WAVE_ACK 0 before LISTENING (right behind the ACK of the last delta): ABORT ERR_TAKEOVER_PROTOCOL; nothing was frozen, the old process resumes everything', async (t) => {
  const s = await setup(t, 1);
  await toPrepare(s);
  const late = await s.app.connect();
  s.host.add(late.socket);
  s.peer.send(encode.commit());
  await s.peer.next('conns');
  // Read in one go: the ACK only schedules the next send (LISTENING goes out on the next turn of
  // the loop), so the WAVE_ACK is read while the old process waits to send it.
  s.peer.send(encode.ack(1));
  s.peer.send(encode.waveAck(0));
  const abort = await s.peer.next('abort');
  assert.equal(abort.code, ErrorCodes.PROTOCOL);
  assert.equal(abort.message, 'unexpected waveAck frame during committed');
  const outcome = await within(s.host.outcome, 'the rollback');
  assert.ok(outcome.kind === 'rollback', outcome.kind);
  assert.equal(outcome.error.code, ErrorCodes.PROTOCOL, outcome.error.message);
  assert.deepEqual([outcome.report.committed, outcome.report.lost, outcome.report.resumed], [true, 0, 2]);
  assert.deepEqual(s.host.resumed, ['tcp:test', 'takeover-channel'], 'LISTENING never left: the listeners accept here again');
  assert.ok(!s.host.calls.some((c) => /^(freeze|release)/.test(c)), 'nothing was frozen');
  await servedByOld(s.clients[0]!, 'never frozen, resumed');
  await servedByOld(late.client, 'the late one too');
  const fresh = await s.app.connect();
  await servedByOld(fresh.client, 'accepted on the resumed listener');
  await s.teardown();
});

test("deferred connections made quiet by listeners of the wave's own steps ('defer' as it is built, 'release' as it is released) wait for the next wave: each connection named once in a wave", async (t) => {
  const s = await setup(t, 3);
  s.host.readinessOf.set(1, 'busy');
  s.host.readinessOf.set(2, 'busy');
  await toPrepare(s);
  const quiet = (id: number) => {
    s.host.readinessOf.set(id, 'quiet');
    s.session.connectionMaybeQuiet(id);
  };
  const onDefer = s.host.onDefer.bind(s.host);
  s.host.onDefer = (socket) => {
    onDefer(socket);
    if (s.host.idOf(socket) === 1) quiet(1);
  };
  s.host.afterRelease = (id) => {
    if (id === 3) quiet(2);
  };
  s.peer.send(encode.commit());
  await s.peer.next('listening');
  const first = await nextWave(s.peer);
  assert.deepEqual([first.seq, ...fates(first)], [0, '1:deferred', '2:deferred', '3:moved']);
  // Pipelined: the next wave goes on the next loop turn, before the WAVE_ACK.
  const second = await nextWave(s.peer);
  assert.deepEqual([second.seq, ...fates(second)], [1, '1:moved', '2:moved']);
  s.peer.send(encode.waveAck(0));
  s.peer.send(encode.waveAck(1));
  assert.equal((await s.peer.next('done')).retained, 0);
  const outcome = await within(s.host.outcome, 'the handover');
  assert.ok(outcome.kind === 'handover');
  assert.deepEqual([outcome.stats.connections, outcome.stats.deferred, outcome.stats.waves], [3, 2, 2]);
  await s.teardown();
});

test('an ACK naming a batch that was never sent is refused with ABORT ERR_TAKEOVER_PROTOCOL', async (t) => {
  const s = await setup(t, 1);
  try {
    s.peer.send(encode.hello(1));
    await s.peer.next('welcome');
    await s.peer.next('listeners');
    await s.peer.next('conns');
    s.peer.send(encode.ack(41));
    const reply = await s.peer.nextAny();
    assert.equal(reply.type === 'abort' && reply.code, ErrorCodes.PROTOCOL, `got ${reply.type}`);
  } finally {
    s.session.abort(new TakeoverError(ErrorCodes.ABORTED, 'end of test'));
    await s.host.outcome;
    await s.teardown();
  }
});

test('timed waves (no waveSize given): the first wave is small, none is over waveSize, every connection moves once', async (t) => {
  const total = 300;
  const s = await setup(t, total, { timedWaves: true, waveSize: 128 });
  await toPrepare(s);
  s.peer.send(encode.commit());
  await s.peer.next('listening');
  const sizes: number[] = [];
  const moved = new Set<number>();
  while (moved.size < total) {
    const wave = await nextWave(s.peer);
    sizes.push(wave.records.length);
    for (const r of wave.records) {
      assert.equal(r.fate, 'moved');
      assert.ok(!moved.has(r.id), `connection ${r.id} moved twice`);
      moved.add(r.id);
    }
    s.peer.send(encode.waveAck(wave.seq));
  }
  assert.equal((await s.peer.next('done')).retained, 0);
  assert.ok(sizes[0]! <= 16, `first wave ${sizes[0]}`);
  assert.ok(
    sizes.every((n) => n >= 1 && n <= 128),
    `wave sizes ${sizes.join(',')}`,
  );
  const outcome = await within(s.host.outcome, 'the handover');
  assert.ok(outcome.kind === 'handover');
  assert.equal(outcome.stats.connections, total);
  assert.equal(outcome.stats.waves, sizes.length);
  await s.peer.next('eof');
  await s.teardown();
});
