/**
 * Unit tests on bytes for src/protocol.ts. The fd numbers are fake: decodeFrame only checks how
 * many arrived, never touches them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TakeoverError } from '#lib/errors.js';
import {
  decodeFrame,
  decodeWave,
  digestIds,
  encode,
  encodeWave,
  FrameType,
  HEADER_SIZE,
  MAGIC,
  MAX_BODY_SIZE,
  MAX_FDS_PER_FRAME,
  MAX_IDS_PER_FRAME,
  PROTOCOL_VERSION,
  type Frame,
  type Message,
  type Wave,
} from '#lib/protocol.js';

const decode = (m: Message): Frame => decodeFrame(m.data, m.fds);

function isProtocolError(error: unknown): boolean {
  return error instanceof TakeoverError && error.code === 'ERR_TAKEOVER_PROTOCOL';
}

function rejects(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(isProtocolError(error), `expected ERR_TAKEOVER_PROTOCOL, got ${String(error)}`);
    assert.match((error as Error).message, message);
    return true;
  });
}

interface Header {
  magic?: number;
  version?: number;
  flags?: number;
  reserved?: number;
  fdCount?: number;
  bodyLength?: number;
}

/** A frame built by hand, so each header field can be made wrong on its own. */
function raw(type: number, body: Buffer | string = '', header: Header = {}): Buffer {
  const b = Buffer.from(body);
  const data = Buffer.alloc(HEADER_SIZE + b.length);
  data.writeUInt16BE(header.magic ?? MAGIC, 0);
  data.writeUInt8(header.version ?? PROTOCOL_VERSION, 2);
  data.writeUInt8(type, 3);
  data.writeUInt8(header.flags ?? 0, 4);
  data.writeUInt8(header.reserved ?? 0, 5);
  data.writeUInt16BE(header.fdCount ?? 0, 6);
  data.writeUInt32BE(header.bodyLength ?? b.length, 8);
  b.copy(data, HEADER_SIZE);
  return data;
}

const json = (type: number, value: unknown) => raw(type, JSON.stringify(value));
const channel = { name: 'takeover-channel', kind: 'channel', backlog: 511 } as const;

// ---- frames ----

test('the header is laid out as documented', () => {
  const { data, fds } = encode.conns([{ id: 0x01020304, listener: 0x0506, fd: 40 }]);
  assert.deepEqual(fds, [40]);
  assert.deepEqual([...data], [0x53, 0x54, PROTOCOL_VERSION, FrameType.CONNS, 0, 0, 0, 1, 0, 0, 0, 6, 1, 2, 3, 4, 5, 6]);
});

test('every frame type round-trips through encode and decodeFrame', () => {
  const listeners = [
    { name: 'http', kind: 'tcp', backlog: 65535, fd: 10 },
    { name: '/run/app.sock', kind: 'unix', backlog: 0, fd: 11 },
    { ...channel, fd: 12 },
  ] as const;
  const cases: [Message, Frame][] = [
    [encode.hello(4321), { type: 'hello', pid: 4321 }],
    [encode.welcome(1, MAX_FDS_PER_FRAME, 0xffffffff), { type: 'welcome', pid: 1, listeners: MAX_FDS_PER_FRAME, connections: 0xffffffff }],
    [
      encode.abort('ERR_TAKEOVER_TIMEOUT', 'too slow'),
      { type: 'abort', code: 'ERR_TAKEOVER_TIMEOUT', message: 'too slow', listening: false },
    ],
    [
      encode.abort('ERR_TAKEOVER_TIMEOUT', 'gave up', true, 30_000),
      { type: 'abort', code: 'ERR_TAKEOVER_TIMEOUT', message: 'gave up', listening: true, readsOnMs: 30_000 },
    ],
    [encode.listeners(listeners), { type: 'listeners', listeners: listeners.map((l) => ({ ...l })) }],
    [
      encode.conns([
        { id: 0, listener: 0, fd: 20 },
        { id: 0xffffffff, listener: 0xffff, fd: 21 },
      ]),
      {
        type: 'conns',
        conns: [
          { id: 0, listener: 0, fd: 20 },
          { id: 0xffffffff, listener: 0xffff, fd: 21 },
        ],
      },
    ],
    [encode.ack(0xffffffff), { type: 'ack', seq: 0xffffffff }],
    [encode.closed([7, 0, 0xffffffff]), { type: 'closed', ids: [7, 0, 0xffffffff] }],
    [encode.prepare(3, 0xffffffff, 0), { type: 'prepare', connections: 3, idSum: 0xffffffff, idXor: 0 }],
    [encode.commit(), { type: 'commit' }],
    [encode.listening(2500), { type: 'listening', quiesceMs: 2500 }],
    [encode.waveAck(9), { type: 'waveAck', seq: 9 }],
    [encode.done(2, 1500), { type: 'done', retained: 2, maxPauseUs: 1500 }],
  ];
  for (const [message, frame] of cases) assert.deepEqual(decode(message), frame);
  const [wave] = encode.wave(Buffer.from('blob'));
  assert.deepEqual(decode(wave!), { type: 'wave', more: false, chunk: Buffer.from('blob') });
});

