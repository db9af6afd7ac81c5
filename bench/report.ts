/**
 * Turns a run's results into words: the targets (reported, never asserted), the markdown
 * tables printed on the console and written into bench/results/latest.md (and, with --write-docs,
 * into BENCHMARKS.md between its markers).
 */
import type { PoolRun } from './pool.js';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { AppLoadResult, LoadResult } from './load.js';
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

export interface TargetResult {
  name: string;
  /** undefined: not measured in this run (size not run, or the run failed). */
  met: boolean | undefined;
  /** The measured value and the margin, in words. */
  detail: string;
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
  targets: TargetResult[];
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

const echoRun = (runs: SystemRun[], system: SystemRun['system'], size: number): SystemRun | undefined =>
  runs.find((r) => r.system === system && !r.workload && r.connections === size);

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
}

export function againstControl(runs: SystemRun[], size: number): AgainstControl | undefined {
  const ours = echoRun(runs, 'socket-takeover', size)?.load;
  const control = echoRun(runs, 'control', size)?.load;
  if (!ours || !control) return undefined;
  const sw = echoRun(runs, 'socket-takeover', size)?.switch;
  return {
    connections: size,
    wait: { takeover: ours.connectionPauseMs.max, control: control.connectionPauseMs.max },
    p99: { takeover: ours.connectionPauseMs.p99, control: control.connectionPauseMs.p99 },
    oldLoop: sw?.predecessor?.loopDelayMs,
    newLoop: sw?.successor?.loopDelayMs,
    oldStep: sw?.predecessor ? { wall: sw.predecessor.longestStepMs, cpu: sw.predecessor.longestStepCpuMs } : undefined,
  };
}

/** Steady-state echoes per second: the median round of each server, and their ratio. */
export function throughputRatio(run: ThroughputRun | undefined): { library: number; plain: number; ratio: number } | undefined {
  if (!run || run.library.length === 0 || run.plain.length === 0) return undefined;
  const library = median(run.library);
  const plain = median(run.plain);
  return { library, plain, ratio: library / plain };
}

function sizeTargets(runs: SystemRun[], size: number): TargetResult[] {
  const ours = echoRun(runs, 'socket-takeover', size);
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
      detail:
        `${int(load.kept)} of ${int(load.connections)} kept, ${int(load.cut)} cut, ${int(load.connections - load.opened)} never opened; ` +
        `${int(load.lost)} lost, ${int(load.duplicated)} duplicated, ${int(load.reordered)} reordered`,
    });
  } else {
    results.push(unmeasured(names.cut, why));
  }
  const vs = againstControl(runs, size);
  if (vs) {
    const waitLimit = vs.wait.control + WAIT_OVER_CONTROL_MS;
    const waits = waitsAroundSwitch(ours!);
    results.push({
      name: names.wait,
      met: vs.wait.takeover <= waitLimit,
      detail:
        `${fmt(vs.wait.takeover)} ms against ${fmt(vs.wait.control)} ms, ${margin(vs.wait.takeover, waitLimit, ' ms')}; ` +
        `the takeover run's longest wait ending before the switch ${fmt(waits.before)} ms, during it ${fmt(waits.during)} ms, after it ${fmt(waits.after)} ms`,
    });
    const ratio = vs.p99.takeover / vs.p99.control;
    results.push({
      name: names.p99,
      met: ratio <= P99_OVER_CONTROL,
      detail: `${fmt(vs.p99.takeover)} ms against ${fmt(vs.p99.control)} ms = ${ratio.toFixed(2)}x, ${margin(ratio, P99_OVER_CONTROL, 'x', 2)}`,
    });
  } else {
    const reason = ours?.load ? `no control run at ${int(size)}` : why;
    results.push(unmeasured(names.wait, reason), unmeasured(names.p99, reason));
  }
  const pred = ours?.switch?.predecessor;
  if (pred) {
    const loop = pred.loopDelayMs;
    results.push({
      name: names.loop,
      met: loop.max <= LOOP_BLOCK_TARGET_MS,
      detail:
        `event-loop delay max ${fmt(loop.max)} ms (p99 ${fmt(loop.p99)} ms), ${margin(loop.max, LOOP_BLOCK_TARGET_MS, ' ms')}; ` +
        `of that stretch ${fmt(loop.maxCpuMs)} ms on the CPU, ${fmt(loop.maxWaitMs)} ms waiting for a core, ${fmt(loop.maxGcMs)} ms in GC pauses; ` +
        `the application's work and the waits for a core count too: the takeover's own longest step took ` +
        `${fmt(pred.longestStepMs)} ms, ${fmt(pred.longestStepCpuMs)} ms of it on the CPU`,
    });
  } else {
    results.push(unmeasured(names.loop, ours?.error ?? 'no predecessor summary'));
  }
  return results;
}

