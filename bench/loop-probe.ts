/**
 * Preloaded (`node --import`) into the benchmark's takeover-server in the control run and into
 * the takeover run's old server, and nowhere else: samples the process's event loop with the
 * library's own LoopSampler (what `stats.loopDelayMs` reports) from the benchmark's
 * PROBE_START_SIGNAL, sent at the switch's start or the same instant into the control's load,
 * until the process exits, then writes a {@link LoopProbe} to the file named by
 * BENCH_LOOP_PROBE. The control has no switch to end its window, so the figures so far are also
 * kept every SERIES_MS: the benchmark reads the control over the same length as the takeover's.
 */
import { writeFileSync } from 'node:fs';
import { LoopSampler } from '#lib/stats.js';
import type { TakeoverStats } from 'socket-takeover';

/** Ignored by default, and takeover-server gives it no meaning (SIGUSR2 upgrades, SIGUSR1 is Node's inspector). */
export const PROBE_START_SIGNAL = 'SIGWINCH';
export const PROBE_FILE_ENV = 'BENCH_LOOP_PROBE';
const SERIES_MS = 50;
/** A minute of figures: the window compared never outlasts the load. */
const SERIES_LENGTH = 1200;

export type LoopDelay = TakeoverStats['loopDelayMs'];

export interface LoopProbe {
  /** From the start signal to the process's exit (performance.now() in the server). */
  windowMs: number;
  loop: LoopDelay;
  /** The figures from the start signal to `ms` later, every SERIES_MS. */
  series: { ms: number; loop: LoopDelay }[];
}

const file = process.env[PROBE_FILE_ENV];
if (file) {
  process.once(PROBE_START_SIGNAL, () => {
    const startedAt = performance.now();
    const sampler = new LoopSampler();
    const series: LoopProbe['series'] = [];
    const timer = setInterval(() => {
      series.push({ ms: performance.now() - startedAt, loop: sampler.peek() });
      if (series.length >= SERIES_LENGTH) clearInterval(timer);
    }, SERIES_MS).unref();
    process.once('exit', () => {
      const probe: LoopProbe = { windowMs: performance.now() - startedAt, loop: sampler.read(), series };
      writeFileSync(file, `${JSON.stringify(probe)}\n`);
    });
  });
}
