import * as fs from 'node:fs';
import { createHistogram, PerformanceObserver, type RecordableHistogram } from 'node:perf_hooks';
import { threadCpuMs } from './native.js';

/** What one takeover did, as seen from one side. Times are milliseconds. */
export interface TakeoverStats {
  /** Which side reports: `ready()` gives the successor's, `'handover'`, `done()` and `upgrade()` the predecessor's. */
  role: 'predecessor' | 'successor';
  predecessorPid: number;
  /** The kernel's word for it (SO_PEERCRED), not the pid the successor claims. */
  successorPid: number;
  /** Listeners handed over, the channel's included. */
  listeners: number;
  /** Connections now served by the successor. */
  connections: number;
  /**
   * Connections left to the predecessor to finish: half-closed at freeze time, too big, a
   * failed hook, a protocol state that cannot move, or still busy at the quiescence bound.
   */
  retained: number;
  /** Connections that were busy when their turn came ("not yet") and waited for a later wave. */
  deferred: number;
  /** Connections that closed while being handed over. */
  closed: number;
  /** Bytes read by the predecessor but not consumed, replayed in the successor. */
  bytesIn: number;
  /** Bytes written by the predecessor's app but not yet taken by the kernel, sent by the successor. */
  bytesOut: number;
  /** Application state captured at freeze time. */
  stateBytes: number;
  /** Waves the successor acknowledged (predecessor) or started (successor). */
  waves: number;
  /**
   * Longest wave from freeze (predecessor) to started (successor): the longest pause any
   * connection saw on the server side. The successor reports the predecessor's figure, from DONE
   * (0 when the takeover ended early after LISTENING).
   */
  maxPauseMs: number;
  /**
   * This process's event-loop delay while its side of the takeover ran (sampled every
   * millisecond; the successor's from LISTENING, when it starts serving): how long its loop could
   * not serve anything, the takeover's work and the
   * application's together. `max` is the longest single stretch. Whatever of `max` is neither on
   * the CPU nor waiting for one, the thread was blocked (a lock, a page fault, a synchronous call).
   */
  loopDelayMs: {
    p99: number;
    max: number;
    /** ...of the longest stretch, the time the event loop's thread ran (JavaScript, native code and GC pauses). */
    maxCpuMs: number;
    /** ...of it, the time it was ready to run but waited for a core (Linux's schedstat; 0 elsewhere). */
    maxWaitMs: number;
    /** ...and the garbage-collection pauses that fell inside it (on the CPU, or waiting when preempted during one). */
    maxGcMs: number;
  };
  /**
   * The longest single stretch of this side's own takeover work, from an event (a frame, the
   * channel writable, a timer) to the return to the event loop: what the takeover alone blocks.
   */
  longestStepMs: number;
  /** ...and the most CPU time of the event loop's thread one such stretch used: the work without the waits for a core. */
  longestStepCpuMs: number;
  /**
   * CPU time this side used while its side of the takeover ran: its event loop's thread
   * (`thread`: the takeover's work and the application's) and all its threads (`process`: V8's
   * compiler and garbage-collector helpers too).
   */
  cpuMs: { thread: number; process: number };
  /** When the successor's COMMIT was sent (successor) or received (predecessor): epoch ms, sub-ms precision. */
  committedAt: number;
  phases: {
    /** Connection to PREPARE: every fd copied while the predecessor kept serving. */
    precopyMs: number;
    /**
     * First fd batch sent (predecessor) or received (successor) to PREPARE: the fd transfer
     * itself, comparable with a bare SCM_RIGHTS loop (the successor wraps the fds after PREPARE).
     */
    transferMs: number;
    /** PREPARE to COMMIT: the successor checks and wraps every fd, and waits for its app's ready(). */
    commitMs: number;
    /** LISTENING to the last wave: reading handed over, wave by wave, deferred connections included. */
    wavesMs: number;
    totalMs: number;
  };
}

/** Sampling period of the event-loop delay: a timer every ms costs little for the seconds a takeover lasts. */
const LOOP_DELAY_RESOLUTION_MS = 1;

interface Sample {
  at: number;
  cpu: number;
  wait: number;
}

