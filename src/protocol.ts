/**
 * The takeover channel's wire format. Pure: encodes frames to bytes and decodes bytes back,
 * validating everything before any caller acts on it. See docs/DESIGN.md for the sequence.
 *
 * Every frame is one SOCK_SEQPACKET message: a 12-byte header, then a body.
 *
 *   offset 0  u16 magic 0x5354 ("ST")
 *          2  u8  protocol version
 *          3  u8  frame type
 *          4  u8  flags (bit 0: MORE, the wave continues in the next frame)
 *          5  u8  reserved, 0
 *          6  u16 number of file descriptors attached (SCM_RIGHTS)
 *          8  u32 body length
 */
import { ErrorCodes, TakeoverError } from './errors.js';
import { MAX_FDS_PER_MESSAGE, close } from './native.js';

/** 2: LISTENING carries the quiescence bound; wave records carry the adapter, its state, and the 'deferred' fate. */
export const PROTOCOL_VERSION = 2;
export const MAGIC = 0x5354;
export const HEADER_SIZE = 12;
/** One seqpacket message stays well under the default socket buffer (about 208 KiB). */
export const MAX_FRAME_SIZE = 64 * 1024;
export const MAX_BODY_SIZE = MAX_FRAME_SIZE - HEADER_SIZE;
/** The fds one frame may carry: as many as one message (SCM_MAX_FD). */
export const MAX_FDS_PER_FRAME = MAX_FDS_PER_MESSAGE;
/**
 * A reassembled wave may carry much pending output; this bounds what a bad peer can make us
 * buffer. Joining the chunks holds them and their copy at once, so memory peaks at twice this
 * (1 GiB). A real wave stays well below: 64 MiB of budget plus one connection of at most 256 MiB.
 */
export const MAX_WAVE_SIZE = 512 * 1024 * 1024;
const FLAG_MORE = 1;
/** Longest quiescence bound a LISTENING frame may announce (one day); also the option's limit. */
export const MAX_QUIESCE_MS = 24 * 60 * 60 * 1000;

export const FrameType = {
  HELLO: 1,
  WELCOME: 2,
  ABORT: 3,
  LISTENERS: 4,
  CONNS: 5,
  ACK: 6,
  CLOSED: 7,
  PREPARE: 8,
  COMMIT: 9,
  LISTENING: 10,
  WAVE: 11,
  WAVE_ACK: 12,
  DONE: 13,
} as const;

export type ListenerKind = 'tcp' | 'unix' | 'channel';

export interface ListenerEntry {
  name: string;
  kind: ListenerKind;
  /** The listen() backlog, so the successor (and a resume) keeps it instead of Node's default. */
  backlog: number;
}

/** Largest backlog a LISTENERS entry may carry (the kernel caps it at net.core.somaxconn anyway). */
export const MAX_BACKLOG = 65535;

export interface ConnEntry {
  id: number;
  /** Index into the LISTENERS frame's list. */
  listener: number;
}

export type Frame =
  | { type: 'hello'; pid: number }
  | { type: 'welcome'; pid: number; listeners: number; connections: number }
  /**
   * `listening`: true, the sender is a successor past LISTENING, which keeps accepting on the
   * listeners (and passes them to whoever takes it over): the predecessor must never take them
   * back. False, it never accepted on them and closed its copies. Undefined from a peer of an
   * earlier release of this protocol version, which does not say. `readsOnMs`, with `listening`:
   * the sender reads on at least that long after its ABORT unless the channel closes first, and
   * refuses to be taken over meanwhile: dead before then, it passed the listeners to no one.
   */
  | { type: 'abort'; code: string; message: string; listening: boolean | undefined; readsOnMs?: number }
  | { type: 'listeners'; listeners: (ListenerEntry & { fd: number })[] }
  | { type: 'conns'; conns: (ConnEntry & { fd: number })[] }
  | { type: 'ack'; seq: number }
  | { type: 'closed'; ids: number[] }
  | { type: 'prepare'; connections: number; idSum: number; idXor: number }
  | { type: 'commit' }
  /** `quiesceMs`: how long the predecessor may keep deferring busy connections before it retains them. */
  | { type: 'listening'; quiesceMs: number }
  | { type: 'wave'; more: boolean; chunk: Buffer }
  | { type: 'waveAck'; seq: number }
  /** `maxPauseUs`: the longest wave as the predecessor measured it, freeze to WAVE_ACK. */
  | { type: 'done'; retained: number; maxPauseUs: number };

export type FrameName = Frame['type'];

