/**
 * The pool workload: two workers on one port under HTTP load, upgraded one after the other,
 * `takeover-server --workers 2` (SIGUSR2 to its supervisor) beside `pm2 reload` in cluster mode
 * (`-i 2`). The load runs in this process (tools/pool-load.ts): keep-alive clients requesting in
 * a loop, and new connections at a steady rate, each answered with the pid that served it.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { KeepAliveClient, NewConnections } from '../tools/pool-load.js';
import type { BenchContext } from './systems.js';
import { freePort, waitForLine, withTimeout } from './systems.js';

export interface PoolPlan {
  /** Long-lived keep-alive connections. */
  connections: number;
  /** New connections per second. */
  newRate: number;
  durationS: number;
  switchAfterS: number;
}

export interface PoolRun {
  system: 'socket-takeover' | 'pm2 reload';
  workers: number;
  connections: number;
  error?: string;
  /** Keep-alive connections closed by the server, and their requests left unanswered. */
  cut?: number;
  lost?: number;
  /** New connections: attempted, refused (ECONNREFUSED), failed otherwise. */
  attempted?: number;
  refused?: number;
  failed?: number;
  /** Each worker's share of the new connections, its successive processes counted together. */
  shares?: number[];
  /** From the signal (or `pm2 reload`) to the whole pool upgraded. */
  switchMs?: number;
}

const WORKERS = 2;
const HOST = '127.0.0.1';
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

interface PoolScenario {
  start(): Promise<number>;
  /** Each worker's pid now, in worker order. */
  pids(): Promise<number[]>;
  upgrade(): Promise<void>;
  stop(): Promise<void>;
}

function takeoverPool(ctx: BenchContext): PoolScenario {
  const dir = join(ctx.paths.tmp, `pool-${process.hrtime.bigint()}`);
  let supervisor: ReturnType<BenchContext['groups']['spawn']> | undefined;
  const statusPid = (i: number): number => {
    const file = join(dir, `worker-${i}.json`);
    return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as { pid: number }).pid : 0;
  };
  // The workers run in their own process groups: they outlive a supervisor killed by the run.
  const killWorkers = (): void => {
    for (let i = 0; i < WORKERS; i++) {
      const pid = statusPid(i);
      // 0 would be this process's own group.
      if (pid <= 0) continue;
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  };
  ctx.cleanups.add(killWorkers);
  const message = (line: string): string | undefined => {
    try {
      return (JSON.parse(line) as { msg?: string }).msg;
    } catch {
      return undefined;
    }
  };
  return {
    async start() {
      const port = await freePort();
      const args = ['--workers', String(WORKERS), '-p', String(port), '-a', HOST, '-t', dir, '--app', 'http', '--log-format', 'json'];
      supervisor = ctx.groups.spawn('takeover-server --workers', process.execPath, [ctx.paths.serverScript, ...args]);
      await waitForLine(
        supervisor,
        (line) => (message(line)?.startsWith(`Worker ${WORKERS - 1}: pid`) ? true : undefined),
        'the pool ready',
      );
      return port;
    },
    async pids() {
      return Array.from({ length: WORKERS }, (_, i) => statusPid(i));
    },
    async upgrade() {
      const done = waitForLine(
        supervisor!,
        (line) => {
          const msg = message(line);
          if (msg?.startsWith('Upgrade stopped')) throw new Error(msg);
          return msg?.startsWith('Pool upgraded') ? true : undefined;
        },
        'the pool upgraded',
      );
      ctx.groups.signal(supervisor!, 'SIGUSR2');
      await done;
    },
    async stop() {
      if (supervisor) {
        ctx.groups.signal(supervisor, 'SIGTERM');
        await withTimeout(supervisor.exited, 15_000, 'the pool stopped').catch(() => ctx.groups.kill(supervisor!));
      }
      killWorkers();
      ctx.cleanups.delete(killWorkers);
    },
  };
}

