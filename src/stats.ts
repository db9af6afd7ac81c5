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

type Counts = Pick<
  TakeoverStats,
  'connections' | 'retained' | 'deferred' | 'closed' | 'bytesIn' | 'bytesOut' | 'stateBytes' | 'waves' | 'maxPauseMs'
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
  };

  snapshot(who: Pick<TakeoverStats, 'role' | 'predecessorPid' | 'successorPid' | 'listeners'>): TakeoverStats {
    const end = performance.now();
    const { marks, started } = this;
    return {
      ...who,
      ...this.counts,
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
