import { connect, type Socket } from 'node:net';
import { monitorEventLoopDelay, performance, type IntervalHistogram } from 'node:perf_hooks';
import * as hdr from 'hdr-histogram-js';
import { formatPeer } from '#lib/cli/format.js';

/**
 * Load engine for the load client (tools/load-client.ts), the demo and the benchmark: long-lived connections each
 * send 4-byte big-endian sequence numbers and check that the echoes come back exactly, plus
 * optional short-lived connections that probe whether the listener ever refuses.
 */

export interface EchoLoadOptions {
  host: string;
  port: number;
  /** Long-lived connections; 0 is allowed when `newRate` alone is the load. Default 1. */
  connections?: number;
  /** Pause between an echo and the connection's next message. Default 100. */
  intervalMs?: number;
  /** Stop by itself after this long; 0 runs until `stop()`. Default 0. */
  durationMs?: number;
  /** Local addresses to bind, used round-robin, to get past one address's ephemeral ports. */
  sourceAddresses?: string[];
  /** Short-lived connections (connect, one echo, close) opened per second. Default 0. */
  newRate?: number;
  /** A connect or an echo that takes longer fails with ETIMEDOUT. Default 10000. */
  timeoutMs?: number;
}

export interface EchoLoadProgress {
  elapsedMs: number;
  open: number;
  echoesPerSec: number;
  lost: number;
  errors: number;
  /** Includes waits still in progress, so a pause shows while it is happening. */
  longestPauseMs: number;
}

export interface Discontinuity {
  kind: 'lost' | 'duplicated' | 'reordered';
  got: number;
  expected: number;
  /** The connection's local end, `[ip]:port`, which is what the server logs as the peer. */
  local: string;
}

export interface EchoLoadHooks {
  onProgress?: (progress: EchoLoadProgress) => void;
  /** Default 1000. */
  progressIntervalMs?: number;
  onDiscontinuity?: (event: Discontinuity) => void;
}

export interface Percentiles {
  p50: number;
  p99: number;
  max: number;
}

export interface TimelineBucket {
  /** Start of the 100 ms bucket, in ms since the run started. */
  t: number;
  echoes: number;
  /** Longest round trip of the echoes read in the bucket, untimed ones excepted. */
  maxRttMs: number;
}

/** Error keys that are always present, so consumers can read them without checking. */
export const ERROR_CODES = ['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'EOF', 'ETIMEDOUT'] as const;

export interface EchoLoadSummary {
  /** `[ip]:port` of the server. */
  target: string;
  elapsedMs: number;
  intervalMs: number;
  connections: number;
  /** Long-lived connections that connected. */
  opened: number;
  /** Long-lived connections still healthy when the run ended (closed by the client). */
  openAtEnd: number;
  /** Long-lived connections reset or closed by the server (or failing otherwise) while open. */
  cut: number;
  echoes: number;
  echoesPerSec: number;
  /** Messages never echoed: skipped by a higher echo, or pending when their connection ended. */
  lost: number;
  duplicated: number;
  /** Echoes that arrived after a higher one had already been received. */
  reordered: number;
  /**
   * Echoes left out of `rttMs` and the timeline's `maxRttMs`: those read after stop(), which
   * are still checked for loss and order. From stop() on, closing the other connections keeps
   * the client busy (10,000 sockets in one go), so it reads them late, and their time would be
   * its own delay rather than the server's.
   */
  untimedEchoes: number;
  /**
   * Long-lived connection failures by code. EOF = closed by the server before the end,
   * ETIMEDOUT = connect or echo slower than `timeoutMs`, ABORTED = given up by a second stop().
   */
  errors: Record<string, number>;
  short: { attempted: number; succeeded: number; failed: number; errors: Record<string, number> };
  /**
   * The longest any connection waited for an echo. A wait still in progress at stop() counts
   * until stop(): what was seen of it before the client's own shutdown began.
   */
  longestPauseMs: number;
  rttMs: Percentiles;
  /** Distribution over connections of each connection's longest wait for an echo, timed as above. */
  connectionPauseMs: Percentiles;
  /**
   * `rttMs` and `connectionPauseMs` in full, so that several clients' distributions merge exactly:
   * hdr-histogram-js encodeIntoCompressedBase64 (the HdrHistogram V2 compressed format), values
   * in microseconds. decodeFromCompressedBase64 each, then add() them into one.
   */
  histograms: { rttUs: string; connectionPauseUs: string };
  /**
   * Event-loop delay p99 and max of this process, from the start to stop(). The client timestamps
   * an echo when its loop gets to it, so any wait may include up to `lagMaxMs` of its own delay.
   */
  lagMs: number;
  lagMaxMs: number;
  timeline: TimelineBucket[];
  /** Nothing lost, duplicated or reordered, and no connection (long or short) failed. */
  ok: boolean;
}

export type EchoLoadRun = Promise<EchoLoadSummary> & {
  /**
   * First call: stop sending and timing (see `untimedEchoes`), and wait for the echoes in flight.
   * Second call: give up on them.
   */
  stop(): void;
};

export function runEchoLoad(options: EchoLoadOptions, hooks: EchoLoadHooks = {}): EchoLoadRun {
  const load = new EchoLoad(options, hooks);
  return Object.assign(load.start(), { stop: () => load.stop() });
}

const BUCKET_MS = 100;
const SWEEP_MS = 100;
const SHORT_TICK_MS = 10;
export const ELD_RESOLUTION_MS = 10;

type State = 'idle' | 'connecting' | 'open' | 'closed';

// Kept small on purpose: 10,000 of these live in one process next to their sockets.
class LoadConnection {
  state: State = 'idle';
  socket: Socket | undefined = undefined;
  timer: NodeJS.Timeout | undefined = undefined;
  /** The number in flight, or the next one to send when nothing is. */
  expected = 0;
  /** performance.now() when the pending connect or echo began; -1 when nothing is pending. */
  waitSince = -1;
  longestWaitUs = 0;
  partial = 0;
  partialLength = 0;
  /** Flat [from, to) pairs of numbers skipped by a higher echo; null until that happens. */
  missing: number[] | null = null;
}

interface ShortConnection {
  socket: Socket;
  startedAt: number;
  value: number;
  partial: number;
  partialLength: number;
}

export function newHistogram(): hdr.Histogram {
  // Microseconds up to an hour; autoResize covers anything longer rather than throwing.
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: 3 });
}

