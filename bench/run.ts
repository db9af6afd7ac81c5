#!/usr/bin/env node
/**
 * `npm run bench`: the same echo workload against socket-takeover, `pm2 reload` (cluster mode)
 * and a plain restart, one after the other, with one switch of processes in the middle of each;
 * plus the C floor of the fd transfer; then the same three systems serving the HTTP keep-alive
 * and the WebSocket apps of `takeover-server --app http|ws` to their own clients. Writes bench/results/<time>.json, and latest.json,
 * latest.md and latest.svg next to it (all untracked). Only with --write-docs does it replace the
 * section of BENCHMARKS.md between its markers and docs/bench-pause.svg: the committed figures
 * change when someone decides to publish a run, not on every run.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ProcessGroups, now } from './procs.js';
import {
  TARGET_SIZE,
  collectWarnings,
  evaluateTargets,
  renderSection,
  targetLines,
  writeBenchmarksMd,
  type BenchResults,
  type MachineInfo,
  type Skipped,
} from './report.js';
import { pauseChart } from './svg.js';
import { describePoolRun, poolSection, runPool, type PoolPlan, type PoolRun } from './pool.js';
import {
  buildFloor,
  runFloor,
  runThroughput,
  runSystem,
  type AppPlan,
  type BenchContext,
  type FloorRun,
  type Paths,
  type SystemName,
  type SystemRun,
  type ThroughputRun,
  type Workload,
} from './systems.js';

/** Each run takes a subnet of source addresses (127.0.N.0/24), and the default bench uses about 20. */
const MAX_REPEAT = 20;

const USAGE = `Usage: npm run bench -- [OPTION...]
    --sizes N,N...         Long-lived connections per run (default 1000,10000,max; max: the most
                           one server process holds under RLIMIT_NOFILE, in thousands; a size
                           over it, such as 100000 here, is reported as not run, with the reason)
    --systems LIST         Any of control,takeover,pm2,restart,floor (default: all); control is
                           takeover-server under the same load with no switch, run before takeover
    --interval MS          Each connection's pause after an echo before its next message (default 2000)
    --duration S           Load duration of each run (default 12)
    --switch-after S       When the switch starts, in seconds into the load (default 5)
    --repeat N             Echo runs: N rounds at each size of control then takeover, alternating
                           (pm2 and the restart run in the first round only), each takeover judged
                           against the control just before it; the report gives every round and,
                           per target, the rounds that met it (default 1, at most ${MAX_REPEAT})
    --new-rate N           New short connections per second (default 100)
    --per-client N         Most connections per client process (default 10000)
    --per-source N         Most connections per source address (default 1000)
    --client-nice N        Nice value of the client processes (default -10, needs root or
                           CAP_SYS_NICE; 0 to leave them at the servers' priority)
    --workloads LIST       Any of echo,http,ws,pool,throughput (default: all). pool: 2 workers under
                           HTTP load upgraded one by one, takeover-server --workers 2 beside pm2
                           reload -i 2; throughput: steady-state echoes per second of
                           takeover-server and of a plain Node net echo server
    --throughput-connections N  Connections of the throughput runs (default 100)
    --throughput-duration S     Seconds of each throughput round (default 3)
    --throughput-rounds N       Rounds of each server, alternating (default 3)
    --app-sizes N,N...     HTTP clients, and WebSocket clients, per run (default 1000)
    --app-duration S       Load duration of each HTTP and WebSocket run (default 10)
    --app-interval MS      Each HTTP client's pause after an answer before its next request, and
                           each WebSocket client's after an echo before its next message (default 250)
    --http-delay MS        The HTTP handler answers after a random delay up to MS (default 20)
    --ws-push MS           The WebSocket server pushes a numbered message every MS (default 250)
    --hang-timeout MS      An HTTP request or a WebSocket echo unanswered this long is hung (default 5000)
    --write-docs           Also replace the figures in BENCHMARKS.md and docs/bench-pause.svg
-h, --help                 This help
`;

const SYSTEM_FLAGS: Record<string, SystemName | 'floor'> = {
  control: 'control',
  takeover: 'socket-takeover',
  pm2: 'pm2 reload',
  restart: 'plain restart',
  floor: 'floor',
};

