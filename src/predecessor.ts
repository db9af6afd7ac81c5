/**
 * The old process's side of one takeover: pre-copy, then (after the successor's COMMIT)
 * stop accepting, send the last deltas, and hand reading over wave by wave.
 *
 *   hello -> precopy -> prepared --COMMIT--> committed -> waves -> done
 *      \________\__________\____ any failure before COMMIT: rollback (nothing was stopped)
 *
 * Before COMMIT this process never stops serving anything, so a rollback only has to drop
 * the successor. After COMMIT a failure resumes what has not been frozen yet.
 */
import type * as net from 'node:net';
import * as native from './native.js';
import type { Channel } from './channel.js';
import {
  encode,
  encodeWave,
  digestIds,
  MAX_FDS_PER_FRAME,
  MAX_IDS_PER_FRAME,
  type Frame,
  type ListenerEntry,
  type WaveRecord,
} from './protocol.js';
import { freezeSocket, releaseSocket, socketFd } from './sockets.js';
import { ErrorCodes, TakeoverError } from './errors.js';
import { Deadline } from './deadline.js';
import { isAlive } from './processes.js';
import { StatsRecorder, type TakeoverStats } from './stats.js';

/** What the session needs from the process it runs in (implemented by Takeover). */
export interface PredecessorHost {
  readonly options: { timeoutMs: number; waveSize: number };
  /** Listeners to send, each with a dup'ed fd the session owns and closes. */
  duplicateListeners(): (ListenerEntry & { fd: number })[];
  connections(): ReadonlyMap<number, { socket: net.Socket; listener: number }>;
  /** The app's state for a connection about to be frozen; 'failed' when its hook threw or returned a non-Buffer. */
  captureState(socket: net.Socket): Buffer | undefined | 'failed';
  /** Point of no return: stop accepting TCP connections and successors. */
  stopAccepting(): void;
  /** After a failure past the point of no return: accept again on the dups (ownership passes). */
  resumeAccepting(listeners: readonly (ListenerEntry & { fd: number })[]): void;
  onFreeze(socket: net.Socket): void;
  onRelease(socket: net.Socket): void;
  /** Called on every failure; `started` is false for a peer that never said HELLO (e.g. a liveness probe). */
  onRollback(error: TakeoverError, started: boolean): void;
  onHello(pid: number): void;
  onHandover(stats: TakeoverStats): void;
  /** A failure after LISTENING while the successor lives: it keeps what it has, this process the rest. */
  onPartialHandover(error: TakeoverError, stats: TakeoverStats): void;
}

type Phase = 'hello' | 'precopy' | 'prepared' | 'committed' | 'waves' | 'done' | 'failed';

/** A wave stops growing past this many bytes of input, output and state: bounds one wave's memory and pause. */
const WAVE_BYTE_BUDGET = 64 * 1024 * 1024;
/** Larger than a wave record's u32 lengths and MAX_WAVE_SIZE allow: such a connection stays here. */
const MAX_CONNECTION_BYTES = 256 * 1024 * 1024;

/**
 * Unacknowledged CONNS batches in flight. An acknowledgement round trip can cost a loop turn on
 * both sides, so the window is as wide as is safe: a non-root sender with more fds in flight
 * than its RLIMIT_NOFILE gets ETOOMANYREFS, so half of that, at most 64 batches.
 */
function batchWindow(): number {
  return Math.max(4, Math.min(64, Math.floor(native.fdLimit().soft / 2 / MAX_FDS_PER_FRAME)));
}

export class PredecessorSession {
  private phase: Phase = 'hello';
  private readonly unsent = new Set<number>();
  private readonly sent = new Set<number>();
  private closedUnsent: number[] = [];
  private batchesInFlight = 0;
  private listeners: (ListenerEntry & { fd: number })[] = [];
  private waveQueue: { id: number; socket: net.Socket | undefined }[] = [];
  /** Next entry of waveQueue to freeze (an index: shift() on 10,000 entries costs per call). */
  private waveCursor = 0;
  private waveSeq = 0;
  private waveStartedAt = 0;
  private readonly recorder = new StatsRecorder();
  private readonly stats = this.recorder.counts;
  private readonly marks = this.recorder.marks;
  private successorPid = 0;

  private readonly deadline: Deadline;
  private readonly window = batchWindow();

  constructor(
    private readonly host: PredecessorHost,
    private readonly channel: Channel,
  ) {
    this.deadline = new Deadline(host.options.timeoutMs, (what, ms) =>
      this.abort(new TakeoverError(ErrorCodes.TIMEOUT, `the successor sent no ${what} within ${ms} ms`)),
    );
    channel.on('frame', (frame) => this.onFrame(frame));
    channel.on('writable', () => this.pump());
    channel.on('error', (error) => this.fail(error));
    channel.on('close', () => this.fail(new TakeoverError(ErrorCodes.PEER_CLOSED, 'the successor closed the takeover channel')));
    this.deadline.expect('HELLO');
  }

