/**
 * The load: load-client processes (separate from the servers, each under the fd limit,
 * each on its own source addresses), and the merge of their JSON summaries into one result.
 */
import { setPriority } from 'node:os';
import * as hdr from 'hdr-histogram-js';
import type { AppLoadSummary, AppWorkload } from '../tools/app-load.js';
import type { EchoLoadSummary, Percentiles, TimelineBucket } from '../tools/echo-load.js';
import { now, type Child, type ProcessGroups } from './procs.js';

export interface LoadPlan {
  host: string;
  port: number;
  connections: number;
  intervalMs: number;
  durationS: number;
  /** Short connections per second, over all clients. */
  newRate: number;
  /** Most long-lived connections one client process holds. */
  perClient: number;
  /**
   * Most connections bound to one source address. Node binds before it connects, and the
   * kernel's search for a free port then costs time in proportion to the ports already bound
   * to that address: 10,000 on one address took 8.8 s of system time in a measured run.
   */
  perSourceAddress: number;
  /** Third octet of this run's source addresses, so runs never share an address and port. */
  subnet: number;
  /**
   * Scheduling priority of the clients. During a takeover two server processes are busy on
   * their own, and on 2 cores the client then waits for a core: measured at 10,000 connections,
   * its longest echo wait during the switch went from 64-79 ms at nice 0 to 38-41 ms at -10.
   */
  clientNice: number;
  /** HTTP or WebSocket clients instead of the echo connections (no short connections then). */
  app?: { workload: AppWorkload; delayMs: number; pushMs: number; hangMs: number };
}

/** False when not permitted (a negative nice needs root or CAP_SYS_NICE): the run says so. */
function raisePriority(pid: number, nice: number): boolean {
  try {
    setPriority(pid, nice);
    return true;
  } catch {
    return false;
  }
}

export interface ClientRun<S = EchoLoadSummary> {
  pid: number;
  connections: number;
  sources: string[];
  /** When the client's run began, on the benchmark's clock (arrival of its summary − elapsedMs). */
  startedAt: number;
  exitCode: number | null;
  summary: S;
}

export interface LoadResult {
  clients: ClientRun[];
  connections: number;
  opened: number;
  kept: number;
  cut: number;
  echoes: number;
  lost: number;
  duplicated: number;
  reordered: number;
  errors: Record<string, number>;
  short: { attempted: number; succeeded: number; failed: number; errors: Record<string, number> };
  /** Over every client's connections (or echoes), as if one client had recorded them all. */
  connectionPauseMs: Percentiles;
  rttMs: Percentiles;
  /** Echoes read after their client's stop: checked, not in rttMs. */
  untimedEchoes: number;
  /** The worst client's event-loop delay p99 and max: each client's lag only delays its own echoes. */
  lagMs: number;
  lagMaxMs: number;
  /** The clients' nice value, or undefined when it could not be set. */
  clientNice: number | undefined;
}

/** What the HTTP and WebSocket clients saw, summed over the client processes. */
export interface AppLoadResult extends Omit<AppLoadSummary, 'target' | 'elapsedMs' | 'histograms' | 'ok'> {
  clientRuns: ClientRun<AppLoadSummary>[];
  clientNice: number | undefined;
}

export interface RunningLoad<R = LoadResult> {
  clients: Child[];
  startedAt: number;
  done: Promise<R>;
}

function splitEvenly(total: number, parts: number): number[] {
  return Array.from({ length: parts }, (_, i) => Math.floor(total / parts) + (i < total % parts ? 1 : 0));
}

export function startLoad(plan: LoadPlan, groups: ProcessGroups, clientScript: string): RunningLoad {
  const { clients, startedAt, done } = spawnClients<EchoLoadSummary>(plan, groups, clientScript);
  return {
    clients,
    startedAt,
    done: done.then(({ runs, niceApplied }) => ({ ...mergeClients(runs), clientNice: niceApplied ? plan.clientNice : undefined })),
  };
}

