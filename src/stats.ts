import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
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
   * millisecond): how long its loop could not serve anything, the takeover's work and the
   * application's together. `max` is the longest single stretch.
   */
  loopDelayMs: { p99: number; max: number };
  /**
   * The longest single stretch of this side's own takeover work, from an event (a frame, the
   * channel writable, a timer) to the return to the event loop: what the takeover alone blocks.
   */
  longestStepMs: number;
  /** ...and the most CPU time of the event loop's thread one such stretch used: the work without the waits for a core. */
  longestStepCpuMs: number;
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

  private readonly loopDelay: IntervalHistogram = monitorEventLoopDelay({ resolution: LOOP_DELAY_RESOLUTION_MS });

  constructor() {
    this.loopDelay.enable();
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
    this.loopDelay.disable();
  }

  snapshot(who: Pick<TakeoverStats, 'role' | 'predecessorPid' | 'successorPid' | 'listeners'>): TakeoverStats {
    const end = performance.now();
    const { marks, started } = this;
    this.stop();
    // The histogram records whole timer periods: the delay is what exceeds the period.
    const delay = (ns: number): number => (this.loopDelay.count === 0 ? 0 : Math.max(0, ns / 1e6 - LOOP_DELAY_RESOLUTION_MS));
    return {
      ...who,
      ...this.counts,
      loopDelayMs: { p99: delay(this.loopDelay.percentile(99)), max: delay(this.loopDelay.max) },
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
