/**
 * In-process drivers for the channel and the two sessions (tableflip's fake `env`, here over
 * real sockets): a connected SOCK_SEQPACKET pair from the addon, a scripted raw peer that reads
 * and writes hand-made frames, real TCP connections on 127.0.0.1, and fake hosts that do what
 * Takeover does for a session and record every call.
 */
import * as assert from 'node:assert/strict';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as native from '#lib/native.js';
import {
  decodeFrame,
  MAX_FRAME_SIZE,
  type Frame,
  type FrameName,
  type ListenerEntry,
  type Message,
  type WaveRecord,
} from '#lib/protocol.js';
import type { CapturedState, PredecessorHost, PredecessorSession } from '#lib/predecessor.js';
import type { InheritedListener, SuccessorHost, SuccessorStep } from '#lib/successor.js';
import type { Readiness } from '#lib/adapters/adapter.js';
import { NetAdapter } from '#lib/adapters/net.js';
import { acceptOptions, releaseMoved, serverFd, socketFd, stopAccepting } from '#lib/sockets.js';
import type { TakeoverError } from '#lib/errors.js';
import type { RollbackReport, TakeoverStats } from '#lib/stats.js';
import { waitFor, within } from '../helpers.js';

let pairs = 0;

/** Two connected ends of a SOCK_SEQPACKET socket; the listener and its path are gone once this returns. */
export function channelPair(dir: string): [number, number] {
  const p = path.join(dir, `pair${pairs++}.sock`);
  const listener = native.unixListen(p, 'seqpacket', 1);
  try {
    const a = native.unixConnect(p);
    const b = native.accept(listener);
    assert.ok(b >= 0, 'the connect completed at once, so accept has a connection');
    return [a, b];
  } finally {
    native.close(listener);
    fs.rmSync(p);
  }
}

/** A listening SOCK_SEQPACKET fd, what a predecessor hands over as its 'channel' listener. */
export function channelListenerFd(dir: string): number {
  const p = path.join(dir, `listener${pairs++}.sock`);
  const fd = native.unixListen(p, 'seqpacket', 8);
  fs.rmSync(p);
  return fd;
}

type Received = Frame | { type: 'eof' } | { type: 'invalid'; error: Error };

/**
 * The other end of a channel, scripted by a test: reads every message with the addon (not
 * through Channel, so a Channel bug cannot hide on both ends) and decodes it with decodeFrame.
 * Fds that arrive are kept in `fds` until the test takes or closes them.
 */
export class RawPeer {
  readonly fds = new Set<number>();
  private readonly queue: Received[] = [];
  private readonly poller: native.Poller;
  private wake: (() => void) | undefined;
  private channelOpen = true;

  constructor(readonly fd: number) {
    this.poller = native.poll(fd, (status) => this.read(status));
    this.poller.start(true, false);
  }

  private read(status: number): void {
    for (;;) {
      let message: native.ReceivedMessage | null;
      try {
        if (status < 0) throw new Error(`poll status ${status}`);
        message = native.receiveMessage(this.fd, MAX_FRAME_SIZE);
      } catch (error) {
        this.push({ type: 'invalid', error: error as Error });
        this.poller.stop();
        return;
      }
      if (message === null) return;
      if (message.data.length === 0 && message.fds.length === 0) {
        this.poller.stop();
        this.push({ type: 'eof' });
        return;
      }
      for (const fd of message.fds) this.fds.add(fd);
      try {
        this.push(decodeFrame(message.data, message.fds));
      } catch (error) {
        this.push({ type: 'invalid', error: error as Error });
      }
    }
  }

  private push(item: Received): void {
    this.queue.push(item);
    this.wake?.();
  }

  /** The next frame, which must be of type `type`; fails after `timeoutMs` or on anything else. */
  async next<T extends FrameName | 'eof'>(type: T, timeoutMs = 5000): Promise<Extract<Received, { type: T }>> {
    const item = await this.nextAny(`a ${type} frame`, timeoutMs);
    assert.equal(
      item.type,
      type,
      `expected ${type}, got ${JSON.stringify(item, (_, v) => (v?.type === 'Buffer' ? `<${v.data.length} bytes>` : v))}`,
    );
    return item as Extract<Received, { type: T }>;
  }