/** The pool workload is short: it shows what a rolling upgrade does to connections, not speed at scale. */
const POOL_PLAN: PoolPlan = { connections: 200, newRate: 50, durationS: 10, switchAfterS: 3 };

const CHART_BEFORE_MS = 2000;
const CHART_AFTER_MS = 3000;

/** fds a server process needs beyond its connections: listeners, channel, stdio, Node's own. */
const FD_HEADROOM = 100;

/** `max` in --sizes: resolved once RLIMIT_NOFILE is known. */
type Size = number | 'max';

interface Config {
  sizes: Size[];
  systems: (SystemName | 'floor')[];
  /** Rounds of control then takeover at each echo size. */
  repeat: number;
  workload: Workload;
  /** Echo runs at `sizes` unless left out of --workloads. */
  echo: boolean;
  apps: AppPlan[];
  appSizes: number[];
  appWorkload: Workload;
  pool: boolean;
  writeDocs: boolean;
  /** Steady-state throughput comparison, unless left out of --workloads. */
  throughput: { connections: number; durationS: number; rounds: number } | undefined;
}

function positive(text: string, flag: string): number {
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${flag} must be a positive number, not '${text}'`);
  return value;
}

function niceValue(text: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < -20 || value > 19)
    throw new Error(`--client-nice must be an integer from -20 to 19, not '${text}'`);
  return value;
}

function parseCommandLine(args: string[]): Config | 'help' {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      sizes: { type: 'string', default: '1000,10000,max' },
      systems: { type: 'string', default: 'control,takeover,pm2,restart,floor' },
      interval: { type: 'string', default: '2000' },
      duration: { type: 'string', default: '12' },
      'switch-after': { type: 'string', default: '5' },
      repeat: { type: 'string', default: '1' },
      'new-rate': { type: 'string', default: '100' },
      'per-client': { type: 'string', default: '10000' },
      'per-source': { type: 'string', default: '1000' },
      'client-nice': { type: 'string', default: '-10' },
      workloads: { type: 'string', default: 'echo,http,ws,pool,throughput' },
      'throughput-connections': { type: 'string', default: '100' },
      'throughput-duration': { type: 'string', default: '3' },
      'throughput-rounds': { type: 'string', default: '3' },
      'app-sizes': { type: 'string', default: '1000' },
      'app-duration': { type: 'string', default: '10' },
      'app-interval': { type: 'string', default: '250' },
      'http-delay': { type: 'string', default: '20' },
      'ws-push': { type: 'string', default: '250' },
      'hang-timeout': { type: 'string', default: '5000' },
      'write-docs': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return 'help';
  const sizes = values.sizes
    .split(',')
    .map((s): Size => (s.trim() === 'max' ? 'max' : Math.round(positive(s.replace(/_/g, ''), '--sizes'))));
  const systems = values.systems.split(',').map((s) => {
    const system = SYSTEM_FLAGS[s.trim()];
    if (!system) throw new Error(`unknown system '${s}' in --systems (expected ${Object.keys(SYSTEM_FLAGS).join(', ')})`);
    return system;
  });
  const workload: Workload = {
    intervalMs: Math.round(positive(values.interval, '--interval')),
    durationS: positive(values.duration, '--duration'),
    switchAfterS: positive(values['switch-after'], '--switch-after'),
    newRate: positive(values['new-rate'], '--new-rate'),
    perClient: Math.round(positive(values['per-client'], '--per-client')),
    perSourceAddress: Math.round(positive(values['per-source'], '--per-source')),
    clientNice: niceValue(values['client-nice']),
  };
  if (workload.switchAfterS * 1000 < workload.intervalMs) {
    throw new Error('--switch-after must leave one --interval for every connection to open');
  }
  if (workload.switchAfterS + 2 > workload.durationS) throw new Error('--duration must run at least 2 s past --switch-after');
  const repeat = Number(values.repeat);
  if (!Number.isInteger(repeat) || repeat < 1 || repeat > MAX_REPEAT)
    throw new Error(`--repeat must be a whole number from 1 to ${MAX_REPEAT}, not '${values.repeat}'`);
  const workloads = values.workloads.split(',').map((w) => w.trim());
  for (const w of workloads)
    if (!['echo', 'http', 'ws', 'pool', 'throughput'].includes(w))
      throw new Error(`unknown workload '${w}' in --workloads (expected echo, http, ws, pool, throughput)`);
  const appWorkload: Workload = {
    ...workload,
    intervalMs: Math.round(positive(values['app-interval'], '--app-interval')),
    durationS: positive(values['app-duration'], '--app-duration'),
    newRate: 0,
  };
  if (appWorkload.switchAfterS + 2 > appWorkload.durationS) throw new Error('--app-duration must run at least 2 s past --switch-after');
  const plan = {
    delayMs: Math.round(Number(values['http-delay'])),
    pushMs: Math.round(positive(values['ws-push'], '--ws-push')),
    hangMs: Math.round(positive(values['hang-timeout'], '--hang-timeout')),
  };
  if (!Number.isInteger(plan.delayMs) || plan.delayMs < 0) throw new Error(`--http-delay must be 0 or more, not '${values['http-delay']}'`);
  return {
    sizes,
    systems,
    repeat,
    workload,
    echo: workloads.includes('echo'),
    apps: (['http', 'ws'] as const).filter((w) => workloads.includes(w)).map((w) => ({ workload: w, ...plan })),
    appSizes: values['app-sizes'].split(',').map((s) => Math.round(positive(s.replace(/_/g, ''), '--app-sizes'))),
    appWorkload,
    pool: workloads.includes('pool'),
    writeDocs: values['write-docs'],
    throughput: workloads.includes('throughput')
      ? {
          connections: Math.round(positive(values['throughput-connections'], '--throughput-connections')),
          durationS: positive(values['throughput-duration'], '--throughput-duration'),
          rounds: Math.round(positive(values['throughput-rounds'], '--throughput-rounds')),
        }
      : undefined,
  };
}

function readNofileLimit(): { soft: number; hard: number } {
  const line = readFileSync('/proc/self/limits', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('Max open files'));
  const [soft, hard] = (line ?? '')
    .split(/\s{2,}/)
    .slice(1, 3)
    .map((v) => (v === 'unlimited' ? Infinity : Number(v)));
  return { soft: soft ?? Infinity, hard: hard ?? Infinity };
}

/** Node raises its soft limit to the hard one at start-up; whether the hard one can go higher, a shell tells. */
function canRaiseNofile(need: number): boolean {
  return spawnSync('sh', ['-c', `ulimit -n ${need}`], { stdio: 'ignore', timeout: 10_000 }).status === 0;
}

function machineInfo(): MachineInfo {
  return {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model.trim() ?? 'unknown CPU',
    kernel: release(),
    node: process.versions.node,
    rlimitNofile: readNofileLimit(),
    loadavgAtStart: loadavg()[0]!,
  };
}

function findPaths(tmp: string): Paths {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
  const paths: Paths = {
    root,
    tmp,
    serverScript: join(root, 'dist/cli/server.js'),
    clientScript: join(root, 'dist-dev/tools/load-client.js'),
    echoScript: join(root, 'dist-dev/bench/echo-server.js'),
    probeScript: join(root, 'dist-dev/bench/loop-probe.js'),
    pm2: join(root, 'node_modules/.bin/pm2'),
    floorSource: join(root, 'bench/floor.c'),
  };
  for (const file of [paths.serverScript, paths.clientScript, paths.echoScript, paths.probeScript, paths.floorSource]) {
    if (!existsSync(file)) throw new Error(`${relative(root, file)} is missing: run \`npm run build:dev\` (npm run bench does) first`);
  }
  if (!existsSync(paths.pm2)) throw new Error('node_modules/.bin/pm2 is missing: run `npm ci` first');
  return paths;
}