export function errorCounts(): Record<string, number> {
  return Object.fromEntries(ERROR_CODES.map((code) => [code, 0]));
}

export const round3 = (ms: number): number => Math.round(ms * 1000) / 1000;

export function percentilesMs(histogram: hdr.Histogram): Percentiles {
  return {
    p50: histogram.getValueAtPercentile(50) / 1000,
    p99: histogram.getValueAtPercentile(99) / 1000,
    max: histogram.maxValue / 1000,
  };
}

class EchoLoad {
  private readonly host: string;
  private readonly port: number;
  private readonly intervalMs: number;
  private readonly durationMs: number;
  private readonly sources: string[];
  private readonly newRate: number;
  private readonly timeoutMs: number;
  private readonly conns: LoadConnection[];

  private startedAt = 0;
  /** performance.now() at the first stop(): no wait is timed past it. */
  private stoppedAt = Infinity;
  private stopping = false;
  private aborted = false;
  private finished = false;
  private closedCount = 0;
  private resolve!: (summary: EchoLoadSummary) => void;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly eld = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });

  private open = 0;
  private opened = 0;
  private openAtEnd = 0;
  private cut = 0;
  private echoes = 0;
  private untimedEchoes = 0;
  private lost = 0;
  private duplicated = 0;
  private reordered = 0;
  private errorTotal = 0;
  private readonly errors = errorCounts();
  private longestPauseUs = 0;
  private readonly rtt = newHistogram();
  private readonly connectionPause = newHistogram();
  private readonly bucketEchoes: number[] = [];
  private readonly bucketMaxRttUs: number[] = [];

  private readonly shorts = new Set<ShortConnection>();
  private shortAttempted = 0;
  private shortSucceeded = 0;
  private shortFailed = 0;
  private readonly shortErrors = errorCounts();

  private lastProgressAt = 0;
  private lastProgressEchoes = 0;

  constructor(
    options: EchoLoadOptions,
    private readonly hooks: EchoLoadHooks,
  ) {
    this.host = options.host;
    this.port = options.port;
    this.intervalMs = options.intervalMs ?? 100;
    this.durationMs = options.durationMs ?? 0;
    this.sources = options.sourceAddresses ?? [];
    this.newRate = options.newRate ?? 0;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.conns = Array.from({ length: options.connections ?? 1 }, () => new LoadConnection());
  }

  start(): Promise<EchoLoadSummary> {
    const done = new Promise<EchoLoadSummary>((resolve) => (this.resolve = resolve));
    this.eld.enable();
    this.startedAt = this.lastProgressAt = performance.now();
    // Connections open spread over the first interval and send their first message one interval
    // after their slot. Sending on connect would let the connect storm's delays bunch the
    // connections together, and each one keeps its phase from then on.
    const spacing = this.intervalMs / Math.max(1, this.conns.length);
    this.conns.forEach((conn, i) => {
      conn.timer = setTimeout(() => this.connect(conn, i, this.startedAt + i * spacing + this.intervalMs), i * spacing);
    });
    this.timers.push(setInterval(() => this.sweep(), SWEEP_MS));
    if (this.newRate > 0) this.timers.push(setInterval(() => this.launchDueShorts(), SHORT_TICK_MS));
    if (this.durationMs > 0) this.timers.push(setTimeout(() => this.stop(), this.durationMs));
    if (this.conns.length === 0 && this.newRate === 0) this.stop();
    return done;
  }

  stop(): void {
    if (this.stopping) {
      this.abort();
      return;
    }
    this.stopping = true;
    this.stoppedAt = performance.now();
    // The loop below and the closing of every socket are the client's own work, not a lag of the run.
    this.eld.disable();
    for (const conn of this.conns) {
      if (conn.state === 'idle') this.discard(conn);
      // An open connection waiting for nothing is done; one with an echo in flight closes when it lands.
      else if (conn.state === 'open' && conn.waitSince < 0) this.endConnection(conn, undefined);
    }
    this.maybeFinish();
  }

  private abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    for (const conn of this.conns) {
      if (conn.state === 'open') this.endConnection(conn, undefined);
      else if (conn.state === 'connecting') this.endConnection(conn, 'ABORTED');
    }
    for (const short of this.shorts) this.finishShort(short, 'ABORTED');
  }

  private connect(conn: LoadConnection, index: number, firstSendAt: number): void {
    conn.timer = undefined;
    conn.state = 'connecting';
    conn.waitSince = performance.now();
    const socket = connect({ host: this.host, port: this.port, localAddress: this.source(index), noDelay: true });
    conn.socket = socket;
    socket.on('connect', () => this.onConnect(conn, firstSendAt));
    socket.on('data', (chunk: Buffer) => this.onData(conn, chunk));
    socket.on('end', () => this.endConnection(conn, 'EOF'));
    socket.on('error', (err: NodeJS.ErrnoException) => this.endConnection(conn, err.code ?? 'ERROR'));
  }

  private source(index: number): string | undefined {
    return this.sources.length === 0 ? undefined : this.sources[index % this.sources.length];
  }

  private onConnect(conn: LoadConnection, firstSendAt: number): void {
    conn.state = 'open';
    conn.waitSince = -1;
    this.opened++;
    this.open++;
    if (this.stopping) {
      this.endConnection(conn, undefined);
      return;
    }
    const delay = firstSendAt - performance.now();
    if (delay <= 0) {
      this.send(conn);
      return;
    }
    // A one-off timer: answered() arms the interval timer that is then refreshed for every message.
    conn.timer = setTimeout(() => {
      conn.timer = undefined;
      this.send(conn);
    }, delay);
  }

  private send(conn: LoadConnection): void {
    if (conn.state !== 'open' || this.stopping) return;
    const message = Buffer.allocUnsafe(4);
    // A misbehaving server can push `expected` past 2^32 - 1; wrap rather than throw.
    message.writeUInt32BE(conn.expected >>> 0);
    conn.waitSince = performance.now();
    conn.socket!.write(message);
  }

  // The stream may split or coalesce messages anyhow, so it is consumed 4 bytes at a time.
  private onData(conn: LoadConnection, chunk: Buffer): void {
    const now = performance.now();
    let { partial, partialLength } = conn;
    for (let i = 0; i < chunk.length; i++) {
      partial = partial * 256 + chunk[i]!;
      if (++partialLength === 4) {
        this.onEcho(conn, partial, now);
        if (conn.state !== 'open') return;
        partial = 0;
        partialLength = 0;
      }
    }
    conn.partial = partial;
    conn.partialLength = partialLength;
  }

  private onEcho(conn: LoadConnection, got: number, now: number): void {
    const expected = conn.expected;
    if (got === expected) {
      this.recordEcho(conn, now);
      conn.expected++;
      this.answered(conn, now);
    } else if (got > expected) {
      this.lost += got - expected;
      conn.missing ??= [];
      conn.missing.push(expected, got);
      conn.expected = got + 1;
      this.discontinuity(conn, 'lost', got, expected);
      this.answered(conn, now);
    } else if (takeMissing(conn, got)) {
      // It was counted lost when the higher number overtook it; it was only late.
      this.lost--;
      this.reordered++;
      this.discontinuity(conn, 'reordered', got, expected);
    } else {
      this.duplicated++;
      this.discontinuity(conn, 'duplicated', got, expected);
    }
  }

  private answered(conn: LoadConnection, now: number): void {
    if (conn.waitSince < 0) return;
    this.noteWait(conn, now);
    if (this.stopping) {
      this.endConnection(conn, undefined);
    } else if (conn.timer) {
      // refresh() re-arms the same Timeout object: no allocation per message.
      conn.timer.refresh();
    } else {
      conn.timer = setTimeout(() => this.send(conn), this.intervalMs);
    }
  }

  private noteWait(conn: LoadConnection, now: number): void {
    const waitUs = Math.round((Math.min(now, this.stoppedAt) - conn.waitSince) * 1000);
    conn.waitSince = -1;
    if (waitUs > conn.longestWaitUs) conn.longestWaitUs = waitUs;
    if (waitUs > this.longestPauseUs) this.longestPauseUs = waitUs;
  }

  private recordEcho(conn: LoadConnection, now: number): void {
    this.echoes++;
    const bucket = Math.floor((now - this.startedAt) / BUCKET_MS);
    while (this.bucketEchoes.length <= bucket) {
      this.bucketEchoes.push(0);
      this.bucketMaxRttUs.push(0);
    }
    this.bucketEchoes[bucket]!++;
    // Not asked for yet (a server sending ahead), or read after stop(): see `untimedEchoes`.
    if (conn.waitSince < 0 || now > this.stoppedAt) {
      this.untimedEchoes++;
      return;
    }
    const rttUs = Math.round((now - conn.waitSince) * 1000);
    this.rtt.recordValue(rttUs);
    if (rttUs > this.bucketMaxRttUs[bucket]!) this.bucketMaxRttUs[bucket] = rttUs;
  }

  private discontinuity(conn: LoadConnection, kind: Discontinuity['kind'], got: number, expected: number): void {
    this.hooks.onDiscontinuity?.({ kind, got, expected, local: formatPeer(conn.socket!.localAddress, conn.socket!.localPort) });
  }

  /** `code` undefined: the client closes a healthy connection at the end of the run. */
  private endConnection(conn: LoadConnection, code: string | undefined): void {
    if (conn.state === 'closed') return;
    const now = performance.now();
    if (conn.state === 'open') {
      this.open--;
      if (conn.waitSince >= 0) {
        this.lost++;
        this.noteWait(conn, now);
      }
      this.connectionPause.recordValue(conn.longestWaitUs);
      if (code === undefined) this.openAtEnd++;
      // A timeout is the client's verdict on a slow server, not the server cutting the connection.
      else if (code !== 'ETIMEDOUT') this.cut++;
    }
    if (code !== undefined) {
      this.errors[code] = (this.errors[code] ?? 0) + 1;
      this.errorTotal++;
    }
    conn.socket!.destroy();
    this.discard(conn);
  }

  private discard(conn: LoadConnection): void {
    conn.state = 'closed';
    clearTimeout(conn.timer);
    conn.timer = undefined;
    this.closedCount++;
    this.maybeFinish();
  }

  private launchDueShorts(): void {
    if (this.stopping) return;
    const due = Math.floor(((performance.now() - this.startedAt) * this.newRate) / 1000) - this.shortAttempted;
    for (let i = 0; i < due; i++) this.launchShort();
  }

  private launchShort(): void {
    const value = this.shortAttempted++ >>> 0;
    const socket = connect({ host: this.host, port: this.port, localAddress: this.source(value), noDelay: true });
    const short: ShortConnection = { socket, startedAt: performance.now(), value, partial: 0, partialLength: 0 };
    this.shorts.add(short);
    socket.on('connect', () => {
      const message = Buffer.allocUnsafe(4);
      message.writeUInt32BE(value);
      socket.write(message);
    });
    socket.on('data', (chunk: Buffer) => {
      for (let i = 0; i < chunk.length && short.partialLength < 4; i++) {
        short.partial = short.partial * 256 + chunk[i]!;
        short.partialLength++;
      }
      if (short.partialLength === 4) this.finishShort(short, short.partial === value ? undefined : 'EBADECHO');
    });
    socket.on('end', () => this.finishShort(short, 'EOF'));
    socket.on('error', (err: NodeJS.ErrnoException) => this.finishShort(short, err.code ?? 'ERROR'));
  }

  private finishShort(short: ShortConnection, code: string | undefined): void {
    if (!this.shorts.delete(short)) return;
    short.socket.destroy();
    if (code === undefined) {
      this.shortSucceeded++;
    } else {
      this.shortFailed++;
      this.shortErrors[code] = (this.shortErrors[code] ?? 0) + 1;
    }
    this.maybeFinish();
  }

  // One periodic pass instead of a timer per message: cheap at 10,000 connections.
  private sweep(): void {
    const now = performance.now();
    let longestPendingUs = 0;
    for (const conn of this.conns) {
      if (conn.waitSince < 0) continue;
      const waitedMs = now - conn.waitSince;
      const timedMs = Math.min(now, this.stoppedAt) - conn.waitSince;
      if (waitedMs > this.timeoutMs) this.endConnection(conn, 'ETIMEDOUT');
      else if (conn.state === 'open' && timedMs * 1000 > longestPendingUs) longestPendingUs = timedMs * 1000;
    }
    for (const short of this.shorts) {
      if (now - short.startedAt > this.timeoutMs) this.finishShort(short, 'ETIMEDOUT');
    }
    const { onProgress, progressIntervalMs = 1000 } = this.hooks;
    if (onProgress && now - this.lastProgressAt >= progressIntervalMs) {
      onProgress({
        elapsedMs: Math.round(now - this.startedAt),
        open: this.open,
        echoesPerSec: Math.round(((this.echoes - this.lastProgressEchoes) * 1000) / (now - this.lastProgressAt)),
        lost: this.lost,
        errors: this.errorTotal + this.shortFailed,
        longestPauseMs: round3(Math.max(this.longestPauseUs, longestPendingUs) / 1000),
      });
      this.lastProgressAt = now;
      this.lastProgressEchoes = this.echoes;
    }
  }

  private maybeFinish(): void {
    if (this.finished || !this.stopping || this.closedCount < this.conns.length || this.shorts.size > 0) return;
    this.finished = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.length = 0;
    this.resolve(this.summary());
  }

  private summary(): EchoLoadSummary {
    const elapsedMs = performance.now() - this.startedAt;
    const buckets = Math.floor(elapsedMs / BUCKET_MS) + 1;
    const timeline: TimelineBucket[] = [];
    for (let i = 0; i < buckets; i++) {
      timeline.push({ t: i * BUCKET_MS, echoes: this.bucketEchoes[i] ?? 0, maxRttMs: (this.bucketMaxRttUs[i] ?? 0) / 1000 });
    }
    const lag = eventLoopLag(this.eld);
    return {
      target: formatPeer(this.host, this.port),
      elapsedMs: Math.round(elapsedMs),
      intervalMs: this.intervalMs,
      connections: this.conns.length,
      opened: this.opened,
      openAtEnd: this.openAtEnd,
      cut: this.cut,
      echoes: this.echoes,
      echoesPerSec: Math.round((this.echoes * 1000) / elapsedMs),
      lost: this.lost,
      duplicated: this.duplicated,
      reordered: this.reordered,
      untimedEchoes: this.untimedEchoes,
      errors: this.errors,
      short: { attempted: this.shortAttempted, succeeded: this.shortSucceeded, failed: this.shortFailed, errors: this.shortErrors },
      longestPauseMs: this.longestPauseUs / 1000,
      rttMs: percentilesMs(this.rtt),
      connectionPauseMs: percentilesMs(this.connectionPause),
      histograms: {
        rttUs: hdr.encodeIntoCompressedBase64(this.rtt),
        connectionPauseUs: hdr.encodeIntoCompressedBase64(this.connectionPause),
      },
      ...lag,
      timeline,
      // Every cut connection also counted an error code, so `cut` needs no check of its own.
      ok: this.errorTotal === 0 && this.shortFailed === 0 && this.lost === 0 && this.duplicated === 0 && this.reordered === 0,
    };
  }
}

/** A client's own event-loop delay, p99 and max, from a monitorEventLoopDelay at ELD_RESOLUTION_MS. */
export function eventLoopLag(eld: IntervalHistogram): { lagMs: number; lagMaxMs: number } {
  // The delay histogram measures whole timer periods, so an idle loop reads as the resolution.
  const lagMs = (ns: number): number => (eld.count > 0 ? round3(Math.max(0, ns / 1e6 - ELD_RESOLUTION_MS)) : 0);
  return { lagMs: lagMs(eld.percentile(99)), lagMaxMs: lagMs(eld.max) };
}

function takeMissing(conn: LoadConnection, got: number): boolean {
  const missing = conn.missing;
  if (missing === null) return false;
  for (let i = 0; i < missing.length; i += 2) {
    const from = missing[i]!;
    const to = missing[i + 1]!;
    if (got < from || got >= to) continue;
    // Split the range around `got` so a second copy of it counts as a duplicate.
    missing.splice(i, 2, ...(got > from ? [from, got] : []), ...(got + 1 < to ? [got + 1, to] : []));
    return true;
  }
  return false;
}
