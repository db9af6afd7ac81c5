/**
 * Hostile peers: a seeded structured fuzzer. Frames are built with src/protocol.ts's encoders,
 * then broken (random bytes, mutated headers, truncated, oversized, replayed, out of order,
 * wrong fd counts, fds of the wrong kind), and sent on a real channel:
 *  - as a fake successor against a live server with echo clients: each one must be refused
 *    with a code, the clients unharmed and the server's fd count back where it was;
 *  - as a fake predecessor against a successor process: it must refuse with a code and exit,
 *    neither crash nor hang nor start serving.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as dgram from 'node:dgram';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { fdOf } from '#lib/fd-of.js';
import * as native from '#lib/native.js';
import { decodeFrame, digestIds, encode, FrameType, HEADER_SIZE, MAX_FRAME_SIZE, type Frame, type Message } from '#lib/protocol.js';
import { openFds, probeEcho, ServerProcess, tempDir, waitFor, within, type ServerConfig } from '../helpers.js';
import { alive, loadedClients, tally, type Tally } from './load.js';

export const CATEGORIES = ['random', 'mutated', 'truncated', 'oversized', 'replayed', 'out-of-order', 'fd-count', 'fd-kind'] as const;
export type Category = (typeof CATEGORIES)[number];

export const CATEGORY_TEXT: Record<Category, string> = {
  random: 'random bytes',
  mutated: 'a valid frame with 1-4 header bytes changed',
  truncated: 'a valid frame cut short',
  oversized: 'a frame of 64 KiB + 1 to 80 KiB',
  replayed: 'a valid frame sent again',
  'out-of-order': 'a valid frame in the wrong phase',
  'fd-count': 'a header whose fd count is not what arrives',
  'fd-kind': 'fds of the wrong kind: FIFO, file, Unix stream, UDP, listening or never-connected TCP',
};

/** mulberry32: small, seeded, and the same on every machine. */
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What one category did: how many frames, how many refused with a code, which codes. */
export interface CategoryResult {
  frames: number;
  refused: number;
  codes: Record<string, number>;
  failures: string[];
}

function emptyResults(): Record<Category, CategoryResult> {
  return Object.fromEntries(CATEGORIES.map((c) => [c, { frames: 0, refused: 0, codes: {}, failures: [] }])) as unknown as Record<
    Category,
    CategoryResult
  >;
}

function record(results: Record<Category, CategoryResult>, category: Category, code: string | undefined, failure: string): void {
  const r = results[category];
  r.frames++;
  if (code?.startsWith('ERR_')) {
    r.refused++;
    r.codes[code] = (r.codes[code] ?? 0) + 1;
  } else if (r.failures.length < 5) {
    r.failures.push(failure);
  }
}

/** Fds of every kind a peer could send where a socket of one kind is expected; `close()` drops them. */
export class FdZoo {
  private readonly closers: (() => unknown)[] = [];
  kinds: Record<string, () => number> = {};

  static async create(dir: string): Promise<FdZoo> {
    const zoo = new FdZoo();
    try {
      await zoo.fill(dir);
      return zoo;
    } catch (error) {
      await zoo.close();
      throw error;
    }
  }