function pm2Pool(ctx: BenchContext): PoolScenario {
  const home = join(ctx.paths.tmp, `pm2-pool-${process.hrtime.bigint()}`);
  const env = { ...process.env, PM2_HOME: home };
  const name = 'bench-pool';
  const pm2 = async (args: string[]): Promise<string> => {
    const { exit, stdout, child } = await ctx.groups.run(`pm2 ${args[0]}`, ctx.paths.pm2, args, { env }, 60_000);
    if (exit.code !== 0)
      throw new Error(`pm2 ${args.join(' ')} failed (${exit.signal ?? `exit code ${exit.code}`}): ${child.stderrTail()}`);
    return stdout;
  };
  // Synchronous, so that it also runs from the bench's 'exit' handler: the daemon is not our child.
  const kill = (): void => {
    spawnSync(ctx.paths.pm2, ['kill'], { env, stdio: 'ignore', timeout: 15_000 });
  };
  ctx.cleanups.add(kill);
  return {
    async start() {
      const port = await freePort();
      await pm2(['start', ctx.paths.echoScript, '--name', name, '-i', String(WORKERS), '--', String(port), HOST, 'http']);
      for (;;) {
        const pids = await this.pids();
        if (pids.length === WORKERS && pids.every((p) => p > 0)) break;
        await sleep(100);
      }
      return port;
    },
    async pids() {
      const list = JSON.parse(await pm2(['jlist'])) as { pm_id: number; pid: number }[];
      return list.sort((a, b) => a.pm_id - b.pm_id).map((p) => p.pid);
    },
    async upgrade() {
      await pm2(['reload', name]);
    },
    async stop() {
      kill();
      ctx.cleanups.delete(kill);
    },
  };
}

export async function runPool(ctx: BenchContext, system: PoolRun['system'], plan: PoolPlan): Promise<PoolRun> {
  const run: PoolRun = { system, workers: WORKERS, connections: plan.connections };
  const scenario = system === 'socket-takeover' ? takeoverPool(ctx) : pm2Pool(ctx);
  const clients: KeepAliveClient[] = [];
  let fresh: NewConnections | undefined;
  try {
    const port = await scenario.start();
    const before = await scenario.pids();
    for (let i = 0; i < plan.connections; i++) clients.push(new KeepAliveClient(HOST, port, 50));
    fresh = new NewConnections(HOST, port, 1000 / plan.newRate);
    const started = performance.now();
    await sleep(plan.switchAfterS * 1000);
    const switchAt = performance.now();
    await scenario.upgrade();
    run.switchMs = performance.now() - switchAt;
    const after = await scenario.pids();
    await sleep(started + plan.durationS * 1000 - performance.now());
    await fresh.stop();
    await Promise.all(clients.map((c) => c.drain()));
    run.cut = clients.filter((c) => c.cut).length;
    run.lost = clients.reduce((sum, c) => sum + c.lost, 0);
    run.refused = fresh.refused;
    run.failed = fresh.failures.length;
    run.attempted = [...fresh.servedBy.values()].reduce((a, b) => a + b, 0) + run.refused + run.failed;
    run.shares = fresh.shares(before.map((pid, i) => [pid, after[i]!]));
  } catch (error) {
    run.error = error instanceof Error ? error.message : String(error);
  } finally {
    for (const client of clients) client.close();
    await fresh?.stop();
    await scenario.stop();
  }
  return run;
}

export function describePoolRun(run: PoolRun): string {
  const head = `  ${run.system.padEnd(16)}`;
  if (run.error && run.shares === undefined) return `${head}failed: ${run.error}`;
  return (
    `${head}cut ${run.cut}/${run.connections}, lost ${run.lost}, new connections refused ${run.refused} and failed ${run.failed} ` +
    `of ${run.attempted}; shares ${run.shares!.map((s) => `${Math.round(s * 100)}%`).join(' / ')}; ` +
    `upgrade ${Math.round(run.switchMs ?? 0)} ms` +
    (run.error ? ` [${run.error}]` : '')
  );
}

export function poolSection(runs: PoolRun[], plan: PoolPlan): string[] {
  if (runs.length === 0) return [];
  const row = (r: PoolRun) =>
    r.shares === undefined
      ? `| ${r.system} | failed: ${r.error} | | | | |`
      : `| ${r.system} | ${r.cut} / ${r.connections} | ${r.lost} | ${r.refused} / ${r.attempted} | ${r.shares.map((s) => `${Math.round(s * 100)}%`).join(' / ')} | ${Math.round(r.switchMs ?? 0)} |`;
  // Two line breaks: the section before ends without one.
  return [
    '',
    '',
    '### A pool of 2 workers, upgraded worker by worker',
    '',
    '| system | cut | requests lost | new connections refused | share of new connections per worker | upgrade ms |',
    '| --- | --- | --- | --- | --- | --- |',
    ...runs.map(row),
    '',
    `${plan.connections} keep-alive HTTP connections each requesting \`GET /\` every 50 ms, and ${plan.newRate} new ` +
      `connections per second (one request each), for ${plan.durationS} s; the upgrade starts ${plan.switchAfterS} s in: ` +
      '`kill -USR2` to the `takeover-server --workers 2` supervisor, or `pm2 reload` of a `pm2 start -i 2` cluster. ' +
      "cut: keep-alive connections closed by the server; lost: their requests never answered. A worker's share counts " +
      'the new connections its old and its new process answered.',
  ];
}
