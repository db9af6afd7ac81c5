/**
 * The new process's side of a takeover: collect every listener and connection fd during
 * pre-copy without reading, verify, COMMIT once the application is ready, then start each
 * wave of connections as the predecessor freezes it.
 *
 *   welcome -> listeners -> precopy -> prepared --(app ready) COMMIT--> committed -> waves -> done
 *
 * Any failure before COMMIT drops every copy (fd close only, no FIN) and the predecessor
 * keeps serving; after COMMIT the successor owns the outcome. A failure after LISTENING reads on:
 * every wave that still arrives is started, until the predecessor closes the channel.
 */
import type * as net from 'node:net';
import * as native from './native.js';
import type { Channel } from './channel.js';
import {
  decodeWave,
  digestIds,
  encode,
  MAX_WAVE_SIZE,
  type Frame,
  type ListenerEntry,
  type WaveRecord,
  closeFrameFds,
} from './protocol.js';
import { dropCopy, forgetNoDelay, wrapInherited, type AcceptOptions } from './sockets.js';
import { ErrorCodes, TakeoverError, systemError } from './errors.js';
import { Deadline } from './deadline.js';
import { StatsRecorder, type TakeoverStats } from './stats.js';
import { lowerPriority } from './processes.js';

export interface InheritedListener extends ListenerEntry {
  fd: number;
}

/**
 * The protocol steps a successor passes (the `onStep` option), each once and in order: `hello`
 * once HELLO is sent, `listeners` once the predecessor's listeners are checked, `precopy` at the
 * first batch of connections (none when the predecessor has no connections), `prepare` once
 * pre-copy is verified, `wave<N>` once wave N arrived, before any of it starts.
 */
export type SuccessorStep = 'hello' | 'listeners' | 'precopy' | 'prepare' | `wave${number}`;

/** What the session needs from the process it runs in (implemented by TakingOver, taking-over.ts). */
export interface SuccessorHost {
  readonly options: {
    timeoutMs: number;
    allowUids: readonly number[];
    onStep?: ((step: SuccessorStep) => void) | undefined;
    /** Below MAX_WAVE_SIZE only in tests, which then need not send half a gibibyte to reach it. */
    maxWaveSize?: number | undefined;
  };
  /** Called once the listeners are known, so the app's listen() calls can claim them. */
  onListeners(listeners: readonly InheritedListener[]): void;
  /** Names of inherited listeners the app has not claimed; COMMIT waits for none. */
  unclaimedListeners(): string[];
  /** How the server that claimed this inherited listener accepts its sockets (known once the app is ready); undefined if none did. */
  acceptOptions(listener: number): AcceptOptions | undefined;
  /** LISTENING: start accepting on every claimed listener and on the channel; `predecessorPid` is WELCOME's. */
  startListening(predecessorPid: number): void;
  adopt(socket: net.Socket, listener: number, record: Extract<WaveRecord, { fate: 'moved' }>): void;
  onFailure(error: TakeoverError): void;
  /** Finished; with `warning` when it ended early after LISTENING (some connections stayed with the predecessor). */
  onDone(stats: TakeoverStats, warning?: TakeoverError): void;
  /** After an onDone with a warning: the predecessor kept the channel open past the bound (the waves it sends later are lost). */
  onChannelKeptOpen(error: TakeoverError): void;
}

/** `given-up`: failed after LISTENING, still starting the waves that arrive until the channel closes. */
type Phase = 'welcome' | 'listeners' | 'precopy' | 'prepared' | 'committed' | 'waves' | 'given-up' | 'done' | 'failed';

const FD_HEADROOM = 64;
/** Fd table slots prepared before HELLO (8 bytes each); WELCOME grows it further if needed. */
const PREGROWN_FDS = 65536;
/** Fds checked and wrapped per turn of the event loop: 6-8 us each on Node 24, so about 3 ms. */
const WRAP_CHUNK = 400;
/**
 * Nice steps this process runs at, every thread of it, from its first frame until the waves have
 * moved every connection but the deferred ones. The transfer, the checks and the wrapping (0.2-0.4 s
 * of CPU at 10,000 connections) and the application's start-up happen while the predecessor still
 * serves everything; during the waves it still serves most connections, and starting them costs
 * this process more than freezing them costs the predecessor. On a machine with few cores none of
 * that may take its cores (its garbage collector's helpers included): at 10,000 connections on 2
 * cores, raised at COMMIT instead, the clients' pause p99 was 1.8-2.5x the control's, against
 * 0.9-1.7x. Raised back once only deferred connections are left (the quiescence bound may keep
 * them for seconds), and at the end or on a failure.
 */