  /** Opens each kind, its closer set as soon as it is open, so that a failure half-way leaks nothing. */
  private async fill(dir: string): Promise<void> {
    const fifo = path.join(dir, 'fifo');
    spawnSync('mkfifo', [fifo]);
    const file = path.join(dir, 'file');
    fs.writeFileSync(file, 'not a socket');
    const unixListener = native.unixListen(path.join(dir, 'unix'), 'stream', 64);
    this.closers.push(() => native.close(unixListener));
    const seqpacketPath = path.join(dir, 'seqpacket');
    const seqpacketListener = native.unixListen(seqpacketPath, 'seqpacket', 64);
    this.closers.push(() => native.close(seqpacketListener));
    const unixServer = net.createServer().listen(path.join(dir, 'unix-node'));
    this.closers.push(() => new Promise((resolve) => unixServer.close(resolve)));
    await once(unixServer, 'listening');
    const unixStream = net.connect(path.join(dir, 'unix-node'));
    this.closers.push(() => unixStream.destroy());
    await once(unixStream, 'connect');
    const tcpListener = net.createServer().listen(0, '127.0.0.1');
    this.closers.push(() => new Promise((resolve) => tcpListener.close(resolve)));
    await once(tcpListener, 'listening');
    const udp = dgram.createSocket('udp4');
    this.closers.push(() => new Promise<void>((resolve) => udp.close(() => resolve())));
    udp.bind(0, '127.0.0.1');
    await once(udp, 'listening');
    // Never connected: a connect to a listener that never accepts and whose backlog is full
    // stays in SYN_SENT. Node has no such listener, Python does. It lives until its stdin closes.
    const blackhole = spawn(
      'python3',
      [
        '-c',
        'import socket,sys\ns=socket.socket()\ns.bind(("127.0.0.1",0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\nsys.stdin.read()',
      ],
      { stdio: ['pipe', 'pipe', 'ignore'] },
    );
    this.closers.push(() => {
      blackhole.stdout!.destroy();
      blackhole.kill();
      return blackhole.exitCode === null && blackhole.signalCode === null ? once(blackhole, 'exit') : undefined;
    });
    const [line] = (await once(blackhole.stdout!, 'data')) as [Buffer];
    const blackholePort = Number(line.toString().trim());
    const pending: net.Socket[] = [];
    this.closers.push(() => Promise.all(pending.map((s) => (s.destroyed ? undefined : once(s.destroy(), 'close')))));
    for (let i = 0; i < 8; i++) pending.push(net.connect(blackholePort, '127.0.0.1').on('error', () => {}));
    await sleep(300);
    // Dups: Node may give up on the connect later; the socket stays unconnected either way.
    const neverConnected = pending.filter((s) => s.connecting && fdOf(s) >= 0).map((s) => native.dup(fdOf(s)));
    this.closers.push(() => {
      for (const fd of neverConnected) native.close(fd);
    });
    let next = 0;
    this.kinds = {
      fifo: () => fs.openSync(fifo, 'r+'),
      file: () => fs.openSync(file, 'r'),
      'unix stream': () => native.dup(fdOf(unixStream)),
      'unix seqpacket': () => native.unixConnect(seqpacketPath),
      'unix listening': () => native.dup(unixListener),
      'tcp listening': () => native.dup(fdOf(tcpListener)),
      udp: () => native.dup(udpFd(udp)),
    };
    if (neverConnected.length === 0)
      throw new Error('every connect to the full backlog completed or failed: no never-connected TCP socket');
    this.kinds['tcp never connected'] = () => native.dup(neverConnected[next++ % neverConnected.length]!);
  }

  /** Resolves once every fd it opened is closed. */
  async close(): Promise<void> {
    await Promise.all(this.closers.splice(0).map((c) => c()));
  }
}

/** A dgram socket keeps its handle in its state symbol: `_handle` is a deprecated alias, gone in Node 26. */
function udpFd(socket: dgram.Socket): number {
  const state = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'state symbol');
  const fd = state && (socket as unknown as Record<symbol, { handle?: { fd?: number } }>)[state]?.handle?.fd;
  if (typeof fd !== 'number') throw new Error("no fd in the dgram socket's state: Node's internals changed");
  return fd;
}

/** A valid frame with its header changed in 1-4 bytes. */
function mutate(rnd: () => number, message: Message): Buffer {
  const data = Buffer.from(message.data);
  for (let changed = false; !changed; ) {
    for (let n = 1 + Math.floor(rnd() * 4); n > 0; n--) data[Math.floor(rnd() * HEADER_SIZE)] = Math.floor(rnd() * 256);
    changed = !data.equals(message.data);
  }
  return data;
}

function pick<T>(rnd: () => number, list: readonly T[]): T {
  return list[Math.floor(rnd() * list.length)]!;
}

/** A header that announces `fds` fds, with any body. */
function rawFrame(type: number, body: Buffer, fds: number): Buffer {
  const data = Buffer.alloc(HEADER_SIZE + body.length);
  data.writeUInt16BE(0x5354, 0);
  data.writeUInt8(2, 2);
  data.writeUInt8(type, 3);
  data.writeUInt16BE(fds, 6);
  data.writeUInt32BE(body.length, 8);
  body.copy(data, HEADER_SIZE);
  return data;
}

