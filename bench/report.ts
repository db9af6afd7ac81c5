/**
 * Turns a run's results into words: the targets (reported, never asserted), the markdown
 * tables printed on the console and written into bench/results/latest.md (and, with --write-docs,
 * into BENCHMARKS.md between its markers).
 */
import type { PoolRun } from './pool.js';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { AppLoadResult, LoadResult } from './load.js';
import type { LoopDelay, LoopProbe } from './loop-probe.js';
import type { AppPlan, FloorRun, SystemRun, ThroughputRun, Workload } from './systems.js';
import type { TakeoverStats } from 'socket-takeover';

export interface MachineInfo {
  cpus: number;
  cpuModel: string;
  kernel: string;
  node: string;
  rlimitNofile: { soft: number; hard: number };
  loadavgAtStart: number;
}

export interface Skipped {
  /** 'max': the box's maximum could not be worked out. */
  connections: number | 'max';
  reason: string;
}

/** One measured figure behind a target, for the median and range over --repeat's rounds. */
export interface Figure {
  name: string;
  value: number;
  unit: 'ms' | 'x' | '';
}

export interface TargetResult {
  name: string;
  /** undefined: not measured in this run (size not run, or the run failed). */
  met: boolean | undefined;
  /** The measured value and the margin, in words. */
  detail: string;
  figures?: Figure[];
}

/** One round of --repeat: its takeover runs judged against the control just before each. */
export interface RoundTargets {
  round: number;
  targets: TargetResult[];
}

/** The longest run of consecutive rounds in which every target at the target size was met. */
export interface Streak {
  connections: number;
  longest: number;
  /** Its first round; absent when no round met them all. */
  from?: number;
}

export interface BenchResults {
  startedAt: string;
  durationS: number;
  machine: MachineInfo;
  workload: Workload;
  /** The HTTP and WebSocket runs' workload, when there were any. */
  appWorkload?: Workload & Omit<AppPlan, 'workload'> & { workloads: AppPlan['workload'][] };
  sizes: number[];
  throughput?: ThroughputRun;
  floor: FloorRun[];
  runs: SystemRun[];
  skipped: Skipped[];
  /** The size the targets were checked at. */
  targetSize: number;
  /** Rounds of control then takeover at each echo size (--repeat). */
  repeat: number;
  /** With one round, that round's; with more, each target over the rounds (see `rounds`). */
  targets: TargetResult[];
  /** With --repeat over 1: every round's own targets. */
  rounds?: RoundTargets[];
  streak?: Streak;
  /** Caveats found in the figures themselves (load generator lag, busy machine). */
  warnings: string[];
  /** The pool workload (bench/pool.ts), when run. */
  pool?: PoolRun[];
}

export const TARGET_SIZE = 10_000;
/** A takeover's longest echo wait may exceed the control run's by this much (issue #10). */
const WAIT_OVER_CONTROL_MS = 10;
/** ...and its pause per connection p99 be this many times the control run's. */
const P99_OVER_CONTROL = 1.2;
/** No single stretch of takeover work may block the old process's event loop longer. */
const LOOP_BLOCK_TARGET_MS = 2;
const FLOOR_RATIO_TARGET = 3;
const TOTAL_TARGET_MS = 500;
const OLD_GONE_TARGET_MS = 1000;
const THROUGHPUT_TARGET = 0.95;
/** Client event-loop delay p99 above which many of its waits include its own delay. */
export const LAG_WARNING_MS = 10;
/** ...and max above which one stall of its own could be a pause worth reporting by itself. */
export const LAG_MAX_WARNING_MS = 25;
/** Share of the machine's CPU used by other people's processes during a run worth a warning. */
export const OTHERS_WARNING = 0.1;

const fmt = (ms: number | undefined, digits = 1): string => (ms === undefined ? '–' : ms.toFixed(digits));
const int = (n: number): string => n.toLocaleString('en-US');
const mib = (kb: number | undefined): string => (kb === undefined || kb === 0 ? '–' : (kb / 1024).toFixed(0));
const pct = (share: number): string => `${Math.round(share * 100)}%`;