const TAKEOVER_NICE_STEPS = 10;
/**
 * How long a successor that gave up after LISTENING waits, in timeouts, for the predecessor to
 * close the channel: one that reads the ABORT closes it as soon as what it sent is out, so only a
 * stopped or dead one takes this long, and what it sends later is lost.
 */
const CHANNEL_END_TIMEOUTS = 3;

interface Held {
  /** The predecessor's id of the connection. */
  id: number;
  fd: number;
  listener: number;
  socket: net.Socket | undefined;
}

/** Drops this process's copy of an inherited connection, wrapped or not. */
function drop(held: Held): void {
  if (held.socket) dropCopy(held.socket);
  else native.close(held.fd);
}

/**
 * TCP states a connection an old server holds can be in. Not SYN_SENT (a connect in progress that
 * nobody accepted), LISTEN or SYN_RECV. CLOSE is both an accepted connection its client reset and
 * a socket that never connected (getpeername cannot tell them apart either): the latter reads EOF
 * at once and is closed like any reset connection, so it harms nothing.
 */
const CONNECTION_STATES: ReadonlySet<native.TcpState> = new Set([
  'ESTABLISHED',
  'CLOSE_WAIT',
  'FIN_WAIT1',
  'FIN_WAIT2',
  'CLOSING',
  'LAST_ACK',
  'TIME_WAIT',
  'CLOSE',
]);

export class SuccessorSession {
  private phase: Phase = 'welcome';
  private appReady = false;
  private listeners: InheritedListener[] = [];
  /** Every inherited connection, by the predecessor's id; `socket` is set once wrapped. */
  private readonly held = new Map<number, Held>();
  /** Ids received but not yet checked and wrapped; worked off between frames (see wrapSome). */
  private readonly toWrap: number[] = [];
  private wrapScheduled = false;
  /** What the fds about to be wrapped are: one addon call per chunk, no JS value per fd. */
  private readonly inspection = new native.SocketInspection(WRAP_CHUNK);
  /** Raises this process's priority back (see TAKEOVER_NICE_STEPS); set while it is lowered. */
  private restorePriority: (() => void) | undefined;
  private waveChunks: Buffer[] = [];
  private waveBytes = 0;
  /** A wave refused for its size: its chunks up to the last are not a wave of their own (a client's bytes could read as one). */
  private skippingWave = false;
  private expectedWave = 0;
  /**
   * A wave checked whole, whose connections the predecessor has released: if the session fails
   * before they are started (an observer of the wave's step aborts it), fail() starts them
   * anyway, as nobody else holds them any more.
   */
  private waveInHand: { records: WaveRecord[]; held: Held[] } | undefined;
  /**
   * The most connections held at once: WELCOME's count, which the fd check there covered, plus
   * half the fd room left then, for those the predecessor accepts during the takeover. The other
   * half stays this process's own, whatever a predecessor sends.
   */
  private maxHeld = 0;
  /** Connections the predecessor deferred (busy when their turn came): a later wave decides them. */
  private readonly deferred = new Set<number>();
  /** How long the predecessor may wait for deferred connections (from LISTENING). */
  private quiesceMs = 0;
  private ackSeq = 0;
  private predecessorPid = 0;
  private readonly recorder = new StatsRecorder();
  private readonly stats = this.recorder.counts;
  private readonly marks = this.recorder.marks;

  private readonly deadline: Deadline;
  private readonly channelEndDeadline: Deadline;