/** Closes the fds a frame brought when nothing takes them (a LISTENERS or CONNS that is unexpected or late). */
export function closeFrameFds(frame: Frame): void {
  const entries = frame.type === 'listeners' ? frame.listeners : frame.type === 'conns' ? frame.conns : [];
  for (const { fd } of entries) close(fd);
}

/** What goes out on the channel: bytes plus the fds to attach. */
export interface Message {
  data: Buffer;
  fds: readonly number[];
}

function protocolError(message: string): TakeoverError {
  return new TakeoverError(ErrorCodes.PROTOCOL, message);
}

function frame(type: number, body: Buffer, fds: readonly number[] = [], flags = 0): Message {
  if (body.length > MAX_BODY_SIZE) throw new RangeError(`frame body of ${body.length} bytes exceeds ${MAX_BODY_SIZE}`);
  if (fds.length > MAX_FDS_PER_FRAME) throw new RangeError(`${fds.length} fds exceed ${MAX_FDS_PER_FRAME} per frame`);
  const data = Buffer.allocUnsafe(HEADER_SIZE + body.length);
  data.writeUInt16BE(MAGIC, 0);
  data.writeUInt8(PROTOCOL_VERSION, 2);
  data.writeUInt8(type, 3);
  data.writeUInt8(flags, 4);
  data.writeUInt8(0, 5);
  data.writeUInt16BE(fds.length, 6);
  data.writeUInt32BE(body.length, 8);
  body.copy(data, HEADER_SIZE);
  return { data, fds };
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value));
}

function u32List(values: readonly number[]): Buffer {
  const body = Buffer.allocUnsafe(values.length * 4);
  values.forEach((v, i) => body.writeUInt32BE(v, i * 4));
  return body;
}

export const encode = {
  hello: (pid: number) => frame(FrameType.HELLO, json({ pid })),
  welcome: (pid: number, listeners: number, connections: number) => frame(FrameType.WELCOME, json({ pid, listeners, connections })),
  abort: (code: string, message: string, listening = false, readsOnMs?: number) =>
    frame(FrameType.ABORT, json({ code, message: (message || code).slice(0, 1000), listening, readsOnMs })),
  listeners: (entries: readonly (ListenerEntry & { fd: number })[]) =>
    frame(
      FrameType.LISTENERS,
      json(entries.map(({ name, kind, backlog }) => ({ name, kind, backlog }))),
      entries.map((e) => e.fd),
    ),
  conns: (entries: readonly (ConnEntry & { fd: number })[]) => {
    const body = Buffer.allocUnsafe(entries.length * 6);
    entries.forEach((e, i) => {
      body.writeUInt32BE(e.id, i * 6);
      body.writeUInt16BE(e.listener, i * 6 + 4);
    });
    return frame(
      FrameType.CONNS,
      body,
      entries.map((e) => e.fd),
    );
  },
  ack: (seq: number) => frame(FrameType.ACK, u32List([seq])),
  closed: (ids: readonly number[]) => frame(FrameType.CLOSED, u32List(ids)),
  prepare: (connections: number, idSum: number, idXor: number) => frame(FrameType.PREPARE, json({ connections, idSum, idXor })),
  commit: () => frame(FrameType.COMMIT, Buffer.alloc(0)),
  listening: (quiesceMs: number) => frame(FrameType.LISTENING, json({ quiesceMs })),
  waveAck: (seq: number) => frame(FrameType.WAVE_ACK, u32List([seq])),
  done: (retained: number, maxPauseUs: number) => frame(FrameType.DONE, json({ retained, maxPauseUs })),
  /** A wave blob (see {@link encodeWave}) split into as many frames as it needs. */
  wave: (blob: Buffer): Message[] => {
    const frames: Message[] = [];
    for (let offset = 0; offset < blob.length || frames.length === 0; offset += MAX_BODY_SIZE) {
      const end = Math.min(offset + MAX_BODY_SIZE, blob.length);
      frames.push(frame(FrameType.WAVE, blob.subarray(offset, end), [], end < blob.length ? FLAG_MORE : 0));
    }
    return frames;
  },
};

/** Largest CLOSED list that fits one frame. */
export const MAX_IDS_PER_FRAME = Math.floor(MAX_BODY_SIZE / 4);

// ---- decoding ----

function parseJson(body: Buffer, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch {
    throw protocolError(`${what} frame body is not JSON`);
  }
  if (value === null || typeof value !== 'object') throw protocolError(`${what} frame body is not an object`);
  return value as Record<string, unknown>;
}