test('encode.abort truncates the message to what the decoder accepts', () => {
  const frame = decode(encode.abort('ERR_TAKEOVER_SYSTEM', 'é'.repeat(5000)));
  assert.deepEqual(frame, { type: 'abort', code: 'ERR_TAKEOVER_SYSTEM', message: 'é'.repeat(1000), listening: false });
});

test('every ABORT encode.abort produces decodes', () => {
  assert.equal(decode(encode.abort('ERR_TAKEOVER_SYSTEM', '')).type, 'abort');
});

test('encode throws RangeError past MAX_BODY_SIZE and MAX_FDS_PER_FRAME; at the limits it decodes', () => {
  const ids = Array.from({ length: MAX_IDS_PER_FRAME }, (_, i) => i);
  assert.deepEqual(decode(encode.closed(ids)), { type: 'closed', ids });
  assert.throws(() => encode.closed([...ids, 1]), RangeError);

  const conns = Array.from({ length: MAX_FDS_PER_FRAME }, (_, i) => ({ id: i, listener: 0, fd: 100 + i }));
  assert.equal((decode(encode.conns(conns)) as { conns: unknown[] }).conns.length, MAX_FDS_PER_FRAME);
  assert.throws(() => encode.conns([...conns, { id: 999, listener: 0, fd: 999 }]), RangeError);
  const listeners = conns.map(({ id, fd }) => ({ name: `l${id}`, kind: 'tcp' as const, backlog: 511, fd }));
  assert.throws(() => encode.listeners([...listeners, { ...channel, fd: 1 }]), RangeError);
});

test('decodeFrame rejects a bad header', () => {
  rejects(() => decodeFrame(Buffer.alloc(HEADER_SIZE - 1), []), /frame of 11 bytes is shorter than its header/);
  rejects(() => decodeFrame(raw(FrameType.COMMIT, '', { magic: 0x5453 }), []), /bad frame magic/);
  rejects(() => decodeFrame(raw(FrameType.COMMIT, '', { version: 1 }), []), /protocol version 1 is not supported \(this side speaks 2\)/);
  for (const type of [0, 14, 255]) rejects(() => decodeFrame(raw(type), []), new RegExp(`unknown frame type ${type}$`));
  rejects(() => decodeFrame(raw(FrameType.COMMIT, '', { reserved: 1 }), []), /reserved header byte is not 0/);
  rejects(() => decodeFrame(raw(FrameType.ACK, 'abc', { bodyLength: 4 }), []), /header says 4 body bytes, frame has 3/);
  rejects(() => decodeFrame(raw(FrameType.ACK, 'abcd', { bodyLength: 3 }), []), /header says 3 body bytes, frame has 4/);
  rejects(() => decodeFrame(raw(FrameType.CONNS, 'abcdef', { fdCount: 1 }), []), /header says 1 fds, 0 arrived/);
  rejects(() => decodeFrame(raw(FrameType.CONNS, 'abcdef', { fdCount: 1 }), [3, 4]), /header says 1 fds, 2 arrived/);
  rejects(() => decodeFrame(raw(FrameType.COMMIT, '', { flags: 1 }), []), /bad flags 1/);
  for (const flags of [2, 3, 0x80]) rejects(() => decodeFrame(raw(FrameType.WAVE, 'x', { flags }), []), new RegExp(`bad flags ${flags}`));
});