  async nextAny(what = 'a frame', timeoutMs = 5000): Promise<Received> {
    if (this.queue.length === 0) {
      await within(
        new Promise<void>((resolve) => {
          this.wake = resolve;
        }),
        what,
        timeoutMs,
      );
      this.wake = undefined;
    }
    return this.queue.shift()!;
  }

  /** Frames received and not consumed yet. */
  get pending(): readonly Received[] {
    return this.queue;
  }

  send(message: Message): void {
    assert.ok(native.sendMessage(this.fd, message.data, message.fds), 'the channel has room');
  }

  /** Takes ownership of a received fd away from the peer (the test now closes it). */
  take(fd: number): number {
    assert.ok(this.fds.delete(fd), `fd ${fd} did not arrive here`);
    return fd;
  }

  /** Fds this peer holds: its end of the channel (until closed) and every fd received and not taken. */
  get heldFds(): number {
    return this.fds.size + (this.channelOpen ? 1 : 0);
  }

  /** Closes the channel only: a successor that stops talking but keeps (and serves) what it received. */
  closeChannel(): void {
    if (!this.channelOpen) return;
    this.channelOpen = false;
    this.poller.close();
    native.close(this.fd);
  }

  close(): void {
    this.closeChannel();
    for (const fd of this.fds) native.close(fd);
    this.fds.clear();
  }
}

/** A client's view of one TCP connection: everything it has received, as text. */
export class Client {
  received = '';
  ended = false;

  constructor(readonly socket: net.Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (text: string) => (this.received += text));
    socket.on('end', () => (this.ended = true));
    socket.on('error', () => {});
  }

  /** Resolves once the client has received `text` (in total, from the start). */
  async expect(text: string, timeoutMs = 5000): Promise<void> {
    await waitFor(
      () => this.received === text,
      () => `the client to receive ${JSON.stringify(text.slice(0, 200))} (it has ${JSON.stringify(this.received.slice(0, 200))})`,
      timeoutMs,
    );
  }

  write(text: string): void {
    this.socket.write(text);
  }
}

/**
 * The old process's application: a TCP echo server on 127.0.0.1 that answers `old:<data>`.
 * `connect()` returns the client and the server's socket for it.
 */
export class OldApp {
  readonly server = net.createServer((socket) => {
    socket.on('data', (data) => socket.write(`old:${data.toString('latin1')}`));
    socket.on('error', () => {});
    this.accepted.push(socket);
  });
  private readonly accepted: net.Socket[] = [];
  readonly clients: Client[] = [];
  port = 0;

  async listen(): Promise<void> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  async connect(): Promise<{ client: Client; socket: net.Socket }> {
    const socket = net.connect(this.port, '127.0.0.1');
    await once(socket, 'connect');
    const client = new Client(socket);
    this.clients.push(client);
    const local = socket.localPort;
    const mine = () => this.accepted.find((s) => s.remotePort === local);
    await waitFor(() => mine() !== undefined, `the server to accept the client from port ${local}`);
    return { client, socket: mine()! };
  }

  /** Closes the clients and the server (if it still listens); its accepted sockets go with the clients. */
  async close(): Promise<void> {
    for (const c of this.clients) c.socket.destroy();
    for (const s of this.accepted) s.destroy();
    if (serverFd(this.server) >= 0) await new Promise((resolve) => this.server.close(resolve));
  }
}

type Outcome =
  | { kind: 'rollback'; error: TakeoverError; started: boolean; report: RollbackReport }
  | { kind: 'handover'; stats: TakeoverStats }
  | { kind: 'partial'; error: TakeoverError; stats: TakeoverStats };

/**
 * PredecessorHost as Takeover implements it, on one OldApp: real listener dups, real freezes and
 * releases. Connections are registered with {@link add} and closed with {@link close}, each
 * reported to the session at once, so a test decides in which phase a delta happens.
 */
