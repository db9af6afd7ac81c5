/**
 * A real PredecessorSession talking to a real SuccessorSession in one process, over a real
 * channel pair, each with a fake host holding real TCP connections on 127.0.0.1: the old app
 * answers `old:<data>`, the new one `new:<data>`, so every reply says which process read it.
 */
import { after, before, test, type TestContext } from 'node:test';
import * as assert from 'node:assert/strict';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as native from '#lib/native.js';
import { Channel } from '#lib/channel.js';
import { PredecessorSession } from '#lib/predecessor.js';
import { SuccessorSession, type SuccessorStep } from '#lib/successor.js';
import { ErrorCodes, TakeoverError } from '#lib/errors.js';
import { serverFd } from '#lib/sockets.js';
import { tempDir, waitFor, within } from '../helpers.js';
import { channelListenerFd, channelPair, Client, FakePredecessorHost, FakeSuccessorHost, fdsSettle, OldApp } from './harness.js';

let dir = '';
before(() => {
  dir = tempDir();
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

interface Pair {
  app: OldApp;
  old: FakePredecessorHost;
  next: FakeSuccessorHost;
  predecessor: PredecessorSession;
  successor: SuccessorSession;
  clients: Client[];
  sockets: net.Socket[];
  /** Connections the old app accepted but the test registers only when it chooses to. */
  spare: { client: Client; socket: net.Socket }[];
  /** Fds open before the channel pair: the old app, its connections, the channel listener. */
  before: number;
  teardown(): Promise<void>;
}

/**
 * `connections` clients of the old app, registered with the old host, then both sessions.
 * `onStep` runs inside the successor's frame handling (before it answers), where a test makes
 * the old app accept or lose connections at a chosen phase.
 */
async function pair(
  t: TestContext,
  connections: number,
  options: {
    old?: Partial<FakePredecessorHost['options']>;
    next?: Partial<FakeSuccessorHost['options']>;
    spare?: number;
    onStep?: (step: SuccessorStep, p: Pair) => void;
  } = {},
): Promise<Pair> {
  const baseline = native.openFdCount();
  const app = new OldApp();
  await app.listen();
  const channelListener = channelListenerFd(dir);
  const old = new FakePredecessorHost(app, channelListener);
  Object.assign(old.options, options.old);
  const next = new FakeSuccessorHost();
  Object.assign(next.options, options.next);
  const clients: Client[] = [];
  const sockets: net.Socket[] = [];
  for (let i = 0; i < connections; i++) {
    const { client, socket } = await app.connect();
    clients.push(client);
    sockets.push(socket);
    old.add(socket);
  }
  const spare: Pair['spare'] = [];
  for (let i = 0; i < (options.spare ?? 0); i++) spare.push(await app.connect());
  const before = native.openFdCount();
  const [a, b] = channelPair(dir);
  const predecessor = new PredecessorSession(old, new Channel(a));
  old.session = predecessor;
  let tornDown = false;
  const close = async () => {
    tornDown = true;
    await next.close();
    await app.close();
    native.close(channelListener);
  };
  const p: Pair = {
    app,
    old,
    next,
    predecessor,
    successor: undefined as unknown as SuccessorSession,
    clients,
    sockets,
    spare,
    before,
    async teardown() {
      await close();
      await fdsSettle(baseline, 'everything the test opened is closed');
    },
  };
  const onStep = options.onStep;
  if (onStep) next.onStep = (step) => onStep(step, p);
  p.successor = new SuccessorSession(next, new Channel(b));
  t.after(async () => {
    if (tornDown) return;
    predecessor.abort(new TakeoverError(ErrorCodes.ABORTED, 'the test failed'));
    p.successor.abort(new TakeoverError(ErrorCodes.ABORTED, 'the test failed'));
    await close();
  });
  return p;
}

async function reply(client: Client, text: string, from: 'old' | 'new'): Promise<void> {
  const before = client.received;
  client.write(text);
  await client.expect(`${before}${from}:${text}`);
}

test('both sessions: deltas in every phase, input carried, two waves; DONE agrees on both sides and the new app serves everything', async (t) => {
  let deltasSent = false;
  const p = await pair(t, 3, {
    old: { waveSize: 2 },
    spare: 2,
    onStep: (step, p) => {
      // The first CONNS batch is in, not yet acknowledged: the old app accepts one and loses one.
      if (step === 'precopy' && !deltasSent) {
        deltasSent = true;
        p.old.add(p.spare[0]!.socket);
        p.old.close(2);
      }
    },
  });
  const { spare } = p;
  p.sockets[0]!.pause();
  p.clients[0]!.write('early');
  await waitFor(() => p.sockets[0]!.readableLength === 5, "'early' buffered in the old app");

  await waitFor(() => p.next.steps.includes('prepare'), 'PREPARE verified');
  // Between PREPARE and COMMIT: deltas wait for the commit.
  const id5 = p.old.add(spare[1]!.socket);
  p.old.close(3);
  await reply(spare[0]!.client, 'before commit', 'old');
  p.successor.ready();

  const [oldOutcome, newOutcome] = await within(Promise.all([p.old.outcome, p.next.outcome]), 'both sides to finish');
  assert.ok(oldOutcome.kind === 'handover', oldOutcome.kind);
  assert.ok(newOutcome.kind === 'done' && newOutcome.warning === undefined, newOutcome.kind);
  const counts = (s: typeof oldOutcome.stats) => ({
    connections: s.connections,
    closed: s.closed,
    retained: s.retained,
    waves: s.waves,
    bytesIn: s.bytesIn,
    listeners: s.listeners,
  });
  assert.deepEqual(counts(oldOutcome.stats), { connections: 3, closed: 2, retained: 0, waves: 2, bytesIn: 5, listeners: 2 });
  assert.deepEqual(counts(newOutcome.stats), counts(oldOutcome.stats));
  assert.equal(newOutcome.stats.maxPauseMs, Math.round(oldOutcome.stats.maxPauseMs * 1000) / 1000);
  assert.deepEqual([newOutcome.stats.predecessorPid, oldOutcome.stats.successorPid], [process.pid, process.pid]);
  assert.equal(p.old.calls.filter((c) => c.startsWith('release')).length, 3);
  assert.equal(p.next.adopted.length, 3);
  assert.deepEqual(p.next.steps, ['hello', 'listeners', 'precopy', 'prepare', 'wave0', 'wave1']);
  assert.equal(serverFd(p.app.server), -1, 'the old app no longer accepts');

  await p.clients[0]!.expect('new:early');
  await reply(spare[0]!.client, 'after', 'new');
  await reply(spare[1]!.client, 'after', 'new');
  assert.ok(id5 > 0);
  const fresh = new Client(net.connect(p.app.port, '127.0.0.1'));
  await once(fresh.socket, 'connect');
  await reply(fresh, 'fresh', 'new');
  fresh.socket.destroy();
  await p.teardown();
});

test('deferral across both: a busy connection is deferred, moves once it turns quiet; one still busy at quiesceTimeoutMs stays with the old app', async (t) => {
  const p = await pair(t, 3, {
    old: { quiesceTimeoutMs: 100 },
    onStep: (step, p) => {
      // Connection 1 finishes its work while wave 0 is in flight; connection 2 never does.
      if (step === 'wave0') {
        p.old.readinessOf.set(1, 'quiet');
        p.predecessor.connectionMaybeQuiet(1);
      }
    },
  });
  p.old.readinessOf.set(1, 'busy');
  p.old.readinessOf.set(2, 'busy');
  p.successor.ready();
  const [oldOutcome, newOutcome] = await within(Promise.all([p.old.outcome, p.next.outcome]), 'both sides to finish');
  assert.ok(oldOutcome.kind === 'handover' && newOutcome.kind === 'done' && newOutcome.warning === undefined);
  for (const stats of [oldOutcome.stats, newOutcome.stats]) {
    assert.deepEqual(
      { connections: stats.connections, deferred: stats.deferred, retained: stats.retained },
      { connections: 2, deferred: 2, retained: 1 },
      stats.role,
    );
  }
  assert.deepEqual(
    p.old.calls.filter((c) => /^(defer|retain)/.test(c)),
    ['defer:1', 'defer:2', 'retain:2'],
  );
  await reply(p.clients[0]!, 'was busy', 'new');
  await reply(p.clients[1]!, 'still busy', 'old');
  await reply(p.clients[2]!, 'quiet', 'new');
  await p.teardown();
});

test("deferred connections made quiet by listeners of the old side's steps ('defer', 'release'): one wave at a time, each named once per wave; the new app serves them all", async (t) => {
  const p = await pair(t, 3);
  p.old.readinessOf.set(1, 'busy');
  p.old.readinessOf.set(2, 'busy');
  const onDefer = p.old.onDefer.bind(p.old);
  p.old.onDefer = (socket) => {
    onDefer(socket);
    // Connection 1 finishes its work as soon as it is told to wait, while wave 0 is built.
    if (p.old.idOf(socket) !== 1) return;
    p.old.readinessOf.set(1, 'quiet');
    p.predecessor.connectionMaybeQuiet(1);
  };
  p.old.afterRelease = (id) => {
    // Connection 2 finishes as wave 0 is released.
    if (id !== 3) return;
    p.old.readinessOf.set(2, 'quiet');
    p.predecessor.connectionMaybeQuiet(2);
  };
  p.successor.ready();
  const [oldOutcome, newOutcome] = await within(Promise.all([p.old.outcome, p.next.outcome]), 'both sides to finish');
  assert.ok(oldOutcome.kind === 'handover', oldOutcome.kind);
  assert.ok(newOutcome.kind === 'done' && newOutcome.warning === undefined, newOutcome.kind);
  for (const stats of [oldOutcome.stats, newOutcome.stats]) {
    assert.deepEqual(
      { connections: stats.connections, deferred: stats.deferred, retained: stats.retained, waves: stats.waves },
      { connections: 3, deferred: 2, retained: 0, waves: 2 },
      stats.role,
    );
  }
  assert.deepEqual(
    p.next.steps.filter((step) => step.startsWith('wave')),
    ['wave0', 'wave1'],
  );
  for (const client of p.clients) await reply(client, 'moved', 'new');
  await p.teardown();
});

test('rollback before COMMIT: the new app gives up at PREPARE; both sides drop the takeover, no fd is left, the old app never stopped', async (t) => {
  const p = await pair(t, 2, {
    onStep: (step, p) => {
      if (step === 'prepare') p.successor.abort(new TakeoverError(ErrorCodes.ABORTED, 'the new app is shutting down'));
    },
  });
  const [oldOutcome, newOutcome] = await within(Promise.all([p.old.outcome, p.next.outcome]), 'both sides to fail');
  assert.ok(oldOutcome.kind === 'rollback' && oldOutcome.started);
  assert.equal(oldOutcome.error.code, ErrorCodes.ABORTED);
  assert.equal(oldOutcome.error.reason, ErrorCodes.ABORTED);
  assert.ok(newOutcome.kind === 'failure' && newOutcome.error.code === ErrorCodes.ABORTED);
  await fdsSettle(p.before, 'both sessions closed their channel ends, listener dups and connection copies');
  assert.ok(!p.old.calls.includes('stopAccepting'));
  for (const client of p.clients) await reply(client, 'still old', 'old');
  await p.teardown();
});

test("rollback before COMMIT: an app slower than the old side's timeoutMs; the successor learns why from the ABORT", async (t) => {
  const p = await pair(t, 1, { old: { timeoutMs: 100 } });
  const [oldOutcome, newOutcome] = await within(Promise.all([p.old.outcome, p.next.outcome]), 'both sides to fail');
  assert.ok(oldOutcome.kind === 'rollback' && oldOutcome.error.code === ErrorCodes.TIMEOUT);
  assert.ok(newOutcome.kind === 'failure');
  assert.equal(newOutcome.error.code, ErrorCodes.ABORTED);
  assert.equal(newOutcome.error.reason, ErrorCodes.TIMEOUT);
  await fdsSettle(p.before, 'no fd of the takeover left');
  await reply(p.clients[0]!, 'served on', 'old');
  await p.teardown();
});

test('rollback before COMMIT: a listener the new app did not claim; the old side is told the code', async (t) => {
  const p = await pair(t, 1);
  p.next.unclaimed = ['tcp:test'];
  await waitFor(() => p.next.steps.includes('prepare'), 'PREPARE verified');
  p.successor.ready();
  const [oldOutcome, newOutcome] = await within(Promise.all([p.old.outcome, p.next.outcome]), 'both sides to fail');
  assert.ok(newOutcome.kind === 'failure' && newOutcome.error.code === ErrorCodes.LISTENER_UNCLAIMED);
  assert.ok(oldOutcome.kind === 'rollback' && oldOutcome.error.reason === ErrorCodes.LISTENER_UNCLAIMED);
  await fdsSettle(p.before, 'no fd of the takeover left');
  await p.teardown();
});

test('partial handover: the new side fails with wave 1 in hand; it keeps waves 0 and 1 (nothing released is cut) and the listener, the old app finishes the rest', async (t) => {
  const p = await pair(t, 3, {
    old: { waveSize: 1 },
    onStep: (step, p) => {
      if (step === 'wave1') p.successor.abort(new TakeoverError(ErrorCodes.SYSTEM, 'the new app broke'));
    },
  });
  p.successor.ready();
  const [oldOutcome, newOutcome] = await within(Promise.all([p.old.outcome, p.next.outcome]), 'both sides to finish');
  assert.ok(oldOutcome.kind === 'partial', oldOutcome.kind);
  assert.equal(oldOutcome.error.reason, ErrorCodes.SYSTEM);
  assert.deepEqual([oldOutcome.stats.connections, oldOutcome.stats.retained], [2, 1]);
  assert.ok(newOutcome.kind === 'done' && newOutcome.warning?.code === ErrorCodes.SYSTEM);
  // Wave 1 was in hand, checked and released by the old side: the new side started it too.
  assert.equal(newOutcome.stats.connections, oldOutcome.stats.connections, 'both sides count the same connections as moved');
  assert.equal(p.old.resumed, undefined, 'the old app does not take the listener back');
  await reply(p.clients[0]!, 'wave 0', 'new');
  await reply(p.clients[1]!, 'wave 1, in hand', 'new');
  await reply(p.clients[2]!, 'never frozen', 'old');
  const fresh = new Client(net.connect(p.app.port, '127.0.0.1'));
  await once(fresh.socket, 'connect');
  await reply(fresh, 'fresh', 'new');
  fresh.socket.destroy();
  await p.teardown();
});
