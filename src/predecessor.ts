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
  type AdapterKind,
  type ListenerEntry,
  type WaveRecord,
  closeFrameFds,
} from './protocol.js';
import { freezeSocket, socketFd, thawSocket } from './sockets.js';
import type { Readiness } from './adapters/adapter.js';
import { ErrorCodes, TakeoverError, systemError } from './errors.js';
import { Deadline } from './deadline.js';
import { isAlive } from './processes.js';
import { StatsRecorder, type RollbackReport, type TakeoverStats } from './stats.js';

/** What a connection carries besides its bytes, from its adapter and the application's hook. */
export interface CapturedState {
  adapter: AdapterKind;
  protocolState: Buffer | undefined;
  state: Buffer | undefined;
}

/** What the session needs from the process it runs in (implemented by HandingOver, handing-over.ts). */
export interface PredecessorHost {
  readonly options: { timeoutMs: number; waveSize: number; quiesceTimeoutMs: number; timedWaves?: boolean };
  /** Listeners to send, each with a dup'ed fd the session owns and closes. */
  duplicateListeners(): (ListenerEntry & { fd: number })[];
  connections(): ReadonlyMap<number, { socket: net.Socket; listener: number }>;
  /** May this connection move now (its adapter's answer and the application's busy marks)? */
  readiness(id: number): Readiness;
  /** Its adapter's and the application's state, just before the freeze; 'failed' when either threw (it then stays here). */
  capture(id: number): CapturedState | 'failed';
  /** The connection stays here for good: let its protocol finish it. */
  retain(id: number): void;
  /** A deferred connection is still busy: let its protocol steer it towards a boundary. */
  settle(id: number): void;
  /** A deferred connection stays here because the takeover failed: carry on as before. */
  resume(id: number): void;
  /** Point of no return: stop accepting TCP connections and successors. */
  stopAccepting(): void;
  /** After a failure past the point of no return: accept again on the dups (ownership passes). */
  resumeAccepting(listeners: readonly (ListenerEntry & { fd: number })[]): void;
  onFreeze(socket: net.Socket): void;
  /** The connection was busy when its turn came: it waits for a later wave. */
  onDefer(socket: net.Socket): void;
  /** The connection now lives in the successor: drop this process's copy (no FIN). */
  release(id: number, socket: net.Socket): void;
  /** Called on every failure; `started` is false for a peer that never said HELLO (e.g. a liveness probe). */
  onRollback(error: TakeoverError, started: boolean, report: RollbackReport): void;
  onHello(pid: number): void;
  onHandover(stats: TakeoverStats): void;
  /** A failure after LISTENING while the successor lives: it keeps what it has, this process the rest. */
  onPartialHandover(error: TakeoverError, stats: TakeoverStats): void;
}

/** A connection frozen into the wave being built: released once the wave is sent, thawed if it could not be. */
interface Frozen {
  id: number;
  socket: net.Socket;
  input: Buffer;
  bytes: { output: number; state: number };
}

type Phase = 'hello' | 'welcoming' | 'precopy' | 'prepared' | 'committed' | 'waves' | 'done' | 'failed';

/** A wave stops growing past this many bytes of input, output and state: bounds one wave's memory and pause. */
const WAVE_BYTE_BUDGET = 64 * 1024 * 1024;
/** Larger than a wave record's u32 lengths and MAX_WAVE_SIZE allow: such a connection stays here. */
const MAX_CONNECTION_BYTES = 256 * 1024 * 1024;
/** How often deferred connections are asked again when nothing told the session they may be quiet. */
const QUIESCE_RETRY_MS = 2;
/**
 * A real successor says HELLO as soon as it connects; a peer that connects and says nothing must
 * not hold the only takeover slot for the whole timeout.
 */
const HELLO_TIMEOUT_MS = 1000;
/**
 * The old process serves while it sends: past this much sending in one turn of its event loop
 * it yields (setImmediate) so that its connections are read and answered in between.
 */
const SEND_SLICE_MS = 1;
/**
 * Unless the application fixed the wave size, waves are sized so that building, sending and
 * releasing one costs about this much CPU: each wave is one stretch of the old process's loop.
 */
