/**
 * Channel on a real SOCK_SEQPACKET pair: frames and fds both ways, the send queue under a full
 * socket, the last word (sendLast) and closing after a flush, and what a bad peer gets back.
 * Every test checks that the process holds the same fds at its end as at its start.
 */
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as native from '#lib/native.js';
import { Channel } from '#lib/channel.js';
import { decodeFrame, encode, MAX_FRAME_SIZE, type Frame } from '#lib/protocol.js';
import type { TakeoverError } from '#lib/errors.js';
import { tempDir, waitFor, within } from '../helpers.js';
import { channelPair, fdsSettle, RawPeer, socketFd, turns } from './harness.js';

let dir = '';
before(() => {
  dir = tempDir();
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A Channel with everything it emits recorded in order. */
function recorded(fd: number): { channel: Channel; events: string[]; frames: Frame[]; errors: TakeoverError[] } {
  const channel = new Channel(fd);
  const events: string[] = [];
  const frames: Frame[] = [];
  const errors: TakeoverError[] = [];
  channel.on('frame', (frame) => {
    events.push(`frame:${frame.type}`);
    frames.push(frame);
  });
  channel.on('error', (error) => {
    events.push(`error:${error.code}`);
    errors.push(error);
  });
  channel.on('close', () => events.push('close'));
  channel.on('writable', () => events.push('writable'));
  return { channel, events, frames, errors };
}

/** A frame of about 16 KiB whose first id is `seq`: fills a socket buffer in a few dozen sends. */
function bulky(seq: number) {
  return encode.closed([seq, ...new Array<number>(4000).fill(0)]);
}

/** Reads whatever `fd` holds now, decoded; 'eof' once the peer closed. */
function drain(fd: number): (Frame | 'eof')[] {
  const out: (Frame | 'eof')[] = [];
  for (;;) {
    const message = native.receiveMessage(fd, MAX_FRAME_SIZE);
    if (message === null) return out;
    if (message.data.length === 0 && message.fds.length === 0) {
      out.push('eof');
      return out;
    }
    out.push(decodeFrame(message.data, message.fds));
  }
}

/** Reads `fd` until the peer's EOF: every frame, then 'eof'. */
async function drainToEof(fd: number, what: string): Promise<(Frame | 'eof')[]> {
  const got: (Frame | 'eof')[] = [];
  await waitFor(() => {
    got.push(...drain(fd));
    return got.at(-1) === 'eof';
  }, what);
  return got;
}

test('frames and fds travel both ways; the peer is this process; one close each, no fd left', async () => {
  const baseline = native.openFdCount();
  const [a, b] = channelPair(dir);
  const left = recorded(a);
  const right = recorded(b);
  assert.deepEqual(left.channel.peer, { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });

  const server = net.createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  await once(client, 'connect');

  left.channel.send(encode.hello(4242));
  left.channel.send(encode.conns([{ id: 7, listener: 1, fd: socketFd(client) }]));
  right.channel.send(encode.ack(0));
  await waitFor(() => right.frames.length === 2 && left.frames.length === 1, 'both frames across');
  assert.deepEqual(right.frames[0], { type: 'hello', pid: 4242 });
  const conns = right.frames[1]!;
  assert.ok(conns.type === 'conns');
  const [conn] = conns.conns;
  assert.equal(conn!.id, 7);
  assert.equal(conn!.listener, 1);
  assert.notEqual(conn!.fd, socketFd(client), 'a new fd in this process');
  assert.deepEqual(native.socketInfo(conn!.fd), { domain: 'inet', type: 'stream', listening: false });
  native.close(conn!.fd);
  assert.deepEqual(left.frames, [{ type: 'ack', seq: 0 }]);

  left.channel.close();
  assert.ok(left.channel.isClosed && left.channel.isBroken);
  await within(once(right.channel, 'close'), "the peer's EOF");
  left.channel.close();
  left.channel.send(encode.hello(1));
  assert.equal(left.channel.trySend(encode.hello(1)), false, 'nothing goes out once closed');
  assert.deepEqual(left.events, ['frame:ack', 'close']);
  assert.deepEqual(right.events, ['frame:hello', 'frame:conns', 'close']);

  client.destroy();
  server.close();
  await fdsSettle(baseline, 'after closing both ends and the TCP pair');
});

test('a full socket: send() queues in order, trySend() refuses while anything waits, writable once flushed', async () => {
  const baseline = native.openFdCount();
  const [a, b] = channelPair(dir);
  const { channel, events } = recorded(a);
  let sent = 0;
  while (channel.trySend(bulky(sent))) sent++;
  assert.ok(sent > 0 && sent < 1000, `${sent} frames fit before the socket filled`);
  // Queued behind the one trySend() refused: nothing may overtake them.
  for (let i = 0; i < 3; i++) channel.send(bulky(sent + i));
  assert.equal(channel.trySend(encode.ack(0)), false, 'trySend() never jumps the queue');
  const total = sent + 3;

  const got: (Frame | 'eof')[] = [];
  await waitFor(() => {
    got.push(...drain(b));
    return got.length >= total;
  }, `${total} frames to arrive`);
  assert.deepEqual(
    got.map((f) => (f !== 'eof' && f.type === 'closed' ? f.ids[0] : f)),
    Array.from({ length: total }, (_, i) => i),
  );
  await waitFor(() => events.includes('writable'), "'writable' after the queue flushed");
  assert.equal(channel.trySend(encode.ack(1)), true, 'an empty queue sends at once');
  assert.deepEqual(events, ['writable']);
  channel.close();
  native.close(b);
  await fdsSettle(baseline, 'after closing');
});

test('closeWhenFlushed(): every queued frame arrives, then EOF', async () => {
  const baseline = native.openFdCount();
  const [a, b] = channelPair(dir);
  const { channel, events } = recorded(a);
  let sent = 0;
  while (channel.trySend(bulky(sent))) sent++;
  channel.send(bulky(sent));
  channel.send(encode.done(0, 5));
  channel.closeWhenFlushed();
  assert.equal(channel.isClosed, false, 'frames still queued: not closed yet');
  const got = await drainToEof(b, 'EOF after the queued frames');
  assert.equal(got.length, sent + 3);
  assert.deepEqual(got.at(-2), { type: 'done', retained: 0, maxPauseUs: 5 });
  assert.deepEqual(events, ['close'], "closing after a flush emits 'close', not 'writable'");
  native.close(b);
  await fdsSettle(baseline, 'after closing');
});

test('sendLast(): the peer reads the ABORT, frames arriving meanwhile are dropped with their fds, close on EOF', async () => {
  const baseline = native.openFdCount();
  const [a, b] = channelPair(dir);
  const { channel, events } = recorded(a);
  const peer = new RawPeer(b);
  channel.sendLast(encode.abort('ERR_TAKEOVER_BUSY', 'busy'), 60_000);
  channel.close(); // lingering: the ABORT must not be lost to an early close
  assert.equal(channel.isClosed, false);
  assert.deepEqual(await peer.next('abort'), { type: 'abort', code: 'ERR_TAKEOVER_BUSY', message: 'busy', listening: false });

  const dups = [native.dup(b), native.dup(b)];
  peer.send(encode.conns(dups.map((fd, i) => ({ id: i, listener: 0, fd }))));
  for (const fd of dups) native.close(fd);
  const withFds = native.openFdCount();
  peer.close();
  await within(once(channel, 'close'), "the channel's close on the peer's EOF");
  assert.deepEqual(events, ['close'], 'no frame, no error while lingering');
  assert.ok(native.openFdCount() <= withFds);
  await fdsSettle(baseline, 'the fds of the dropped frame closed too');
});

test('sendLast() with a peer that never closes: the channel closes by itself after lingerMs', async () => {
  const baseline = native.openFdCount();
  const [a, b] = channelPair(dir);
  const { channel, events } = recorded(a);
  channel.sendLast(encode.abort('ERR_TAKEOVER_TIMEOUT', 'late'), 20);
  await within(once(channel, 'close'), 'the linger to end');
  assert.deepEqual(events, ['close']);
  assert.deepEqual(drain(b), [{ type: 'abort', code: 'ERR_TAKEOVER_TIMEOUT', message: 'late', listening: false }, 'eof']);
  native.close(b);
  await fdsSettle(baseline, 'after closing');
});

for (const last of [true, false]) {
  test(`keepQueued() ${last ? 'after sendLast()' : 'without sendLast() (the peer gave up first)'}: frames queued behind a full socket ${last ? 'outlive the linger and arrive, the ABORT last' : 'arrive'}, then EOF`, async () => {
    const baseline = native.openFdCount();
    const [a, b] = channelPair(dir);
    const { channel, events } = recorded(a);
    assert.equal(channel.keepQueued(), false, 'nothing queued: nothing to keep');
    let sent = 0;
    while (channel.trySend(bulky(sent))) sent++;
    channel.send(bulky(sent));
    if (last) channel.sendLast(encode.abort('ERR_TAKEOVER_TIMEOUT', 'late'), 20);
    assert.equal(channel.keepQueued(), true, 'frames wait');
    // The peer reads nothing until a linger would be long over: what waits must still be there.
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(channel.isClosed, false, 'still open while frames wait');
    const got = await drainToEof(b, 'EOF after the queued frames');
    assert.equal(got.length, sent + (last ? 3 : 2));
    if (last) assert.deepEqual(got.at(-2), { type: 'abort', code: 'ERR_TAKEOVER_TIMEOUT', message: 'late', listening: false });
    assert.deepEqual(events, ['close']);
    native.close(b);
    await fdsSettle(baseline, 'after closing');
  });
}

test("readToEnd() after sendLast(): the peer's frames still arrive, one that fails validation is skipped, the linger no longer closes; the peer's EOF does", async () => {
  const baseline = native.openFdCount();
  const [a, b] = channelPair(dir);
  const { channel, events, errors } = recorded(a);
  channel.sendLast(encode.abort('ERR_TAKEOVER_TIMEOUT', 'gave up'), 20);
  channel.readToEnd();
  channel.send(encode.hello(1));
  assert.ok(native.sendMessage(b, encode.waveAck(0).data, []));
  assert.ok(native.sendMessage(b, Buffer.from('not a frame'), []));
  assert.ok(native.sendMessage(b, encode.waveAck(1).data, []));
  await waitFor(() => events.length === 2, 'both good frames');
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.deepEqual(events, ['frame:waveAck', 'frame:waveAck'], 'past the linger: still open, nothing refused');
  assert.deepEqual(errors, []);
  assert.deepEqual(
    drain(b),
    [{ type: 'abort', code: 'ERR_TAKEOVER_TIMEOUT', message: 'gave up', listening: false }],
    'nothing after the last word',
  );
  native.close(b);
  await within(once(channel, 'close'), "the peer's EOF");
  await fdsSettle(baseline, 'after closing');
});

test('readToEnd() without sendLast(), then close(): frames arrive until close() ends it at once', async () => {
  const baseline = native.openFdCount();
  const [a, b] = channelPair(dir);
  const { channel, events } = recorded(a);
  channel.readToEnd();
  assert.ok(native.sendMessage(b, encode.waveAck(0).data, []));
  await waitFor(() => events.length === 1, 'the frame');
  channel.close();
  assert.deepEqual(events, ['frame:waveAck', 'close']);
  assert.deepEqual(drain(b), ['eof']);
  native.close(b);
  await fdsSettle(baseline, 'after closing');
});

test('yieldReading() from a frame handler: the frames queued after it arrive on later turns of the loop, one per turn; readQueued() still reads them all at once', async () => {
  const baseline = native.openFdCount();
  const [a, b] = channelPair(dir);
  const { channel, events } = recorded(a);
  channel.on('frame', () => {
    channel.yieldReading();
    // An immediate set by a handler runs before the next frame: the loop turned in between.
    setImmediate(() => events.push('turn'));
  });
  for (let seq = 0; seq < 3; seq++) assert.ok(native.sendMessage(b, encode.waveAck(seq).data, []));
  await waitFor(() => events.filter((e) => e === 'turn').length === 3, 'three frames and three turns');
  assert.deepEqual(events, ['frame:waveAck', 'turn', 'frame:waveAck', 'turn', 'frame:waveAck', 'turn']);

  events.length = 0;
  for (let seq = 3; seq < 6; seq++) assert.ok(native.sendMessage(b, encode.waveAck(seq).data, []));
  channel.readQueued();
  assert.deepEqual(events, ['frame:waveAck', 'frame:waveAck', 'frame:waveAck'], 'readQueued() reads everything queued');
  channel.close();
  native.close(b);
  await fdsSettle(baseline, 'after closing');
});

test('sendLast() is the last frame: a send() after it does not reach the peer', async () => {
  const [a, b] = channelPair(dir);
  const { channel } = recorded(a);
  channel.sendLast(encode.abort('ERR_TAKEOVER_BUSY', 'busy'), 20);
  channel.send(encode.hello(1));
  await within(once(channel, 'close'), 'the linger to end');
  const got = drain(b);
  native.close(b);
  assert.deepEqual(got, [{ type: 'abort', code: 'ERR_TAKEOVER_BUSY', message: 'busy', listening: false }, 'eof']);
});

for (const [name, bytes, fds] of [
  ['a frame that fails validation', Buffer.from('GET / HTTP/1.1\r\n\r\n'), 0],
  ['a frame whose header counts other fds than arrived', encode.conns([{ id: 1, listener: 0, fd: 0 }]).data, 2],
  ['a frame larger than the protocol allows', Buffer.alloc(MAX_FRAME_SIZE + 1024, 1), 0],
] as const) {
  // Past LISTENING (markListening) a successor's ABORT, the channel's own refusal too, says it keeps the listeners.
  for (const listening of [false, true]) {
    test(`${name}: 'error' with ERR_TAKEOVER_PROTOCOL, the peer gets ABORT (listening: ${listening}), fds that came with it are closed`, async () => {
      const baseline = native.openFdCount();
      const [a, b] = channelPair(dir);
      const { channel, events, errors } = recorded(a);
      if (listening) channel.markListening(30_000);
      const attached = Array.from({ length: fds }, () => native.dup(b));
      assert.ok(native.sendMessage(b, bytes, attached));
      for (const fd of attached) native.close(fd);
      const peer = new RawPeer(b);
      const abort = await peer.next('abort');
      assert.equal(abort.code, 'ERR_TAKEOVER_PROTOCOL');
      assert.equal(abort.listening, listening);
      assert.equal(abort.readsOnMs, listening ? 30_000 : undefined);
      assert.equal(errors[0]?.message, abort.message, 'the peer is told the same reason');
      assert.deepEqual(events, ['error:ERR_TAKEOVER_PROTOCOL']);
      peer.close();
      await within(once(channel, 'close'), 'close after the refusal');
      await fdsSettle(baseline, 'no fd of the refused frame kept');
    });
  }
}

test('a peer that closes: close once, no error; a send() then fails quietly and closes', async () => {
  const baseline = native.openFdCount();
  const [a, b] = channelPair(dir);
  const { channel, events } = recorded(a);
  native.close(b);
  await within(once(channel, 'close'), "the peer's EOF");
  assert.deepEqual(events, ['close']);

  const [c, d] = channelPair(dir);
  const second = recorded(c);
  native.close(d);
  // The send runs before the poller saw the EOF: the failure must not surface inside send().
  second.channel.send(encode.hello(1));
  assert.equal(second.channel.isBroken, true, 'broken at once');
  assert.deepEqual(second.events, [], 'nothing emitted from inside send()');
  await within(once(second.channel, 'close'), 'the close after the failed send');
  assert.ok(second.events.at(-1) === 'close' && second.events.filter((e) => e === 'close').length === 1, second.events.join());
  await fdsSettle(baseline, 'after the peers closed');
});

test('a peer that sent an ABORT and closed without reading ours: the ABORT is still delivered before the failure', async () => {
  const baseline = native.openFdCount();
  const [a, b] = channelPair(dir);
  const { channel, events, frames } = recorded(a);
  channel.send(encode.hello(1)); // left unread: closing b now resets a
  native.sendMessage(b, encode.abort('ERR_TAKEOVER_FD_LIMIT', 'too many').data, []);
  native.close(b);
  await within(once(channel, 'close'), 'the close');
  assert.deepEqual(frames[0], { type: 'abort', code: 'ERR_TAKEOVER_FD_LIMIT', message: 'too many', listening: false });
  assert.equal(events[0], 'frame:abort', events.join());
  assert.equal(events.at(-1), 'close');
  await turns();
  await fdsSettle(baseline, 'after the reset');
});