  get isCommitted(): boolean {
    return this.phase === 'committed' || this.phase === 'waves' || this.phase === 'done';
  }

  /** The host reports every connection it accepts while the session runs. */
  connectionAdded(id: number): void {
    if (this.phase === 'precopy' || this.phase === 'prepared' || this.phase === 'committed') {
      this.unsent.add(id);
      if (this.phase !== 'prepared') this.pump();
    }
  }

  /** ...and every tracked connection that closes. */
  connectionClosed(id: number): void {
    if (this.unsent.delete(id)) return;
    if (this.phase === 'waves' || !this.sent.delete(id)) return;
    this.closedUnsent.push(id);
    this.stats.closed++;
    if (this.phase !== 'prepared') this.pump();
  }

  /** Tells the successor why, then rolls back. */
  abort(error: TakeoverError): void {
    this.channel.sendLast(encode.abort(error.code, error.message));
    this.fail(error);
  }

  private onFrame(frame: Frame): void {
    switch (`${this.phase}:${frame.type}`) {
      case 'hello:hello':
        return this.onHello((frame as Extract<Frame, { type: 'hello' }>).pid);
      case 'precopy:ack':
      case 'committed:ack':
        this.batchesInFlight--;
        this.deadline.clear(); // progress: pump() arms a fresh wait if more is outstanding
        return this.pump();
      case 'prepared:commit':
        return this.onCommit();
      case 'waves:waveAck':
        return this.onWaveAck((frame as Extract<Frame, { type: 'waveAck' }>).seq);
      default:
        if (frame.type === 'abort') {
          return this.fail(new TakeoverError(ErrorCodes.ABORTED, `the successor aborted: ${frame.message}`, { reason: frame.code }));
        }
        if (frame.type === 'listeners') for (const { fd } of frame.listeners) native.close(fd);
        if (frame.type === 'conns') for (const { fd } of frame.conns) native.close(fd);
        return this.abort(new TakeoverError(ErrorCodes.PROTOCOL, `unexpected ${frame.type} frame during ${this.phase}`));
    }
  }

  private onHello(pid: number): void {
    this.successorPid = pid;
    this.host.onHello(pid);
    try {
      this.listeners = this.host.duplicateListeners();
    } catch (error) {
      return this.abort(error instanceof TakeoverError ? error : new TakeoverError(ErrorCodes.SYSTEM, String(error)));
    }
    const connections = this.host.connections();
    this.channel.send(encode.welcome(process.pid, this.listeners.length, connections.size));
    this.channel.send(encode.listeners(this.listeners));
    for (const id of connections.keys()) this.unsent.add(id);
    this.phase = 'precopy';
    this.deadline.expect('ACK');
    this.pump();
  }

  /**
   * Sends what is pending while the window allows. A batch is built and sent in the same
   * tick, so every fd in it is open and still belongs to the connection its id names.
   */
  private pump(): void {
    if (this.phase !== 'precopy' && this.phase !== 'committed') return;
    const connections = this.host.connections();
    while (this.batchesInFlight < this.window && this.unsent.size > 0) {
      const batch: { id: number; listener: number; fd: number }[] = [];
      for (const id of this.unsent) {
        const conn = connections.get(id);
        const fd = conn ? socketFd(conn.socket) : -1;
        if (fd < 0) {
          this.unsent.delete(id);
          continue;
        }
        batch.push({ id, listener: conn!.listener, fd });
        if (batch.length === MAX_FDS_PER_FRAME) break;
      }
      if (batch.length === 0) break;
      if (!this.channel.trySend(encode.conns(batch))) {
        // Waiting for the socket to drain: a successor that stopped reading must still time out.
        if (!this.deadline.armed) this.deadline.expect('ACK');
        return;
      }
      if (this.marks.firstConns === 0) this.marks.firstConns = performance.now();
      for (const { id } of batch) {
        this.unsent.delete(id);
        this.sent.add(id);
      }
      this.batchesInFlight++;
    }
    while (this.closedUnsent.length > 0) {
      this.channel.send(encode.closed(this.closedUnsent.slice(0, MAX_IDS_PER_FRAME)));
      this.closedUnsent = this.closedUnsent.slice(MAX_IDS_PER_FRAME);
    }
    if (this.unsent.size > 0 || this.batchesInFlight > 0) {
      // Armed once per wait: the app's own accepts and closes call pump() too, and must not
      // keep postponing the timeout of a successor that stopped answering.
      if (!this.deadline.armed) this.deadline.expect('ACK');
      return;
    }
    if (this.phase === 'precopy') {
      const digest = digestIds(this.sent);
      this.channel.send(encode.prepare(digest.connections, digest.idSum, digest.idXor));
      this.marks.prepare = performance.now();
      this.phase = 'prepared';
      this.deadline.expect('COMMIT');
    } else {
      this.startWaves();
    }
  }

  private onCommit(): void {
    this.deadline.clear();
    this.marks.commit = performance.now();
    this.phase = 'committed';
    this.host.stopAccepting();
    this.pump();
  }

