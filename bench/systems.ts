/**
 * The systems under test, each driven through the same steps: start the server, start the
 * load, switch processes in the middle (takeover, `pm2 reload`, or stop-then-start), let the
 * load finish, stop. Plus the floor: the C program that only moves the fds.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import type { TimelineBucket } from '../tools/echo-load.js';
import type { TakeoverStats } from 'socket-takeover';
import { PROBE_FILE_ENV, PROBE_START_SIGNAL, type LoopProbe } from './loop-probe.js';
import { mergeTimelines, startAppLoad, startLoad, type AppLoadResult, type LoadPlan, type LoadResult } from './load.js';
import { now, type Child, type ProcessGroups } from './procs.js';
import { ProcWatch, USER_HZ, childrenOf } from './watch.js';

export interface Paths {
  root: string;
  tmp: string;
  serverScript: string;
  clientScript: string;
  echoScript: string;
  /** bench/loop-probe.ts, preloaded into the echo runs' takeover-server (control, and the old one). */
  probeScript: string;
  pm2: string;
  floorSource: string;
}

export interface BenchContext {
  paths: Paths;
  groups: ProcessGroups;
  /** Synchronous clean-ups still owed if the run dies now (pm2's daemon is not our child). */
  cleanups: Set<() => void>;
  log: (line: string) => void;
}

export interface Workload {
  intervalMs: number;
  durationS: number;
  /** Seconds after the load starts (connections are all open after one interval). */
  switchAfterS: number;
  newRate: number;
  perClient: number;
  perSourceAddress: number;
  clientNice: number;
}

/**
 * `control`: takeover-server under the same load with no switch at all, run just before
 * socket-takeover at each size: the noise of this machine and this load, which the takeover's
 * pauses are compared with.
 */
export type SystemName = 'control' | 'socket-takeover' | 'pm2 reload' | 'plain restart';

/** The HTTP or WebSocket app and its clients' settings; absent for the echo workload. */
export type AppPlan = NonNullable<LoadPlan['app']>;

export interface SwitchResult {
  /** Times in ms after the switch began (the successor spawned, `pm2 reload` run, SIGTERM sent). */
  newServingMs: number;
  oldGoneMs: number;
  /** socket-takeover: from the commit (the old process's `stats.committedAt`) to the old process gone. */
  oldGoneAfterCommitMs?: number;
  /** Plain restart: no process listening between the old one's exit and the new one's listen. */
  listenerGapMs?: number;
  predecessor?: TakeoverStats;
  successor?: TakeoverStats;
  oldPid: number;
  newPid: number;
}

export interface SystemRun {
  system: SystemName;
  /** Echo runs: which round of --repeat (from 1). */
  round?: number;
  /** Absent: the echo workload. */
  workload?: AppPlan['workload'];
  connections: number;
  error?: string;
  load?: LoadResult;
  /** What the HTTP or WebSocket clients saw. */
  app?: AppLoadResult;
  /** Merged client timeline, t in ms from the switch. */
  timeline?: TimelineBucket[];
  switch?: SwitchResult;
  peakRssKb?: { old: number; new: number };
  /** Shares of all cores over the run: everything busy, and busy with processes not ours. */
  machine: { loadavg1: number; busy: number; others: number };
  /**
   * Control and socket-takeover echo runs: the (old) server's event loop sampled from the
   * switch's start (or the same instant into the control's load) until it exited; the control's
   * series stops at the load's end.
   */
  loopProbe?: LoopProbe;
  /** Every process of the run (servers, clients, pm2, this one): peak RSS and CPU seconds used. */
  processes?: { label: string; pid: number; peakRssKb: number; cpuS: number }[];
}

interface Scenario {
  /** Starts the server; resolves with its port once it accepts connections. */
  start(): Promise<number>;
  switchOver(startedAt: number): Promise<SwitchResult>;
  stop(): Promise<void>;
  /** With the loop probe: starts it at the switch's start; read() once the server is gone. */
  probe?: { start(): void; read(): LoopProbe | undefined };
}