  constructor(
    private readonly host: SuccessorHost,
    private readonly channel: Channel,
  ) {
    this.deadline = new Deadline(host.options.timeoutMs, (what, ms) =>
      this.abort(new TakeoverError(ErrorCodes.TIMEOUT, `the predecessor sent no ${what} within ${ms} ms`)),
    );
    this.channelEndDeadline = new Deadline(host.options.timeoutMs * CHANNEL_END_TIMEOUTS, (_, ms) =>
      this.endLateWaves(
        new TakeoverError(
          ErrorCodes.TIMEOUT,
          `the predecessor kept the takeover channel open ${ms} ms after this process gave up: a wave it sends later is lost`,
        ),
      ),
    );
    channel.on('frame', (frame) => this.recorder.step(() => this.onFrame(frame)));
    channel.on('error', (error) => this.fail(error));
    channel.on('close', () =>
      this.phase === 'given-up'
        ? this.endLateWaves()
        : this.fail(new TakeoverError(ErrorCodes.PEER_CLOSED, 'the predecessor closed the takeover channel')),
    );
    if (!host.options.allowUids.includes(channel.peer.uid)) {
      this.abort(
        new TakeoverError(ErrorCodes.PEER_REJECTED, `the process on the channel runs as uid ${channel.peer.uid}, which is not allowed`),
      );
      return;
    }
    // Grow the fd table before the transfer starts: in a multithreaded process each growth
    // waits for an RCU grace period (measured 5-20 ms), which would otherwise fall inside it.
    try {
      native.growFdTable(Math.min(native.fdLimit().soft - 1, PREGROWN_FDS));
    } catch {
      // Only an optimisation: WELCOME grows the table again anyway.
    }
    this.restorePriority = lowerPriority(TAKEOVER_NICE_STEPS);
    channel.send(encode.hello(process.pid));
    this.step('hello');
    this.deadline.expect('WELCOME');
  }

  /** The application's step observer (tests stop the process there); it must not break the session. */
  private step(step: SuccessorStep): void {
    try {
      this.host.options.onStep?.(step);
    } catch {
      // An observer's failure is not the takeover's.
    }
  }

  /** Gave up after LISTENING and still reads the waves the predecessor may have released (until it closes the channel). */
  get isReadingOn(): boolean {
    return this.phase === 'given-up';
  }

  get isCommitted(): boolean {
    return this.phase === 'committed' || this.phase === 'waves' || this.phase === 'done';
  }

  /** The application has registered its servers: COMMIT as soon as pre-copy is verified. */
  ready(): void {
    this.appReady = true;
    if (this.phase === 'prepared') this.scheduleWrap();
    this.maybeCommit();
  }

  abort(error: TakeoverError): void {
    this.channel.sendAbort(error);
    this.fail(error);
  }

  private onFrame(frame: Frame): void {
    if (this.phase === 'given-up') return this.onLateFrame(frame);
    if (frame.type === 'abort') {
      this.fail(new TakeoverError(ErrorCodes.ABORTED, `the predecessor refused: ${frame.message}`, { reason: frame.code }));
      // Its last frame: nothing follows an ABORT.
      return this.endLateWaves();
    }
    switch (`${this.phase}:${frame.type}`) {
      case 'welcome:welcome':
        return this.onWelcome(frame as Extract<Frame, { type: 'welcome' }>);
      case 'listeners:listeners':
        return this.onListeners((frame as Extract<Frame, { type: 'listeners' }>).listeners);
      case 'precopy:conns':
      case 'committed:conns':
        return this.onConns((frame as Extract<Frame, { type: 'conns' }>).conns);
      case 'precopy:closed':
      case 'prepared:closed':
      case 'committed:closed':
        return this.onClosed((frame as Extract<Frame, { type: 'closed' }>).ids);
      case 'precopy:prepare':
        return this.onPrepare(frame as Extract<Frame, { type: 'prepare' }>);
      case 'committed:listening':
        return this.onListening((frame as Extract<Frame, { type: 'listening' }>).quiesceMs);
      case 'waves:wave':
        return this.onWaveChunk(frame as Extract<Frame, { type: 'wave' }>);
      case 'waves:done':
        return this.finish(frame as Extract<Frame, { type: 'done' }>);
      default:
        closeFrameFds(frame);
        return this.abort(new TakeoverError(ErrorCodes.PROTOCOL, `unexpected ${frame.type} frame during ${this.phase}`));
    }
  }