function margin(value: number, limit: number, unit: string, digits = 1): string {
  const diff = Math.abs(limit - value);
  return value <= limit ? `${diff.toFixed(digits)}${unit} to spare` : `over by ${diff.toFixed(digits)}${unit}`;
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

const echoRun = (runs: SystemRun[], system: SystemRun['system'], size: number, round = 1): SystemRun | undefined =>
  runs.find((r) => r.system === system && !r.workload && r.connections === size && (r.round ?? 1) === round);

/** Several rounds in these runs: every label says which. */
const repeated = (runs: SystemRun[]): boolean => runs.some((r) => (r.round ?? 1) > 1);

/** The old process's and the control's event loops over the same window (bench/loop-probe.ts). */
export interface SameWindow {
  /** From the switch's start until the old process exited. */
  windowMs: number;
  /** The control's window: the first of its figures at least as long (they come every 50 ms), or its last. */
  controlMs: number;
  old: LoopDelay;
  control: LoopDelay;
}

export function sameWindow(old: LoopProbe | undefined, control: LoopProbe | undefined): SameWindow | undefined {
  if (!old || !control) return undefined;
  // Not the control's whole probe when its series is too short: that one ends with the server's stop.
  const match = control.series.find((s) => s.ms >= old.windowMs) ?? control.series.at(-1);
  return match && { windowMs: old.windowMs, controlMs: match.ms, old: old.loop, control: match.loop };
}

/** A takeover against the control run of the same size: the figures the latency targets compare. */
export interface AgainstControl {
  connections: number;
  wait: { takeover: number; control: number };
  p99: { takeover: number; control: number };
  /** The old process's event-loop delay while its side of the takeover ran. */
  oldLoop: TakeoverStats['loopDelayMs'] | undefined;
  newLoop: TakeoverStats['loopDelayMs'] | undefined;
  /** The old process's longest single step of takeover work: wall time, and its thread's CPU time. */
  oldStep: { wall: number; cpu: number } | undefined;
  sameWindow: SameWindow | undefined;
}

export function againstControl(runs: SystemRun[], size: number, round = 1): AgainstControl | undefined {
  const takeoverRun = echoRun(runs, 'socket-takeover', size, round);
  const controlRun = echoRun(runs, 'control', size, round);
  const ours = takeoverRun?.load;
  const control = controlRun?.load;
  if (!ours || !control) return undefined;
  const sw = takeoverRun.switch;
  return {
    connections: size,
    wait: { takeover: ours.connectionPauseMs.max, control: control.connectionPauseMs.max },
    p99: { takeover: ours.connectionPauseMs.p99, control: control.connectionPauseMs.p99 },
    oldLoop: sw?.predecessor?.loopDelayMs,
    newLoop: sw?.successor?.loopDelayMs,
    oldStep: sw?.predecessor ? { wall: sw.predecessor.longestStepMs, cpu: sw.predecessor.longestStepCpuMs } : undefined,
    sameWindow: sameWindow(takeoverRun.loopProbe, controlRun.loopProbe),
  };
}

/** Steady-state echoes per second: the median round of each server, and their ratio. */
export function throughputRatio(run: ThroughputRun | undefined): { library: number; plain: number; ratio: number } | undefined {
  if (!run || run.library.length === 0 || run.plain.length === 0) return undefined;
  const library = median(run.library);
  const plain = median(run.plain);
  return { library, plain, ratio: library / plain };
}

/** Where a stall's time went: on the CPU / waiting for a core / in GC pauses. */
const split = (l: LoopDelay): string => `${fmt(l.maxCpuMs)} / ${fmt(l.maxWaitMs)} / ${fmt(l.maxGcMs)}`;

function sizeTargets(runs: SystemRun[], size: number, round: number): TargetResult[] {
  const ours = echoRun(runs, 'socket-takeover', size, round);
  const at = `${int(size)} connections`;
  const why = ours === undefined ? `no socket-takeover run at ${int(size)}` : (ours.error ?? 'no client results');
  const unmeasured = (name: string, reason: string): TargetResult => ({ name, met: undefined, detail: `not measured: ${reason}` });
  const results: TargetResult[] = [];
  const load = ours?.load;
  const names = {
    cut: `${at}: zero cut, zero lost`,
    wait: `${at}: longest echo wait <= the control run's + ${WAIT_OVER_CONTROL_MS} ms`,
    p99: `${at}: pause per connection p99 <= ${P99_OVER_CONTROL}x the control run's`,
    loop: `${at}: the old process's event loop never blocked over ${LOOP_BLOCK_TARGET_MS} ms during the takeover`,
  };
  if (load) {
    const cut = load.cut + (load.connections - load.opened);
    results.push({
      name: names.cut,
      met: cut === 0 && load.lost === 0,
      figures: [
        { name: 'cut or never opened', value: cut, unit: '' },
        { name: 'lost', value: load.lost, unit: '' },
      ],
      detail:
        `${int(load.kept)} of ${int(load.connections)} kept, ${int(load.cut)} cut, ${int(load.connections - load.opened)} never opened; ` +
        `${int(load.lost)} lost, ${int(load.duplicated)} duplicated, ${int(load.reordered)} reordered`,
    });
  } else {
    results.push(unmeasured(names.cut, why));
  }
  const vs = againstControl(runs, size, round);
  if (vs) {
    const waitLimit = vs.wait.control + WAIT_OVER_CONTROL_MS;
    const waits = waitsAroundSwitch(ours!);
    results.push({
      name: names.wait,
      met: vs.wait.takeover <= waitLimit,
      figures: [
        { name: "takeover's", value: vs.wait.takeover, unit: 'ms' },
        { name: "control's", value: vs.wait.control, unit: 'ms' },
      ],
      detail:
        `${fmt(vs.wait.takeover)} ms against ${fmt(vs.wait.control)} ms, ${margin(vs.wait.takeover, waitLimit, ' ms')}; ` +
        `the takeover run's longest wait ending before the switch ${fmt(waits.before)} ms, during it ${fmt(waits.during)} ms, after it ${fmt(waits.after)} ms`,
    });
    const ratio = vs.p99.takeover / vs.p99.control;
    results.push({
      name: names.p99,
      met: ratio <= P99_OVER_CONTROL,
      figures: [
        { name: 'ratio', value: ratio, unit: 'x' },
        { name: "takeover's", value: vs.p99.takeover, unit: 'ms' },
        { name: "control's", value: vs.p99.control, unit: 'ms' },
      ],
      detail: `${fmt(vs.p99.takeover)} ms against ${fmt(vs.p99.control)} ms = ${ratio.toFixed(2)}x, ${margin(ratio, P99_OVER_CONTROL, 'x', 2)}`,
    });
  } else {
    const reason = ours?.load ? `no control run at ${int(size)}` : why;
    results.push(unmeasured(names.wait, reason), unmeasured(names.p99, reason));
  }
  const pred = ours?.switch?.predecessor;
  if (pred) {
    const loop = pred.loopDelayMs;
    const same = vs?.sameWindow;
    results.push({
      name: names.loop,
      met: loop.max <= LOOP_BLOCK_TARGET_MS,
      figures: [
        { name: 'loop delay max', value: loop.max, unit: 'ms' },
        { name: 'its time on the CPU', value: loop.maxCpuMs, unit: 'ms' },
        { name: 'waiting for a core', value: loop.maxWaitMs, unit: 'ms' },
        ...(same ? [{ name: "the control's own, same window", value: same.control.max, unit: 'ms' as const }] : []),
      ],
      detail:
        `event-loop delay max ${fmt(loop.max)} ms (p99 ${fmt(loop.p99)} ms), ${margin(loop.max, LOOP_BLOCK_TARGET_MS, ' ms')}; ` +
        `of that stretch ${fmt(loop.maxCpuMs)} ms on the CPU, ${fmt(loop.maxWaitMs)} ms waiting for a core, ${fmt(loop.maxGcMs)} ms in GC pauses; ` +
        `the application's work and the waits for a core count too: the takeover's own longest step took ` +
        `${fmt(pred.longestStepMs)} ms, ${fmt(pred.longestStepCpuMs)} ms of it on the CPU` +
        (same
          ? `; the control's own loop stalled ${fmt(same.control.max)} ms (${split(same.control)} on the CPU / waiting / GC) in the same window ` +
            `(the ${fmt(same.windowMs, 0)} ms from the switch's start until the old process exited), the old process's ${fmt(same.old.max)} ms (${split(same.old)})`
          : '; no loop probe of the control in the same window'),
    });
  } else {
    results.push(unmeasured(names.loop, ours?.error ?? 'no predecessor summary'));
  }
  return results;
}

/** Every target but the throughput's, for one round: its takeover runs against its own controls. */
function roundTargets(runs: SystemRun[], floor: FloorRun[], sizes: number[], targetSize: number, round: number): TargetResult[] {
  const results = sizes.flatMap((size) => sizeTargets(runs, size, round));
  const ours = echoRun(runs, 'socket-takeover', targetSize, round);
  const floorRun = floor.find((f) => f.connections === targetSize);
  const why = ours === undefined ? `no socket-takeover run at ${int(targetSize)}` : (ours.error ?? 'no switch');
  const unmeasured = (name: string, reason: string): TargetResult => ({ name, met: undefined, detail: `not measured: ${reason}` });
  const at = `${int(targetSize)} connections`;
  const sw = ours?.switch;

  const ratioName = `${at}: fd transfer within ${FLOOR_RATIO_TARGET}x the C floor`;
  const transfer = sw?.predecessor?.phases.transferMs;
  if (transfer !== undefined && floorRun?.transferMs !== undefined) {
    const ratio = transfer / floorRun.transferMs;
    results.push({
      name: ratioName,
      met: ratio <= FLOOR_RATIO_TARGET,
      figures: [
        { name: 'ratio', value: ratio, unit: 'x' },
        { name: 'transfer', value: transfer, unit: 'ms' },
      ],
      detail:
        `transfer ${fmt(transfer)} ms / floor ${fmt(floorRun.transferMs, 2)} ms = ${ratio.toFixed(1)}x, ` +
        `${margin(ratio, FLOOR_RATIO_TARGET, 'x')}; at most ${fmt(floorRun.transferMs * FLOOR_RATIO_TARGET)} ms would meet it` +
        (ratio <= FLOOR_RATIO_TARGET ? '' : '; see "What keeps the transfer above the floor"'),
    });
  } else {
    results.push(unmeasured(ratioName, floorRun?.error ?? why));
  }

  const totalName = `${at}: whole takeover under ${TOTAL_TARGET_MS} ms`;
  const total = sw?.predecessor?.phases.totalMs;
  if (total !== undefined) {
    const p = sw!.predecessor!.phases;
    results.push({
      name: totalName,
      met: total < TOTAL_TARGET_MS,
      figures: [{ name: 'whole takeover', value: total, unit: 'ms' }],
      detail: `${fmt(total)} ms (pre-copy ${fmt(p.precopyMs)}, commit ${fmt(p.commitMs)}, waves ${fmt(p.wavesMs)}), ${margin(total, TOTAL_TARGET_MS, ' ms')}`,
    });
  } else {
    results.push(unmeasured(totalName, why));
  }

  const goneName = `${at}: old process gone within ${OLD_GONE_TARGET_MS} ms of the commit`;
  const gone = sw?.oldGoneAfterCommitMs;
  if (gone !== undefined) {
    const waves = sw?.predecessor?.phases.wavesMs;
    results.push({
      name: goneName,
      met: gone <= OLD_GONE_TARGET_MS,
      figures: [{ name: 'old gone after commit', value: gone, unit: 'ms' }],
      detail:
        `${fmt(gone)} ms, ${margin(gone, OLD_GONE_TARGET_MS, ' ms')}` +
        (gone <= OLD_GONE_TARGET_MS || waves === undefined
          ? ''
          : `; the waves took ${fmt(waves)} ms of it, the rest is the old process closing and exiting`),
    });
  } else {
    results.push(unmeasured(goneName, why));
  }
  return results;
}

function throughputTarget(throughput: ThroughputRun | undefined): TargetResult {
  const throughputName = `steady-state echo throughput >= ${THROUGHPUT_TARGET}x a plain Node net echo server`;
  const tp = throughputRatio(throughput);
  if (!tp)
    return {
      name: throughputName,
      met: undefined,
      detail: `not measured: ${throughput?.error ?? 'not run (--workloads without throughput)'}`,
    };
  return {
    name: throughputName,
    met: tp.ratio >= THROUGHPUT_TARGET,
    detail: `${int(Math.round(tp.library))} against ${int(Math.round(tp.plain))} echoes/s (medians of ${throughput!.library.length} alternating rounds) = ${tp.ratio.toFixed(2)}x`,
  };
}

const figure = (value: number, unit: Figure['unit']): string => (unit === 'x' ? value.toFixed(2) : unit === 'ms' ? fmt(value) : int(value));
const withUnit = (text: string, unit: Figure['unit']): string => (unit === 'x' ? `${text}x` : unit === 'ms' ? `${text} ms` : text);

/** Each target over the rounds: met in how many, and each figure's median and range. */
export function summarizeRounds(rounds: RoundTargets[]): TargetResult[] {
  return (rounds[0]?.targets ?? []).map(({ name }) => {
    const each = rounds.map((r) => ({ round: r.round, target: r.targets.find((t) => t.name === name) }));
    const measured = each.filter((e) => e.target?.met !== undefined).map((e) => e.target!);
    const met = measured.filter((t) => t.met).length;
    const missed = each.filter((e) => e.target?.met === false).map((e) => e.round);
    const figures = (measured[0]?.figures ?? []).map(({ name: figureName, unit }) => {
      const values = measured.flatMap((t) => t.figures?.filter((f) => f.name === figureName).map((f) => f.value) ?? []);
      const range = `${figure(Math.min(...values), unit)}-${figure(Math.max(...values), unit)}`;
      return `${figureName} median ${withUnit(figure(median(values), unit), unit)}, range ${withUnit(range, unit)}`;
    });
    const unmeasured = rounds.length - measured.length;
    return {
      name,
      met: measured.length === 0 ? undefined : met === rounds.length,
      detail:
        `met in ${met} of ${rounds.length} rounds` +
        (missed.length > 0 ? `, missed in round${missed.length > 1 ? 's' : ''} ${missed.join(', ')}` : '') +
        (unmeasured > 0 ? `, not measured in ${unmeasured}` : '') +
        (figures.length > 0 ? `; ${figures.join(', ')}` : ''),
    };
  });
}

/** The longest run of consecutive rounds in which every target at `connections` was met. */
export function longestStreak(rounds: RoundTargets[], connections: number): Streak {
  const prefix = `${int(connections)} connections:`;
  let streak: Streak = { connections, longest: 0 };
  let length = 0;
  for (const { round, targets } of rounds) {
    const mine = targets.filter((t) => t.name.startsWith(prefix));
    length = mine.length > 0 && mine.every((t) => t.met === true) ? length + 1 : 0;
    if (length > streak.longest) streak = { connections, longest: length, from: round - length + 1 };
  }
  return streak;
}

/** The targets of one round, or with several each target over the rounds, every round kept. */
export function evaluateTargets(
  runs: SystemRun[],
  floor: FloorRun[],
  sizes: number[],
  targetSize: number,
  throughput: ThroughputRun | undefined,
  repeat: number,
): Pick<BenchResults, 'targets' | 'rounds' | 'streak'> {
  // No echo sizes: no rounds either.
  if (repeat === 1 || sizes.length === 0)
    return { targets: [...roundTargets(runs, floor, sizes, targetSize, 1), throughputTarget(throughput)] };
  const rounds = Array.from({ length: repeat }, (_, i) => ({ round: i + 1, targets: roundTargets(runs, floor, sizes, targetSize, i + 1) }));
  return {
    targets: [...summarizeRounds(rounds), throughputTarget(throughput)],
    rounds,
    streak: longestStreak(rounds, targetSize),
  };
}

function lagged(load: LoadResult | AppLoadResult): boolean {
  return load.lagMs > LAG_WARNING_MS || load.lagMaxMs > LAG_MAX_WARNING_MS;
}

/** The system, and its round when there are several. */
const systemLabel = (run: SystemRun, runs: SystemRun[]): string =>
  repeated(runs) && run.round !== undefined ? `${run.system} (round ${run.round})` : run.system;

export function collectWarnings(runs: SystemRun[]): string[] {
  const warnings: string[] = [];
  for (const run of runs) {
    const label = `${systemLabel(run, runs)} at ${int(run.connections)}${run.workload ? ` (${WORKLOAD_NAMES[run.workload]})` : ''}`;
    const load = run.load ?? run.app;
    if (load && lagged(load)) {
      warnings.push(
        `${label}: the load generator lagged (client event-loop delay p99 ${fmt(load.lagMs)} ms, max ${fmt(load.lagMaxMs)} ms): ` +
          `any wait it timed may include up to ${fmt(load.lagMaxMs)} ms of its own delay (one delay sample in a hundred was over ${fmt(load.lagMs)} ms).`,
      );
    }
    if (run.machine.others > OTHERS_WARNING) {
      warnings.push(`${label}: processes outside the benchmark used ${pct(run.machine.others)} of the machine's CPU during the run.`);
    }
    if (load && load.clientNice === undefined) {
      warnings.push(`${label}: the clients' priority could not be raised (needs root or CAP_SYS_NICE): the busy servers may starve them.`);
    }
  }
  return warnings;
}

/** How long after the old process is gone a wait still counts as the switch's. */
const SWITCH_TAIL_MS = 1000;

/**
 * Longest echo wait that ended before the switch, during it (until the old process is gone,
 * plus a second), and after, from the merged 100 ms timeline: the per-connection figures span
 * the whole run, and this tells the switch apart from warm-up and noise.
 */
export function waitsAroundSwitch(run: SystemRun): { before: number; during: number; after: number } {
  const end = (run.switch?.oldGoneMs ?? 0) + SWITCH_TAIL_MS;
  const longest = (keep: (t: number) => boolean): number =>
    Math.max(0, ...(run.timeline ?? []).filter((b) => keep(b.t)).map((b) => b.maxRttMs));
  return { before: longest((t) => t < 0), during: longest((t) => t >= 0 && t < end), after: longest((t) => t >= end) };
}

function pauseCell(run: SystemRun): string {
  const p = run.load!.connectionPauseMs;
  return `${fmt(p.p50)} / ${fmt(p.p99)} / ${fmt(p.max)}`;
}

function systemsTable(results: BenchResults): string[] {
  const lines = [
    '| connections | system | kept | cut | resets | refused | lost / dup / reord | pause per connection p50 / p99 / max (ms) | longest wait before / during / after the switch (ms) | new serving (ms) | old gone (ms) | peak RSS old / new (MiB) | client lag p99 / max (ms) | CPU busy (others) |',
    '|---:|---|---:|---:|---:|---:|---|---|---|---:|---:|---|---:|---|',
  ];
  for (const run of results.runs.filter((r) => !r.workload)) {
    const head = `| ${int(run.connections)} | ${systemLabel(run, results.runs)}`;
    const machine = `${pct(run.machine.busy)} (${pct(run.machine.others)})`;
    if (!run.load) {
      lines.push(`${head} | failed: ${run.error?.replace(/\|/g, '/').replace(/\n/g, ' ').slice(0, 200)} ||||||||||| ${machine} |`);
      continue;
    }
    const l = run.load;
    const resets = (l.errors.ECONNRESET ?? 0) + (l.short.errors.ECONNRESET ?? 0);
    const refused = (l.errors.ECONNREFUSED ?? 0) + (l.short.errors.ECONNREFUSED ?? 0);
    const sw = run.switch;
    const lag = lagged(l) ? `**${fmt(l.lagMs)} / ${fmt(l.lagMaxMs)}** ⚠` : `${fmt(l.lagMs)} / ${fmt(l.lagMaxMs)}`;
    const failed = run.error ? ` (${run.error.replace(/\|/g, '/').slice(0, 120)})` : '';
    const waits = waitsAroundSwitch(run);
    lines.push(
      `${head}${failed} | ${int(l.kept)} | ${int(l.cut)} | ${int(resets)} | ${int(refused)} of ${int(l.short.attempted)} | ` +
        `${int(l.lost)} / ${int(l.duplicated)} / ${int(l.reordered)} | ${pauseCell(run)} | ${fmt(waits.before)} / ${fmt(waits.during)} / ${fmt(waits.after)} | ` +
        `${fmt(sw?.newServingMs, 0)} | ` +
        `${fmt(sw?.oldGoneMs, 0)} | ${mib(run.peakRssKb?.old)} / ${mib(run.peakRssKb?.new)} | ${lag} | ${machine} |`,
    );
  }
  return lines;
}

const mark = (ok: boolean, text: string): string => (ok ? text : `**${text}**`);

/** The cells both comparison tables share: longest wait, its limit, p99s and their ratio, each bold when over its limit. */
function latencyCells(vs: AgainstControl): string {
  const limit = vs.wait.control + WAIT_OVER_CONTROL_MS;
  const ratio = vs.p99.takeover / vs.p99.control;
  return (
    `${mark(vs.wait.takeover <= limit, fmt(vs.wait.takeover))} / ${fmt(vs.wait.control)} | ${fmt(limit)} | ` +
    `${fmt(vs.p99.takeover)} / ${fmt(vs.p99.control)} | ${mark(ratio <= P99_OVER_CONTROL, `${ratio.toFixed(2)}x`)}`
  );
}

/** A loop's longest stall and where its time went; bold over the 2 ms target when it is the old process's own. */
const stallCell = (l: LoopDelay | undefined, judged = false): string =>
  l ? `${judged ? mark(l.max <= LOOP_BLOCK_TARGET_MS, fmt(l.max)) : fmt(l.max)} (${split(l)})` : '–';

const stepCell = (vs: AgainstControl): string => (vs.oldStep ? `${fmt(vs.oldStep.wall)} / ${fmt(vs.oldStep.cpu)}` : '–');

/** The old process's and the control's loops in the same window, from the probe. */
const sameWindowCells = (vs: AgainstControl): string => `${stallCell(vs.sameWindow?.old)} | ${stallCell(vs.sameWindow?.control)}`;

const LATENCY_HEADS = `longest echo wait: takeover / control (ms) | limit: control + ${WAIT_OVER_CONTROL_MS} ms | pause p99: takeover / control (ms) | p99 ratio (limit ${P99_OVER_CONTROL}x)`;
const SAME_WINDOW_HEADS = "same window, loop delay max (on the CPU / waiting / GC), old process (ms) | same window, the control's (ms)";

function controlTable(results: BenchResults): string[] {
  const lines = [
    `| connections | ${LATENCY_HEADS} | old process's loop delay max (on the CPU / waiting for a core / GC) (ms) | its p99 (ms) | old process's longest takeover step, wall / CPU (ms) | successor's loop delay max (on the CPU / waiting / GC) (ms) | its p99 (ms) | ${SAME_WINDOW_HEADS} |`,
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const size of results.sizes) {
    const vs = againstControl(results.runs, size);
    if (!vs) continue;
    lines.push(
      `| ${int(size)} | ${latencyCells(vs)} | ${stallCell(vs.oldLoop, true)} | ${fmt(vs.oldLoop?.p99)} | ${stepCell(vs)} | ` +
        `${stallCell(vs.newLoop)} | ${fmt(vs.newLoop?.p99)} | ${sameWindowCells(vs)} |`,
    );
  }
  return lines;
}

/** --repeat: one row per round at one size, each takeover against the control just before it. */
function roundTable(results: BenchResults, size: number): string[] {
  const lines = [
    `| round | ${LATENCY_HEADS} | old process's loop delay max (on the CPU / waiting for a core / GC) (ms) | its longest takeover step, wall / CPU (ms) | ${SAME_WINDOW_HEADS} | transfer / floor (limit ${FLOOR_RATIO_TARGET}x) | whole takeover (ms) | old gone after commit (ms) |`,
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  const judged = size === results.targetSize;
  const floor = results.floor.find((f) => f.connections === size)?.transferMs;
  for (let round = 1; round <= results.repeat; round++) {
    const vs = againstControl(results.runs, size, round);
    const run = echoRun(results.runs, 'socket-takeover', size, round);
    if (!vs || !run) {
      const why = run?.error ?? echoRun(results.runs, 'control', size, round)?.error ?? 'no takeover or no control run';
      lines.push(`| ${round} | not measured: ${why.replace(/\|/g, '/').replace(/\n/g, ' ').slice(0, 200)} |||||||||||`);
      continue;
    }
    const p = run.switch?.predecessor?.phases;
    const ratio = p?.transferMs !== undefined && floor ? p.transferMs / floor : undefined;
    const gone = run.switch?.oldGoneAfterCommitMs;
    const cell = (value: number | undefined, ok: boolean, text: string): string =>
      value === undefined ? '–' : judged ? mark(ok, text) : text;
    lines.push(
      `| ${round} | ${latencyCells(vs)} | ${stallCell(vs.oldLoop, true)} | ${stepCell(vs)} | ${sameWindowCells(vs)} | ` +
        `${cell(ratio, (ratio ?? 0) <= FLOOR_RATIO_TARGET, `${ratio?.toFixed(1)}x`)} | ` +
        `${cell(p?.totalMs, (p?.totalMs ?? 0) < TOTAL_TARGET_MS, fmt(p?.totalMs))} | ` +
        `${cell(gone, (gone ?? 0) <= OLD_GONE_TARGET_MS, fmt(gone))} |`,
    );
  }
  return lines;
}

function throughputLines(results: BenchResults): string[] {
  const run = results.throughput;
  if (!run) return [];
  const tp = throughputRatio(run);
  const rounds = (values: number[]): string => values.map((v) => int(v)).join(', ');
  return [
    '',
    '### Steady-state throughput',
    '',
    `No switch: ${int(run.connections)} connections, each sending its next 4-byte message as soon as its echo arrives, ` +
      `${run.durationS} s per round, the two servers alternating round after round (client at the servers' priority).`,
    '',
    '| server | echoes/s, each round | median |',
    '|---|---|---:|',
    `| takeover-server | ${rounds(run.library)} | ${tp ? int(Math.round(tp.library)) : '–'} |`,
    `| plain Node \`net\` echo server | ${rounds(run.plain)} | ${tp ? int(Math.round(tp.plain)) : '–'} |`,
    '',
    tp ? `Ratio of the medians: ${tp.ratio.toFixed(2)}x.` : `Not measured: ${run.error ?? 'no rounds'}.`,
  ];
}

function takeoverTable(results: BenchResults): string[] {
  const lines = [
    '| connections | pre-copy (ms) | transfer (ms) | C floor (ms) | transfer / floor | commit (ms) | waves (ms) | total (ms) | CPU used, old process: loop thread / all threads (ms) | CPU used, successor: loop thread / all threads (ms) | server max pause (ms) | old gone after commit (ms) |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  const label = (size: number, round: number): string => `${int(size)}${results.repeat > 1 ? ` (round ${round})` : ''}`;
  for (const [size, round] of results.sizes.flatMap((size) => Array.from({ length: results.repeat }, (_, i) => [size, i + 1] as const))) {
    const run = echoRun(results.runs, 'socket-takeover', size, round);
    const floor = results.floor.find((f) => f.connections === size);
    const stats = run?.switch?.predecessor;
    if (!stats && !floor?.transferMs) continue;
    const cpu = (side: TakeoverStats | undefined): string => (side ? `${fmt(side.cpuMs.thread)} / ${fmt(side.cpuMs.process)}` : '–');
    const p = stats?.phases;
    const ratio = p?.transferMs !== undefined && floor?.transferMs ? `${(p.transferMs / floor.transferMs).toFixed(1)}x` : '–';
    lines.push(
      `| ${label(size, round)} | ${fmt(p?.precopyMs)} | ${fmt(p?.transferMs)} | ${fmt(floor?.transferMs, 2)} | ${ratio} | ${fmt(p?.commitMs)} | ${fmt(p?.wavesMs)} | ` +
        `${fmt(p?.totalMs)} | ${cpu(stats)} | ${cpu(run?.switch?.successor)} | ${fmt(stats?.maxPauseMs)} | ${fmt(run?.switch?.oldGoneAfterCommitMs)} |`,
    );
  }
  return lines;
}

const WORKLOAD_NAMES = { http: 'HTTP keep-alive', ws: 'WebSocket' } as const;

/** One table per app workload: what its clients saw around each system's switch. */
function appTable(results: BenchResults, workload: AppPlan['workload']): string[] {
  const http = workload === 'http';
  const lines = [
    http
      ? '| clients | system | requests answered | failed | hung | connections closed by the server | reopened | clients still on their first connection | pause per client p50 / p99 / max (ms) | server max pause (ms) | new serving (ms) | old gone (ms) | client lag p99 / max (ms) | CPU busy (others) |'
      : '| clients | system | echoes | pushes | lost / dup / reord | hung | WebSockets closed | reopened | clients still on their first WebSocket | pause per client p50 / p99 / max (ms) | server max pause (ms) | new serving (ms) | old gone (ms) | client lag p99 / max (ms) | CPU busy (others) |',
    http
      ? '|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|'
      : '|---:|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---|---|',
  ];
  for (const run of results.runs.filter((r) => r.workload === workload)) {
    const head = `| ${int(run.connections)} | ${run.system}`;
    const machine = `${pct(run.machine.busy)} (${pct(run.machine.others)})`;
    const a = run.app;
    if (!a) {
      lines.push(
        `${head} | failed: ${run.error?.replace(/\|/g, '/').replace(/\n/g, ' ').slice(0, 200)} |${'|'.repeat(http ? 11 : 12)} ${machine} |`,
      );
      continue;
    }
    const failed = run.error ? ` (${run.error.replace(/\|/g, '/').slice(0, 120)})` : '';
    const sw = run.switch;
    const lag = lagged(a) ? `**${fmt(a.lagMs)} / ${fmt(a.lagMaxMs)}** ⚠` : `${fmt(a.lagMs)} / ${fmt(a.lagMaxMs)}`;
    const counts = http
      ? `${int(a.answered)} | ${int(a.failed)} | ${int(a.hung)}`
      : `${int(a.answered)} | ${int(a.pushes)} | ${int(a.lost)} / ${int(a.duplicated)} / ${int(a.reordered)} | ${int(a.hung)}`;
    lines.push(
      `${head}${failed} | ${counts} | ${int(a.closed)} | ${int(a.reopened)} | ${int(a.keptFirst)} of ${int(a.clients)} | ` +
        `${fmt(a.pauseMs.p50)} / ${fmt(a.pauseMs.p99)} / ${fmt(a.pauseMs.max)} | ${fmt(sw?.predecessor?.maxPauseMs)} | ${fmt(sw?.newServingMs, 0)} | ${fmt(sw?.oldGoneMs, 0)} | ${lag} | ${machine} |`,
    );
  }
  return lines;
}

function appSections(results: BenchResults): string[] {
  const w = results.appWorkload;
  if (!w) return [];
  const out: string[] = [];
  for (const workload of w.workloads) {
    if (!results.runs.some((r) => r.workload === workload)) continue;
    const what =
      workload === 'http'
        ? `Each client is one keep-alive connection (an http.Agent with one socket) requesting \`/delay?ms=<random 0-${w.delayMs}>\` ` +
          `of \`takeover-server --app http\` (and of the same app in plain Node for pm2 and the restart), ${int(w.intervalMs)} ms after each answer, ` +
          `for ${w.durationS} s; the switch starts ${w.switchAfterS} s into the load. A request is hung when unanswered after ${int(w.hangMs)} ms (then abandoned).`
        : `Each client is one WebSocket to \`takeover-server --app ws\` (and the same app in plain Node) with the server's numbered push stream ` +
          `(one every ${int(w.pushMs)} ms) and its own numbered messages, each sent ${int(w.intervalMs)} ms after the previous echo, for ${w.durationS} s; ` +
          `the switch starts ${w.switchAfterS} s into the load. A client whose WebSocket closes opens a new one 100 ms later (its pushes count from 0 again); ` +
          `an echo unanswered after ${int(w.hangMs)} ms is hung (the WebSocket is then abandoned).`;
    out.push('', `### ${WORKLOAD_NAMES[workload]} clients`, '', what, '', ...appTable(results, workload));
  }
  if (out.length > 0) {
    out.push(
      '',
      'failed: requests answered with an error (reset, hang-up) or a status other than 200. closed: connections or WebSockets the server ' +
        'closed or reset while the client used them. reopened: connections or WebSockets a client opened beyond its first. pause: each ' +
        "client's longest gap between two consecutive answers (HTTP responses; WebSocket pushes or echoes), over the whole run up to the " +
        "clients' stop, the steady gap included; p50 and p99 over all clients. server max pause: socket-takeover's longest wave, freeze " +
        'to start. The plain apps shut down gracefully for pm2 and the restart: answers in progress are sent with `Connection: close`, idle ' +
        'keep-alive connections closed, WebSockets closed with 1001, then exit (at most 1.5 s). new serving, old gone, client lag, CPU: as ' +
        'in the echo table.',
    );
  }
  return out;
}

const SAME_WINDOW_LEGEND =
  'same window: the same loop sampler, preloaded by the benchmark (bench/loop-probe.ts), in the old server from the ' +
  "switch's start until it exited, and in the control's server from the same instant into its load for as long (to the " +
  "next 50 ms): the loop delay max of both, and where it went, for the machine's own stalls without a takeover.";

/** --repeat: the longest run of rounds meeting every target at the target size. */
function streakLine(results: BenchResults): string[] {
  const { rounds, streak } = results;
  if (!rounds || !streak) return [];
  const which = streak.longest > 1 ? `rounds ${streak.from}-${streak.from! + streak.longest - 1}` : `round ${streak.from}`;
  return [
    `- every ${int(streak.connections)}-connection target met in consecutive rounds: ` +
      (streak.from === undefined ? `in none of the ${rounds.length}` : `${streak.longest} of ${rounds.length} at most (${which})`),
  ];
}

/** --repeat: at each size, one table of its rounds; one round: one row per size. */
function comparisonTables(results: BenchResults): string[] {
  if (!results.rounds) {
    const table = controlTable(results);
    return table.length > 2 ? table : [];
  }
  const out = [
    `${results.rounds.length} rounds at each size of a control run then a takeover run, alternating: each takeover is judged ` +
      'against the control just before it; the C floor is measured once per size. Bold: over its limit (the transfer, the ' +
      `whole takeover and the old process's exit are targets at ${int(results.targetSize)} connections only).`,
  ];
  for (const size of results.sizes) out.push('', `#### ${int(size)} connections`, '', ...roundTable(results, size));
  return out;
}

export function targetLines(results: BenchResults): string[] {
  return results.targets.map((t) => `- ${t.met === undefined ? 'not measured' : t.met ? 'met' : '**missed**'}: ${t.name} (${t.detail})`);
}

/** The generated section: everything between the markers of BENCHMARKS.md. */
export function renderSection(results: BenchResults, chartPath: string | undefined): string {
  const w = results.workload;
  const m = results.machine;
  const out = [
    `Run of ${results.startedAt} on ${m.cpus} × ${m.cpuModel}, Linux ${m.kernel}, Node ${m.node}; ` +
      `RLIMIT_NOFILE ${int(m.rlimitNofile.soft)} (hard ${int(m.rlimitNofile.hard)}); load average ${m.loadavgAtStart.toFixed(2)} at the start; ` +
      `whole run ${Math.round(results.durationS)} s.`,
    '',
    `Workload: each long-lived connection sends one 4-byte sequence number every ${int(w.intervalMs)} ms after its echo, ` +
      `for ${w.durationS} s; ${w.newRate} new short connections per second (connect, one echo, close); ` +
      `the switch starts ${w.switchAfterS} s into the load. Clients: up to ${int(w.perClient)} connections per process, ` +
      `${int(w.perSourceAddress)} per source address, at nice ${w.clientNice} so that the busy servers do not starve them.`,
    '',
    '### Targets',
    '',
    `Those of issue #10, reported, never asserted: no connection cut or echo lost, the latency against the control run and the old ` +
      `process's event loop at every size; the transfer, the whole takeover and the old process's exit at ${int(results.targetSize)} ` +
      'connections; the steady-state throughput.',
    '',
    ...targetLines(results),
    ...streakLine(results),
  ];
  if (results.runs.length > 0) {
    out.push(
      '',
      '### What the clients saw',
      '',
      ...systemsTable(results),
      '',
      'kept/cut: long-lived connections open at the end / closed or reset by the server. resets, refused: ECONNRESET and ' +
        "ECONNREFUSED on any connection, refused out of the short connections attempted. pause: each connection's longest " +
        "wait for an echo over the whole run, over all connections (the clients' HdrHistograms added, so p50 and p99 are " +
        'exact); waits are timed until the client stops, and echoes still in flight then are checked for loss but not ' +
        'timed, since the client closing every other connection delays their reading. longest wait before / during / ' +
        'after the switch: the longest echo wait that ended before the switch began, until 1 s after the old process was ' +
        "gone, and later (from the clients' 100 ms timelines); before is the machine's noise without any switch. new " +
        "serving: ms after the switch began (successor spawned, `pm2 reload` run, SIGTERM sent) until the successor's " +
        'summary line, `pm2 reload` returned, or the new process listened; old gone: until the old process exited. client ' +
        'lag: event-loop delay p99 / max of the worst client from its start to its stop; an echo is timed when the ' +
        "client's loop reads it, so any wait may include up to the max of the client's own delay. CPU busy: share of " +
        'both cores over the run, and in brackets the share used by processes that are not part of the benchmark.',
    );
  }
  const control = comparisonTables(results);
  if (control.length > 0) {
    out.push(
      '',
      '### socket-takeover against the control run',
      '',
      ...control,
      '',
      'control: the same takeover-server under the same load in the same benchmark run, just before the takeover run, ' +
        "with no switch: this machine's and this load's own noise. longest echo wait and pause p99: as in the table above " +
        "(each connection's longest wait, over the whole run). loop delay: the event-loop delay each server process " +
        "sampled every millisecond while its side of the takeover ran (`stats.loopDelayMs`), the takeover's work, the " +
        "application's and the waits for a core together; max is the longest single stretch its loop could not serve, and " +
        "in brackets where that stretch's time went (`stats.loopDelayMs.maxCpuMs`, `maxWaitMs`, `maxGcMs`): its event-loop " +
        "thread running, ready but waiting for a core (the kernel's schedstat), and the garbage-collection pauses inside it " +
        '(which count as CPU, or as waiting when the thread was preempted during one). ' +
        "longest takeover step: the longest stretch of the old process's own takeover work between two returns to its " +
        'event loop (`stats.longestStepMs`), and how much of it its thread spent on the CPU (`stats.longestStepCpuMs`): ' +
        `a wall time well above the CPU time is a wait for a core. ${SAME_WINDOW_LEGEND} Bold: over its limit.`,
    );
  }
  const phases = takeoverTable(results);
  if (phases.length > 2) {
    const floor = results.floor.find((f) => f.window !== undefined);
    const batching = floor
      ? `${floor.fdsPerBatch} per message, ${floor.window} messages in flight`
      : 'in batches, a window of them in flight';
    out.push(
      '',
      '### socket-takeover phases and the C floor',
      '',
      ...phases,
      '',
      "Phases from the old process's summary line. pre-copy: from the successor's connection to PREPARE, the " +
        "handshake plus the transfer. transfer: from the first batch of fds sent to PREPARE, every connection's fd sent " +
        `(${batching}) and acknowledged by the successor on receipt, while the old process ` +
        'keeps serving; this is the figure compared with the C floor, which moves the same number of connected TCP ' +
        'sockets between two processes with SCM_RIGHTS, same batches and window, and nothing else (median of its ' +
        'rounds). commit: PREPARE to COMMIT, the successor checking and wrapping every fd in a net.Socket (8-25 µs ' +
        "each) and waiting for its app's ready(). waves: reading handed over, wave by wave, from LISTENING to the last " +
        "wave. CPU used: what each side used while its side of the takeover ran (`stats.cpuMs`), its event loop's thread " +
        "(the takeover's work and the application's) and all its threads (V8's compiler and GC helpers too); two cores " +
        "give 2 ms of CPU per ms of the total, the clients' share included. " +
        'server max pause: the longest wave from freeze to started. old gone after commit: from the commit (the ' +
        "old process's `stats.committedAt`) to its exit as seen by the benchmark.",
    );
  }
  if (chartPath) {
    out.push('', `![Longest echo wait and echoes answered per 100 ms around the switch](${chartPath})`);
  }
  out.push(...appSections(results));
  out.push(...throughputLines(results));
  if (results.skipped.length > 0) {
    out.push(
      '',
      '### Not run',
      '',
      ...results.skipped.map((s) => `- ${s.connections === 'max' ? 'the maximum' : int(s.connections)} connections: ${s.reason}`),
    );
  }
  if (results.warnings.length > 0) {
    out.push('', '### Caveats', '', ...results.warnings.map((w) => `- ${w}`));
  }
  return out.join('\n');
}

export const START_MARKER = '<!-- bench:start -->';
export const END_MARKER = '<!-- bench:end -->';

/** Replaces what lies between the markers; the hand-written text around them stays. */
export function writeBenchmarksMd(file: string, section: string): void {
  const body = `${START_MARKER}\n${section}\n${END_MARKER}`;
  const current = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const start = current.indexOf(START_MARKER);
  const end = current.indexOf(END_MARKER);
  const next =
    start >= 0 && end > start
      ? current.slice(0, start) + body + current.slice(end + END_MARKER.length)
      : `${current}${current === '' || current.endsWith('\n') ? '' : '\n'}\n${body}\n`;
  writeFileSync(file, next);
}