test('decodeFrame rejects JSON bodies that are not JSON objects with the right fields', () => {
  rejects(() => decodeFrame(raw(FrameType.HELLO, '{"pid":'), []), /HELLO frame body is not JSON/);
  rejects(() => decodeFrame(raw(FrameType.DONE, ''), []), /DONE frame body is not JSON/);
  for (const body of ['42', 'null', '"text"', 'true']) {
    rejects(() => decodeFrame(raw(FrameType.PREPARE, body), []), /PREPARE frame body is not an object/);
  }
  const u32 = /must be an integer in 0\.\.4294967295/;
  for (const pid of [undefined, '1', -1, 1.5, 2 ** 32, null, [1]]) {
    rejects(() => decodeFrame(json(FrameType.HELLO, { pid }), []), new RegExp(`HELLO frame: 'pid' ${u32.source}`));
  }
  rejects(() => decodeFrame(json(FrameType.HELLO, []), []), /'pid'/);
  rejects(
    () => decodeFrame(json(FrameType.WELCOME, { pid: 1, listeners: 254, connections: 0 }), []),
    /'listeners' must be an integer in 0\.\.253/,
  );
  rejects(() => decodeFrame(json(FrameType.WELCOME, { pid: 1, listeners: 1 }), []), /'connections'/);
  rejects(() => decodeFrame(json(FrameType.PREPARE, { connections: 1, idSum: 1, idXor: -1 }), []), /PREPARE frame: 'idXor'/);
  rejects(() => decodeFrame(json(FrameType.DONE, { retained: 0, maxPauseUs: 0.5 }), []), /DONE frame: 'maxPauseUs'/);
  rejects(() => decodeFrame(json(FrameType.DONE, { maxPauseUs: 0 }), []), /DONE frame: 'retained'/);

  const abort = (code: unknown, message: unknown) => () => decodeFrame(json(FrameType.ABORT, { code, message }), []);
  rejects(abort(undefined, 'm'), /ABORT frame: 'code' must be a string of 1\.\.100 characters/);
  rejects(abort('', 'm'), /'code' must be a string/);
  rejects(abort('C'.repeat(101), 'm'), /'code' must be a string/);
  rejects(abort(7, 'm'), /'code' must be a string/);
  rejects(abort('C', ''), /'message' must be a string of 1\.\.1000 characters/);
  rejects(abort('C', 'm'.repeat(1001)), /'message' must be a string/);
  // A successor that gave up past LISTENING says it keeps the listeners; anything but a boolean is refused.
  for (const listening of [1, 'true', null, {}]) {
    rejects(
      () => decodeFrame(json(FrameType.ABORT, { code: 'C', message: 'm', listening }), []),
      /ABORT frame: 'listening' must be a boolean/,
    );
  }
  for (const readsOnMs of [-1, 1.5, '10', null, 2 ** 32]) {
    rejects(
      () => decodeFrame(json(FrameType.ABORT, { code: 'C', message: 'm', listening: true, readsOnMs }), []),
      /ABORT frame: 'readsOnMs' must be an integer in 0\.\.4294967295/,
    );
  }
  // Left out by a peer of an earlier release: it does not say (the old process then asks the kernel).
  assert.equal((decodeFrame(json(FrameType.ABORT, { code: 'C', message: 'm' }), []) as { listening?: boolean }).listening, undefined);
  const listening = (body: unknown) => () => decodeFrame(json(FrameType.LISTENING, body), []);
  rejects(listening({}), /LISTENING frame: 'quiesceMs' must be an integer in 0\.\.86400000/);
  rejects(listening({ quiesceMs: 86_400_001 }), /'quiesceMs' must be an integer in 0\.\.86400000/);
  rejects(listening({ quiesceMs: -1 }), /'quiesceMs' must be an integer/);
  rejects(listening([1]), /'quiesceMs' must be an integer/);
});

test('decodeFrame rejects fds on every frame type that must not carry any', () => {
  const frames: [string, Message][] = [
    ['HELLO', encode.hello(1)],
    ['WELCOME', encode.welcome(1, 1, 1)],
    ['ABORT', encode.abort('C', 'm')],
    ['ACK', encode.ack(1)],
    ['CLOSED', encode.closed([1])],
    ['PREPARE', encode.prepare(1, 1, 1)],
    ['COMMIT', encode.commit()],
    ['LISTENING', encode.listening(0)],
    ['WAVE', encode.wave(Buffer.from('x'))[0]!],
    ['WAVE_ACK', encode.waveAck(1)],
    ['DONE', encode.done(1, 1)],
  ];
  for (const [name, { data }] of frames) {
    const withFd = Buffer.from(data);
    withFd.writeUInt16BE(1, 6);
    rejects(() => decodeFrame(withFd, [5]), new RegExp(`^${name} frame must not carry file descriptors$`));
  }
});