/** Reads frames from `fd` until the peer closes it or `stop` says so; received fds are closed. */
async function readFrames(fd: number, stop: (f: Frame) => boolean, timeoutMs: number): Promise<{ frames: Frame[]; closed: boolean }> {
  const frames: Frame[] = [];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let message: native.ReceivedMessage | null;
    try {
      message = native.receiveMessage(fd, MAX_FRAME_SIZE);
    } catch {
      return { frames, closed: true };
    }
    if (message !== null) {
      if (message.data.length === 0) return { frames, closed: true };
      for (const received of message.fds) native.close(received);
      const frame = decodeFrame(message.data, message.fds);
      frames.push(frame);
      if (stop(frame)) return { frames, closed: false };
      continue;
    }
    if (Date.now() > deadline) return { frames, closed: false };
    await sleep(2);
  }
}

function send(fd: number, data: Buffer, fds: readonly number[] = []): void {
  try {
    native.sendMessage(fd, data, fds);
  } catch {
    // The server may have closed already (it refused an earlier frame): what it said is read next.
  }
}

// ---- as a fake successor, against a live server ----

export interface SuccessorFuzzResult {
  frames: number;
  seed: number;
  categories: Record<Category, CategoryResult>;
  clients: Tally;
  probes: { tried: number; served: number };
  /** Checkpoints where the server's fds did not come back to the baseline within 10 s. */
  fdLeaks: number;
  fdBaseline: number;
  fdAfter: number;
  ok: boolean;
}

/**
 * `frames` hostile channel connections, one broken frame (sequence) each, against one server
 * that serves `connections` echo clients throughout.
 */