  private onWelcome(frame: Extract<Frame, { type: 'welcome' }>): void {
    this.predecessorPid = frame.pid;
    const needed = frame.listeners + frame.connections;
    const open = native.openFdCount();
    const { soft } = native.fdLimit();
    if (open + needed + FD_HEADROOM > soft) {
      return this.abort(
        new TakeoverError(
          ErrorCodes.FD_LIMIT,
          `the successor can hold ${soft - open - FD_HEADROOM} more fds (RLIMIT_NOFILE ${soft}), the predecessor has ${needed}`,
        ),
      );
    }
    this.maxHeld = frame.connections + Math.floor((soft - open - needed - FD_HEADROOM) / 2);
    // One growth of the fd table now, instead of many slow ones while fds arrive.
    native.growFdTable(open + needed + FD_HEADROOM);
    this.phase = 'listeners';
    this.deadline.expect('LISTENERS');
  }

  private onListeners(listeners: InheritedListener[]): void {
    // Anything that is not a socket (a bad peer could send a file) reads as domain 'other'.
    const inspection = new native.SocketInspection(listeners.length);
    listeners.forEach((l, i) => {
      inspection.fds[i] = l.fd;
    });
    inspection.inspect(listeners.length);
    for (const [i, l] of listeners.entries()) {
      const domain = inspection.domain(i);
      const type = inspection.type(i);
      const ok =
        inspection.listening(i) &&
        (l.kind === 'channel'
          ? domain === 'unix' && type === 'seqpacket'
          : type === 'stream' && (l.kind === 'unix' ? domain === 'unix' : domain === 'inet' || domain === 'inet6'));
      if (!ok) {
        for (const { fd } of listeners) native.close(fd);
        return this.abort(new TakeoverError(ErrorCodes.PROTOCOL, `inherited listener '${l.name}' is not a listening ${l.kind} socket`));
      }
    }
    this.listeners = listeners;
    this.phase = 'precopy';
    this.step('listeners');
    this.host.onListeners(listeners);
    this.deadline.expect('PREPARE');
  }

  private onConns(conns: Extract<Frame, { type: 'conns' }>['conns']): void {
    const ids = new Set<number>();
    const bad = conns.find((c) => {
      const duplicate = this.held.has(c.id) || ids.has(c.id);
      ids.add(c.id);
      return duplicate || this.listeners[c.listener] === undefined || this.listeners[c.listener]!.kind === 'channel';
    });
    if (bad) {
      for (const { fd } of conns) native.close(fd);
      return this.abort(
        new TakeoverError(ErrorCodes.PROTOCOL, `CONNS frame has a bad entry (connection ${bad.id}, listener ${bad.listener})`),
      );
    }
    // Unbounded, a predecessor could fill this process's fd table up to its limit.
    if (this.held.size + conns.length > this.maxHeld) {
      for (const { fd } of conns) native.close(fd);
      return this.abort(
        new TakeoverError(
          ErrorCodes.FD_LIMIT,
          `the predecessor sent more connections than this process holds at once (${this.maxHeld}: WELCOME's count and half the fds left)`,
        ),
      );
    }
    if (this.marks.firstConns === 0) {
      this.marks.firstConns = performance.now();
      this.step('precopy');
    }
    for (const { id, listener, fd } of conns) {
      this.held.set(id, { id, fd, listener, socket: undefined });
      this.toWrap.push(id);
    }
    // Acknowledge at once; check and wrap after PREPARE, in chunks. The transfer then runs at
    // the kernel's pace (a busy loop here would delay every ACK), and the wrapping, the real
    // cost, still happens while the predecessor serves: it is COMMIT that waits for it.
    this.channel.send(encode.ack(this.ackSeq++));
    if (this.isCommitted) {
      this.scheduleWrap();
      this.deadline.expect('LISTENING');
    } else {
      this.deadline.expect('PREPARE');
    }
  }

  /** Wrapping needs the app's servers (their accept options), so it starts once the app is ready. */
  private scheduleWrap(): void {
    if (this.wrapScheduled || this.toWrap.length === 0 || !this.appReady) return;
    this.wrapScheduled = true;
    setImmediate(() => {
      this.wrapScheduled = false;
      this.recorder.step(() => this.wrapSome(WRAP_CHUNK));
    });
  }

  private wrapSome(limit: number): void {
    if (this.phase === 'failed' || this.phase === 'done') return;
    const chunk: Held[] = [];
    for (const id of this.toWrap.splice(0, limit)) {
      const held = this.held.get(id);
      if (!held || held.socket) continue;
      this.inspection.fds[chunk.length] = held.fd;
      chunk.push(held);
    }
    this.inspection.inspect(chunk.length);
    for (const [i, held] of chunk.entries()) if (!this.wrap(held, i)) return;
    this.scheduleWrap();
    this.maybeCommit();
  }