test('decodeFrame checks LISTENERS entries against their fds', () => {
  const listeners =
    (entries: unknown[], fds = entries.map((_, i) => 10 + i)) =>
    () =>
      decodeFrame(raw(FrameType.LISTENERS, JSON.stringify(entries), { fdCount: fds.length }), fds);
  const tcp = { name: 'a', kind: 'tcp', backlog: 511 };
  rejects(listeners([tcp, channel], [10, 11, 12]), /LISTENERS frame lists 2 listeners with 3 fds/);
  rejects(listeners([tcp, channel], [10]), /lists 2 listeners with 1 fds/);
  rejects(listeners([]), /lists 0 listeners with 0 fds/);
  rejects(() => decodeFrame(json(FrameType.LISTENERS, { 0: tcp }), []), /LISTENERS frame body must be an array/);
  rejects(listeners([tcp, tcp, channel]), /LISTENERS frame names 'a' twice/);
  rejects(listeners([{ name: 'a', kind: 'udp' }, channel]), /unknown kind 'udp'/);
  rejects(listeners([tcp, 'b', channel]), /LISTENERS entry is not an object/);
  rejects(listeners([tcp, null, channel]), /LISTENERS entry is not an object/);
  rejects(listeners([{ name: '', kind: 'tcp', backlog: 1 }, channel]), /'name' must be a string of 1\.\.1000 characters/);
  rejects(listeners([{ name: 'a', kind: 'tcp' }, channel]), /'backlog' must be an integer in 0\.\.65535/);
  rejects(listeners([{ name: 'a', kind: 'tcp', backlog: 65536 }, channel]), /'backlog' must be an integer in 0\.\.65535/);
  rejects(listeners([{ name: 'a' }, channel]), /'kind' must be a string/);
  rejects(listeners([tcp]), /must carry exactly one channel listener/);
  rejects(listeners([tcp, channel, { name: 'c2', kind: 'channel', backlog: 1 }]), /must carry exactly one channel listener/);
});

test('decodeFrame checks the sizes of binary bodies', () => {
  rejects(() => decodeFrame(raw(FrameType.CONNS, ''), []), /CONNS frame carries no fds/);
  rejects(() => decodeFrame(raw(FrameType.CONNS, 'x'.repeat(11), { fdCount: 2 }), [3, 4]), /CONNS frame body must be 12 bytes, got 11/);
  rejects(() => decodeFrame(raw(FrameType.CONNS, 'x'.repeat(13), { fdCount: 2 }), [3, 4]), /must be 12 bytes, got 13/);
  for (const [type, name] of [
    [FrameType.ACK, 'ACK'],
    [FrameType.WAVE_ACK, 'WAVE_ACK'],
  ] as const) {
    for (const size of [0, 3, 5, 8])
      rejects(() => decodeFrame(raw(type, 'x'.repeat(size)), []), new RegExp(`^${name} frame body must be 4 bytes, got ${size}$`));
  }
  for (const size of [0, 3, 5])
    rejects(() => decodeFrame(raw(FrameType.CLOSED, 'x'.repeat(size)), []), /CLOSED frame body must be a non-empty list of u32/);
  rejects(() => decodeFrame(raw(FrameType.COMMIT, 'x'), []), /^COMMIT frame body must be 0 bytes, got 1$/);
});

// ---- waves ----

const sampleWave: Wave = {
  seq: 0xffffffff,
  records: [
    {
      id: 0,
      fate: 'moved',
      adapter: 'net',
      input: Buffer.from('in'),
      output: Buffer.from('out'),
      protocolState: undefined,
      state: Buffer.from('state'),
    },
    {
      id: 1,
      fate: 'moved',
      adapter: 'http',
      input: Buffer.from('only input'),
      output: Buffer.alloc(0),
      protocolState: Buffer.from('{}'),
      state: undefined,
    },
    {
      id: 2,
      fate: 'moved',
      adapter: 'ws',
      input: Buffer.alloc(0),
      output: Buffer.from('only output'),
      protocolState: Buffer.alloc(0),
      state: Buffer.alloc(0),
    },
    { id: 3, fate: 'moved', adapter: 'net', input: Buffer.alloc(0), output: Buffer.alloc(0), protocolState: undefined, state: undefined },
    { id: 4, fate: 'retained' },
    { id: 5, fate: 'deferred' },
    { id: 0xffffffff, fate: 'closed' },
  ],
};