export async function fuzzServer(frames: number, seed: number, connections = 100): Promise<SuccessorFuzzResult> {
  const rnd = random(seed);
  const dir = tempDir();
  const zoo = await FdZoo.create(dir);
  const config: ServerConfig = { path: path.join(dir, 'channel'), listen: [{ port: 0, host: '127.0.0.1' }], timeoutMs: 1000 };
  const server = new ServerProcess(config);
  const port = (await server.next('ready')).addresses![0]!.port;
  const clients = await loadedClients(connections, port, 100);
  await sleep(200);
  const fdBaseline = openFds(server.pid);
  const results = emptyResults();
  const probes = { tried: 0, served: 0 };
  let fdLeaks = 0;
  const checkpoint = async () => {
    probes.tried++;
    await probeEcho(port, '127.0.0.1').then(
      () => probes.served++,
      () => {},
    );
    const deadline = Date.now() + 10_000;
    while (openFds(server.pid) > fdBaseline && Date.now() < deadline) await sleep(50);
    if (openFds(server.pid) > fdBaseline) fdLeaks++;
  };

  for (let i = 0; i < frames; i++) {
    const category = CATEGORIES[i % CATEGORIES.length]!;
    const fd = native.unixConnect(config.path);
    const attached: number[] = [];
    const hello = async () => {
      send(fd, encode.hello(process.pid).data);
      await readFrames(fd, (f) => f.type === 'conns', 2000);
    };
    let what: string = category;
    switch (category) {
      case 'random':
        send(fd, Buffer.from(Array.from({ length: 1 + Math.floor(rnd() * 300) }, () => Math.floor(rnd() * 256))));
        break;
      case 'mutated': {
        if (rnd() < 0.5) await hello();
        const base = pick(rnd, [encode.hello(process.pid), encode.ack(0), encode.commit(), encode.waveAck(0), encode.abort('X', 'y')]);
        send(fd, mutate(rnd, base));
        break;
      }
      case 'truncated': {
        if (rnd() < 0.5) await hello();
        const base = pick(rnd, [encode.hello(process.pid), encode.ack(0), encode.waveAck(0), encode.abort('ERR_X', 'why')]).data;
        send(fd, base.subarray(0, 1 + Math.floor(rnd() * (base.length - 1))));
        break;
      }
      case 'oversized': {
        const size = MAX_FRAME_SIZE + 1 + Math.floor(rnd() * 16 * 1024);
        send(fd, rawFrame(pick(rnd, [FrameType.HELLO, FrameType.ACK, FrameType.WAVE]), Buffer.alloc(size - HEADER_SIZE, 0x20), 0));
        break;
      }
      case 'replayed': {
        const variant = Math.floor(rnd() * 3);
        await hello();
        if (variant === 0) {
          what = 'HELLO twice';
          send(fd, encode.hello(process.pid).data);
        } else {
          what = variant === 1 ? 'ACK 0 twice' : 'ACK 1 before ACK 0';
          if (variant === 1) send(fd, encode.ack(0).data);
          if (variant === 1) await readFrames(fd, (f) => f.type === 'prepare', 2000);
          send(fd, encode.ack(variant === 1 ? 0 : 1).data);
        }
        break;
      }
      case 'out-of-order': {
        // Never COMMIT after PREPARE: that is a real takeover, not a bad frame.
        const afterHello = rnd() < 0.5;
        if (afterHello) await hello();
        const candidates: Message[] = [
          encode.commit(),
          encode.waveAck(0),
          encode.welcome(1, 1, 1),
          encode.prepare(1, 1, 1),
          encode.listening(0),
          encode.done(0, 0),
          encode.closed([1]),
          ...encode.wave(Buffer.alloc(8)),
          ...(afterHello ? [encode.hello(process.pid)] : [encode.ack(0)]),
        ];
        const frame = pick(rnd, candidates);
        what = `${frame.data[3]} ${afterHello ? 'after' : 'before'} HELLO`;
        send(fd, frame.data);
        break;
      }
      case 'fd-count': {
        const extra = native.dup(fd);
        attached.push(extra);
        const variant = Math.floor(rnd() * 3);
        if (variant === 0) send(fd, encode.hello(process.pid).data, [extra]);
        else if (variant === 1) send(fd, rawFrame(FrameType.HELLO, Buffer.from(`{"pid":${process.pid}}`), 2), [extra]);
        else {
          await hello();
          send(fd, rawFrame(FrameType.ACK, Buffer.alloc(4), 1));
        }
        what = `fd-count variant ${variant}`;
        break;
      }
      case 'fd-kind': {
        const kind = pick(rnd, Object.keys(zoo.kinds));
        const extra = zoo.kinds[kind]!();
        attached.push(extra);
        if (rnd() < 0.5) await hello();
        const frame = pick(rnd, [
          encode.conns([{ id: 1, listener: 0, fd: extra }]),
          encode.listeners([
            { name: 'x', kind: 'tcp', backlog: 1, fd: extra },
            { name: 'c', kind: 'channel', backlog: 1, fd: extra },
          ]),
          { data: encode.ack(0).data, fds: [extra] },
        ]);
        what = `${kind} in frame type ${frame.data[3]}`;
        send(fd, frame.data, frame.fds);
        break;
      }
    }
    for (const f of attached) native.close(f);
    const answer = await readFrames(fd, (f) => f.type === 'abort', 5000);
    native.close(fd);
    const abort = answer.frames.find((f) => f.type === 'abort') as Extract<Frame, { type: 'abort' }> | undefined;
    let code = abort?.code;
    if (code === undefined) {
      // Refused without a word on the channel (the peer had sent its own ABORT): the server's log
      // says it, through its stdout, which the channel's close can overtake.
      const said = () => [...server.pending('rollback'), ...server.pending('warning')].find((e) => e.code);
      // A timeout leaves the code undefined: recorded as a frame not refused, which fails the run.
      await waitFor(() => said() !== undefined, 'the server to log why it closed the channel', 5000).catch(() => {});
      code = said()?.code;
    }
    for (const name of ['rollback', 'warning', 'refused']) while (server.pending(name).length > 0) await server.next(name);
    record(results, category, code, `${what}: ${answer.closed ? 'closed' : 'kept open'}, frames ${answer.frames.map((f) => f.type)}`);
    if ((i + 1) % 250 === 0 || i === frames - 1) await checkpoint();
  }
  const fdAfter = openFds(server.pid);
  const clientTally = await tally(clients);
  for (const c of clients) c.close();
  server.kill('SIGTERM');
  await server.exited;
  await zoo.close();
  fs.rmSync(dir, { recursive: true, force: true });
  const ok =
    Object.values(results).every((r) => r.refused === r.frames) &&
    clientTally.kept === connections &&
    probes.served === probes.tried &&
    fdLeaks === 0;
  return { frames, seed, categories: results, clients: clientTally, probes, fdLeaks, fdBaseline, fdAfter, ok };
}