  /** Wraps one connection on its own (a wave names it before its chunk's turn came). */
  private wrapOne(held: Held): net.Socket | undefined {
    this.inspection.fds[0] = held.fd;
    this.inspection.inspect(1);
    return this.wrap(held, 0);
  }

  /**
   * Checks that the fd is a connected stream socket, from what {@link native.SocketInspection} found at
   * index `at` of the last inspection, then wraps it without reading.
   */
  private wrap(held: Held, at: number): net.Socket | undefined {
    const { id } = held;
    const inspection = this.inspection;
    const kind = this.listeners[held.listener]!.kind;
    const domain = inspection.domain(at);
    const domainOk = kind === 'unix' ? domain === 'unix' : domain === 'inet' || domain === 'inet6';
    if (inspection.type(at) !== 'stream' || inspection.listening(at) || !domainOk) {
      this.abort(new TakeoverError(ErrorCodes.PROTOCOL, `inherited connection ${id} is not a connected ${kind} stream socket`));
      return undefined;
    }
    const state = kind === 'unix' ? undefined : (inspection.tcpState(at) ?? 'OTHER');
    if (state !== undefined && !CONNECTION_STATES.has(state)) {
      this.abort(new TakeoverError(ErrorCodes.PROTOCOL, `inherited connection ${id} is not a tcp connection: its state is ${state}`));
      return undefined;
    }
    const options = this.host.acceptOptions(held.listener);
    if (!options) {
      this.abort(unclaimedError(this.host.unclaimedListeners()));
      return undefined;
    }
    try {
      held.socket = wrapInherited(held.fd, kind === 'unix' ? 'unix' : 'tcp', options, inspection.noDelay(at));
    } catch (error) {
      this.abort(systemError(`wrapping inherited connection ${id}`, error));
      return undefined;
    }
    return held.socket;
  }

  private onClosed(ids: number[]): void {
    for (const id of ids) {
      const held = this.held.get(id);
      if (!held) return this.abort(new TakeoverError(ErrorCodes.PROTOCOL, `CLOSED names unknown connection ${id}`));
      drop(held);
      this.held.delete(id);
      this.stats.closed++;
    }
  }

  private onPrepare(frame: Extract<Frame, { type: 'prepare' }>): void {
    const mine = digestIds(this.held.keys());
    if (mine.connections !== frame.connections || mine.idSum !== frame.idSum || mine.idXor !== frame.idXor) {
      return this.abort(
        new TakeoverError(
          ErrorCodes.PROTOCOL,
          `pre-copy mismatch: holding ${mine.connections} connections, predecessor sent ${frame.connections}`,
        ),
      );
    }
    this.marks.prepare = performance.now();
    this.phase = 'prepared';
    this.step('prepare');
    this.deadline.clear();
    this.scheduleWrap();
    this.maybeCommit();
  }

  private raisePriority(): void {
    this.restorePriority?.();
    this.restorePriority = undefined;
  }

  /** COMMIT once verified, once the app is ready, and once every fd is wrapped (so no wave waits for it). */
  private maybeCommit(): void {
    if (this.phase !== 'prepared' || !this.appReady || this.toWrap.length > 0) return;
    const unclaimed = this.host.unclaimedListeners();
    if (unclaimed.length > 0) return this.abort(unclaimedError(unclaimed));
    this.marks.commit = performance.now();
    this.channel.send(encode.commit());
    this.phase = 'committed';
    this.deadline.expect('LISTENING');
  }

  private onListening(quiesceMs: number): void {
    this.quiesceMs = quiesceMs;
    this.marks.listening = performance.now();
    this.phase = 'waves';
    // From here on it serves (accepts, then each wave's connections): its loop's delay before
    // is no client's wait.
    this.recorder.sampleLoop();
    // If it gives up from here on, it keeps the listeners: its ABORT must tell the predecessor,
    // which otherwise takes them back once this process is gone, even if a third one took them over
    // (possible only once it stopped reading on: its ABORT says when at the earliest).
    this.channel.markListening(this.host.options.timeoutMs * CHANNEL_END_TIMEOUTS);
    this.host.startListening(this.predecessorPid);
    this.deadline.expect('WAVE');
  }