function describeRun(run: SystemRun, repeat: number): string {
  const head = `  ${repeat > 1 && run.round !== undefined ? `${run.round}: ` : ''}${run.system.padEnd(16)}`;
  const a = run.app;
  if (a) {
    const p = a.pauseMs;
    const counts =
      a.workload === 'http'
        ? `requests ${a.answered} answered, ${a.failed} failed, ${a.hung} hung`
        : `echoes ${a.answered}, pushes ${a.pushes}, lost ${a.lost}, dup ${a.duplicated}, reord ${a.reordered}, hung ${a.hung}`;
    return (
      `${head}${counts}; closed ${a.closed}, reopened ${a.reopened}, on first connection ${a.keptFirst}/${a.clients}; ` +
      `pause p50/p99/max ${p.p50.toFixed(1)}/${p.p99.toFixed(1)}/${p.max.toFixed(1)} ms` +
      (run.error ? ` [${run.error}]` : '')
    );
  }
  const l = run.load;
  if (!l) return `${head}failed: ${run.error}`;
  const p = l.connectionPauseMs;
  const sw = run.switch;
  return (
    `${head}kept ${l.kept}, cut ${l.cut}, lost ${l.lost}, short failed ${l.short.failed}/${l.short.attempted}, ` +
    `pause p50/p99/max ${p.p50.toFixed(1)}/${p.p99.toFixed(1)}/${p.max.toFixed(1)} ms, ` +
    (sw ? `old gone +${sw.oldGoneMs.toFixed(0)} ms, ` : '') +
    `client lag p99/max ${l.lagMs.toFixed(1)}/${l.lagMaxMs.toFixed(1)} ms, others' CPU ${Math.round(run.machine.others * 100)}%` +
    (run.error ? ` [${run.error}]` : '')
  );
}