  private startWaves(): void {
    this.channel.send(encode.listening());
    this.marks.listening = performance.now();
    this.phase = 'waves';
    const connections = this.host.connections();
    this.waveQueue = [...this.sent].map((id) => ({ id, socket: connections.get(id)?.socket }));
    this.nextWave();
  }

  private nextWave(): void {
    // A send already failed (the successor died): freezing now would hand connections to nobody.
    if (this.channel.isBroken) return;
    this.waveStartedAt = performance.now();
    const records: WaveRecord[] = [];
    const released: net.Socket[] = [];
    let waveBytes = 0;
    while (records.length < this.host.options.waveSize && waveBytes < WAVE_BYTE_BUDGET && this.waveCursor < this.waveQueue.length) {
      const { id, socket } = this.waveQueue[this.waveCursor++]!;
      if (!socket || socket.destroyed) {
        records.push({ id, fate: 'closed' });
        this.stats.closed++;
        continue;
      }
      // Asked before the freeze (nothing reaches the app in between): a hook that fails, or a
      // connection too big for one wave record, leaves the connection here, still served.
      const bytes = socket.writableLength + socket.readableLength;
      const captured = bytes > MAX_CONNECTION_BYTES ? 'failed' : this.host.captureState(socket);
      const state = captured !== 'failed' && bytes + (captured?.length ?? 0) > MAX_CONNECTION_BYTES ? 'failed' : captured;
      const frozen = state === 'failed' ? { fate: 'retained' as const } : freezeSocket(socket);
      if (frozen.fate !== 'moved') {
        records.push({ id, fate: frozen.fate });
        this.stats[frozen.fate]++;
        continue;
      }
      waveBytes += bytes + (state?.length ?? 0);
      records.push({ id, fate: 'moved', input: frozen.input, output: frozen.output, state: state as Buffer | undefined });
      this.stats.connections++;
      this.stats.bytesIn += frozen.input.length;
      this.stats.bytesOut += frozen.output.length;
      this.stats.stateBytes += state?.length ?? 0;
      this.host.onFreeze(socket);
      released.push(socket);
    }
    for (const message of encode.wave(encodeWave({ seq: this.waveSeq, records }))) this.channel.send(message);
    for (const socket of released) {
      this.host.onRelease(socket);
      releaseSocket(socket);
    }
    this.deadline.expect('WAVE_ACK');
  }

  private onWaveAck(seq: number): void {
    if (seq !== this.waveSeq) {
      return this.abort(new TakeoverError(ErrorCodes.PROTOCOL, `WAVE_ACK for wave ${seq}, expected ${this.waveSeq}`));
    }
    this.stats.waves++;
    this.stats.maxPauseMs = Math.max(this.stats.maxPauseMs, performance.now() - this.waveStartedAt);
    this.waveSeq++;
    if (this.waveCursor < this.waveQueue.length) return this.nextWave();
    this.finish();
  }

  private finish(): void {
    this.deadline.clear();
    this.phase = 'done';
    this.channel.send(encode.done(this.stats.retained, Math.round(this.stats.maxPauseMs * 1000)));
    const stats = this.statsNow();
    this.closeListenerFds();
    // Report (and maybe exit) only once DONE is on the wire.
    this.channel.once('close', () => this.host.onHandover(stats));
    this.channel.closeWhenFlushed();
  }

  private statsNow(): TakeoverStats {
    return this.recorder.snapshot({
      role: 'predecessor',
      predecessorPid: process.pid,
      successorPid: this.successorPid,
      listeners: this.listeners.length,
    });
  }

  private fail(error: TakeoverError): void {
    if (this.phase === 'done' || this.phase === 'failed') return;
    const committed = this.isCommitted;
    const listening = this.phase === 'waves';
    const started = this.successorPid !== 0;
    this.phase = 'failed';
    this.deadline.clear();
    this.channel.close();
    // Only a WAVE_ACK proves the successor listens; before it, taking everything back is right.
    if (listening && this.waveSeq > 0 && isAlive(this.successorPid)) {
      // The successor accepts on the listeners and the channel now and serves what it started:
      // taking them back would make two processes accept. The connections not frozen yet never
      // left this process, so it finishes them, as retained ones, and then exits.
      this.stats.retained += this.waveQueue.length - this.waveCursor;
      this.waveQueue = [];
      const stats = this.statsNow();
      this.closeListenerFds();
      this.host.onPartialHandover(error, stats);
      return;
    }
    if (committed) {
      // The successor may be gone with the connections already frozen; the rest never
      // stopped here, and the listeners' dups let this process accept again.
      const listeners = this.listeners;
      this.listeners = [];
      this.host.resumeAccepting(listeners);
    } else {
      this.closeListenerFds();
    }
    this.host.onRollback(error, started);
  }

  private closeListenerFds(): void {
    for (const { fd } of this.listeners) native.close(fd);
    this.listeners = [];
  }
}