const START_TIMEOUT_MS = 30_000;
/** The control's probe figures kept past the load's end, so the window of a takeover that ends with the load still finds its match. */
const PROBE_SERIES_SLACK_MS = 1000;
const SWITCH_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 5_000;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves with the first stdout line `match` accepts; rejects if the process exits first. */
export function waitForLine<T>(child: Child, match: (line: string, at: number) => T | undefined, what: string): Promise<T> {
  return withTimeout(
    new Promise<T>((resolve, reject) => {
      child.onLine((line, at) => {
        const value = match(line, at);
        if (value !== undefined) resolve(value);
      });
      void child.exited.then((exit) =>
        reject(new Error(`${child.name} exited (${exit.signal ?? `code ${exit.code}`}) before ${what}: ${child.stderrTail()}`)),
      );
    }),
    START_TIMEOUT_MS,
    what,
  );
}

function parseJson(line: string): Record<string, unknown> | undefined {
  if (!line.startsWith('{')) return undefined;
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

/** A port free right now; the plain servers need one fixed port across their two processes. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

async function stopChild(ctx: BenchContext, child: Child): Promise<void> {
  ctx.groups.signal(child, 'SIGTERM');
  await withTimeout(child.exited, STOP_TIMEOUT_MS, `${child.name} exit`).catch(() => ctx.groups.kill(child));
  // Whatever the process left in its group goes too.
  ctx.groups.kill(child);
}

/** `probed`: the first server samples its loop with bench/loop-probe.ts (the successor never does). */
function takeoverScenario(ctx: BenchContext, app: AppPlan | undefined, probed = false): Scenario {
  const id = process.hrtime.bigint();
  const channel = join(ctx.paths.tmp, `takeover-${id}.sock`);
  const probeFile = join(ctx.paths.tmp, `loop-probe-${id}.json`);
  const { serverScript } = ctx.paths;
  let old: Child | undefined;
  let successor: Child | undefined;
  const serverArgs = ['-q', '--log-format', 'json', ...(app ? ['--app', app.workload] : [])];
  return {
    async start() {
      old = ctx.groups.spawn(
        'takeover-server',
        process.execPath,
        [...(probed ? ['--import', ctx.paths.probeScript] : []), serverScript, '-a', '127.0.0.1', '-p', '0', '-t', channel, ...serverArgs],
        probed ? { env: { ...process.env, [PROBE_FILE_ENV]: probeFile } } : {},
      );
      let port = 0;
      await waitForLine(
        old,
        (line) => {
          const record = parseJson(line);
          if (typeof record?.port === 'number') port = record.port;
          // The channel line comes once ready() resolved, after the TCP listener's.
          return typeof record?.msg === 'string' && record.msg.startsWith('Starting Takeover channel') ? true : undefined;
        },
        'the server listening',
      );
      return port;
    },
    async switchOver(startedAt) {
      const predecessor = waitForLine(
        old!,
        (line, at) => {
          const stats = parseJson(line)?.stats as TakeoverStats | undefined;
          return stats?.role === 'predecessor' ? { stats, at } : undefined;
        },
        'the predecessor summary line',
      );
      successor = ctx.groups.spawn('takeover-server -T', process.execPath, [serverScript, '-T', channel, ...serverArgs]);
      const successorLine = waitForLine(
        successor,
        (line, at) => {
          const stats = parseJson(line)?.stats as TakeoverStats | undefined;
          return stats?.role === 'successor' ? { stats, at } : undefined;
        },
        'the successor summary line',
      );
      const [pred, succ, oldExit] = await withTimeout(
        Promise.all([predecessor, successorLine, old!.exited]),
        SWITCH_TIMEOUT_MS,
        'the takeover',
      );
      // committedAt is the old process's performance.timeOrigin + performance.now() at the commit,
      // the same formula as now() here: epoch ms, each process's origin read from the machine's
      // realtime clock at its start, so the two subtract directly.
      const { committedAt } = pred.stats;
      return {
        newServingMs: succ.at - startedAt,
        oldGoneMs: oldExit.at - startedAt,
        oldGoneAfterCommitMs: typeof committedAt === 'number' ? oldExit.at - committedAt : undefined,
        predecessor: pred.stats,
        successor: succ.stats,
        oldPid: old!.pid,
        newPid: successor.pid,
      };
    },
    async stop() {
      for (const child of [successor, old]) if (child) await stopChild(ctx, child);
    },
    ...(probed
      ? {
          probe: {
            start: () => ctx.groups.signal(old!, PROBE_START_SIGNAL),
            read: () => {
              if (!existsSync(probeFile)) return undefined;
              const probe = JSON.parse(readFileSync(probeFile, 'utf8')) as LoopProbe;
              rmSync(probeFile);
              return probe;
            },
          },
        }
      : {}),
  };
}

function pm2Scenario(ctx: BenchContext, watch: ProcWatch, app: AppPlan | undefined): Scenario {
  const home = join(ctx.paths.tmp, `pm2-${process.hrtime.bigint()}`);
  const env = { ...process.env, PM2_HOME: home };
  const name = 'bench-echo';
  let daemon = 0;
  const pm2 = async (args: string[]): Promise<void> => {
    const { exit, stdout, child } = await ctx.groups.run(`pm2 ${args[0]}`, ctx.paths.pm2, args, { env }, SWITCH_TIMEOUT_MS);
    if (exit.code !== 0)
      throw new Error(`pm2 ${args.join(' ')} failed (${exit.signal ?? `exit code ${exit.code}`}): ${child.stderrTail() || stdout}`);
  };
  const daemonPid = (): number => {
    const file = join(home, 'pm2.pid');
    return existsSync(file) ? Number(readFileSync(file, 'utf8').trim()) : 0;
  };
  // A pid is only signalled while its environment still names this run's PM2_HOME: by then the
  // daemon may be gone and its pid reused by a process that is not ours.
  const ours = (pid: number): boolean => {
    try {
      return readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(`PM2_HOME=${home}`);
    } catch {
      return false;
    }
  };
  // `pm2 kill` stops the daemon and its workers; SIGKILL covers a daemon that does not answer.
  const killDaemon = (): void => {
    spawnSync(ctx.paths.pm2, ['kill'], { env, stdio: 'ignore', timeout: 15_000 });
    const pid = daemonPid() || daemon;
    if (pid === 0) return;
    for (const target of [...childrenOf(pid), pid]) {
      if (!ours(target)) continue;
      try {
        process.kill(target, 'SIGKILL');
      } catch {
        // Gone between the check and the kill.
      }
    }
  };
  ctx.cleanups.add(killDaemon);
  let port = 0;
  return {
    async start() {
      port = await freePort();
      await pm2(['start', ctx.paths.echoScript, '--name', name, '-i', '1', '--', String(port), '127.0.0.1', app?.workload ?? 'echo']);
      daemon = daemonPid();
      if (daemon === 0) throw new Error(`pm2 start left no ${join(home, 'pm2.pid')}`);
      watch.add(daemon, 'pm2 daemon');
      watch.addChildrenOf(daemon, 'pm2 worker');
      await withTimeout(waitForPort(port), START_TIMEOUT_MS, `pm2's worker listening on ${port}`);
      return port;
    },
    async switchOver(startedAt) {
      const olds = childrenOf(daemon);
      if (olds.length === 0) throw new Error(`pm2's daemon (pid ${daemon}) has no worker to reload`);
      await pm2(['reload', name]);
      const reloaded = now();
      const news = childrenOf(daemon).filter((pid) => !olds.includes(pid));
      const gone = await withTimeout(Promise.all(olds.map((pid) => watch.gone(pid))), SWITCH_TIMEOUT_MS, 'the old pm2 worker exit');
      return {
        newServingMs: reloaded - startedAt,
        oldGoneMs: Math.max(...gone) - startedAt,
        oldPid: olds[0]!,
        newPid: news[0] ?? 0,
      };
    },
    async stop() {
      // Synchronous is fine here, the load is over; the daemon must be gone before the next run.
      killDaemon();
      ctx.cleanups.delete(killDaemon);
    },
  };
}

function restartScenario(ctx: BenchContext, app: AppPlan | undefined): Scenario {
  let port = 0;
  let current: Child | undefined;
  const startEcho = async (): Promise<{ child: Child; listeningAt: number }> => {
    const child = ctx.groups.spawn('echo-server', process.execPath, [
      ctx.paths.echoScript,
      String(port),
      '127.0.0.1',
      app?.workload ?? 'echo',
    ]);
    current = child;
    const listeningAt = await waitForLine(
      child,
      (line, at) => (line.includes(' listening on ') ? at : undefined),
      'the echo server listening',
    );
    return { child, listeningAt };
  };
  return {
    async start() {
      port = await freePort();
      await startEcho();
      return port;
    },
    async switchOver(startedAt) {
      const old = current!;
      ctx.groups.signal(old, 'SIGTERM');
      const exit = await withTimeout(old.exited, SWITCH_TIMEOUT_MS, 'the old server exit');
      const { child, listeningAt } = await startEcho();
      return {
        newServingMs: listeningAt - startedAt,
        oldGoneMs: exit.at - startedAt,
        listenerGapMs: listeningAt - exit.at,
        oldPid: old.pid,
        newPid: child.pid,
      };
    },
    async stop() {
      if (current) await stopChild(ctx, current);
    },
  };
}

async function waitForPort(port: number): Promise<void> {
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
}

export async function runSystem(
  ctx: BenchContext,
  system: SystemName,
  connections: number,
  work: Workload,
  subnet: number,
  app?: AppPlan,
): Promise<SystemRun> {
  const watch = new ProcWatch();
  watch.add(process.pid, 'bench');
  ctx.groups.onSpawn = (child) => watch.add(child.pid, child.name);
  const machineLoad = loadavg()[0]!;
  const scenario =
    system === 'socket-takeover' || system === 'control'
      ? takeoverScenario(ctx, app, !app)
      : system === 'pm2 reload'
        ? pm2Scenario(ctx, watch, app)
        : restartScenario(ctx, app);
  const run: Omit<SystemRun, 'machine'> = { system, connections, ...(app ? { workload: app.workload } : {}) };
  let load: { clients: Child[]; startedAt: number; done: Promise<LoadResult | AppLoadResult> } | undefined;
  let machine = { busy: 0, others: 0 };
  try {
    const port = await scenario.start();
    // Always the loopback address: the load generators never aim at anything but this machine.
    const plan: LoadPlan = { host: '127.0.0.1', port, connections, subnet, ...work, app };
    load = app ? startAppLoad(plan, ctx.groups, ctx.paths.clientScript) : startLoad(plan, ctx.groups, ctx.paths.clientScript);
    await sleep(load.startedAt + work.switchAfterS * 1000 - now());
    const switchAt = now();
    scenario.probe?.start();
    const switched = system === 'control' ? undefined : scenario.switchOver(switchAt);
    // A failed switch still lets the clients finish, so the run says what they saw.
    const [sw, result] = await Promise.allSettled([switched, withTimeout(load.done, (work.durationS + 60) * 1000, 'the load')]);
    if (result.status === 'rejected') throw result.reason;
    if ('clientRuns' in result.value) {
      run.app = result.value;
    } else {
      run.load = result.value;
      run.timeline = mergeTimelines(result.value.clients, switchAt);
    }
    if (sw.status === 'rejected') throw sw.reason;
    if (sw.value) {
      run.switch = sw.value;
      const rss = (pid: number): number => watch.all.find((w) => w.pid === pid)?.peakRssKb ?? 0;
      run.peakRssKb = { old: rss(sw.value.oldPid), new: rss(sw.value.newPid) };
    }
  } catch (error) {
    run.error = error instanceof Error ? error.message : String(error);
  } finally {
    for (const client of load?.clients ?? []) ctx.groups.kill(client);
    // Before the stop: `pm2 kill` is not part of the run, and would count as someone else's CPU.
    machine = watch.stop();
    run.processes = watch.all.map((w) => ({
      label: w.label,
      pid: w.pid,
      peakRssKb: w.peakRssKb,
      cpuS: (w.cpuTicks - w.cpuTicksAtStart) / USER_HZ,
    }));
    ctx.groups.onSpawn = undefined;
    await scenario.stop().catch((error: unknown) => {
      run.error ??= `stopping: ${error instanceof Error ? error.message : String(error)}`;
    });
    const probe = scenario.probe?.read();
    if (probe) {
      // Past the load's end the control only idles: no window compared reaches there.
      const loadMs = (work.durationS - work.switchAfterS) * 1000;
      run.loopProbe = { ...probe, series: system === 'control' ? probe.series.filter((s) => s.ms <= loadMs + PROBE_SERIES_SLACK_MS) : [] };
    }
  }
  return { ...run, machine: { loadavg1: machineLoad, ...machine } };
}

export interface FloorRun {
  connections: number;
  error?: string;
  /** Median of the rounds. */
  transferMs?: number;
  minMs?: number;
  samplesMs?: number[];
  batches?: number;
  fdsPerBatch?: number;
  /** Batches in flight before the sender waits for an acknowledgement. */
  window?: number;
}

export const FLOOR_ROUNDS = 7;

/** Compiles floor.c with the machine's cc into the run's temp dir. */
export function buildFloor(ctx: BenchContext): string {
  const binary = join(ctx.paths.tmp, 'floor');
  const cc = spawnSync('cc', ['-O2', '-Wall', '-o', binary, ctx.paths.floorSource], { encoding: 'utf8', timeout: 60_000 });
  if (cc.error) throw new Error(`cannot run cc to build the C floor: ${cc.error.message}`);
  if (cc.status !== 0) throw new Error(`cc failed to build ${ctx.paths.floorSource}: ${cc.stderr}`);
  return binary;
}

export async function runFloor(ctx: BenchContext, binary: string, connections: number): Promise<FloorRun> {
  const { exit, stdout, child } = await ctx.groups.run('floor', binary, [String(connections), String(FLOOR_ROUNDS)], {}, 120_000);
  const result = parseJson(stdout.trim().split('\n').pop() ?? '');
  if (exit.code !== 0 || result === undefined || typeof result.medianMs !== 'number') {
    const why = typeof result?.error === 'string' ? result.error : child.stderrTail() || `exit code ${exit.code}`;
    return { connections, error: why };
  }
  return {
    connections,
    transferMs: result.medianMs,
    minMs: result.minMs as number,
    samplesMs: result.transferMs as number[],
    batches: result.batches as number,
    fdsPerBatch: result.fdsPerBatch as number,
    window: result.window as number,
  };
}

export interface ThroughputRun {
  connections: number;
  durationS: number;
  /** Echoes per second of each round, in the order run (the two servers alternate). */
  library: number[];
  plain: number[];
  error?: string;
}

/**
 * Steady state, no switch: `takeover-server` and the plain Node `net` echo server
 * (bench/echo-server.ts), each under connections that send their next message as soon as the
 * echo arrives. The two alternate, round after round, so a change in the machine's load falls
 * on both.
 */
export async function runThroughput(
  ctx: BenchContext,
  connections: number,
  durationS: number,
  rounds: number,
  subnet: number,
): Promise<ThroughputRun> {
  const run: ThroughputRun = { connections, durationS, library: [], plain: [] };
  try {
    for (let round = 0; round < rounds; round++) {
      for (const which of ['library', 'plain'] as const) {
        const scenario = which === 'library' ? takeoverScenario(ctx, undefined) : restartScenario(ctx, undefined);
        try {
          const port = await scenario.start();
          const plan: LoadPlan = {
            host: '127.0.0.1',
            port,
            connections,
            subnet,
            intervalMs: 0,
            durationS,
            newRate: 0,
            perClient: connections,
            perSourceAddress: connections,
            clientNice: 0,
          };
          const load = startLoad(plan, ctx.groups, ctx.paths.clientScript);
          const result = await withTimeout(load.done, (durationS + 30) * 1000, 'the throughput load');
          if (result.cut > 0 || result.lost > 0) throw new Error(`${which}: ${result.cut} cut, ${result.lost} lost`);
          run[which].push(result.clients.reduce((total, c) => total + c.summary.echoesPerSec, 0));
        } finally {
          await scenario.stop();
        }
      }
    }
  } catch (error) {
    run.error = error instanceof Error ? error.message : String(error);
  }
  return run;
}
