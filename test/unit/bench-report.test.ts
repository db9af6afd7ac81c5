/**
 * The benchmark's report (bench/report.ts) on fixed results: --repeat's rounds, each takeover
 * judged against the control just before it, the summary over the rounds, and the loop probe's
 * same-window comparison. The figures are made up; what is checked is what the report says of them.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { TakeoverStats } from 'socket-takeover';
import type { LoadResult } from '../../bench/load.js';
import type { LoopDelay, LoopProbe } from '../../bench/loop-probe.js';
import { evaluateTargets, renderSection, sameWindow, type BenchResults } from '../../bench/report.js';
import type { FloorRun, SystemRun } from '../../bench/systems.js';
import { StatsRecorder } from '#lib/stats.js';

const SIZE = 10_000;

const loop = (max: number, cpu = max / 2, wait = max / 4, gc = 0): LoopDelay => ({
  p99: max / 2,
  max,
  maxCpuMs: cpu,
  maxWaitMs: wait,
  maxGcMs: gc,
});

function load(p99: number, max: number): LoadResult {
  return {
    clients: [],
    connections: SIZE,
    opened: SIZE,
    kept: SIZE,
    cut: 0,
    echoes: 50_000,
    lost: 0,
    duplicated: 0,
    reordered: 0,
    errors: {},
    short: { attempted: 1000, succeeded: 1000, failed: 0, errors: {} },
    connectionPauseMs: { p50: 1, p99, max },
    rttMs: { p50: 0.5, p99: p99 / 2, max },
    untimedEchoes: 0,
    lagMs: 1,
    lagMaxMs: 2,
    clientNice: -10,
  };
}

/** A real summary's shape, from the library's recorder, with the figures the report reads set. */
function predecessor(loopMax: number, totalMs: number): TakeoverStats {
  const stats = new StatsRecorder().snapshot({ role: 'predecessor', predecessorPid: 1, successorPid: 2, listeners: 2 });
  return {
    ...stats,
    connections: SIZE,
    loopDelayMs: loop(loopMax),
    longestStepMs: 1.5,
    longestStepCpuMs: 1.2,
    phases: { precopyMs: 50, transferMs: 6, commitMs: 100, wavesMs: totalMs - 150, totalMs },
  };
}

const probe = (windowMs: number, max: number): LoopProbe => ({ windowMs, loop: loop(max), series: [] });
/** A control's probe: its loop delay max grows by 1 ms every 50 ms of the window. */
const controlProbe = (): LoopProbe => ({
  windowMs: 3000,
  loop: loop(99),
  series: Array.from({ length: 60 }, (_, i) => ({ ms: (i + 1) * 50, loop: loop(i + 1) })),
});

const machine = { loadavg1: 0.5, busy: 0.5, others: 0 };

/** One round: a control, then a takeover whose longest wait is `wait` against the control's 10 ms. */
function round(n: number, wait: number): SystemRun[] {
  return [
    { system: 'control', round: n, connections: SIZE, load: load(8, 10), machine, loopProbe: controlProbe() },
    {
      system: 'socket-takeover',
      round: n,
      connections: SIZE,
      load: load(9, wait),
      machine,
      loopProbe: probe(420, 4),
      switch: { newServingMs: 300, oldGoneMs: 420, oldGoneAfterCommitMs: 250, predecessor: predecessor(1.5, 400), oldPid: 1, newPid: 2 },
    },
  ];
}

const floor: FloorRun[] = [{ connections: SIZE, transferMs: 3, window: 39, fdsPerBatch: 253 }];

function results(runs: SystemRun[], repeat: number): BenchResults {
  return {
    startedAt: '2026-12-02T00:00:00.000Z',
    durationS: 60,
    machine: {
      cpus: 2,
      cpuModel: 'test CPU',
      kernel: '6.0',
      node: '24.0.0',
      rlimitNofile: { soft: 20_000, hard: 20_000 },
      loadavgAtStart: 0.5,
    },
    workload: {
      intervalMs: 2000,
      durationS: 12,
      switchAfterS: 5,
      newRate: 100,
      perClient: 10_000,
      perSourceAddress: 1000,
      clientNice: -10,
    },
    sizes: [SIZE],
    floor,
    runs,
    skipped: [],
    targetSize: SIZE,
    repeat,
    ...evaluateTargets(runs, floor, [SIZE], SIZE, undefined, repeat),
    warnings: [],
  };
}

describe('bench report', () => {
  test('with --repeat, each round is judged against its own control, and each target is summed up over the rounds', () => {
    // Round 3 misses the longest wait (25 ms against 10 + 10): rounds 1-2 are the longest run of all met.
    const r = results([...round(1, 12), ...round(2, 19), ...round(3, 25)], 3);
    assert.equal(r.rounds?.length, 3);
    const wait = r.targets.find((t) => t.name.includes('longest echo wait'))!;
    assert.equal(wait.met, false);
    assert.match(wait.detail, /^met in 2 of 3 rounds, missed in round 3; takeover's median 19\.0 ms, range 12\.0-25\.0 ms/);
    const cut = r.targets.find((t) => t.name.includes('zero cut'))!;
    assert.equal(cut.met, true);
    assert.match(cut.detail, /^met in 3 of 3 rounds;/);
    assert.deepEqual(r.streak, { connections: SIZE, longest: 2, from: 1 });

    const section = renderSection(r, undefined);
    assert.match(section, /every 10,000-connection target met in consecutive rounds: 2 of 3 at most \(rounds 1-2\)/);
    assert.match(section, /#### 10,000 connections/);
    const rows = section.split('\n').filter((line) => /^\| [123] \|/.test(line));
    assert.equal(rows.length, 3);
    assert.match(rows[0]!, /^\| 1 \| 12\.0 \/ 10\.0 \| 20\.0 \|/);
    assert.match(rows[2]!, /^\| 3 \| \*\*25\.0\*\* \/ 10\.0 \| 20\.0 \|/);
    // The probe's same window: 420 ms, so the control's figures at 450 ms (its 9th, 9 ms).
    assert.match(rows[0]!, /\| 4\.0 \(2\.0 \/ 1\.0 \/ 0\.0\) \| 9\.0 \(4\.5 \/ 2\.3 \/ 0\.0\) \|/);
    // One round's table is replaced by the rounds', the clients' table says which round each run was.
    assert.doesNotMatch(section, /\| connections \| longest echo wait/);
    assert.match(section, /\| 10,000 \| control \(round 2\) \|/);
  });

  test('with one round the targets are that round, and the 2 ms line gives the control loop in the same window', () => {
    const r = results(round(1, 12), 1);
    assert.equal(r.rounds, undefined);
    const line = r.targets.find((t) => t.name.includes('event loop never blocked'))!;
    assert.equal(line.met, true);
    assert.match(
      line.detail,
      /the control's own loop stalled 9\.0 ms \(4\.5 \/ 2\.3 \/ 0\.0 on the CPU \/ waiting \/ GC\) in the same window/,
    );
    assert.match(renderSection(r, undefined), /\| 10,000 \| 12\.0 \/ 10\.0 \| 20\.0 \|/);
  });

  test("the control's same window is its first figures at least as long as the takeover's, else its last", () => {
    assert.equal(sameWindow(probe(100, 4), controlProbe())?.control.max, 2);
    assert.equal(sameWindow(probe(5000, 4), controlProbe())?.controlMs, 3000);
    assert.equal(sameWindow(probe(100, 4), { ...controlProbe(), series: [] }), undefined);
    assert.equal(sameWindow(undefined, controlProbe()), undefined);
  });
});