export function startAppLoad(plan: LoadPlan, groups: ProcessGroups, clientScript: string): RunningLoad<AppLoadResult> {
  const { clients, startedAt, done } = spawnClients<AppLoadSummary>(plan, groups, clientScript);
  return {
    clients,
    startedAt,
    done: done.then(({ runs, niceApplied }) => mergeAppClients(runs, niceApplied ? plan.clientNice : undefined)),
  };
}

function spawnClients<S extends { elapsedMs: number }>(
  plan: LoadPlan,
  groups: ProcessGroups,
  clientScript: string,
): { clients: Child[]; startedAt: number; done: Promise<{ runs: ClientRun<S>[]; niceApplied: boolean }> } {
  const startedAt = now();
  const count = Math.max(1, Math.ceil(plan.connections / plan.perClient));
  const connections = splitEvenly(plan.connections, count);
  const rates = splitEvenly(Math.round(plan.newRate * 1000), count).map((r) => r / 1000);
  let nextHost = 2;
  let niceApplied = true;
  const runs = connections.map((n, i) => {
    const addressCount = Math.max(1, Math.ceil(n / plan.perSourceAddress));
    if (nextHost + addressCount > 255) throw new Error(`more than 253 source addresses needed in 127.0.${plan.subnet}.0/24`);
    const sources = Array.from({ length: addressCount }, (_, k) => `127.0.${plan.subnet}.${nextHost + k}`);
    nextHost += addressCount;
    const args = [
      clientScript,
      '-a',
      plan.host,
      '-p',
      String(plan.port),
      '-c',
      String(n),
      '-i',
      String(plan.intervalMs),
      '-d',
      String(plan.durationS),
      '--source-address',
      sources.join(','),
      ...(plan.app
        ? [
            '--workload',
            plan.app.workload,
            '--delay',
            String(plan.app.delayMs),
            '--push',
            String(plan.app.pushMs),
            '--timeout',
            String(plan.app.hangMs),
          ]
        : ['--new-rate', String(rates[i])]),
      '--json',
      '-q',
    ];
    const child = groups.spawn(`client ${i + 1}`, process.execPath, args);
    niceApplied &&= raisePriority(child.pid, plan.clientNice);
    return { child, connections: n, sources };
  });
  const done = Promise.all(
    runs.map(async ({ child, connections: n, sources }): Promise<ClientRun<S>> => {
      let summary: { value: S; at: number } | undefined;
      child.onLine((line, at) => {
        if (line.startsWith('{')) summary = { value: JSON.parse(line) as S, at };
      });
      const exit = await child.exited;
      // Exit code 1 only means the run saw errors (a cut connection is one): the summary says which.
      if (summary === undefined) {
        throw new Error(`${child.name} printed no summary (${exit.signal ?? `exit code ${exit.code}`}): ${child.stderrTail()}`);
      }
      return {
        pid: child.pid,
        connections: n,
        sources,
        startedAt: summary.at - summary.value.elapsedMs,
        exitCode: exit.code,
        summary: summary.value,
      };
    }),
  ).then((clientRuns) => ({ runs: clientRuns, niceApplied }));
  return { clients: runs.map((r) => r.child), startedAt, done };
}

function mergeAppClients(clients: ClientRun<AppLoadSummary>[], clientNice: number | undefined): AppLoadResult {
  const sum = (pick: (s: AppLoadSummary) => number): number => clients.reduce((total, c) => total + pick(c.summary), 0);
  const errors: Record<string, number> = {};
  for (const { summary } of clients) addCounts(errors, summary.errors);
  return {
    clientRuns: clients,
    workload: clients[0]!.summary.workload,
    clients: sum((s) => s.clients),
    opened: sum((s) => s.opened),
    reopened: sum((s) => s.reopened),
    closed: sum((s) => s.closed),
    keptFirst: sum((s) => s.keptFirst),
    sent: sum((s) => s.sent),
    answered: sum((s) => s.answered),
    pushes: sum((s) => s.pushes),
    failed: sum((s) => s.failed),
    hung: sum((s) => s.hung),
    lost: sum((s) => s.lost),
    duplicated: sum((s) => s.duplicated),
    reordered: sum((s) => s.reordered),
    errors,
    pauseMs: mergePercentiles(
      clients.map((c) => c.summary.histograms.pauseUs),
      clients.map((c) => c.summary.pauseMs.max),
    ),
    lagMs: Math.max(...clients.map((c) => c.summary.lagMs)),
    lagMaxMs: Math.max(...clients.map((c) => c.summary.lagMaxMs)),
    clientNice,
  };
}