  private onWaveChunk(frame: Extract<Frame, { type: 'wave' }>): void {
    const seq = this.takeWave(frame);
    if (seq === undefined) return;
    this.step(`wave${seq}`);
    // An observer of the step may have failed the session: fail() started the wave then.
    if (this.phase !== 'waves') return;
    this.startWave();
    this.channel.send(encode.waveAck(seq));
    // The connections it just adopted are served before the next wave is read.
    this.channel.yieldReading();
    this.stats.waves++;
    // While connections are deferred the predecessor may rightly stay silent up to its bound.
    this.deadline.expect('WAVE', this.host.options.timeoutMs + (this.deferred.size > 0 ? this.quiesceMs : 0));
  }

  /**
   * Adds a chunk to the wave being received; once it is whole, checks all of it and makes it the
   * wave in hand, and returns its number. Undefined while chunks are missing, and for a wave
   * refused (the session is aborted then; once it gave up, the wave is just not started).
   */
  private takeWave(frame: Extract<Frame, { type: 'wave' }>): number | undefined {
    if (this.skippingWave) {
      this.skippingWave = frame.more;
      return undefined;
    }
    // The chunks and the copy that joins them are both in memory at the end: the limit bounds
    // the chunks, so the peak stays within twice the limit.
    const limit = this.host.options.maxWaveSize ?? MAX_WAVE_SIZE;
    this.waveBytes += frame.chunk.length;
    if (this.waveBytes > limit) {
      this.waveChunks = [];
      this.waveBytes = 0;
      this.skippingWave = frame.more;
      return this.refuseWave(new TakeoverError(ErrorCodes.PROTOCOL, `wave larger than ${limit} bytes`));
    }
    this.waveChunks.push(frame.chunk);
    if (frame.more) return undefined;
    const blob = this.waveChunks.length === 1 ? this.waveChunks[0]! : Buffer.concat(this.waveChunks, this.waveBytes);
    this.waveChunks = [];
    this.waveBytes = 0;
    let wave: ReturnType<typeof decodeWave>;
    try {
      wave = decodeWave(blob);
    } catch (error) {
      return this.refuseWave(error as TakeoverError);
    }
    // Once given up, a wave refused before may have left a gap: what counts is that none comes twice.
    const late = this.phase === 'given-up';
    if (late ? wave.seq < this.expectedWave : wave.seq !== this.expectedWave) {
      return this.refuseWave(new TakeoverError(ErrorCodes.PROTOCOL, `wave ${wave.seq} arrived, expected ${this.expectedWave}`));
    }
    this.expectedWave = wave.seq + 1;
    // Check the whole wave before starting any of it: failing halfway would drop the rest,
    // which the predecessor has already released.
    const held: Held[] = [];
    for (const record of wave.records) {
      const h = this.held.get(record.id);
      if (!h) return this.refuseWave(new TakeoverError(ErrorCodes.PROTOCOL, `wave names unknown connection ${record.id}`));
      if (record.fate === 'deferred' && this.deferred.has(record.id)) {
        return this.refuseWave(new TakeoverError(ErrorCodes.PROTOCOL, `wave defers connection ${record.id} twice`));
      }
      // wrapOne() aborts the session itself (a no-op once it gave up).
      if (record.fate === 'moved' && !h.socket && !this.wrapOne(h)) return undefined;
      held.push(h);
    }
    for (const record of wave.records) if (record.fate !== 'deferred') this.held.delete(record.id);
    this.waveInHand = { records: wave.records, held };
    return wave.seq;
  }

  /** A wave that fails its checks is never started (contract 8): what it carries is lost if the predecessor released it. */
  private refuseWave(error: TakeoverError): undefined {
    if (this.phase !== 'given-up') this.abort(error);
    return undefined;
  }

  /**
   * A frame after this process gave up, past LISTENING. The predecessor built and released the
   * waves it sent before it read the ABORT (it may have been stopped in the middle of one): each
   * whole wave that passes the checks is started here, or its connections would be lost. The rest
   * is ignored; nothing follows DONE or the predecessor's own ABORT.
   */
  private onLateFrame(frame: Frame): void {
    if (frame.type === 'done' || frame.type === 'abort') return this.endLateWaves();
    closeFrameFds(frame);
    if (frame.type === 'wave' && this.takeWave(frame) !== undefined) {
      this.startWave();
      this.channel.yieldReading();
      this.stats.waves++;
    }
  }