test('encodeWave lays out seq, count, then per record: id, fate|flags, adapter, four lengths, the bytes', () => {
  const blob = encodeWave({
    seq: 7,
    records: [
      {
        id: 9,
        fate: 'moved',
        adapter: 'ws',
        input: Buffer.from('i'),
        output: Buffer.from('oo'),
        protocolState: Buffer.from('ppp'),
        state: Buffer.from('s'),
      },
      { id: 5, fate: 'closed' },
      { id: 6, fate: 'deferred' },
    ],
  });
  const expected = Buffer.concat([
    Buffer.from([0, 0, 0, 7, 0, 0, 0, 3]),
    Buffer.from([0, 0, 0, 9, 0x30, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 1]),
    Buffer.from('iooppps'),
    Buffer.from([0, 0, 0, 5, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    Buffer.from([0, 0, 0, 6, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
  ]);
  assert.deepEqual(blob, expected);
});

test('waves round-trip: moved with and without state, empty and non-empty bytes, retained, closed', () => {
  assert.deepEqual(decodeWave(encodeWave(sampleWave)), sampleWave);
  assert.deepEqual(decodeWave(encodeWave({ seq: 0, records: [] })), { seq: 0, records: [] });
});

/** Decodes a wave's frames as the successor does: WAVE chunks up to the one without MORE. */
function reassemble(frames: Message[]): Buffer {
  const chunks = frames.map((m, i) => {
    const frame = decode(m);
    assert.equal(frame.type, 'wave');
    assert.equal(frame.type === 'wave' && frame.more, i < frames.length - 1, `MORE flag on frame ${i} of ${frames.length}`);
    return frame.type === 'wave' ? frame.chunk : Buffer.alloc(0);
  });
  return Buffer.concat(chunks);
}

test('encode.wave splits a big wave over frames, MORE on all but the last; it reassembles equal', () => {
  const big = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7919) & 0xff));
  const wave: Wave = {
    seq: 3,
    records: [
      ...sampleWave.records,
      { id: 10, fate: 'moved', adapter: 'net', input: big(70_000), output: big(150_000), protocolState: big(300), state: big(20_000) },
      {
        id: 11,
        fate: 'moved',
        adapter: 'http',
        input: Buffer.alloc(0),
        output: big(MAX_BODY_SIZE),
        protocolState: undefined,
        state: undefined,
      },
    ],
  };
  const blob = encodeWave(wave);
  const frames = encode.wave(blob);
  assert.equal(frames.length, Math.ceil(blob.length / MAX_BODY_SIZE));
  assert.ok(frames.length >= 4);
  for (const { data } of frames) assert.ok(data.length <= HEADER_SIZE + MAX_BODY_SIZE);
  assert.deepEqual(decodeWave(reassemble(frames)), wave);

  assert.equal(encode.wave(Buffer.alloc(MAX_BODY_SIZE)).length, 1);
  assert.equal(reassemble(encode.wave(Buffer.alloc(MAX_BODY_SIZE + 1))).length, MAX_BODY_SIZE + 1);
});

test('an empty wave is still one frame', () => {
  const frames = encode.wave(encodeWave({ seq: 4, records: [] }));
  assert.equal(frames.length, 1);
  assert.deepEqual(decodeWave(reassemble(frames)), { seq: 4, records: [] });
  assert.deepEqual(decode(encode.wave(Buffer.alloc(0))[0]!), { type: 'wave', more: false, chunk: Buffer.alloc(0) });
  assert.equal(encode.wave(Buffer.alloc(0)).length, 1);
});

/** One wave record by hand: id, flags byte, adapter byte, the four lengths, then `data`. */
function record(id: number, flags: number, lengths: [number, number, number, number], data = '', adapter = 0): Buffer {
  const head = Buffer.alloc(22);
  head.writeUInt32BE(id, 0);
  head.writeUInt8(flags, 4);
  head.writeUInt8(adapter, 5);
  lengths.forEach((n, i) => head.writeUInt32BE(n, 6 + i * 4));
  return Buffer.concat([head, Buffer.from(data)]);
}

function blob(count: number, ...records: Buffer[]): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(1, 0);
  head.writeUInt32BE(count, 4);
  return Buffer.concat([head, ...records]);
}