function integer(obj: Record<string, unknown>, key: string, what: string, max = 0xffffffff): number {
  const v = obj[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) {
    throw protocolError(`${what} frame: '${key}' must be an integer in 0..${max}`);
  }
  return v;
}

function text(obj: Record<string, unknown>, key: string, what: string, max: number): string {
  const v = obj[key];
  if (typeof v !== 'string' || v.length === 0 || v.length > max) {
    throw protocolError(`${what} frame: '${key}' must be a string of 1..${max} characters`);
  }
  return v;
}

function expectBody(body: Buffer, length: number, what: string): void {
  if (body.length !== length) throw protocolError(`${what} frame body must be ${length} bytes, got ${body.length}`);
}

function expectFds(fds: readonly number[], allowed: boolean, what: string): void {
  if (!allowed && fds.length > 0) throw protocolError(`${what} frame must not carry file descriptors`);
}

const LISTENER_KINDS: readonly string[] = ['tcp', 'unix', 'channel'];

/**
 * The one entry point for bytes from the channel. Checks magic, version, type, flags,
 * sizes and fd counts, then the body of that type. Throws ERR_TAKEOVER_PROTOCOL; the
 * caller owns (and on error must close) the fds it passed in.
 */
export function decodeFrame(data: Buffer, fds: readonly number[]): Frame {
  if (data.length < HEADER_SIZE) throw protocolError(`frame of ${data.length} bytes is shorter than its header`);
  if (data.readUInt16BE(0) !== MAGIC) throw protocolError('bad frame magic');
  const version = data.readUInt8(2);
  if (version !== PROTOCOL_VERSION) {
    throw protocolError(`protocol version ${version} is not supported (this side speaks ${PROTOCOL_VERSION})`);
  }
  const type = data.readUInt8(3);
  const flags = data.readUInt8(4);
  if (data.readUInt8(5) !== 0) throw protocolError('reserved header byte is not 0');
  const fdCount = data.readUInt16BE(6);
  const bodyLength = data.readUInt32BE(8);
  if (bodyLength !== data.length - HEADER_SIZE) {
    throw protocolError(`header says ${bodyLength} body bytes, frame has ${data.length - HEADER_SIZE}`);
  }
  if (fdCount !== fds.length) throw protocolError(`header says ${fdCount} fds, ${fds.length} arrived`);
  if (flags & ~FLAG_MORE || (flags !== 0 && type !== FrameType.WAVE)) throw protocolError(`bad flags ${flags}`);
  const body = data.subarray(HEADER_SIZE);

  switch (type) {
    case FrameType.HELLO: {
      expectFds(fds, false, 'HELLO');
      const o = parseJson(body, 'HELLO');
      return { type: 'hello', pid: integer(o, 'pid', 'HELLO') };
    }
    case FrameType.WELCOME: {
      expectFds(fds, false, 'WELCOME');
      const o = parseJson(body, 'WELCOME');
      return {
        type: 'welcome',
        pid: integer(o, 'pid', 'WELCOME'),
        listeners: integer(o, 'listeners', 'WELCOME', MAX_FDS_PER_FRAME),
        connections: integer(o, 'connections', 'WELCOME'),
      };
    }
    case FrameType.ABORT: {
      expectFds(fds, false, 'ABORT');
      const o = parseJson(body, 'ABORT');
      // Optional: a peer of an earlier release of this protocol version leaves it out.
      if (o.listening !== undefined && typeof o.listening !== 'boolean') throw protocolError("ABORT frame: 'listening' must be a boolean");
      return {
        type: 'abort',
        code: text(o, 'code', 'ABORT', 100),
        message: text(o, 'message', 'ABORT', 1000),
        listening: o.listening,
        ...(o.readsOnMs !== undefined && { readsOnMs: integer(o, 'readsOnMs', 'ABORT') }),
      };
    }
    case FrameType.LISTENERS: {
      const list = parseJson(body, 'LISTENERS');
      if (!Array.isArray(list)) throw protocolError('LISTENERS frame body must be an array');
      if (list.length !== fds.length || list.length === 0) {
        throw protocolError(`LISTENERS frame lists ${list.length} listeners with ${fds.length} fds`);
      }
      const names = new Set<string>();
      const listeners = list.map((entry: unknown, i) => {
        if (entry === null || typeof entry !== 'object') throw protocolError('LISTENERS entry is not an object');
        const e = entry as Record<string, unknown>;
        const name = text(e, 'name', 'LISTENERS', 1000);
        const kind = text(e, 'kind', 'LISTENERS', 10);
        if (!LISTENER_KINDS.includes(kind)) throw protocolError(`LISTENERS entry has unknown kind '${kind}'`);
        if (names.has(name)) throw protocolError(`LISTENERS frame names '${name}' twice`);
        names.add(name);
        return { name, kind: kind as ListenerKind, backlog: integer(e, 'backlog', 'LISTENERS', MAX_BACKLOG), fd: fds[i]! };
      });
      if (listeners.filter((l) => l.kind === 'channel').length !== 1) {
        throw protocolError('LISTENERS frame must carry exactly one channel listener');
      }
      return { type: 'listeners', listeners };
    }
    case FrameType.CONNS: {
      if (fds.length === 0) throw protocolError('CONNS frame carries no fds');
      expectBody(body, fds.length * 6, 'CONNS');
      const conns = fds.map((fd, i) => ({ id: body.readUInt32BE(i * 6), listener: body.readUInt16BE(i * 6 + 4), fd }));
      return { type: 'conns', conns };
    }
    case FrameType.ACK:
    case FrameType.WAVE_ACK: {
      const what = type === FrameType.ACK ? 'ACK' : 'WAVE_ACK';
      expectFds(fds, false, what);
      expectBody(body, 4, what);
      return { type: type === FrameType.ACK ? 'ack' : 'waveAck', seq: body.readUInt32BE(0) };
    }
    case FrameType.CLOSED: {
      expectFds(fds, false, 'CLOSED');
      if (body.length === 0 || body.length % 4 !== 0) throw protocolError('CLOSED frame body must be a non-empty list of u32');
      const ids: number[] = [];
      for (let i = 0; i < body.length; i += 4) ids.push(body.readUInt32BE(i));
      return { type: 'closed', ids };
    }
    case FrameType.PREPARE: {
      expectFds(fds, false, 'PREPARE');
      const o = parseJson(body, 'PREPARE');
      return {
        type: 'prepare',
        connections: integer(o, 'connections', 'PREPARE'),
        idSum: integer(o, 'idSum', 'PREPARE'),
        idXor: integer(o, 'idXor', 'PREPARE'),
      };
    }
    case FrameType.COMMIT:
      expectFds(fds, false, 'COMMIT');
      expectBody(body, 0, 'COMMIT');
      return { type: 'commit' };
    case FrameType.LISTENING: {
      expectFds(fds, false, 'LISTENING');
      const o = parseJson(body, 'LISTENING');
      return { type: 'listening', quiesceMs: integer(o, 'quiesceMs', 'LISTENING', MAX_QUIESCE_MS) };
    }
    case FrameType.WAVE:
      expectFds(fds, false, 'WAVE');
      return { type: 'wave', more: (flags & FLAG_MORE) !== 0, chunk: body };
    case FrameType.DONE: {
      expectFds(fds, false, 'DONE');
      const o = parseJson(body, 'DONE');
      return { type: 'done', retained: integer(o, 'retained', 'DONE'), maxPauseUs: integer(o, 'maxPauseUs', 'DONE') };
    }
    default:
      throw protocolError(`unknown frame type ${type}`);
  }
}