/**
 * Samples the event loop's delay every LOOP_DELAY_RESOLUTION_MS, and for its longest stretch,
 * what the event loop's thread did meanwhile: ran, waited for a core, or paused for the GC.
 * Exported (not from the package's index) for the benchmark, which samples a server with no
 * takeover the same way (bench/loop-probe.ts).
 */
export class LoopSampler {
  private readonly histogram: RecordableHistogram = createHistogram();
  private readonly timer: NodeJS.Timeout;
  /** The event loop thread's schedstat, kept open: reading it costs 1-2 us then, 15 us through a path. */
  private readonly schedstat: number | undefined;
  private readonly buffer = Buffer.alloc(64);
  /** GC pauses that may fall inside the longest stretch (they are reported after it ends). */
  private gcPauses: { start: number; end: number }[] = [];
  private readonly gcObserver = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) this.noteGc(entry.startTime, entry.duration);
  });
  private last: Sample;
  private longest = { delay: -1, from: 0, to: 0, cpu: 0, wait: 0 };
  private stopped = false;

  constructor() {
    try {
      this.schedstat = fs.openSync('/proc/thread-self/schedstat', 'r');
    } catch {
      this.schedstat = undefined;
    }
    this.gcObserver.observe({ entryTypes: ['gc'] });
    this.last = this.sample();
    this.timer = setInterval(() => this.tick(), LOOP_DELAY_RESOLUTION_MS).unref();
  }

  /** Stops sampling (once) and reads the figures. */
  read(): TakeoverStats['loopDelayMs'] {
    if (!this.stopped) this.tick();
    this.stop();
    return this.peek();
  }

  /** The figures up to the last sample, sampling on. */
  peek(): TakeoverStats['loopDelayMs'] {
    // GC entries reach the observer a turn late: those already over may be inside the longest stretch.
    if (!this.stopped) for (const entry of this.gcObserver.takeRecords()) this.noteGc(entry.startTime, entry.duration);
    const { from, to, cpu, wait } = this.longest;
    const gc = this.gcPauses.reduce((sum, p) => sum + Math.max(0, Math.min(to, p.end) - Math.max(from, p.start)), 0);
    const sampled = this.histogram.count > 0;
    return {
      p99: sampled ? this.histogram.percentile(99) / 1000 : 0,
      max: sampled ? this.histogram.max / 1000 : 0,
      maxCpuMs: cpu,
      maxWaitMs: wait,
      maxGcMs: gc,
    };
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    for (const entry of this.gcObserver.takeRecords()) this.noteGc(entry.startTime, entry.duration);
    this.gcObserver.disconnect();
    if (this.schedstat !== undefined) fs.closeSync(this.schedstat);
  }

  private sample(): Sample {
    let wait = 0;
    if (this.schedstat !== undefined) {
      // "<ns on a cpu> <ns waiting on a run queue> <timeslices>"
      const length = fs.readSync(this.schedstat, this.buffer, 0, this.buffer.length, 0);
      wait = Number(this.buffer.toString('latin1', 0, length).split(' ')[1]) / 1e6;
    }
    return { at: performance.now(), cpu: threadCpuMs(), wait };
  }

  private tick(): void {
    const now = this.sample();
    // The timer's own period is no delay.
    const delay = Math.max(0, now.at - this.last.at - LOOP_DELAY_RESOLUTION_MS);
    this.histogram.record(Math.max(1, Math.round(delay * 1000)));
    if (delay > this.longest.delay) {
      this.longest = { delay, from: this.last.at, to: now.at, cpu: now.cpu - this.last.cpu, wait: now.wait - this.last.wait };
    }
    this.last = now;
    // Kept only while they may still count: a takeover that waits minutes for busy connections
    // would otherwise keep one entry per collection.
    if (this.gcPauses.length > 0) this.gcPauses = this.gcPauses.filter((p) => this.mayCount(p));
  }

  private noteGc(start: number, duration: number): void {
    const pause = { start, end: start + duration };
    if (this.mayCount(pause)) this.gcPauses.push(pause);
  }

  /** Inside the longest stretch so far, or not over before the last sample (a later stretch may hold it). */
  private mayCount(pause: { start: number; end: number }): boolean {
    return (pause.end > this.longest.from && pause.start < this.longest.to) || pause.end > this.last.at;
  }
}