function addCounts(into: Record<string, number>, from: Record<string, number>): void {
  for (const [key, n] of Object.entries(from)) into[key] = (into[key] ?? 0) + n;
}

/**
 * Adding HdrHistograms is exact: the sum holds the same counts in the same buckets as one
 * histogram that recorded every value, so its percentiles are those of all the clients together.
 */
function mergePercentiles(encoded: string[], maxes: number[]): Percentiles {
  const [merged, ...rest] = encoded.map((base64) => hdr.decodeFromCompressedBase64(base64));
  // A client that ran past its histogram's range resized it; the sum must be able to follow.
  merged!.autoResize = true;
  for (const histogram of rest) merged!.add(histogram);
  return {
    p50: merged!.getValueAtPercentile(50) / 1000,
    p99: merged!.getValueAtPercentile(99) / 1000,
    // The clients' own max is the exact value; a decoded one is the top of its bucket.
    max: Math.max(...maxes),
  };
}

export function mergeClients(clients: ClientRun[]): Omit<LoadResult, 'clientNice'> {
  const sum = (pick: (s: EchoLoadSummary) => number): number => clients.reduce((total, c) => total + pick(c.summary), 0);
  const errors: Record<string, number> = {};
  const shortErrors: Record<string, number> = {};
  for (const { summary } of clients) {
    addCounts(errors, summary.errors);
    addCounts(shortErrors, summary.short.errors);
  }
  return {
    clients,
    connections: sum((s) => s.connections),
    opened: sum((s) => s.opened),
    kept: sum((s) => s.openAtEnd),
    cut: sum((s) => s.cut),
    echoes: sum((s) => s.echoes),
    lost: sum((s) => s.lost),
    duplicated: sum((s) => s.duplicated),
    reordered: sum((s) => s.reordered),
    errors,
    short: {
      attempted: sum((s) => s.short.attempted),
      succeeded: sum((s) => s.short.succeeded),
      failed: sum((s) => s.short.failed),
      errors: shortErrors,
    },
    connectionPauseMs: mergePercentiles(
      clients.map((c) => c.summary.histograms.connectionPauseUs),
      clients.map((c) => c.summary.connectionPauseMs.max),
    ),
    rttMs: mergePercentiles(
      clients.map((c) => c.summary.histograms.rttUs),
      clients.map((c) => c.summary.rttMs.max),
    ),
    untimedEchoes: sum((s) => s.untimedEchoes),
    lagMs: Math.max(...clients.map((c) => c.summary.lagMs)),
    lagMaxMs: Math.max(...clients.map((c) => c.summary.lagMaxMs)),
  };
}

/**
 * Every client's 100 ms buckets moved onto one axis, in ms from `origin` (the switch), and
 * merged: echoes add up, the longest wait is the longest of any client.
 */
export function mergeTimelines(clients: ClientRun[], origin: number, bucketMs = 100): TimelineBucket[] {
  const merged = new Map<number, TimelineBucket>();
  for (const client of clients) {
    for (const bucket of client.summary.timeline) {
      const t = Math.floor((client.startedAt + bucket.t - origin) / bucketMs) * bucketMs;
      const into = merged.get(t) ?? { t, echoes: 0, maxRttMs: 0 };
      into.echoes += bucket.echoes;
      into.maxRttMs = Math.max(into.maxRttMs, bucket.maxRttMs);
      merged.set(t, into);
    }
  }
  return [...merged.values()].sort((a, b) => a.t - b.t);
}