// ---- waves: the per-connection bytes and state moved at freeze time ----

/** Which adapter (src/adapters/) speaks for a connection; the successor adopts it through the same one. */
export const ADAPTER_KINDS = ['net', 'http', 'ws'] as const;
export type AdapterKind = (typeof ADAPTER_KINDS)[number];

/** What happened to a connection when a wave named it. */
export type WaveRecord =
  | {
      id: number;
      fate: 'moved';
      adapter: AdapterKind;
      input: Buffer;
      output: Buffer;
      /** The adapter's protocol state (e.g. a WebSocket's negotiated extensions). */
      protocolState: Buffer | undefined;
      /** The application's state, from its `captureState` hook. */
      state: Buffer | undefined;
    }
  /** It stays in the old process, which finishes it (half-closed, too big, still busy at the quiescence bound). */
  | { id: number; fate: 'retained' }
  /** Closed before its wave: the successor drops its copy. */
  | { id: number; fate: 'closed' }
  /** Not quiet yet (its application owes it something): a later wave names it again. */
  | { id: number; fate: 'deferred' };

export interface Wave {
  seq: number;
  records: WaveRecord[];
}

const FATES = ['moved', 'retained', 'closed', 'deferred'] as const;
const HAS_STATE = 0x10;
const HAS_PROTOCOL_STATE = 0x20;
/** u32 id, u8 fate|flags, u8 adapter, then four u32 lengths: input, output, protocol state, state. */
const RECORD_HEADER = 4 + 1 + 1 + 4 * 4;