const MOVED = 0;
const RETAINED = 1;
const CLOSED = 2;
const DEFERRED = 3;
const HAS_STATE = 0x10;
const HAS_PROTOCOL_STATE = 0x20;

test('decodeWave rejects malformed waves', () => {
  assert.deepEqual(decodeWave(blob(1, record(1, MOVED | HAS_STATE | HAS_PROTOCOL_STATE, [1, 1, 1, 1], 'abcd', 2))).records.length, 1);
  rejects(() => decodeWave(Buffer.alloc(7)), /wave shorter than its header/);
  rejects(() => decodeWave(blob(2, record(1, CLOSED, [0, 0, 0, 0]))), /wave claims 2 records in 30 bytes/);
  rejects(() => decodeWave(blob(0xffffffff)), /wave claims 4294967295 records in 8 bytes/);
  rejects(() => decodeWave(blob(1, record(1, MOVED, [5, 0, 0, 0], 'ab'))), /wave record data runs past the end/);
  rejects(() => decodeWave(blob(1, record(1, MOVED, [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff]))), /data runs past the end/);
  rejects(
    () => decodeWave(blob(2, record(1, MOVED, [10, 0, 0, 0], '0123456789'), Buffer.alloc(15))),
    /wave record header runs past the end/,
  );
  rejects(() => decodeWave(Buffer.concat([blob(1, record(1, CLOSED, [0, 0, 0, 0])), Buffer.from('x')])), /wave has 1 trailing bytes/);
  rejects(() => decodeWave(blob(0, record(1, CLOSED, [0, 0, 0, 0]))), /wave has 22 trailing bytes/);
  rejects(() => decodeWave(blob(2, record(7, RETAINED, [0, 0, 0, 0]), record(7, MOVED, [0, 0, 0, 0]))), /wave names connection 7 twice/);
  for (const flags of [4, 0x0f, 0x40, 0x80, 0x12 | 0x40]) {
    rejects(() => decodeWave(blob(1, record(1, flags, [0, 0, 0, 0]))), new RegExp(`wave record has bad flags ${flags}$`));
  }
  rejects(() => decodeWave(blob(1, record(1, MOVED, [0, 0, 0, 0], '', 3))), /wave record names unknown adapter 3$/);
  rejects(() => decodeWave(blob(1, record(1, RETAINED, [1, 0, 0, 0], 'x'))), /a retained wave record carries data/);
  rejects(() => decodeWave(blob(1, record(1, CLOSED, [0, 0, 0, 1], 'x'))), /a closed wave record carries data/);
  rejects(() => decodeWave(blob(1, record(1, CLOSED | HAS_STATE, [0, 0, 0, 0]))), /a closed wave record carries data/);
  rejects(() => decodeWave(blob(1, record(1, DEFERRED, [0, 0, 0, 0], '', 1))), /a deferred wave record carries data/);
  rejects(() => decodeWave(blob(1, record(1, MOVED, [0, 0, 0, 2], 'st'))), /wave record has state bytes but no state flag/);
  rejects(() => decodeWave(blob(1, record(1, MOVED, [0, 0, 2, 0], 'st'))), /wave record has state bytes but no state flag/);
});

test('digestIds is order-independent and tells apart different sets of the same size', () => {
  assert.deepEqual(digestIds([]), { connections: 0, idSum: 0, idXor: 0 });
  const ids = [5, 1, 9, 0xffffffff, 0];
  const digest = digestIds(ids);
  assert.deepEqual(digestIds([...ids].reverse()), digest);
  assert.deepEqual(digestIds(new Set([0, 9, 0xffffffff, 1, 5])), digest);
  assert.deepEqual(digestIds([0xffffffff, 1]), { connections: 2, idSum: 0, idXor: 0xfffffffe });
  // Same sum, different xor; then same xor, different sum.
  assert.notDeepEqual(digestIds([1, 2, 3]), digestIds([0, 2, 4]));
  assert.notDeepEqual(digestIds([1, 2, 3]), digestIds([3, 5, 6]));
  assert.notDeepEqual(digestIds([1, 2, 3]), digestIds([1, 2, 4]));
  assert.deepEqual(decode(encode.prepare(digest.connections, digest.idSum, digest.idXor)), { type: 'prepare', ...digest });
});

// ---- fuzz ----

