/**
 * SuccessorSession against a scripted predecessor: a RawPeer that sends hand-made frames with
 * real fds (a real TCP listener, real accepted connections on 127.0.0.1, a real SOCK_SEQPACKET
 * listener) and checks what the session answers. The fake host (test/unit/harness.ts) listens
 * and adopts as Takeover does. Each test ends with the fd count it predicts.
 */
import { after, before, test, type TestContext } from 'node:test';
import * as assert from 'node:assert/strict';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as net from 'node:net';
import * as path from 'node:path';
import * as native from '#lib/native.js';
import { Channel } from '#lib/channel.js';
import { SuccessorSession } from '#lib/successor.js';
import { digestIds, encode, encodeWave, MAX_BODY_SIZE, type WaveRecord } from '#lib/protocol.js';
import { ErrorCodes, TakeoverError } from '#lib/errors.js';
import { serverFd, socketFd } from '#lib/sockets.js';
import { tempDir, waitFor, within } from '../helpers.js';
import { channelListenerFd, channelPair, Client, FakeSuccessorHost, fdsSettle, RawPeer, turns } from './harness.js';

let dir = '';
before(() => {
  dir = tempDir();
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

interface Setup {
  host: FakeSuccessorHost;
  peer: RawPeer;
  session: SuccessorSession;
  /** The fake predecessor's listener: it never reads (pauseOnConnect) and stops at COMMIT. */
  oldServer: net.Server;
  port: number;
  channelListener: number;
  clients: Client[];
  /** The fake predecessor's own fd for each connection, ids 1..n; -1 once it let go of it. */
  connFds: number[];
  ids: number[];
  before: number;
  teardown(): Promise<void>;
}

async function setup(t: TestContext, connections: number, options: Partial<FakeSuccessorHost['options']> = {}): Promise<Setup> {
  const baseline = native.openFdCount();
  const accepted: net.Socket[] = [];
  const oldServer = net.createServer({ pauseOnConnect: true }, (socket) => accepted.push(socket));
  oldServer.listen(0, '127.0.0.1');
  await once(oldServer, 'listening');
  const port = (oldServer.address() as net.AddressInfo).port;
  const clients: Client[] = [];
  for (let i = 0; i < connections; i++) {
    const socket = net.connect(port, '127.0.0.1');
    await once(socket, 'connect');
    clients.push(new Client(socket));
  }
  await waitFor(() => accepted.length === connections, 'every client accepted');
  // Raw fds, as a predecessor holds them once it stopped reading: nothing in this process reads them.
  const connFds = clients.map((c) => {
    const socket = accepted.find((s) => s.remotePort === c.socket.localPort)!;
    const fd = native.dup(socketFd(socket));
    socket.destroy();
    return fd;
  });
  await waitFor(() => accepted.every((s) => s.destroyed), 'the wrappers gone');
  const channelListener = channelListenerFd(dir);
  const host = new FakeSuccessorHost();
  Object.assign(host.options, options);
  const before = native.openFdCount();
  const [mine, theirs] = channelPair(dir);
  const peer = new RawPeer(theirs);
  const session = new SuccessorSession(host, new Channel(mine));
  let tornDown = false;
  const close = async () => {
    tornDown = true;
    peer.close();
    for (const fd of connFds) if (fd >= 0) native.close(fd);
    connFds.fill(-1);
    for (const c of clients) c.socket.destroy();
    native.close(channelListener);
    await host.close();
    if (serverFd(oldServer) >= 0) await new Promise((resolve) => oldServer.close(resolve));
  };
  t.after(async () => {
    if (tornDown) return;
    session.abort(new TakeoverError(ErrorCodes.ABORTED, 'the test failed'));
    await close();
  });
  return {
    host,
    peer,
    session,
    oldServer,
    port,
    channelListener,
    clients,
    connFds,
    ids: clients.map((_, i) => i + 1),
    before,
    async teardown() {
      await close();
      await fdsSettle(baseline, 'everything the test opened is closed');
    },
  };
}

function prepareFor(ids: number[]) {
  const { connections, idSum, idXor } = digestIds(ids);
  return encode.prepare(connections, idSum, idXor);
}

function listenersFrame(s: Setup) {
  return encode.listeners([
    { name: 'tcp:test', kind: 'tcp', backlog: 511, fd: serverFd(s.oldServer) },
    { name: 'takeover-channel', kind: 'channel', backlog: 511, fd: s.channelListener },
  ]);
}

/** HELLO, WELCOME, LISTENERS, every connection in one CONNS, its ACK, PREPARE: the session is then prepared. */
async function toPrepared(s: Setup): Promise<void> {
  assert.deepEqual(await s.peer.next('hello'), { type: 'hello', pid: process.pid });
  s.peer.send(encode.welcome(4242, 2, s.ids.length));
  s.peer.send(listenersFrame(s));
  s.peer.send(encode.conns(s.ids.map((id, i) => ({ id, listener: 0, fd: s.connFds[i]! }))));
  assert.deepEqual(await s.peer.next('ack'), { type: 'ack', seq: 0 });
  s.peer.send(prepareFor(s.ids));
  await waitFor(() => s.host.steps.includes('prepare'), 'the session to check PREPARE');
}

/** ...then the app is ready: COMMIT; the fake predecessor stops accepting and sends LISTENING. */
async function toWaves(s: Setup, quiesceMs = 1000): Promise<void> {
  await toPrepared(s);
  s.session.ready();
  await s.peer.next('commit');
  await new Promise((resolve) => s.oldServer.close(resolve));
  s.peer.send(encode.listening(quiesceMs));
  await waitFor(() => s.host.listening, 'startListening()');
}

function moved(id: number, input = '', output = '', state?: string): WaveRecord {
  return {
    id,
    fate: 'moved',
    adapter: 'net',
    input: Buffer.from(input, 'latin1'),
    output: Buffer.from(output, 'latin1'),
    protocolState: undefined,
    state: state === undefined ? undefined : Buffer.from(state),
  };
}

/** Sends a wave's frames (as many as it needs) and nothing else: the test's copies of its connections stay open (a wave the successor is to refuse). */
function sendWaveFrames(s: Setup, seq: number, records: WaveRecord[]): void {
  for (const message of encode.wave(encodeWave({ seq, records }))) s.peer.send(message);
}

/** Sends a wave; the fake predecessor lets go of what moved. */
function sendWave(s: Setup, seq: number, records: WaveRecord[]): void {
  sendWaveFrames(s, seq, records);
  for (const r of records) {
    if (r.fate !== 'moved' && r.fate !== 'closed') continue;
    native.close(s.connFds[r.id - 1]!);
    s.connFds[r.id - 1] = -1;
  }
}

/** The fake predecessor's own copy of connection `i` (0-based) still reaches its client: it writes `text` on it, then closes it. */
async function servedByPredecessor(s: Setup, i: number, text: string): Promise<void> {
  const kept = new net.Socket({ fd: s.connFds[i]! });
  s.connFds[i] = -1;
  kept.write(text);
  await s.clients[i]!.expect(text);
  kept.destroy();
}

test('happy path: HELLO, ACK on receipt, COMMIT only once the app is ready, a wave split over frames, DONE with the stats', async (t) => {
  const s = await setup(t, 2);
  const big = 'x'.repeat(100_000);
  await toPrepared(s);
  assert.deepEqual(s.host.steps, ['hello', 'listeners', 'precopy', 'prepare']);
  assert.deepEqual(
    s.host.listeners.map(({ name, kind }) => `${kind} ${name}`),
    ['tcp tcp:test', 'channel takeover-channel'],
  );
  await turns(5);
  assert.deepEqual(s.peer.pending, [], 'no COMMIT before the app is ready');
  s.session.ready();
  await s.peer.next('commit');
  assert.ok(s.session.isCommitted);
  await new Promise((resolve) => s.oldServer.close(resolve));
  s.peer.send(encode.listening(1000));
  await waitFor(() => s.host.listening, 'startListening()');

  sendWave(s, 0, [moved(1, 'in', 'out'), moved(2, '', big, 'state')]);
  assert.deepEqual(await s.peer.next('waveAck'), { type: 'waveAck', seq: 0 });
  assert.deepEqual(
    s.host.adopted.map((a) => [a.listener, a.record.id]),
    [
      [0, 1],
      [0, 2],
    ],
  );
  // The output the predecessor could not send goes first, then the input it had not consumed.
  await s.clients[0]!.expect('outnew:in');
  await s.clients[1]!.expect(big);
  s.clients[1]!.write('ping');
  await s.clients[1]!.expect(`${big}new:ping`);

  s.peer.send(encode.done(0, 1500));
  const outcome = await within(s.host.outcome, 'onDone');
  assert.ok(outcome.kind === 'done' && outcome.warning === undefined);
  const {
    role,
    predecessorPid,
    successorPid,
    listeners,
    connections,
    retained,
    closed,
    deferred,
    waves,
    bytesIn,
    bytesOut,
    stateBytes,
    maxPauseMs,
  } = outcome.stats;
  assert.deepEqual(
    {
      role,
      predecessorPid,
      successorPid,
      listeners,
      connections,
      retained,
      closed,
      deferred,
      waves,
      bytesIn,
      bytesOut,
      stateBytes,
      maxPauseMs,
    },
    {
      role: 'successor',
      predecessorPid: 4242,
      successorPid: process.pid,
      listeners: 2,
      connections: 2,
      retained: 0,
      closed: 0,
      deferred: 0,
      waves: 1,
      bytesIn: 2,
      bytesOut: 3 + big.length,
      stateBytes: 5,
      maxPauseMs: 1.5,
    },
  );
  await s.peer.next('eof');

  // The inherited listener accepts in the new server now.
  const fresh = net.connect(s.port, '127.0.0.1');
  const freshClient = new Client(fresh);
  await once(fresh, 'connect');
  freshClient.write('hi');
  await freshClient.expect('new:hi');
  fresh.destroy();
  await s.teardown();
});

test('deltas: CONNS and CLOSED during pre-copy and after COMMIT; each CONNS is acknowledged in order; the digest covers what is held', async (t) => {
  const s = await setup(t, 4);
  const [f1, f2, f3, f4] = s.connFds as [number, number, number, number];
  assert.equal((await s.peer.next('hello')).type, 'hello');
  s.peer.send(encode.welcome(4242, 2, 2));
  s.peer.send(listenersFrame(s));
  s.peer.send(encode.conns([{ id: 1, listener: 0, fd: f1 }]));
  s.peer.send(encode.conns([{ id: 2, listener: 0, fd: f2 }]));
  s.peer.send(encode.closed([1]));
  assert.deepEqual(await s.peer.next('ack'), { type: 'ack', seq: 0 });
  assert.deepEqual(await s.peer.next('ack'), { type: 'ack', seq: 1 });
  s.peer.send(prepareFor([2]));
  await waitFor(() => s.host.steps.includes('prepare'), 'the session to accept PREPARE');
  s.session.ready();
  await s.peer.next('commit');
  s.peer.send(
    encode.conns([
      { id: 3, listener: 0, fd: f3 },
      { id: 4, listener: 0, fd: f4 },
    ]),
  );
  s.peer.send(encode.closed([3]));
  assert.deepEqual(await s.peer.next('ack'), { type: 'ack', seq: 2 });
  await new Promise((resolve) => s.oldServer.close(resolve));
  s.peer.send(encode.listening(1000));
  sendWave(s, 0, [moved(2), moved(4)]);
  await s.peer.next('waveAck');
  s.peer.send(encode.done(0, 0));
  const outcome = await within(s.host.outcome, 'onDone');
  assert.ok(
    outcome.kind === 'done' && outcome.warning === undefined,
    outcome.kind === 'done' ? outcome.warning?.message : outcome.error.message,
  );
  assert.deepEqual([outcome.stats.connections, outcome.stats.closed], [2, 2]);
  for (const i of [1, 3]) {
    s.clients[i]!.write('x');
    await s.clients[i]!.expect('new:x');
  }
  await s.teardown();
});

test('deferral: a deferred connection waits (up to timeoutMs + quiesceMs) and moves in a later wave; one deferred then retained is left to the predecessor', async (t) => {
  const s = await setup(t, 2, { timeoutMs: 200 });
  await toWaves(s, 5000);
  sendWave(s, 0, [
    { id: 1, fate: 'deferred' },
    { id: 2, fate: 'deferred' },
  ]);
  await s.peer.next('waveAck');
  // Longer than timeoutMs: a predecessor waiting for busy connections may be silent up to its bound.
  await new Promise((resolve) => setTimeout(resolve, 600));
  assert.deepEqual(s.peer.pending, [], 'no ABORT while the quiescence bound runs');
  sendWave(s, 1, [moved(1, 'late')]);
  await s.peer.next('waveAck');
  await s.clients[0]!.expect('new:late');
  sendWave(s, 2, [{ id: 2, fate: 'retained' }]);
  await s.peer.next('waveAck');
  s.peer.send(encode.done(1, 0));
  const outcome = await within(s.host.outcome, 'onDone');
  assert.ok(outcome.kind === 'done' && outcome.warning === undefined);
  assert.deepEqual([outcome.stats.connections, outcome.stats.deferred, outcome.stats.retained, outcome.stats.waves], [1, 2, 1, 3]);
  // The retained connection lost only the successor's copy: the predecessor's still reaches the client.
  await servedByPredecessor(s, 1, 'finished by the predecessor');
  await s.teardown();
});

test('the successor runs at nice +10 through the waves, and at its own priority again once only deferred connections are left', async (t) => {
  const original = os.getPriority();
  const s = await setup(t, 3);
  // As root it may always raise its priority back, so it lowers it (unless already at 19); elsewhere RLIMIT_NICE decides.
  const lowered = os.getPriority() !== original;
  if (process.getuid?.() === 0 && original < 19) assert.ok(lowered, 'lowered from HELLO on');
  await toWaves(s);
  sendWave(s, 0, [moved(1)]);
  await s.peer.next('waveAck');
  assert.equal(
    os.getPriority(),
    lowered ? Math.min(19, original + 10) : original,
    'still lowered while the predecessor serves most connections',
  );
  sendWave(s, 1, [moved(2), { id: 3, fate: 'deferred' }]);
  await s.peer.next('waveAck');
  assert.equal(os.getPriority(), original, 'raised back: only a deferred connection is left');
  sendWave(s, 2, [moved(3)]);
  await s.peer.next('waveAck');
  s.peer.send(encode.done(0, 0));
  const outcome = await within(s.host.outcome, 'onDone');
  assert.ok(outcome.kind === 'done' && outcome.warning === undefined);
  assert.equal(os.getPriority(), original);
  await s.teardown();
});

test('wave size: chunks are counted against the limit as they arrive; a wave past it is refused with a code before it is joined', async (t) => {
  // The limit lowered through the host's option, as only tests do (MAX_WAVE_SIZE is 512 MiB).
  const s = await setup(t, 2, { maxWaveSize: 200_000 });
  await toWaves(s);
  sendWave(s, 0, [moved(1, 'x'.repeat(150_000))]);
  assert.deepEqual(await s.peer.next('waveAck'), { type: 'waveAck', seq: 0 });
  await s.clients[0]!.expect(`new:${'x'.repeat(150_000)}`);
  // 4 frames of 64 KiB: the fourth goes past 200,000 bytes; the fifth is never reached.
  sendWave(s, 1, [moved(2, 'y'.repeat(250_000))]);
  const abort = await s.peer.next('abort');
  assert.equal(abort.code, ErrorCodes.PROTOCOL);
  assert.match(abort.message, /wave larger than 200000 bytes/);
  const outcome = await within(s.host.outcome, 'onDone');
  assert.ok(outcome.kind === 'done' && outcome.warning?.code === ErrorCodes.PROTOCOL);
  assert.equal(outcome.stats.connections, 1);
  await s.teardown();
});

interface FailureCase {
  name: string;
  connections?: number;
  options?: Partial<FakeSuccessorHost['options']>;
  script(s: Setup): Promise<void>;
  code: string;
  reason?: string;
  /** What the predecessor reads last: the ABORT's code, or only EOF ('closed': it closed first). */
  told: string;
}

const welcome = async (s: Setup) => {
  await s.peer.next('hello');
  s.peer.send(encode.welcome(4242, 2, s.ids.length));
};

const beforeCommit: FailureCase[] = [
  {
    name: 'a peer whose uid is not allowed',
    options: { allowUids: [process.getuid!() + 1] },
    script: async () => {},
    code: ErrorCodes.PEER_REJECTED,
    told: ErrorCodes.PEER_REJECTED,
  },
  {
    name: 'no WELCOME within timeoutMs',
    options: { timeoutMs: 100 },
    script: async () => {},
    code: ErrorCodes.TIMEOUT,
    told: ErrorCodes.TIMEOUT,
  },
  {
    name: 'more fds announced than RLIMIT_NOFILE allows',
    script: async (s) => {
      await s.peer.next('hello');
      s.peer.send(encode.welcome(4242, 2, 0xfffffff0));
    },
    code: ErrorCodes.FD_LIMIT,
    told: ErrorCodes.FD_LIMIT,
  },
  {
    name: 'a connected socket passed off as a listener (the listener fds are closed)',
    script: async (s) => {
      await welcome(s);
      s.peer.send(
        encode.listeners([
          { name: 'tcp:test', kind: 'tcp', backlog: 511, fd: s.connFds[0]! },
          { name: 'takeover-channel', kind: 'channel', backlog: 511, fd: s.channelListener },
        ]),
      );
    },
    code: ErrorCodes.PROTOCOL,
    told: ErrorCodes.PROTOCOL,
  },
  {
    name: 'a connection on the channel listener',
    script: async (s) => {
      await welcome(s);
      s.peer.send(listenersFrame(s));
      s.peer.send(encode.conns([{ id: 1, listener: 1, fd: s.connFds[0]! }]));
    },
    code: ErrorCodes.PROTOCOL,
    told: ErrorCodes.PROTOCOL,
  },
  {
    name: 'a connection id sent twice',
    script: async (s) => {
      await welcome(s);
      s.peer.send(listenersFrame(s));
      s.peer.send(encode.conns([{ id: 1, listener: 0, fd: s.connFds[0]! }]));
      s.peer.send(encode.conns([{ id: 1, listener: 0, fd: s.connFds[1]! }]));
    },
    code: ErrorCodes.PROTOCOL,
    told: ErrorCodes.PROTOCOL,
  },
  {
    name: 'CLOSED for a connection never sent',
    script: async (s) => {
      await welcome(s);
      s.peer.send(listenersFrame(s));
      s.peer.send(encode.closed([77]));
    },
    code: ErrorCodes.PROTOCOL,
    told: ErrorCodes.PROTOCOL,
  },
  {
    name: 'a PREPARE digest that does not match what was sent',
    script: async (s) => {
      await welcome(s);
      s.peer.send(listenersFrame(s));
      s.peer.send(encode.conns([{ id: 1, listener: 0, fd: s.connFds[0]! }]));
      s.peer.send(encode.prepare(2, 3, 3));
    },
    code: ErrorCodes.PROTOCOL,
    told: ErrorCodes.PROTOCOL,
  },
  {
    name: 'LISTENING before COMMIT',
    script: async (s) => {
      await toPrepared(s);
      s.peer.send(encode.listening(10));
    },
    code: ErrorCodes.PROTOCOL,
    told: ErrorCodes.PROTOCOL,
  },
  {
    name: 'no PREPARE within timeoutMs',
    options: { timeoutMs: 100 },
    script: async (s) => {
      await welcome(s);
      s.peer.send(listenersFrame(s));
    },
    code: ErrorCodes.TIMEOUT,
    told: ErrorCodes.TIMEOUT,
  },
  {
    name: 'an ABORT from the predecessor',
    script: async (s) => {
      await welcome(s);
      s.peer.send(encode.abort('ERR_TAKEOVER_BUSY', 'another takeover runs'));
    },
    code: ErrorCodes.ABORTED,
    reason: 'ERR_TAKEOVER_BUSY',
    told: 'eof',
  },
  {
    name: 'the predecessor closes during pre-copy',
    script: async (s) => {
      await welcome(s);
      s.peer.send(listenersFrame(s));
      s.peer.closeChannel();
    },
    code: ErrorCodes.PEER_CLOSED,
    told: 'closed',
  },
  {
    name: 'an inherited listener the app did not claim',
    script: async (s) => {
      await toPrepared(s);
      s.host.unclaimed = ['tcp:test'];
      s.session.ready();
    },
    code: ErrorCodes.LISTENER_UNCLAIMED,
    told: ErrorCodes.LISTENER_UNCLAIMED,
  },
  {
    name: 'a connection fd that is not a socket',
    script: async (s) => {
      await welcome(s);
      s.peer.send(listenersFrame(s));
      const file = fs.openSync(path.join(dir, 'not-a-socket'), 'w');
      s.peer.send(encode.conns([{ id: 1, listener: 0, fd: file }]));
      fs.closeSync(file);
      await s.peer.next('ack');
      s.peer.send(prepareFor([1]));
      s.session.ready();
    },
    code: ErrorCodes.PROTOCOL,
    told: ErrorCodes.PROTOCOL,
  },
  {
    name: 'a connected Unix stream socket announced on the TCP listener (the handle wrap would take it)',
    script: async (s) => {
      await welcome(s);
      s.peer.send(listenersFrame(s));
      const p = path.join(dir, 'unix-as-tcp.sock');
      const listener = native.unixListen(p, 'stream', 1);
      const client = net.connect(p);
      await once(client, 'connect');
      const accepted = native.accept(listener);
      native.close(listener);
      fs.rmSync(p);
      s.peer.send(encode.conns([{ id: 1, listener: 0, fd: accepted }]));
      native.close(accepted);
      client.destroy();
      await s.peer.next('ack');
      s.peer.send(prepareFor([1]));
      s.session.ready();
    },
    code: ErrorCodes.PROTOCOL,
    told: ErrorCodes.PROTOCOL,
  },
  {
    name: 'the predecessor closes after COMMIT, before LISTENING',
    script: async (s) => {
      await toPrepared(s);
      s.session.ready();
      await s.peer.next('commit');
      s.peer.closeChannel();
    },
    code: ErrorCodes.PEER_CLOSED,
    told: 'closed',
  },
];

for (const c of beforeCommit) {
  test(`before LISTENING: ${c.name} -> ${c.code}; every copy dropped without a FIN, the predecessor keeps serving`, async (t) => {
    const s = await setup(t, c.connections ?? 2, c.options);
    await c.script(s);
    const outcome = await within(s.host.outcome, 'onFailure');
    assert.ok(outcome.kind === 'failure', outcome.kind);
    assert.equal(outcome.error.code, c.code, outcome.error.message);
    assert.equal(outcome.error.reason, c.reason);
    if (c.told !== 'closed') {
      let last = await s.peer.nextAny();
      while (last.type !== 'eof' && last.type !== 'abort') last = await s.peer.nextAny();
      assert.equal(last.type === 'abort' ? last.code : 'eof', c.told);
      if (last.type === 'abort') assert.equal(last.listening, false, 'before LISTENING it keeps no listener');
    }
    assert.equal(s.host.listening, false);
    assert.deepEqual(s.host.adopted, []);
    // The session's end lingers until the predecessor has read the ABORT and closed its own.
    s.peer.closeChannel();
    await fdsSettle(s.before, 'the session closed every fd it received and its channel');
    // Only the predecessor's copies are left, and they still reach their clients.
    for (const [i, client] of s.clients.entries()) {
      const socket = new net.Socket({ fd: s.connFds[i]! });
      s.connFds[i] = -1;
      socket.write(`still served ${i}`);
      await client.expect(`still served ${i}`);
      socket.destroy();
    }
    await s.teardown();
  });
}

interface AfterListeningCase {
  name: string;
  script(s: Setup): Promise<void>;
  code: string;
  /** Connections adopted before the failure. */
  adopted: number;
}

const afterListening: AfterListeningCase[] = [
  {
    name: 'a wave out of sequence',
    script: async (s) => sendWave(s, 1, [moved(1)]),
    code: ErrorCodes.PROTOCOL,
    adopted: 0,
  },
  {
    name: 'a wave naming a connection never sent',
    script: async (s) => {
      sendWave(s, 0, [moved(1)]);
      await s.peer.next('waveAck');
      sendWaveFrames(s, 1, [moved(9)]);
    },
    code: ErrorCodes.PROTOCOL,
    adopted: 1,
  },
  {
    name: 'a wave naming the same connection twice',
    script: async (s) => {
      sendWaveFrames(s, 0, [moved(1, 'once'), moved(1, 'twice')]);
    },
    code: ErrorCodes.PROTOCOL,
    adopted: 0,
  },
  {
    name: 'a wave naming a connection the wave before it moved (sent before its WAVE_ACK)',
    script: async (s) => {
      sendWave(s, 0, [moved(1)]);
      sendWaveFrames(s, 1, [moved(1)]);
    },
    code: ErrorCodes.PROTOCOL,
    adopted: 1,
  },
  {
    name: 'a connection deferred twice',
    script: async (s) => {
      sendWave(s, 0, [{ id: 1, fate: 'deferred' }]);
      await s.peer.next('waveAck');
      sendWave(s, 1, [{ id: 1, fate: 'deferred' }]);
    },
    code: ErrorCodes.PROTOCOL,
    adopted: 0,
  },
  {
    name: 'DONE with a connection never started',
    script: async (s) => {
      sendWave(s, 0, [moved(1)]);
      await s.peer.next('waveAck');
      s.peer.send(encode.done(0, 0));
    },
    code: ErrorCodes.PROTOCOL,
    adopted: 1,
  },
  {
    name: 'DONE counting retained connections the waves did not name',
    script: async (s) => {
      sendWave(s, 0, [moved(1), moved(2)]);
      await s.peer.next('waveAck');
      s.peer.send(encode.done(3, 0));
    },
    code: ErrorCodes.PROTOCOL,
    adopted: 2,
  },
  {
    name: 'no wave within timeoutMs',
    script: async (s) => {
      sendWave(s, 0, [moved(1)]);
      await s.peer.next('waveAck');
    },
    code: ErrorCodes.TIMEOUT,
    adopted: 1,
  },
];

for (const c of afterListening) {
  test(`after LISTENING: ${c.name} -> ABORT ${c.code}; the successor keeps what it started and its listeners, with a warning`, async (t) => {
    const s = await setup(t, 2, { timeoutMs: 300 });
    await toWaves(s);
    await c.script(s);
    let last = await s.peer.nextAny();
    while (last.type !== 'eof' && last.type !== 'abort') last = await s.peer.nextAny();
    assert.equal(last.type === 'abort' ? last.code : 'eof', c.code);
    // The predecessor must not take the listeners back, even once this process is gone.
    if (last.type === 'abort') {
      assert.equal(last.listening, true, 'its ABORT says it keeps the listeners');
      assert.equal(last.readsOnMs, 900, 'and that it reads on for 3 timeouts, refusing to be taken over');
    }
    const outcome = await within(s.host.outcome, 'onDone');
    assert.ok(outcome.kind === 'done', outcome.kind);
    assert.equal(outcome.warning?.code, c.code);
    assert.equal(outcome.stats.connections, c.adopted);
    assert.ok(serverFd(s.host.server) >= 0, 'still listening');
    for (const { record } of s.host.adopted) {
      const client = s.clients[record.id - 1]!;
      client.write('kept');
      await client.expect('new:kept');
    }
    await s.teardown();
  });
}

/** Records each adoption and the loop turn after it: 'adopt N', then 'turn after N' once the loop turned. */
function adoptionTurns(s: Setup): string[] {
  const order: string[] = [];
  const adopt = s.host.adopt.bind(s.host);
  s.host.adopt = (socket, listener, record) => {
    adopt(socket, listener, record);
    order.push(`adopt ${record.id}`);
    setImmediate(() => order.push(`turn after ${record.id}`));
  };
  return order;
}

test('waves queued together are started one per turn of the event loop: what the first adopted is served before the second is read', async (t) => {
  const s = await setup(t, 3);
  await toWaves(s);
  const order = adoptionTurns(s);
  sendWave(s, 0, [moved(1)]);
  sendWave(s, 1, [moved(2)]);
  sendWave(s, 2, [moved(3)]);
  await waitFor(() => order.length === 6, 'three waves started');
  assert.deepEqual(order, ['adopt 1', 'turn after 1', 'adopt 2', 'turn after 2', 'adopt 3', 'turn after 3']);
  await s.teardown();
});

/** The session gave up after LISTENING: its ABORT arrives with `code`, and onDone reports the warning. */
async function gaveUp(s: Setup, code: string): Promise<Extract<Awaited<Setup['host']['outcome']>, { kind: 'done' }>> {
  assert.equal((await s.peer.next('abort')).code, code);
  const outcome = await within(s.host.outcome, 'onDone');
  assert.ok(outcome.kind === 'done', outcome.kind);
  assert.equal(outcome.warning?.code, code);
  return outcome;
}

test('after LISTENING, a successor that timed out still starts a wave that arrives after its ABORT (the old process sent it before reading it), without a WAVE_ACK, until the channel closes', async (t) => {
  const s = await setup(t, 3, { timeoutMs: 200 });
  await toWaves(s);
  sendWave(s, 0, [moved(1)]);
  await s.peer.next('waveAck');
  const outcome = await gaveUp(s, ErrorCodes.TIMEOUT);
  assert.equal(outcome.stats.connections, 1);
  // Longer than the linger of an ABORT: the channel stays open while the old process may still send.
  await new Promise((resolve) => setTimeout(resolve, 300));
  sendWave(s, 1, [moved(2, 'late in', 'late out')]);
  await s.clients[1]!.expect('late outnew:late in');
  assert.deepEqual(
    s.host.adopted.map((a) => a.record.id),
    [1, 2],
  );
  assert.deepEqual(s.host.steps.at(-1), 'wave0', 'a late wave is not a step: the session gave up');
  s.peer.closeChannel();
  // Connection 3 never left the old process: the successor's copy is dropped once the channel closes.
  await waitFor(() => native.openFdCount() === s.before - 1 + 2, 'the copy of connection 3 and the channel closed');
  assert.deepEqual(s.host.keptOpen, []);
  assert.deepEqual(s.peer.pending, [], 'no WAVE_ACK after the ABORT');
  for (const id of [1, 2]) {
    s.clients[id - 1]!.write('kept');
    await s.clients[id - 1]!.expect(id === 1 ? 'new:kept' : 'late outnew:late innew:kept');
  }
  await servedByPredecessor(s, 2, 'finished by the predecessor');
  await s.teardown();
});

test('after LISTENING, a refused wave does not stop the reading: the wave after it is started, and one that fails its checks after it gave up is not', async (t) => {
  const s = await setup(t, 4, { timeoutMs: 5000 });
  await toWaves(s);
  sendWave(s, 0, [moved(1)]);
  await s.peer.next('waveAck');
  // Pipelined: the old process sent waves 1 and 2 before it read the ABORT that wave 1 causes.
  sendWaveFrames(s, 1, [moved(9)]);
  sendWave(s, 2, [moved(2, '', 'two')]);
  await gaveUp(s, ErrorCodes.PROTOCOL);
  await s.clients[1]!.expect('two');
  // Given up: a wave naming a connection already started is refused, and one that repeats
  // an earlier number too; the next good one is started.
  sendWaveFrames(s, 3, [moved(2)]);
  sendWaveFrames(s, 2, [moved(3)]);
  sendWave(s, 4, [moved(4, '', 'four')]);
  await s.clients[3]!.expect('four');
  assert.deepEqual(
    s.host.adopted.map((a) => a.record.id),
    [1, 2, 4],
  );
  s.peer.send(encode.done(0, 0));
  await s.peer.next('eof');
  await s.teardown();
});

test('a wave refused for its size is skipped to its last chunk: the chunks after the refusal are not read as a wave of their own', async (t) => {
  const s = await setup(t, 3, { maxWaveSize: 100_000, timeoutMs: 5000 });
  await toWaves(s);
  sendWave(s, 0, [moved(1)]);
  await s.peer.next('waveAck');
  // Connection 2's client sent bytes that, from the third chunk of wave 1 on, read as a whole
  // wave (after the 8-byte wave header and the 22-byte record header). The second chunk goes
  // past the limit; the third is still part of wave 1.
  const forged = encodeWave({ seq: 7, records: [moved(3, '', 'forged')] });
  const pad = 'p'.repeat(2 * MAX_BODY_SIZE - 8 - 22);
  sendWave(s, 1, [moved(2, pad + forged.toString('latin1'))]);
  await gaveUp(s, ErrorCodes.PROTOCOL);
  sendWave(s, 2, [moved(3, '', 'three')]);
  await s.clients[2]!.expect('three');
  assert.deepEqual(
    s.host.adopted.map((a) => a.record.id),
    [1, 3],
  );
  s.peer.send(encode.done(0, 0));
  await s.peer.next('eof');
  await s.teardown();
});

test('after LISTENING, an old process that never closes the channel: the successor closes it after 3 timeouts with ERR_TAKEOVER_TIMEOUT, and what comes later is not read', async (t) => {
  const s = await setup(t, 2, { timeoutMs: 100 });
  await toWaves(s);
  sendWave(s, 0, [moved(1)]);
  await s.peer.next('waveAck');
  await gaveUp(s, ErrorCodes.TIMEOUT);
  await s.peer.next('eof', 5000);
  assert.equal(s.host.keptOpen.length, 1);
  assert.equal(s.host.keptOpen[0]!.code, ErrorCodes.TIMEOUT);
  assert.match(s.host.keptOpen[0]!.message, /kept the takeover channel open 300 ms/);
  await s.teardown();
});

test("after LISTENING, the predecessor's own ABORT ends it at once: nothing follows an ABORT", async (t) => {
  const s = await setup(t, 2);
  await toWaves(s);
  sendWave(s, 0, [moved(1)]);
  await s.peer.next('waveAck');
  s.peer.send(encode.abort(ErrorCodes.TIMEOUT, 'no WAVE_ACK'));
  const outcome = await within(s.host.outcome, 'onDone');
  assert.ok(outcome.kind === 'done' && outcome.warning?.code === ErrorCodes.ABORTED);
  await s.peer.next('eof');
  await s.teardown();
});

// The predecessor's last frames right behind waves split over several frames, all queued before
// the successor reads: each wave is started whole, in order, one per turn, and the end still comes.
for (const end of ['done', 'abort', 'eof'] as const) {
  test(`waves of several chunks queued together with the predecessor's ${end === 'eof' ? 'EOF' : end.toUpperCase()} right behind: both started whole, in order, and the ${end} still read`, async (t) => {
    const s = await setup(t, 2);
    await toWaves(s);
    const order = adoptionTurns(s);
    const big = (c: string) => c.repeat(35_000);
    const waves = [0, 1].map((seq) => encode.wave(encodeWave({ seq, records: [moved(seq + 1, big('i'), big(String(seq)))] })));
    assert.ok(
      waves.every((w) => w.length > 1),
      'each wave takes several frames',
    );
    for (const [seq, frames] of waves.entries()) {
      for (const message of frames) s.peer.send(message);
      native.close(s.connFds[seq]!);
      s.connFds[seq] = -1;
    }
    if (end === 'done') s.peer.send(encode.done(0, 0));
    if (end === 'abort') s.peer.send(encode.abort(ErrorCodes.TIMEOUT, 'the predecessor gave up'));
    if (end === 'eof') s.peer.close();
    const outcome = await within(s.host.outcome, 'the outcome');
    assert.ok(outcome.kind === 'done', outcome.kind);
    if (end === 'done') assert.equal(outcome.warning, undefined);
    else assert.equal(outcome.warning?.code, end === 'abort' ? ErrorCodes.ABORTED : ErrorCodes.PEER_CLOSED);
    assert.equal(outcome.stats.connections, 2);
    await waitFor(() => order.length === 4, 'both waves started');
    assert.deepEqual(order, ['adopt 1', 'turn after 1', 'adopt 2', 'turn after 2']);
    await s.clients[0]!.expect(`${big('0')}new:${big('i')}`);
    await s.clients[1]!.expect(`${big('1')}new:${big('i')}`);
    await s.teardown();
  });
}