export class FakePredecessorHost implements PredecessorHost {
  readonly options = { timeoutMs: 5000, waveSize: 128, quiesceTimeoutMs: 1000, timedWaves: false };
  readonly conns = new Map<number, { socket: net.Socket; listener: number }>();
  readonly readinessOf = new Map<number, Readiness>();
  readonly failCapture = new Set<number>();
  readonly stateOf = new Map<number, Buffer>();
  /** Every call the session made, in order: 'hello', 'stopAccepting', 'freeze:3', 'retain:2'... */
  readonly calls: string[] = [];
  resumed: string[] | undefined;
  /** Called as each connection is frozen: where a test makes the peer fail between a freeze and its send. */
  afterFreeze: ((id: number) => void) | undefined;
  /** Called as each connection is released, as the application's 'release' listener is. */
  afterRelease: ((id: number) => void) | undefined;
  session: PredecessorSession | undefined;
  readonly outcome: Promise<Outcome>;
  private finish!: (outcome: Outcome) => void;
  private nextId = 1;

  constructor(
    readonly app: OldApp,
    private readonly channelFd: number,
  ) {
    this.outcome = new Promise((resolve) => (this.finish = resolve));
  }

  add(socket: net.Socket): number {
    const id = this.nextId++;
    this.conns.set(id, { socket, listener: 0 });
    this.session?.connectionAdded(id);
    return id;
  }

  close(id: number): void {
    this.conns.get(id)!.socket.destroy();
    this.conns.delete(id);
    this.session?.connectionClosed(id);
  }

  idOf(socket: net.Socket): number {
    for (const [id, c] of this.conns) if (c.socket === socket) return id;
    throw new Error('not a tracked socket');
  }

  duplicateListeners(): (ListenerEntry & { fd: number })[] {
    this.calls.push('duplicateListeners');
    return [
      { name: 'tcp:test', kind: 'tcp', backlog: 511, fd: native.dup(serverFd(this.app.server)) },
      { name: 'takeover-channel', kind: 'channel', backlog: 511, fd: native.dup(this.channelFd) },
    ];
  }

  connections(): ReadonlyMap<number, { socket: net.Socket; listener: number }> {
    return this.conns;
  }

  readiness(id: number): Readiness {
    return this.readinessOf.get(id) ?? 'quiet';
  }

  capture(id: number): CapturedState | 'failed' {
    if (this.failCapture.has(id)) return 'failed';
    return { adapter: 'net', protocolState: undefined, state: this.stateOf.get(id) };
  }

  retain(id: number): void {
    this.calls.push(`retain:${id}`);
  }

  settle(id: number): void {
    this.calls.push(`settle:${id}`);
  }

  resume(id: number): void {
    this.calls.push(`resume:${id}`);
  }

  stopAccepting(): void {
    this.calls.push('stopAccepting');
    stopAccepting(this.app.server);
  }

  resumeAccepting(listeners: readonly (ListenerEntry & { fd: number })[]): void {
    this.resumed = listeners.map((l) => l.name);
    for (const { kind, fd } of listeners) {
      if (kind === 'tcp' && serverFd(this.app.server) < 0) this.app.server.listen({ fd });
      else native.close(fd);
    }
  }

  onFreeze(socket: net.Socket): void {
    const id = this.idOf(socket);
    this.calls.push(`freeze:${id}`);
    this.afterFreeze?.(id);
  }

  onDefer(socket: net.Socket): void {
    this.calls.push(`defer:${this.idOf(socket)}`);
  }

  release(id: number, socket: net.Socket): void {
    this.calls.push(`release:${id}`);
    this.conns.delete(id);
    releaseMoved(socket, () => new Error('used after it moved'));
    this.afterRelease?.(id);
  }

  onRollback(error: TakeoverError, started: boolean, report: RollbackReport): void {
    this.calls.push(`rollback:${error.code}`);
    this.finish({ kind: 'rollback', error, started, report });
  }

  onHello(pid: number): void {
    this.calls.push(`hello:${pid}`);
  }

  onHandover(stats: TakeoverStats): void {
    this.calls.push('handover');
    this.finish({ kind: 'handover', stats });
  }