// ---- as a fake predecessor, against a successor process ----

export interface PredecessorFuzzResult {
  cases: number;
  seed: number;
  categories: Record<Category, CategoryResult>;
  /** Successors that exited without a coded error, or had to be killed. */
  crashes: number;
  hangs: number;
  ok: boolean;
}

/**
 * `cases` successor processes, each fed a valid prefix of the protocol by a fake predecessor
 * and then one broken frame; each must refuse it with a code and exit.
 */
export async function fuzzSuccessor(cases: number, seed: number): Promise<PredecessorFuzzResult> {
  const rnd = random(seed);
  const results = emptyResults();
  let crashes = 0;
  let hangs = 0;
  const dir = tempDir();
  const zoo = await FdZoo.create(dir);
  const tcp = net.createServer();
  tcp.listen(0, '127.0.0.1');
  await once(tcp, 'listening');
  const port = (tcp.address() as net.AddressInfo).port;
  const accepted: net.Socket[] = [];
  tcp.on('connection', (s) => accepted.push(s));
  const clients: net.Socket[] = [];
  for (let i = 0; i < 3; i++) clients.push(net.connect(port, '127.0.0.1').on('error', () => {}));
  await Promise.all(clients.map((c) => once(c, 'connect')));
  while (accepted.length < 3) await sleep(5);
  const channelListener = native.unixListen(path.join(dir, 'inherited-channel'), 'seqpacket', 4);

  for (let i = 0; i < cases; i++) {
    const category = CATEGORIES[i % CATEGORIES.length]!;
    const channelPath = path.join(dir, `channel${i}`);
    const listener = native.unixListen(channelPath, 'seqpacket', 4);
    const successor = new ServerProcess({ path: channelPath, mode: 'successor', listen: [{ port, host: '127.0.0.1' }], timeoutMs: 1000 });
    let fd = -1;
    const deadline = Date.now() + 20_000;
    while (fd < 0 && Date.now() < deadline && alive(successor.pid)) {
      fd = native.accept(listener);
      if (fd < 0) await sleep(5);
    }
    native.close(listener);
    fs.rmSync(channelPath, { force: true });
    let what: string = category;
    if (fd >= 0) {
      await readFrames(fd, (f) => f.type === 'hello', 5000);
      const listeners = [
        { name: `tcp:127.0.0.1:${port}`, kind: 'tcp' as const, backlog: 511, fd: fdOf(tcp) },
        { name: 'takeover-channel', kind: 'channel' as const, backlog: 16, fd: channelListener },
      ];
      const conns = accepted.map((s, id) => ({ id, listener: 0, fd: fdOf(s) }));
      // How far the valid prefix goes: 0 nothing, 1 WELCOME, 2 + LISTENERS, 3 + CONNS (ACKed).
      const depth = Math.floor(rnd() * 4);
      const prefix = async (upTo: number) => {
        if (upTo >= 1) send(fd, encode.welcome(process.pid, 2, conns.length).data);
        if (upTo >= 2) {
          const m = encode.listeners(listeners);
          send(fd, m.data, m.fds);
        }
        if (upTo >= 3) {
          const m = encode.conns(conns);
          send(fd, m.data, m.fds);
          await readFrames(fd, (f) => f.type === 'ack', 2000);
        }
      };
      switch (category) {
        case 'random':
          await prefix(depth);
          send(fd, Buffer.from(Array.from({ length: 1 + Math.floor(rnd() * 300) }, () => Math.floor(rnd() * 256))));
          break;
        case 'mutated':
        case 'truncated': {
          await prefix(Math.min(depth, 2));
          const next = [encode.welcome(process.pid, 2, conns.length), encode.listeners(listeners), encode.conns(conns)][
            Math.min(depth, 2)
          ]!;
          const data = category === 'mutated' ? mutate(rnd, next) : next.data.subarray(0, 1 + Math.floor(rnd() * (next.data.length - 1)));
          send(fd, data, next.fds);
          break;
        }
        case 'oversized':
          await prefix(depth);
          send(fd, rawFrame(FrameType.WAVE, Buffer.alloc(MAX_FRAME_SIZE + Math.floor(rnd() * 16 * 1024)), 0));
          break;
        case 'replayed': {
          await prefix(Math.max(1, depth));
          const again = [encode.welcome(process.pid, 2, conns.length), encode.listeners(listeners), encode.conns(conns)][
            Math.max(1, depth) - 1
          ]!;
          what = `frame type ${again.data[3]} twice`;
          send(fd, again.data, again.fds);
          break;
        }
        case 'out-of-order': {
          await prefix(depth);
          const frame = pick(rnd, [
            encode.prepare(conns.length, 0, 0),
            encode.listening(0),
            encode.done(0, 0),
            ...encode.wave(Buffer.alloc(8)),
            encode.commit(),
            encode.ack(0),
            encode.hello(1),
            ...(depth === 0 ? [encode.conns(conns), encode.listeners(listeners)] : [encode.welcome(1, 1, 1)]),
          ]);
          what = `frame type ${frame.data[3]} after prefix ${depth}`;
          send(fd, frame.data, frame.fds);
          break;
        }
        case 'fd-count': {
          // A CONNS body that lists fewer connections than fds came, or a header that lies about its fds.
          await prefix(2);
          if (rnd() < 0.5) {
            what = 'CONNS listing one connection with two fds';
            send(fd, rawFrame(FrameType.CONNS, Buffer.alloc(6), 2), [fdOf(accepted[0]!), fdOf(accepted[1]!)]);
          } else {
            what = 'header fd count off by one';
            send(fd, rawFrame(FrameType.CONNS, Buffer.alloc(12), 2), [fdOf(accepted[0]!)]);
          }
          break;
        }
        case 'fd-kind': {
          const kind = pick(rnd, Object.keys(zoo.kinds));
          const bad = zoo.kinds[kind]!();
          // A never-connected TCP socket is one only as a listener: as a connection, a successor
          // refuses it while its connect is pending (SYN_SENT), but once the kernel gives up on the
          // connect (about 2 minutes, well within a fuzz run) it is CLOSE, like an accepted one its
          // client reset, which a successor must take.
          const asListener = kind === 'tcp never connected' || rnd() < 0.3;
          what = `${kind} as a ${asListener ? 'listener' : 'connection'}`;
          if (asListener) {
            await prefix(1);
            const m = encode.listeners([{ ...listeners[0]!, fd: bad }, listeners[1]!]);
            send(fd, m.data, m.fds);
          } else {
            // A connection is checked once the app is ready, after PREPARE: go that far.
            await prefix(2);
            const m = encode.conns([{ id: 7, listener: 0, fd: bad }]);
            send(fd, m.data, m.fds);
            await readFrames(fd, (f) => f.type === 'ack', 2000);
            const digest = digestIds([7]);
            send(fd, encode.prepare(digest.connections, digest.idSum, digest.idXor).data);
          }
          native.close(bad);
          break;
        }
      }
      const answer = await readFrames(fd, (f) => f.type === 'commit', 5000);
      native.close(fd);
      const committed = answer.frames.some((f) => f.type === 'commit');
      const abort = answer.frames.find((f) => f.type === 'abort') as Extract<Frame, { type: 'abort' }> | undefined;
      if (committed) what += ': the successor COMMITTED';
      const error = await successor.next('error', 10_000).catch(() => undefined);
      const exited = await within(successor.exited, 'exit', 10_000).then(
        () => true,
        () => false,
      );
      if (!exited) {
        hangs++;
        successor.kill('SIGKILL');
      } else if (!error) {
        crashes++;
      }
      const code = committed ? undefined : (abort?.code ?? error?.code);
      record(results, category, exited ? code : undefined, `${what}: ${error?.code ?? (exited ? 'exited without a code' : 'hung')}`);
    } else {
      crashes++;
      record(results, category, undefined, `${what}: the successor never connected`);
      successor.kill('SIGKILL');
    }
  }
  for (const c of clients) c.destroy();
  tcp.close();
  native.close(channelListener);
  await zoo.close();
  fs.rmSync(dir, { recursive: true, force: true });
  const ok = Object.values(results).every((r) => r.refused === r.frames) && crashes === 0 && hangs === 0;
  return { cases, seed, categories: results, crashes, hangs, ok };
}