export function evaluateTargets(
  runs: SystemRun[],
  floor: FloorRun[],
  sizes: number[],
  targetSize: number,
  throughput: ThroughputRun | undefined,
): TargetResult[] {
  const results = sizes.flatMap((size) => sizeTargets(runs, size));
  const ours = echoRun(runs, 'socket-takeover', targetSize);
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
      detail:
        `${fmt(gone)} ms, ${margin(gone, OLD_GONE_TARGET_MS, ' ms')}` +
        (gone <= OLD_GONE_TARGET_MS || waves === undefined
          ? ''
          : `; the waves took ${fmt(waves)} ms of it, the rest is the old process closing and exiting`),
    });
  } else {
    results.push(unmeasured(goneName, why));
  }

  const throughputName = `steady-state echo throughput >= ${THROUGHPUT_TARGET}x a plain Node net echo server`;
  const tp = throughputRatio(throughput);
  if (tp) {
    results.push({
      name: throughputName,
      met: tp.ratio >= THROUGHPUT_TARGET,
      detail: `${int(Math.round(tp.library))} against ${int(Math.round(tp.plain))} echoes/s (medians of ${throughput!.library.length} alternating rounds) = ${tp.ratio.toFixed(2)}x`,
    });
  } else {
    results.push(unmeasured(throughputName, throughput?.error ?? 'not run (--workloads without throughput)'));
  }
  return results;
}

function lagged(load: LoadResult | AppLoadResult): boolean {
  return load.lagMs > LAG_WARNING_MS || load.lagMaxMs > LAG_MAX_WARNING_MS;
}

export function collectWarnings(runs: SystemRun[]): string[] {
  const warnings: string[] = [];
  for (const run of runs) {
    const label = `${run.system} at ${int(run.connections)}${run.workload ? ` (${WORKLOAD_NAMES[run.workload]})` : ''}`;
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
    const head = `| ${int(run.connections)} | ${run.system}`;
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

function controlTable(results: BenchResults): string[] {
  const lines = [
    `| connections | longest echo wait: takeover / control (ms) | limit: control + ${WAIT_OVER_CONTROL_MS} ms | pause p99: takeover / control (ms) | p99 ratio (limit ${P99_OVER_CONTROL}x) | old process's loop delay max / p99 (ms) | its longest stall: on the CPU / waiting for a core / GC (ms) | old process's longest takeover step, wall / CPU (ms) | successor's loop delay max / p99 (ms) | its longest stall: on the CPU / waiting for a core / GC (ms) |`,
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  const mark = (ok: boolean, text: string): string => (ok ? text : `**${text}**`);
  for (const size of results.sizes) {
    const vs = againstControl(results.runs, size);
    if (!vs) continue;
    const limit = vs.wait.control + WAIT_OVER_CONTROL_MS;
    const ratio = vs.p99.takeover / vs.p99.control;
    const loop = (l: AgainstControl['oldLoop'], bold: boolean): string =>
      l ? (bold && l.max > LOOP_BLOCK_TARGET_MS ? `**${fmt(l.max)}** / ${fmt(l.p99)}` : `${fmt(l.max)} / ${fmt(l.p99)}`) : '–';
    const stall = (l: AgainstControl['oldLoop']): string => (l ? `${fmt(l.maxCpuMs)} / ${fmt(l.maxWaitMs)} / ${fmt(l.maxGcMs)}` : '–');
    lines.push(
      `| ${int(size)} | ${mark(vs.wait.takeover <= limit, fmt(vs.wait.takeover))} / ${fmt(vs.wait.control)} | ${fmt(limit)} | ` +
        `${fmt(vs.p99.takeover)} / ${fmt(vs.p99.control)} | ${mark(ratio <= P99_OVER_CONTROL, `${ratio.toFixed(2)}x`)} | ` +
        `${loop(vs.oldLoop, true)} | ${stall(vs.oldLoop)} | ${vs.oldStep ? `${fmt(vs.oldStep.wall)} / ${fmt(vs.oldStep.cpu)}` : '–'} | ` +
        `${loop(vs.newLoop, false)} | ${stall(vs.newLoop)} |`,
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
  for (const size of results.sizes) {
    const run = results.runs.find((r) => r.system === 'socket-takeover' && !r.workload && r.connections === size);
    const floor = results.floor.find((f) => f.connections === size);
    const stats = run?.switch?.predecessor;
    if (!stats && !floor?.transferMs) continue;
    const cpu = (side: TakeoverStats | undefined): string => (side ? `${fmt(side.cpuMs.thread)} / ${fmt(side.cpuMs.process)}` : '–');
    const p = stats?.phases;
    const ratio = p?.transferMs !== undefined && floor?.transferMs ? `${(p.transferMs / floor.transferMs).toFixed(1)}x` : '–';
    lines.push(
      `| ${int(size)} | ${fmt(p?.precopyMs)} | ${fmt(p?.transferMs)} | ${fmt(floor?.transferMs, 2)} | ${ratio} | ${fmt(p?.commitMs)} | ${fmt(p?.wavesMs)} | ` +
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
  const control = controlTable(results);
  if (control.length > 2) {
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
        "application's and the waits for a core together; max is the longest single stretch its loop could not serve. " +
        "longest stall: where that stretch's time went (`stats.loopDelayMs.maxCpuMs`, `maxWaitMs`, `maxGcMs`): its event-loop " +
        "thread running, ready but waiting for a core (the kernel's schedstat), and the garbage-collection pauses inside it " +
        '(which count as CPU, or as waiting when the thread was preempted during one). ' +
        "longest takeover step: the longest stretch of the old process's own takeover work between two returns to its " +
        'event loop (`stats.longestStepMs`), and how much of it its thread spent on the CPU (`stats.longestStepCpuMs`): ' +
        'a wall time well above the CPU time is a wait for a core. Bold: over its limit.',
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