export function encodeWave(wave: Wave): Buffer {
  let size = 8;
  for (const r of wave.records) {
    size +=
      RECORD_HEADER + (r.fate === 'moved' ? r.input.length + r.output.length + (r.protocolState?.length ?? 0) + (r.state?.length ?? 0) : 0);
  }
  const blob = Buffer.allocUnsafe(size);
  blob.writeUInt32BE(wave.seq, 0);
  blob.writeUInt32BE(wave.records.length, 4);
  let at = 8;
  for (const r of wave.records) {
    const moved = r.fate === 'moved' ? r : undefined;
    const parts = moved ? [moved.input, moved.output, moved.protocolState, moved.state] : [];
    blob.writeUInt32BE(r.id, at);
    blob.writeUInt8(FATES.indexOf(r.fate) | (moved?.protocolState ? HAS_PROTOCOL_STATE : 0) | (moved?.state ? HAS_STATE : 0), at + 4);
    blob.writeUInt8(moved ? ADAPTER_KINDS.indexOf(moved.adapter) : 0, at + 5);
    for (let i = 0; i < 4; i++) blob.writeUInt32BE(parts[i]?.length ?? 0, at + 6 + i * 4);
    at += RECORD_HEADER;
    // Most parts are empty: skipping them saves a call into C++ per part.
    for (const part of parts) if (part && part.length > 0) at += part.copy(blob, at);
  }
  return blob;
}

/** Validates a reassembled wave: counts, lengths, fates, adapters, no id twice. Slices share the blob's memory. */
export function decodeWave(blob: Buffer): Wave {
  if (blob.length < 8) throw protocolError('wave shorter than its header');
  const seq = blob.readUInt32BE(0);
  const n = blob.readUInt32BE(4);
  if (n > (blob.length - 8) / RECORD_HEADER) throw protocolError(`wave claims ${n} records in ${blob.length} bytes`);
  const records: WaveRecord[] = [];
  const seen = new Set<number>();
  let at = 8;
  for (let i = 0; i < n; i++) {
    if (at + RECORD_HEADER > blob.length) throw protocolError('wave record header runs past the end');
    const id = blob.readUInt32BE(at);
    const flags = blob.readUInt8(at + 4);
    const fate = FATES[flags & 0x0f];
    if (fate === undefined || flags & ~(0x0f | HAS_STATE | HAS_PROTOCOL_STATE)) throw protocolError(`wave record has bad flags ${flags}`);
    const adapter = ADAPTER_KINDS[blob.readUInt8(at + 5)];
    if (adapter === undefined) throw protocolError(`wave record names unknown adapter ${blob.readUInt8(at + 5)}`);
    const lengths = [0, 1, 2, 3].map((k) => blob.readUInt32BE(at + 6 + k * 4));
    at += RECORD_HEADER;
    const total = lengths.reduce((a, b) => a + b, 0);
    if (at + total > blob.length) throw protocolError('wave record data runs past the end');
    if (seen.has(id)) throw protocolError(`wave names connection ${id} twice`);
    seen.add(id);
    if (fate !== 'moved') {
      if (total !== 0 || flags & (HAS_STATE | HAS_PROTOCOL_STATE) || adapter !== 'net')
        throw protocolError(`a ${fate} wave record carries data`);
      records.push({ id, fate });
      continue;
    }
    if ((!(flags & HAS_PROTOCOL_STATE) && lengths[2]! !== 0) || (!(flags & HAS_STATE) && lengths[3]! !== 0)) {
      throw protocolError('wave record has state bytes but no state flag');
    }
    const parts: Buffer[] = [];
    for (const length of lengths) {
      parts.push(blob.subarray(at, at + length));
      at += length;
    }
    records.push({
      id,
      fate,
      adapter,
      input: parts[0]!,
      output: parts[1]!,
      protocolState: flags & HAS_PROTOCOL_STATE ? parts[2]! : undefined,
      state: flags & HAS_STATE ? parts[3]! : undefined,
    });
  }
  if (at !== blob.length) throw protocolError(`wave has ${blob.length - at} trailing bytes`);
  return { seq, records };
}

/** Order-independent digest of a set of connection ids, checked at PREPARE. */
export function digestIds(ids: Iterable<number>): { connections: number; idSum: number; idXor: number } {
  let connections = 0;
  let idSum = 0;
  let idXor = 0;
  for (const id of ids) {
    connections++;
    idSum = (idSum + id) >>> 0;
    idXor = (idXor ^ id) >>> 0;
  }
  return { connections, idSum, idXor };
}