type Counts = Pick<
  TakeoverStats,
  | 'connections'
  | 'retained'
  | 'deferred'
  | 'closed'
  | 'bytesIn'
  | 'bytesOut'
  | 'stateBytes'
  | 'waves'
  | 'maxPauseMs'
  | 'longestStepMs'
  | 'longestStepCpuMs'
>;

/**
 * What one side of a takeover records as it goes (both sides record the same things, each from
 * its own point of view), turned into {@link TakeoverStats} by {@link StatsRecorder.snapshot}.
 */
export class StatsRecorder {
  readonly started = performance.now();
  private readonly cpuAtStart = { thread: threadCpuMs(), process: process.cpuUsage() };
  /** performance.now() at each step; 0 until reached. */
  readonly marks = { firstConns: 0, prepare: 0, commit: 0, listening: 0 };
  readonly counts: Counts = {
    connections: 0,
    retained: 0,
    deferred: 0,
    closed: 0,
    bytesIn: 0,
    bytesOut: 0,
    stateBytes: 0,
    waves: 0,
    maxPauseMs: 0,
    longestStepMs: 0,
    longestStepCpuMs: 0,
  };

  /** Started by {@link sampleLoop}: a peer that never says HELLO must not cost a timer and an fd. */
  private loop: LoopSampler | undefined;
  private stopped = false;

  /** Starts sampling the event loop: the takeover has begun (HELLO sent or received). */
  sampleLoop(): void {
    if (!this.loop && !this.stopped) this.loop = new LoopSampler();
  }

  /** Runs one step of takeover work, timing it (a step inside another counts within the outer one). */
  step<T>(work: () => T): T {
    const start = performance.now();
    const cpuStart = threadCpuMs();
    try {
      return work();
    } finally {
      this.counts.longestStepMs = Math.max(this.counts.longestStepMs, performance.now() - start);
      this.counts.longestStepCpuMs = Math.max(this.counts.longestStepCpuMs, threadCpuMs() - cpuStart);
    }
  }

  /** Stops sampling the event loop; snapshot() does it too. */
  stop(): void {
    this.stopped = true;
    this.loop?.stop();
  }

  snapshot(who: Pick<TakeoverStats, 'role' | 'predecessorPid' | 'successorPid' | 'listeners'>): TakeoverStats {
    const end = performance.now();
    const { marks, started } = this;
    const loopDelayMs = this.loop?.read() ?? { p99: 0, max: 0, maxCpuMs: 0, maxWaitMs: 0, maxGcMs: 0 };
    this.stop();
    const processCpu = process.cpuUsage(this.cpuAtStart.process);
    return {
      ...who,
      ...this.counts,
      loopDelayMs,
      cpuMs: { thread: threadCpuMs() - this.cpuAtStart.thread, process: (processCpu.user + processCpu.system) / 1000 },
      committedAt: performance.timeOrigin + marks.commit,
      phases: {
        precopyMs: marks.prepare - started,
        transferMs: marks.firstConns === 0 ? 0 : marks.prepare - marks.firstConns,
        commitMs: marks.commit - marks.prepare,
        wavesMs: end - marks.listening,
        totalMs: end - started,
      },
    };
  }
}

/** What a rollback left in the old process (the `'rollback'` event's second argument). */
export interface RollbackReport {
  /** The successor, kernel's pid; 0 when it never said HELLO. */
  successorPid: number;
  /**
   * The successor had committed: this process had stopped accepting and may have handed waves
   * over. Before the commit nothing ever stopped here.
   */
  committed: boolean;
  /** Connections handed over in waves to a successor that then died: gone with it. */
  lost: number;
  /** Connections this process serves on: never frozen, or frozen in a wave that could not be sent. */
  resumed: number;
  /** Listeners (the channel's not counted) this process accepts on again after the commit; 0 before it. */
  listenersResumed: number;
  /**
   * The successor's pid when it was sent the listeners' copies and is still alive without having
   * aborted (it stalled, or broke the protocol): it may hold them, and keep the ports listening
   * after this process stops. 0 otherwise.
   */
  listenerHolder: number;
}