  onPartialHandover(error: TakeoverError, stats: TakeoverStats): void {
    this.calls.push(`partial:${error.code}`);
    this.finish({ kind: 'partial', error, stats });
  }
}

type SuccessorOutcome =
  | { kind: 'failure'; error: TakeoverError }
  | { kind: 'done'; stats: TakeoverStats; warning: TakeoverError | undefined };

/**
 * SuccessorHost as Takeover implements it: at LISTENING it listens on the inherited TCP listener
 * with its own server (answering `new:<data>`), and adopts moved connections through NetAdapter.
 */
export class FakeSuccessorHost implements SuccessorHost {
  readonly options: { timeoutMs: number; allowUids: readonly number[]; onStep: (step: SuccessorStep) => void; maxWaveSize?: number } = {
    timeoutMs: 5000,
    allowUids: [process.getuid!()],
    onStep: (step) => {
      this.steps.push(step);
      this.onStep?.(step);
    },
  };
  readonly steps: SuccessorStep[] = [];
  onStep: ((step: SuccessorStep) => void) | undefined;
  readonly server = net.createServer((socket) => {
    socket.on('data', (data) => socket.write(`new:${data.toString('latin1')}`));
    socket.on('error', () => {});
    this.served.push(socket);
  });
  readonly served: net.Socket[] = [];
  readonly adopted: { socket: net.Socket; listener: number; record: Extract<WaveRecord, { fate: 'moved' }> }[] = [];
  listeners: InheritedListener[] = [];
  unclaimed: string[] = [];
  listening = false;
  readonly keptOpen: TakeoverError[] = [];
  /** The channel listener's fd once LISTENING made it this host's: closed by {@link close}. */
  private channelFd = -1;
  readonly outcome: Promise<SuccessorOutcome>;
  private settle!: (outcome: SuccessorOutcome) => void;

  constructor() {
    this.outcome = new Promise((resolve) => (this.settle = resolve));
  }

  onListeners(listeners: readonly InheritedListener[]): void {
    this.listeners = [...listeners];
  }

  unclaimedListeners(): string[] {
    return this.unclaimed;
  }

  acceptOptions(): ReturnType<typeof acceptOptions> {
    return acceptOptions(this.server);
  }

  startListening(): void {
    this.listening = true;
    for (const l of this.listeners) {
      if (l.kind === 'tcp') this.server.listen({ fd: l.fd });
      else this.channelFd = l.fd;
    }
  }

  adopt(socket: net.Socket, listener: number, record: Extract<WaveRecord, { fate: 'moved' }>): void {
    this.adopted.push({ socket, listener, record });
    new NetAdapter(this.server).adopt(socket, record, () => {});
  }

  onFailure(error: TakeoverError): void {
    this.settle({ kind: 'failure', error });
  }

  onDone(stats: TakeoverStats, warning?: TakeoverError): void {
    this.settle({ kind: 'done', stats, warning });
  }

  onChannelKeptOpen(error: TakeoverError): void {
    this.keptOpen.push(error);
  }

  /** Closes what the session handed to this host: the server, its sockets, the channel listener. */
  async close(): Promise<void> {
    for (const s of [...this.served, ...this.adopted.map((a) => a.socket)]) s.destroy();
    if (this.channelFd >= 0) native.close(this.channelFd);
    this.channelFd = -1;
    if (serverFd(this.server) >= 0) await new Promise((resolve) => this.server.close(resolve));
  }
}

/** Resolves once the process holds exactly `count` fds again (closes are asynchronous in libuv). */
export async function fdsSettle(count: number, what: string): Promise<void> {
  await waitFor(
    () => native.openFdCount() === count,
    () => `${what}: ${count} fds open (now ${native.openFdCount()})`,
    5000,
  );
}

/** The fd a TCP socket of this process uses, for matching what arrives on the channel. */
export { socketFd };

/** Lets a Channel's deferred error handling (setImmediate) and pending polls run. */
export function turns(n = 3): Promise<void> {
  return new Promise((resolve) => {
    const step = (left: number) => (left === 0 ? resolve() : setImmediate(() => step(left - 1)));
    step(n);
  });
}