const WAVE_STEP_MS = 1.5;
/** ...from the cost per connection of the waves so far; and never smaller than this. */
const MIN_TIMED_WAVE = 16;
/** ...and freezing stops past this wall time whatever the estimate said (a slow capture hook, a preemption). */
const WAVE_SLICE_MS = 1;
/**
 * Waves sent and not yet acknowledged. One at a time, each wave cost a round trip through both
 * event loops; with two in flight this process builds the next wave, on its own loop turn, while
 * the successor starts the previous one. A successor that dies takes every wave it was sent with
 * it, so a death costs up to this many unacknowledged waves; a successor that gives up starts
 * those that still reach it (successor.ts, 'given-up').
 */
export const WAVES_IN_FLIGHT = 2;

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
  /**
   * The connections HELLO found and not yet sent: a live iterator over the host's map, which also
   * visits connections accepted later and skips closed ones, so that HELLO does not copy 10,000
   * ids in one stretch. Undefined once it is done; `unsent` holds the rest.
   */
  private unlisted: Iterator<number> | undefined;
  /** To send besides `unlisted`: accepted after its end, or put back from a batch the socket did not take. */
  private readonly unsent = new Set<number>();
  private readonly sent = new Set<number>();
  private closedUnsent: number[] = [];
  private batchesInFlight = 0;
  /** A pump() continues on the next loop turn (it yielded after SEND_SLICE_MS). */
  private pumpScheduled = false;
  /** CONNS batches acknowledged so far: the next ACK must carry this number. */
  private batchesAcked = 0;
  private listeners: (ListenerEntry & { fd: number })[] = [];
  /** LISTENERS went out: from then on the successor may hold copies of the listening sockets. */
  private listenersSent = false;
  /** Connection ids in wave order; each socket is looked up when its turn comes (gone by then: closed). */
  /**
   * The sent connections not yet considered for a wave, in the order they were sent: a live
   * iterator over `sent`, which no longer changes once the waves start (a copy of 10,000 ids
   * would make the first wave's stretch 1-2 ms longer). Undefined before the waves and once done.
   */
  private waveQueue: Iterator<number> | undefined;
  /** Connections taken from waveQueue so far. */
  private waveTaken = 0;
  /** The next wave's number; the oldest unacknowledged one is waveSeq - wavesInFlight.length. */
  private waveSeq = 0;
  /** When each wave sent and not yet acknowledged began freezing, oldest first. */
  private readonly wavesInFlight: number[] = [];
  /** A nextWave() is queued for the next loop turn (each wave is its own stretch of the loop). */
  private waveScheduled = false;
  /** nextWave() is freezing: the steps it reports run the application's listeners. */
  private buildingWave = false;
  /** Connections the next wave may take: options.waveSize, or less when waves are timed. */
  private waveLimit: number;
  /** Timed waves: CPU ms per connection of the waves so far (a moving average), 0 before the first. */
  private waveCostMs = 0;
  /** Connections that were busy when their turn came: asked again until quiet or the quiescence bound. */
  private readonly deferred = new Map<number, net.Socket>();
  /** Deferred connections reported quiet while waves were in flight: asked first in the next wave. */
  private readonly maybeQuiet = new Set<number>();
  private quiesceDeadline = 0;
  private retryTimer: NodeJS.Timeout | undefined;
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
    // The first timed wave is small: its code runs cold, and its cost sizes the next ones.
    this.waveLimit = host.options.timedWaves ? MIN_TIMED_WAVE : host.options.waveSize;
    this.deadline = new Deadline(host.options.timeoutMs, (what, ms) =>
      this.abort(new TakeoverError(ErrorCodes.TIMEOUT, `the successor sent no ${what} within ${ms} ms`)),
    );
    channel.on('frame', (frame) => this.recorder.step(() => this.onFrame(frame)));
    // Every send of pre-copy goes through schedulePump(): at most one slice of sending per turn of
    // the loop. An ACK, the channel draining or an accept each calling pump() at once would each
    // get a slice of its own, and a read of 20 queued ACKs became 20 ms of sending in one turn.
    channel.on('writable', () => (this.phase === 'waves' ? this.scheduleWave() : this.schedulePump()));
    channel.on('error', (error) => this.fail(error));
    channel.on('close', () => this.fail(new TakeoverError(ErrorCodes.PEER_CLOSED, 'the successor closed the takeover channel')));
    this.deadline.expect('HELLO', Math.min(host.options.timeoutMs, HELLO_TIMEOUT_MS));
  }

  /** The successor's pid, as the kernel reports it. */
  get peerPid(): number {
    return this.channel.peer.pid;
  }

  get isCommitted(): boolean {
    return this.phase === 'committed' || this.phase === 'waves' || this.phase === 'done';
  }

  /** LISTENING is out: the successor serves the listeners (for systemd, it is the main process). */
  get isListening(): boolean {
    return this.phase === 'waves' || this.phase === 'done';
  }

  /** The host reports every connection it accepts while the session runs. */
  connectionAdded(id: number): void {
    if (this.phase === 'precopy' || this.phase === 'prepared' || this.phase === 'committed') {
      this.unsent.add(id);
      if (this.phase !== 'prepared') this.schedulePump();
    }
  }

  /** ...and every tracked connection that closes. */
  connectionClosed(id: number): void {
    if (this.unsent.delete(id)) return;
    if (this.phase === 'waves' || !this.sent.delete(id)) return;
    this.closedUnsent.push(id);
    this.stats.closed++;
    // Between PREPARE and COMMIT too: the successor's copy keeps the connection open to the
    // client until it drops it.
    if (this.phase === 'prepared') this.flushClosed();
    else this.schedulePump();
  }

  /** An adapter or the application says a connection may have become quiet: move it while it is. */
  connectionMaybeQuiet(id: number): void {
    if (this.phase !== 'waves' || !this.deferred.has(id)) return;
    // Told from inside a wave being built (a 'defer' or 'freeze' listener): that wave's last pass
    // over the deferred connections, or the next wave, asks it again. A wave of its own built
    // in the middle would go out with the same number.
    if (this.wavesInFlight.length > 0 || this.waveScheduled || this.buildingWave) {
      this.maybeQuiet.add(id);
      return;
    }
    this.clearRetry();
    this.recorder.step(() => this.nextWave());
  }

  /** Tells the successor why, then rolls back. */
  abort(error: TakeoverError): void {
    this.channel.sendAbort(error);
    this.fail(error);
  }

  private onFrame(frame: Frame): void {
    const phase = this.phase;
    // Failed after LISTENING, the channel stays open until the waves sent are out: what the
    // successor still says (a WAVE_ACK sent before its ABORT) changes nothing, and must not close it.
    if (phase === 'failed') {
      closeFrameFds(frame);
      return;
    }
    if (frame.type === 'abort') {
      const error = new TakeoverError(ErrorCodes.ABORTED, `the successor aborted: ${frame.message}`, { reason: frame.code });
      // Sent after this side last found the channel empty: if it reads on (refusing to be taken
      // over) longer than that, it cannot have passed the listeners on yet, and whether it lives
      // decides, as for a successor that does not say (a killed one must not leave the port to no one).
      const cannotHavePassedOn = frame.listening === true && frame.readsOnMs !== undefined && this.channel.msSinceDrained < frame.readsOnMs;
      return this.fail(error, cannotHavePassedOn ? undefined : frame.listening);
    }
    if (frame.type === 'hello' && phase === 'hello') return this.onHello();
    if (frame.type === 'ack' && (phase === 'precopy' || phase === 'committed')) return this.onAck(frame.seq);
    if (frame.type === 'commit' && phase === 'prepared') return this.onCommit();
    if (frame.type === 'waveAck' && phase === 'waves') return this.onWaveAck(frame.seq);
    closeFrameFds(frame);
    return this.abort(new TakeoverError(ErrorCodes.PROTOCOL, `unexpected ${frame.type} frame during ${phase}`));
  }

  private onAck(seq: number): void {
    if (this.batchesInFlight === 0 || seq !== this.batchesAcked) {
      return this.abort(
        new TakeoverError(ErrorCodes.PROTOCOL, `ACK for batch ${seq}, expected ${this.batchesInFlight === 0 ? 'none' : this.batchesAcked}`),
      );
    }
    this.batchesAcked++;
    this.batchesInFlight--;
    this.deadline.clear(); // progress: pump() arms a fresh wait if more is outstanding
    this.schedulePump();
  }

  private onHello(): void {
    // The kernel's word (SO_PEERCRED), not the peer's: in another pid namespace, or lying, the
    // pid a peer claims names some other process, and liveness checks would ask about that one.
    this.successorPid = this.channel.peer.pid;
    this.recorder.sampleLoop();
    this.host.onHello(this.successorPid);
    this.deadline.clear();
    this.phase = 'welcoming';
    // Starting the sampler and the 'successor' listeners are this turn's stretch (cold code, 1-2 ms
    // of CPU): the listeners' dups and WELCOME are the next one's.
    setImmediate(() => this.recorder.step(() => this.welcome()));
  }

  private welcome(): void {
    if (this.phase !== 'welcoming') return;
    try {
      this.listeners = this.host.duplicateListeners();
    } catch (error) {
      return this.abort(systemError('duplicating the listeners', error));
    }
    const connections = this.host.connections();
    this.channel.send(encode.welcome(process.pid, this.listeners.length, connections.size));
    this.channel.send(encode.listeners(this.listeners));
    this.listenersSent = true;
    this.unlisted = connections.keys();
    this.phase = 'precopy';
    this.deadline.expect('ACK');
    this.schedulePump();
  }

  /**
   * Sends what is pending while the window allows. A batch is built and sent in the same
   * tick, so every fd in it is open and still belongs to the connection its id names.
   */
  private pump(): void {
    if (this.phase !== 'precopy' && this.phase !== 'committed') return;
    const connections = this.host.connections();
    const sliceEnd = performance.now() + SEND_SLICE_MS;
    while (this.batchesInFlight < this.window && this.hasUnsent()) {
      if (performance.now() >= sliceEnd) {
        this.schedulePump();
        break;
      }
      const batch = this.nextBatch(connections);
      if (batch.length === 0) break;
      if (!this.channel.trySend(encode.conns(batch))) {
        for (const { id } of batch) this.unsent.add(id);
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
    this.flushClosed();
    if (this.hasUnsent() || this.batchesInFlight > 0) {
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

  private hasUnsent(): boolean {
    return this.unlisted !== undefined || this.unsent.size > 0;
  }

  /** Up to a frame's worth of connections still open, with their fds: `unsent` first, then the listing. */
  private nextBatch(
    connections: ReadonlyMap<number, { socket: net.Socket; listener: number }>,
  ): { id: number; listener: number; fd: number }[] {
    const batch: { id: number; listener: number; fd: number }[] = [];
    const take = (id: number): void => {
      const conn = connections.get(id);
      const fd = conn ? socketFd(conn.socket) : -1;
      if (fd < 0) this.unsent.delete(id);
      else batch.push({ id, listener: conn!.listener, fd });
    };
    for (const id of this.unsent) {
      if (batch.length === MAX_FDS_PER_FRAME) return batch;
      take(id);
    }
    while (this.unlisted && batch.length < MAX_FDS_PER_FRAME) {
      const next = this.unlisted.next();
      if (next.done) this.unlisted = undefined;
      // Accepted since HELLO: the host's map and `unsent` both had it.
      else if (!this.sent.has(next.value) && !this.unsent.has(next.value)) take(next.value);
    }
    return batch;
  }

  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.recorder.step(() => this.pump());
    });
  }

  private flushClosed(): void {
    while (this.closedUnsent.length > 0) {
      this.channel.send(encode.closed(this.closedUnsent.slice(0, MAX_IDS_PER_FRAME)));
      this.closedUnsent = this.closedUnsent.slice(MAX_IDS_PER_FRAME);
    }
  }

  private onCommit(): void {
    this.deadline.clear();
    this.marks.commit = performance.now();
    this.phase = 'committed';
    this.host.stopAccepting();
    this.afterReceived(() => this.pump());
  }

  /**
   * Runs `act` once every frame already received has been handled. The successor may have given
   * up (an ABORT after its COMMIT or WAVE_ACK, when this process was stopped past its timeout),
   * and a wave sent now would be released here and dropped there: its connections lost.
   */
  private afterReceived(act: () => void): void {
    queueMicrotask(() => {
      if (this.phase !== 'failed') this.recorder.step(act);
    });
  }

  private startWaves(): void {
    const { quiesceTimeoutMs } = this.host.options;
    this.channel.send(encode.listening(quiesceTimeoutMs));
    this.marks.listening = performance.now();
    this.quiesceDeadline = this.marks.listening + quiesceTimeoutMs;
    this.phase = 'waves';
    // Stopping the listeners, the last deltas and LISTENING were this turn's stretch: the queue
    // (every connection) and the first wave are the next one's.
    setImmediate(() =>
      this.recorder.step(() => {
        if (this.phase !== 'waves') return;
        this.waveQueue = this.sent.values();
        this.nextWave();
      }),
    );
  }

  /**
   * Freezes and sends the next wave: connections in queue order, then (once the queue is done)
   * deferred ones that have become quiet. With only busy connections left, waits for one to
   * turn quiet, and past the quiescence bound leaves them here. Wave 0 always goes out, even
   * with nothing but deferrals in it: its WAVE_ACK proves the successor listens.
   */
  private nextWave(): void {
    // A wave goes out on a timer or a loop turn too, not only on a WAVE_ACK, and those run before
    // the loop polls the channel: a successor that gave up while this process was stopped (its
    // ABORT queued) would get a wave it drops.
    this.channel.readQueued();
    // A send already failed (the successor died): freezing now would hand connections to nobody.
    if (this.phase !== 'waves' || this.channel.isBroken) return;
    this.buildingWave = true;
    const startedAt = performance.now();
    const cpuStart = native.threadCpuMs();
    const records: WaveRecord[] = [];
    const released: Frozen[] = [];
    const budget = { bytes: 0 };
    const sliceEnd = this.host.options.timedWaves ? startedAt + WAVE_SLICE_MS : Infinity;
    // The time bound never leaves a wave empty: an empty wave with nothing deferred means the end.
    const room = () =>
      records.length < this.waveLimit && budget.bytes < WAVE_BYTE_BUDGET && (records.length === 0 || performance.now() < sliceEnd);
    for (const id of this.maybeQuiet) {
      if (!room()) break;
      this.maybeQuiet.delete(id);
      const socket = this.deferred.get(id);
      // A connection that closed meanwhile is recorded as closed by consider().
      if (socket && (socket.destroyed || this.host.readiness(id) === 'quiet')) this.consider(id, socket, records, released, budget);
    }
    const connections = this.host.connections();
    while (this.waveQueue && room()) {
      const next = this.waveQueue.next();
      if (next.done) {
        this.waveQueue = undefined;
        break;
      }
      this.waveTaken++;
      this.consider(next.value, connections.get(next.value)?.socket, records, released, budget);
    }
    if (!this.waveQueue) {
      const pastBound = performance.now() >= this.quiesceDeadline;
      // A wave names a connection once: one deferred in this wave waits for the next, even if a
      // listener of this wave's steps made it quiet or closed it since.
      const deferredNow = new Set(records.filter((r) => r.fate === 'deferred').map((r) => r.id));
      for (const [id, socket] of this.deferred) {
        if (!room()) break;
        if (deferredNow.has(id)) continue;
        if (pastBound) {
          this.deferred.delete(id);
          records.push({ id, fate: 'retained' });
          this.stats.retained++;
          this.host.retain(id);
        } else if (socket.destroyed || this.host.readiness(id) !== 'busy') {
          this.consider(id, socket, records, released, budget);
        } else {
          this.host.settle(id);
        }
      }
    }
    this.buildingWave = false;
    if (records.length === 0 && this.waveSeq > 0) {
      // The last WAVE_ACKs call this again: DONE only follows every wave acknowledged.
      if (this.wavesInFlight.length > 0) return;
      if (this.deferred.size === 0) return this.finish();
      this.retryTimer = setTimeout(
        () => {
          this.retryTimer = undefined;
          this.recorder.step(() => this.nextWave());
        },
        Math.max(0, Math.min(QUIESCE_RETRY_MS, this.quiesceDeadline - performance.now())),
      );
      return;
    }
    for (const message of encode.wave(encodeWave({ seq: this.waveSeq, records }))) this.channel.send(message);
    if (this.channel.isBroken) {
      // The wave did not leave: its connections are still whole here. Back to serving them, as
      // deferred ones, before the channel's failure is reported.
      for (const { id, socket, input, bytes } of released) {
        thawSocket(socket, input);
        this.deferred.set(id, socket);
        this.stats.connections--;
        this.stats.bytesIn -= input.length;
        this.stats.bytesOut -= bytes.output;
        this.stats.stateBytes -= bytes.state;
      }
      return;
    }
    // In flight from the send on: the release steps below run the application's listeners, and
    // a connection they make quiet must wait for a WAVE_ACK, not start a wave of its own.
    this.waveSeq++;
    this.wavesInFlight.push(startedAt);
    for (const { id, socket } of released) this.host.release(id, socket);
    if (this.host.options.timedWaves) this.sizeNextWave(native.threadCpuMs() - cpuStart, records.length);
    if (!this.deadline.armed) this.deadline.expect('WAVE_ACK');
    if (this.wavesInFlight.length < WAVES_IN_FLIGHT) this.scheduleWave();
  }

  /**
   * The next wave on the next loop turn, unless one is queued already or the window is full by
   * then; and only once the previous one is on the wire (a wave bigger than the socket buffer
   * waits in the channel's queue, and 'writable' calls this again): a wave queued behind it
   * would reach the successor no sooner.
   */
  private scheduleWave(): void {
    if (this.waveScheduled || this.channel.hasQueued) return;
    this.waveScheduled = true;
    setImmediate(() => {
      this.waveScheduled = false;
      if (this.phase !== 'waves' || this.wavesInFlight.length >= WAVES_IN_FLIGHT) return;
      this.clearRetry();
      this.recorder.step(() => this.nextWave());
    });
  }

  /** Timed waves: the next one as big as WAVE_STEP_MS of CPU allows, at the cost per connection seen so far. */
  private sizeNextWave(cpuMs: number, connections: number): void {
    if (connections === 0) return;
    const cost = cpuMs / connections;
    this.waveCostMs = this.waveCostMs === 0 ? cost : (this.waveCostMs + cost) / 2;
    const fits = Math.floor(WAVE_STEP_MS / this.waveCostMs);
    this.waveLimit = Math.max(MIN_TIMED_WAVE, Math.min(this.host.options.waveSize, fits));
  }

  /** Decides one connection's fate in the wave being built; a moved one is frozen here and released once the wave is sent. */
  private consider(id: number, socket: net.Socket | undefined, records: WaveRecord[], released: Frozen[], budget: { bytes: number }): void {
    const wasDeferred = this.deferred.delete(id);
    if (!socket || socket.destroyed) {
      records.push({ id, fate: 'closed' });
      this.stats.closed++;
      return;
    }
    const readiness = this.host.readiness(id);
    if (readiness === 'busy') {
      this.deferred.set(id, socket);
      // The successor hears of a deferral once; it keeps its copy until a later wave decides.
      if (!wasDeferred) {
        records.push({ id, fate: 'deferred' });
        this.stats.deferred++;
        this.host.onDefer(socket);
      }
      this.host.settle(id);
      return;
    }
    // Asked before the freeze (nothing reaches the app in between): a hook that fails, or a
    // connection too big for one wave record, leaves the connection here, still served.
    const bytes = socket.writableLength + socket.readableLength;
    const captured = readiness === 'never' || bytes > MAX_CONNECTION_BYTES ? 'failed' : this.host.capture(id);
    const stateBytes = captured === 'failed' ? 0 : (captured.protocolState?.length ?? 0) + (captured.state?.length ?? 0);
    const frozen =
      captured === 'failed' || bytes + stateBytes > MAX_CONNECTION_BYTES ? { fate: 'retained' as const } : freezeSocket(socket);
    if (frozen.fate !== 'moved') {
      records.push({ id, fate: frozen.fate });
      this.stats[frozen.fate]++;
      if (frozen.fate === 'retained') this.host.retain(id);
      return;
    }
    const { adapter, protocolState, state } = captured as CapturedState;
    budget.bytes += bytes + stateBytes;
    records.push({ id, fate: 'moved', adapter, input: frozen.input, output: frozen.output, protocolState, state });
    this.stats.connections++;
    this.stats.bytesIn += frozen.input.length;
    this.stats.bytesOut += frozen.output.length;
    this.stats.stateBytes += stateBytes;
    this.host.onFreeze(socket);
    released.push({ id, socket, input: frozen.input, bytes: { output: frozen.output.length, state: stateBytes } });
  }

  private onWaveAck(seq: number): void {
    // Between a WAVE_ACK and the next wave (a retry timer, the loop turn before wave 0) the next
    // number is not yet owed: accepting it would count a wave the successor never had.
    if (this.wavesInFlight.length === 0) {
      return this.abort(new TakeoverError(ErrorCodes.PROTOCOL, `WAVE_ACK for wave ${seq} while no wave was in flight`));
    }
    const expected = this.waveSeq - this.wavesInFlight.length;
    if (seq !== expected) {
      return this.abort(new TakeoverError(ErrorCodes.PROTOCOL, `WAVE_ACK for wave ${seq}, expected ${expected}`));
    }
    const startedAt = this.wavesInFlight.shift()!;
    this.deadline.clear();
    if (this.wavesInFlight.length > 0) this.deadline.expect('WAVE_ACK');
    this.stats.waves++;
    this.stats.maxPauseMs = Math.max(this.stats.maxPauseMs, performance.now() - startedAt);
    // Unless the window is still full, or the next wave is queued or started already (a
    // connection that turned quiet meanwhile, connectionMaybeQuiet).
    this.afterReceived(() => {
      if (this.waveScheduled || this.wavesInFlight.length >= WAVES_IN_FLIGHT) return;
      if (this.wavesInFlight.length > 0 && this.channel.hasQueued) return;
      this.clearRetry();
      this.nextWave();
    });
  }

  private clearRetry(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
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

  /**
   * `successorListens`: what the successor's ABORT said: true, it keeps accepting on the listeners
   * (alive or not by now); false, it never did and closed its copies (it gave up before it read
   * LISTENING, which crossed its ABORT). Undefined: it did not say (no ABORT, an earlier release).
   */
  private fail(error: TakeoverError, successorListens?: boolean): void {
    if (this.phase === 'done' || this.phase === 'failed') return;
    const committed = this.isCommitted;
    const listening = this.phase === 'waves';
    const started = this.successorPid !== 0;
    this.phase = 'failed';
    this.deadline.clear();
    this.clearRetry();
    this.recorder.stop();
    // Once LISTENING is out, a live successor may be accepting (or will, once it reads it, even
    // after a stall): taking the listeners back would make two processes accept. Only a dead one
    // (the kernel's pid, a zombie counts as dead) lets this process resume them, and only if it
    // did not say it kept them: it may have passed them on to a third process before it exited.
    // One that said it never listened (alive or not) left the port to no one but this process.
    if (listening && (successorListens ?? isAlive(this.successorPid))) {
      // The successor accepts on the listeners and the channel now and serves what it started:
      // taking them back would make two processes accept. The connections not frozen yet never
      // left this process, so it finishes them, as retained ones, and then exits.
      // Before the first wave the queue is not built yet: every connection sent is still here.
      const unfrozen = this.sent.size - this.waveTaken;
      this.stats.retained += unfrozen + this.deferred.size;
      for (const id of this.deferred.keys()) this.host.retain(id);
      this.deferred.clear();
      this.waveQueue = undefined;
      const stats = this.statsNow();
      this.closeListenerFds();
      // The waves released here may still be queued behind a full socket (a wave bigger than the
      // socket buffer, a successor stopped past the timeout, or one that gave up and reads on):
      // only the successor can serve their connections now, so they go to it however late it reads
      // them, and this process is done only once they are out. A successor that stays stopped
      // keeps the listeners anyway.
      if (this.channel.keepQueued()) return void this.channel.once('close', () => this.host.onPartialHandover(error, stats));
      this.channel.close();
      this.host.onPartialHandover(error, stats);
      return;
    }
    this.channel.close();
    let listenersResumed = 0;
    if (committed) {
      // The successor may be gone with the connections already frozen; the rest never
      // stopped here, and the listeners' dups let this process accept again.
      for (const id of this.deferred.keys()) this.host.resume(id);
      this.deferred.clear();
      const listeners = this.listeners;
      this.listeners = [];
      listenersResumed = listeners.filter((l) => l.kind !== 'channel').length;
      this.host.resumeAccepting(listeners);
    } else {
      this.closeListenerFds();
    }
    // A successor that aborted closed its copies; one that stalled or misbehaved may keep them,
    // read or still in its socket's queue, and with them the ports, for as long as it lives.
    const mayHoldListeners = this.listenersSent && error.code !== ErrorCodes.ABORTED && isAlive(this.successorPid);
    // Every connection a sent wave moved lived in the successor only, and went with it.
    this.host.onRollback(error, started, {
      successorPid: this.successorPid,
      committed,
      lost: this.stats.connections,
      resumed: this.host.connections().size,
      listenersResumed,
      listenerHolder: mayHoldListeners ? this.successorPid : 0,
    });
  }

  private closeListenerFds(): void {
    for (const { fd } of this.listeners) native.close(fd);
    this.listeners = [];
  }
}
