/**
 * Turns a run's results into words: the targets (reported, never asserted), the markdown
 * tables printed on the console and written into bench/results/latest.md (and, with --write-docs,
 * into BENCHMARKS.md between its markers).
 */
import type { PoolRun } from './pool.js';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { AppLoadResult, LoadResult } from './load.js';
import type { AppPlan, FloorRun, SystemRun, Workload } from './systems.js';

export interface MachineInfo {
  cpus: number;
  cpuModel: string;
  kernel: string;
  node: string;
  rlimitNofile: { soft: number; hard: number };
  loadavgAtStart: number;
}

export interface Skipped {
  connections: number;
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
const PAUSE_TARGET_MS = 50;
const FLOOR_RATIO_TARGET = 3;
const OLD_GONE_TARGET_MS = 1000;
/** Client event-loop delay p99 above which many of its waits include its own delay. */
export const LAG_WARNING_MS = 10;
/** ...and max above which one stall of its own could make half a target-sized pause by itself. */
export const LAG_MAX_WARNING_MS = PAUSE_TARGET_MS / 2;
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

export function evaluateTargets(runs: SystemRun[], floor: FloorRun[], size: number): TargetResult[] {
  const ours = runs.find((r) => r.system === 'socket-takeover' && !r.workload && r.connections === size);
  const floorRun = floor.find((f) => f.connections === size);
  const unmeasured = (name: string, why: string): TargetResult => ({ name, met: undefined, detail: `not measured: ${why}` });
  const why = ours === undefined ? `no socket-takeover run at ${int(size)}` : ours.error;
  const load = ours?.load;
  const sw = ours?.switch;
  const results: TargetResult[] = [];

  const cutName = `${int(size)} connections: zero cut`;
  if (load) {
    const cut = load.cut + (load.connections - load.opened);
    results.push({
      name: cutName,
      met: cut === 0,
      detail:
        cut === 0
          ? `${int(load.kept)} of ${int(load.connections)} kept`
          : `missed by ${int(cut)} (${int(load.cut)} cut, ${int(load.connections - load.opened)} never opened)`,
    });
    results.push({
      name: 'zero lost',
      met: load.lost === 0,
      detail:
        load.lost === 0
          ? `0 lost (${int(load.duplicated)} duplicated, ${int(load.reordered)} reordered)`
          : `missed by ${int(load.lost)} echoes lost`,
    });
    const longest = load.connectionPauseMs.max;
    const waits = waitsAroundSwitch(ours!);
    results.push({
      name: `longest client pause <= ${PAUSE_TARGET_MS} ms`,
      met: longest <= PAUSE_TARGET_MS,
      detail:
        `${fmt(longest)} ms over the whole run, ${margin(longest, PAUSE_TARGET_MS, ' ms')}; ` +
        `longest echo wait ending before the switch ${fmt(waits.before)} ms, during it ${fmt(waits.during)} ms, after it ${fmt(waits.after)} ms` +
        (longest <= PAUSE_TARGET_MS
          ? ''
          : '; limited by the cores the old server, the successor and the clients share, see "What limits the figures"'),
    });
  } else {
    results.push(unmeasured(cutName, why ?? 'no client results'), unmeasured('zero lost', why ?? 'no client results'));
    results.push(unmeasured(`longest client pause <= ${PAUSE_TARGET_MS} ms`, why ?? 'no client results'));
  }

  const ratioName = `fd transfer within ${FLOOR_RATIO_TARGET}x the C floor`;
  const transfer = sw?.predecessor?.phases.transferMs;
  if (transfer !== undefined && floorRun?.transferMs !== undefined) {
    const ratio = transfer / floorRun.transferMs;
    results.push({
      name: ratioName,
      met: ratio <= FLOOR_RATIO_TARGET,
      detail:
        `transfer ${fmt(transfer)} ms / floor ${fmt(floorRun.transferMs, 2)} ms = ${ratio.toFixed(1)}x, ` +
        `${margin(ratio, FLOOR_RATIO_TARGET, 'x')}; at most ${fmt(floorRun.transferMs * FLOOR_RATIO_TARGET)} ms would meet it` +
        (ratio <= FLOOR_RATIO_TARGET
          ? ''
          : "; limited by the successor's per-batch work on its event loop, preemption, and V8 JIT threads competing for " +
            'the 2 cores, see "What keeps the transfer above the floor"'),
    });
  } else {
    results.push(unmeasured(ratioName, floorRun?.error ?? why ?? 'no transfer time'));
  }

  const goneName = `old process gone within ${OLD_GONE_TARGET_MS} ms of the commit`;
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
    results.push(unmeasured(goneName, why ?? 'no exit time'));
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

function takeoverTable(results: BenchResults): string[] {
  const lines = [
    '| connections | pre-copy (ms) | transfer (ms) | C floor (ms) | transfer / floor | commit (ms) | waves (ms) | total (ms) | server max pause (ms) | old gone after commit (ms) |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const size of results.sizes) {
    const run = results.runs.find((r) => r.system === 'socket-takeover' && !r.workload && r.connections === size);
    const floor = results.floor.find((f) => f.connections === size);
    const stats = run?.switch?.predecessor;
    if (!stats && !floor?.transferMs) continue;
    const p = stats?.phases;
    const ratio = p?.transferMs !== undefined && floor?.transferMs ? `${(p.transferMs / floor.transferMs).toFixed(1)}x` : '–';
    lines.push(
      `| ${int(size)} | ${fmt(p?.precopyMs)} | ${fmt(p?.transferMs)} | ${fmt(floor?.transferMs, 2)} | ${ratio} | ${fmt(p?.commitMs)} | ${fmt(p?.wavesMs)} | ` +
        `${fmt(p?.totalMs)} | ${fmt(stats?.maxPauseMs)} | ${fmt(run?.switch?.oldGoneAfterCommitMs)} |`,
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
    `Checked at ${int(results.targetSize)} connections, reported, never asserted.`,
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
        'rounds). commit: PREPARE to COMMIT, the successor checking and wrapping every fd in a net.Socket (28-43 µs ' +
        "each) and waiting for its app's ready(). waves: reading handed over, wave by wave, from LISTENING to the last " +
        'wave. server max pause: the longest wave from freeze to started. old gone after commit: from the commit (the ' +
        "old process's `stats.committedAt`) to its exit as seen by the benchmark.",
    );
  }
  if (chartPath) {
    out.push('', `![Longest echo wait and echoes answered per 100 ms around the switch](${chartPath})`);
  }
  out.push(...appSections(results));
  if (results.skipped.length > 0) {
    out.push('', '### Not run', '', ...results.skipped.map((s) => `- ${int(s.connections)} connections: ${s.reason}`));
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