/** mulberry32: a seeded PRNG, so a failure reproduces from the iteration number alone. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  return {
    int,
    pick: <T>(xs: readonly T[]): T => xs[int(xs.length)]!,
    bytes: (n: number) => Buffer.from(Array.from({ length: n }, () => int(256))),
  };
}

type Rng = ReturnType<typeof prng>;

/** JSON fragments that are each valid somewhere and wrong somewhere else. */
const TOKENS = ['-1', '1.5', '4294967296', '1e999', 'null', '[]', '{}', '"x"', '""', 'true', ',', ':', '"kind":"channel"', '"name":"a"'];

function mutate(rng: Rng, input: Buffer): Buffer {
  let b = Buffer.from(input);
  for (let n = 1 + rng.int(3); n > 0; n--) {
    const at = rng.int(b.length + 1);
    switch (rng.int(6)) {
      case 0:
        if (b.length > 0) b[at % b.length]! ^= 1 << rng.int(8);
        break;
      case 1:
        if (b.length > 0) b[at % b.length] = rng.int(256);
        break;
      case 2:
        b = b.subarray(0, at);
        break;
      case 3:
        b = Buffer.concat([b, rng.bytes(1 + rng.int(20))]);
        break;
      case 4:
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1 + rng.int(20))]);
        break;
      default:
        b = Buffer.concat([b.subarray(0, at), Buffer.from(rng.pick(TOKENS)), b.subarray(at)]);
    }
  }
  return b;
}

const seedFrames: Message[] = [
  encode.hello(4321),
  encode.welcome(1, 2, 3),
  encode.abort('ERR_TAKEOVER_TIMEOUT', 'too slow'),
  encode.listeners([
    { name: 'http', kind: 'tcp', backlog: 64, fd: 10 },
    { ...channel, fd: 11 },
  ]),
  encode.conns([
    { id: 1, listener: 0, fd: 20 },
    { id: 2, listener: 1, fd: 21 },
  ]),
  encode.ack(1),
  encode.closed([1, 2]),
  encode.prepare(2, 3, 3),
  encode.commit(),
  encode.listening(10),
  encode.waveAck(1),
  encode.done(1, 250),
  ...encode.wave(Buffer.alloc(MAX_BODY_SIZE + 10)),
];
const seedWaves = [
  encodeWave(sampleWave),
  encodeWave({ seq: 1, records: [] }),
  encodeWave({ seq: 2, records: sampleWave.records.slice(0, 2) }),
];

test('fuzz: mutated frames and waves decode or throw ERR_TAKEOVER_PROTOCOL, nothing else', () => {
  const rng = prng(0x5354);
  const outcomes = { frames: 0, frameErrors: 0, waves: 0, waveErrors: 0 };
  const attempt = (what: string, i: number, input: Buffer, fn: () => void, errors: 'frameErrors' | 'waveErrors') => {
    try {
      fn();
    } catch (error) {
      if (!isProtocolError(error))
        assert.fail(`${what} at iteration ${i} threw ${String(error)}: ${input.subarray(0, 200).toString('hex')}`);
      outcomes[errors]++;
    }
  };
  for (let i = 0; i < 20_000; i++) {
    const seed = rng.pick(seedFrames);
    const data = mutate(rng, seed.data);
    let fds = [...seed.fds];
    if (rng.int(8) === 0) fds = rng.int(2) ? [...fds, 99] : fds.slice(1);
    // Most mutations break the header's counts; fixing them often lets the body checks run too.
    if (data.length >= HEADER_SIZE && rng.int(2)) {
      data.writeUInt32BE(data.length - HEADER_SIZE, 8);
      data.writeUInt16BE(fds.length, 6);
    }
    attempt(
      'decodeFrame',
      i,
      data,
      () => {
        decodeFrame(data, fds);
        outcomes.frames++;
      },
      'frameErrors',
    );

    const wave = mutate(rng, rng.pick(seedWaves));
    attempt(
      'decodeWave',
      i,
      wave,
      () => {
        // The decoder accepts only the canonical encoding: whatever it accepts re-encodes byte for byte.
        assert.deepEqual(encodeWave(decodeWave(wave)), wave);
        outcomes.waves++;
      },
      'waveErrors',
    );
  }
  for (const [outcome, count] of Object.entries(outcomes))
    assert.ok(count > 100, `only ${count} ${outcome}: the fuzz is not reaching both outcomes`);
});