const COLORS: Record<SystemName, string> = {
  control: '#7f7f7f',
  'socket-takeover': '#1f77b4',
  'pm2 reload': '#d62728',
  'plain restart': '#ff7f0e',
};

async function main(config: Config): Promise<void> {
  const started = now();
  const startedAt = new Date().toISOString();
  const tmp = mkdtempSync(join(tmpdir(), 'socket-takeover-bench-'));
  const groups = new ProcessGroups();
  const ctx: BenchContext = { paths: findPaths(tmp), groups, cleanups: new Set(), log: (line) => process.stdout.write(`${line}\n`) };
  // However the run ends, nothing it started outlives it.
  process.on('exit', () => {
    groups.killAll();
    for (const cleanup of ctx.cleanups) cleanup();
    rmSync(tmp, { recursive: true, force: true });
  });

  const machine = machineInfo();
  if (config.workload.perClient + FD_HEADROOM > machine.rlimitNofile.soft) {
    throw new Error(`--per-client ${config.workload.perClient} does not fit under RLIMIT_NOFILE ${machine.rlimitNofile.soft}`);
  }
  const skipped: Skipped[] = [];
  // The box's maximum: what one server process holds beside its own fds, in whole thousands.
  const { soft } = machine.rlimitNofile;
  const max = Number.isFinite(soft) ? Math.floor((soft - FD_HEADROOM) / 1000) * 1000 : undefined;
  if (config.sizes.includes('max') && max === undefined)
    skipped.push({ connections: 'max', reason: 'RLIMIT_NOFILE is unlimited here: there is no maximum to run; name a size instead' });
  const sizes = [...new Set(config.sizes.flatMap((s) => (s === 'max' ? (max === undefined ? [] : [max]) : [s])))].sort((a, b) => a - b);
  ctx.log(
    `socket-takeover benchmark: sizes ${sizes.join(', ')}${max === undefined ? '' : ` (max ${max})`}; ${machine.cpus} CPUs; load average ${machine.loadavgAtStart.toFixed(2)}`,
  );
  const floorBinary = config.systems.includes('floor') ? buildFloor(ctx) : undefined;
  const runs: SystemRun[] = [];
  const floor: FloorRun[] = [];
  let subnet = 1;
  for (const size of config.echo ? sizes : []) {
    const need = size + FD_HEADROOM;
    if (need > machine.rlimitNofile.soft) {
      const { soft, hard } = machine.rlimitNofile;
      const reason =
        `needs ${need.toLocaleString('en-US')} fds in one server process (old and new each hold every connection ` +
        `during a takeover; the floor's receiver too), and RLIMIT_NOFILE is ${soft.toLocaleString('en-US')} ` +
        `(hard ${hard.toLocaleString('en-US')}), ` +
        (canRaiseNofile(need)
          ? `which \`ulimit -n ${need}\` before \`npm run bench\` would raise`
          : `which cannot be raised here (\`ulimit -n ${need}\` fails${process.getuid?.() === 0 ? ', even as root' : ''})`) +
        `; the largest size that fits is ${(soft - FD_HEADROOM).toLocaleString('en-US')}`;
      skipped.push({ connections: size, reason });
      ctx.log(`${size} connections: not run: ${reason}`);
      continue;
    }
    ctx.log(`${size} connections:`);
    if (floorBinary) {
      const result = await runFloor(ctx, floorBinary, size);
      floor.push(result);
      ctx.log(`  C floor          ${result.error ?? `${result.transferMs!.toFixed(2)} ms (median of ${result.samplesMs!.length})`}`);
    }
    for (let round = 1; round <= config.repeat; round++) {
      for (const system of config.systems) {
        if (system === 'floor' || (round > 1 && system !== 'control' && system !== 'socket-takeover')) continue;
        const run = await runSystem(ctx, system, size, config.workload, subnet++);
        run.round = round;
        runs.push(run);
        ctx.log(describeRun(run, config.repeat));
      }
    }
  }
  for (const app of config.apps) {
    for (const size of config.appSizes) {
      if (size + FD_HEADROOM > machine.rlimitNofile.soft) {
        skipped.push({
          connections: size,
          reason: `${app.workload}: needs ${size + FD_HEADROOM} fds in one server process, over RLIMIT_NOFILE ${machine.rlimitNofile.soft}`,
        });
        continue;
      }
      ctx.log(`${size} ${app.workload === 'http' ? 'HTTP keep-alive clients' : 'WebSocket clients'}:`);
      for (const system of config.systems) {
        if (system === 'floor') continue;
        const run = await runSystem(ctx, system, size, config.appWorkload, subnet++, app);
        runs.push(run);
        ctx.log(describeRun(run, 1));
      }
    }
  }

  const pool: PoolRun[] = [];
  if (config.pool) {
    ctx.log(`A pool of 2 workers, ${POOL_PLAN.connections} keep-alive HTTP clients, ${POOL_PLAN.newRate} new connections/s:`);
    for (const system of config.systems) {
      if (system !== 'socket-takeover' && system !== 'pm2 reload') continue;
      const run = await runPool(ctx, system, POOL_PLAN);
      pool.push(run);
      ctx.log(describePoolRun(run));
    }
  }

  let throughput: ThroughputRun | undefined;
  if (config.throughput) {
    const { connections, durationS, rounds } = config.throughput;
    ctx.log(`Steady-state throughput, ${connections} connections, ${rounds} rounds of ${durationS} s each:`);
    throughput = await runThroughput(ctx, connections, durationS, rounds, subnet++);
    ctx.log(
      throughput.error
        ? `  failed: ${throughput.error}`
        : `  takeover-server ${throughput.library.join(', ')} echoes/s; plain net ${throughput.plain.join(', ')} echoes/s`,
    );
  }

  const ranSizes = sizes.filter((s) => !skipped.some((k) => k.connections === s));
  const targetSize = ranSizes.includes(TARGET_SIZE) || ranSizes.length === 0 ? TARGET_SIZE : Math.max(...ranSizes);
  const results: BenchResults = {
    startedAt,
    durationS: (now() - started) / 1000,
    machine,
    workload: config.workload,
    appWorkload:
      config.apps.length > 0 ? { ...config.appWorkload, ...config.apps[0]!, workloads: config.apps.map((a) => a.workload) } : undefined,
    sizes: config.echo ? sizes : [],
    throughput,
    floor,
    runs,
    skipped,
    targetSize,
    repeat: config.repeat,
    ...evaluateTargets(runs, floor, config.echo ? ranSizes : [], targetSize, throughput, config.repeat),
    warnings: collectWarnings(runs),
    ...(pool.length > 0 ? { pool } : {}),
  };
  if (targetSize !== TARGET_SIZE)
    results.warnings.push(
      `The targets are for ${TARGET_SIZE.toLocaleString('en-US')} connections; this run checked them at ${targetSize.toLocaleString('en-US')}.`,
    );

  const root = ctx.paths.root;
  const resultsDir = join(root, 'bench/results');
  mkdirSync(resultsDir, { recursive: true });
  const resultsFile = join(resultsDir, `${startedAt.replace(/[:.]/g, '-')}.json`);
  writeFileSync(resultsFile, `${JSON.stringify(results, null, 2)}\n`);

  // The first round's runs: one line per system.
  const chartable = runs.filter((r) => r.timeline && (r.round ?? 1) === 1);
  const charted = (size: number): boolean => chartable.some((r) => r.connections === size);
  const chartSize = charted(targetSize) ? targetSize : [...ranSizes].reverse().find(charted);
  const chartRuns = chartable.filter((r) => r.connections === chartSize);
  const chart =
    chartSize === undefined
      ? undefined
      : pauseChart({
          title: `${chartSize.toLocaleString('en-US')} connections: each system's switch at t = 0`,
          series: chartRuns.map((r) => ({ name: r.system, color: COLORS[r.system], timeline: r.timeline! })),
          expectedPerBucket: (chartSize * 100) / config.workload.intervalMs,
          fromMs: -CHART_BEFORE_MS,
          // Up to a few seconds past the slowest switch: the rest of the run only repeats itself.
          toMs: Math.min(
            (config.workload.durationS - config.workload.switchAfterS) * 1000,
            Math.ceil((Math.max(0, ...chartRuns.map((r) => r.switch?.oldGoneMs ?? 0)) + CHART_AFTER_MS) / 1000) * 1000,
          ),
        });
  const written = [relative(root, resultsFile)];
  const latest = (name: string, content: string): void => {
    writeFileSync(join(resultsDir, name), content);
    written.push(`bench/results/${name}`);
  };
  latest('latest.json', `${JSON.stringify(results, null, 2)}\n`);
  if (chart) latest('latest.svg', chart);
  // Each copy links the chart next to it.
  const poolLines = poolSection(pool, POOL_PLAN).join('\n');
  latest('latest.md', `${renderSection(results, chart ? 'latest.svg' : undefined)}${poolLines}\n`);
  const section = renderSection(results, chart ? 'docs/bench-pause.svg' : undefined) + poolLines;
  if (config.writeDocs) {
    if (chart) {
      mkdirSync(join(root, 'docs'), { recursive: true });
      writeFileSync(join(root, 'docs/bench-pause.svg'), chart);
      written.push('docs/bench-pause.svg');
    }
    writeBenchmarksMd(join(root, 'BENCHMARKS.md'), section);
    // Laid out as the linter wants it, so that CI's `biome check` passes on the committed figures.
    spawnSync(join(root, 'node_modules/.bin/biome'), ['format', '--write', 'BENCHMARKS.md'], { cwd: root, stdio: 'ignore' });
    written.push('BENCHMARKS.md');
  }

  ctx.log('');
  ctx.log(section);
  ctx.log('');
  ctx.log('Targets:');
  for (const line of targetLines(results)) ctx.log(line.replace(/\*\*/g, ''));
  ctx.log(`Results: ${written.join(', ')} (${Math.round(results.durationS)} s)`);
  if (!config.writeDocs)
    ctx.log('BENCHMARKS.md and docs/bench-pause.svg unchanged: `npm run bench -- --write-docs` replaces their figures.');
}

let config: Config | 'help';
try {
  config = parseCommandLine(process.argv.slice(2));
} catch (error) {
  process.stderr.write(`bench: ${error instanceof Error ? error.message : String(error)}\n${USAGE}`);
  process.exit(2);
}
if (config === 'help') {
  process.stdout.write(USAGE);
} else {
  for (const [signal, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const) {
    process.on(signal, () => {
      process.stderr.write(`bench: ${signal}, stopping everything it started\n`);
      // The 'exit' handler kills the process groups, stops pm2 and removes the temp dir.
      process.exit(code);
    });
  }
  main(config).catch((error: unknown) => {
    process.stderr.write(`bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  });
}