  /** Starts the checked wave in hand: adopts what moved, drops the copies of what did not. */
  private startWave(): void {
    const { records, held } = this.waveInHand!;
    this.waveInHand = undefined;
    records.forEach((record, i) => {
      const h = held[i]!;
      if (record.fate === 'deferred') {
        this.deferred.add(record.id);
        this.stats.deferred++;
        return;
      }
      this.deferred.delete(record.id);
      if (record.fate !== 'moved') {
        drop(h);
        this.stats[record.fate]++;
        return;
      }
      // Wrapped at the pre-copy, from then on the old application's until its freeze.
      forgetNoDelay(h.socket!);
      this.host.adopt(h.socket!, h.listener, record);
      this.stats.connections++;
      this.stats.bytesIn += record.input.length;
      this.stats.bytesOut += record.output.length;
      this.stats.stateBytes += (record.protocolState?.length ?? 0) + (record.state?.length ?? 0);
    });
    // Only deferred connections left: the predecessor now serves fewer than this process.
    if (this.held.size === this.deferred.size) this.raisePriority();
  }

  private finish({ retained, maxPauseUs }: Extract<Frame, { type: 'done' }>): void {
    this.deadline.clear();
    // Only the predecessor sees a wave from freeze to WAVE_ACK; this side saw just its own part.
    this.stats.maxPauseMs = maxPauseUs / 1000;
    if (this.held.size > 0 || retained !== this.stats.retained) {
      return this.abort(
        new TakeoverError(
          ErrorCodes.PROTOCOL,
          `DONE with ${this.held.size} connections never started and ${retained} retained (counted ${this.stats.retained})`,
        ),
      );
    }
    this.phase = 'done';
    this.raisePriority();
    this.channel.close();
    this.host.onDone(this.statsNow());
  }

  private statsNow(): TakeoverStats {
    return this.recorder.snapshot({
      role: 'successor',
      predecessorPid: this.predecessorPid,
      successorPid: process.pid,
      listeners: this.listeners.length,
    });
  }

  private fail(error: TakeoverError): void {
    if (this.phase === 'done' || this.phase === 'failed' || this.phase === 'given-up') return;
    const listening = this.phase === 'waves';
    this.phase = listening ? 'given-up' : 'failed';
    this.deadline.clear();
    this.recorder.stop();
    this.raisePriority();
    this.toWrap.length = 0;
    if (!listening) {
      this.channel.close();
      this.dropHeld();
      for (const { fd } of this.listeners) native.close(fd);
      this.host.onFailure(error);
      return;
    }
    // Listening already: this process owns the listeners and the channel and serves what it
    // started, a checked wave in hand too (the predecessor released it); the predecessor
    // finishes the connections it had not frozen. The waves it sent before it read the ABORT
    // are released there too: they are started as they arrive, until it closes the channel.
    if (this.waveInHand) this.startWave();
    this.host.onDone(this.statsNow(), error);
    if (this.channel.isClosed) return this.endLateWaves();
    this.channel.readToEnd();
    this.channelEndDeadline.expect('EOF');
  }

  /** The channel closed after a failure past LISTENING (or stayed open too long, `late`): no more waves. */
  private endLateWaves(late?: TakeoverError): void {
    if (this.phase !== 'given-up') return;
    this.phase = 'failed';
    this.channelEndDeadline.clear();
    this.channel.close();
    this.dropHeld();
    if (late) this.host.onChannelKeptOpen(late);
  }

  /**
   * Copies never started here: the predecessor still serves them (before COMMIT all of them;
   * after, the ones it had not frozen), so only this process's fds go.
   */
  private dropHeld(): void {
    for (const held of this.held.values()) drop(held);
    this.held.clear();
  }
}

function unclaimedError(unclaimed: string[]): TakeoverError {
  return new TakeoverError(
    ErrorCodes.LISTENER_UNCLAIMED,
    `the predecessor listens on ${unclaimed.join(', ')}, which this process did not listen() on`,
  );
}
