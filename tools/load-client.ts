#!/usr/bin/env node
/**
 * `node dist-dev/tools/load-client.js`: the echo client with a load mode (many connections, short
 * connections, JSON summaries with HdrHistograms) for the benchmark, the tests and anyone
 * measuring a takeover. Kept out of the package so that it ships no histogram library;
 * `takeover-client` is its single-connection, seed-compatible mode. `--workload http|ws` loads
 * `takeover-server --app http|ws` instead (./app-load.ts).
 */
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { runEchoLoad, type EchoLoadOptions, type EchoLoadProgress, type EchoLoadSummary } from './echo-load.js';
import { loadWsClient, runAppLoad, type AppLoadOptions, type AppLoadSummary } from './app-load.js';
import { UsageError, parseCommandLineOrExit, parseAddressFlag, parseIntegerFlag, parseNumberFlag, parsePortFlag } from '#lib/cli/format.js';

const COMMAND = 'load-client';

// The first lines keep the seed client's wording; the rest is the load mode.
const USAGE = `Usage: ${COMMAND} [OPTION...]
-a, --connect-address IP    Connection Address (default 127.0.0.1)
-p, --connect-port PORT     Connection Port
-c, --connections N         Long-lived connections (default 1)
-i, --interval MS           Pause after each echo before a connection sends again (default 100)
-d, --duration S            Stop after S seconds; 0 runs until SIGINT/SIGTERM (default 0)
    --source-address IP     Local address to bind; repeat or comma-separate to spread connections.
                            Node binds before it connects, and each bind searches the ports already
                            bound to that address: 10,000 connections on one address cost seconds
                            of system time. Spread big loads over several, 1,000 or fewer on each.
    --new-rate N            Also open N short connections per second: connect, one echo, close
    --timeout MS            A connect or an echo slower than this is an error (default 10000)
    --workload echo|http|ws echo (default): the 4-byte sequence-number echo. http: -c keep-alive
                            clients each requesting /delay?ms=<random up to --delay> in a loop, -i MS
                            after each answer. ws: -c WebSockets with the server's push stream
                            (--push MS) and a numbered message -i MS after each echo. Both need
                            -d; --new-rate and --source-address apply to echo only / to all.
    --delay MS              http: the handler's random delay, at most MS (default 20)
    --push MS               ws: the server pushes a numbered message every MS (default 100)
    --json                  Print the final summary as one JSON object on stdout
-q, --quiet                 No progress line, no discontinuity lines, no text summary
-h, --help                  Display this help message

Waits for echoes are timed until the run stops (-d elapsed, or the first SIGINT/SIGTERM): a wait
in progress then counts up to the stop. Echoes still in flight are awaited and checked for loss
and order, but not timed, since closing the other connections delays their reading; a second
signal gives up on them. --json adds the RTT and per-connection longest-pause distributions as
HdrHistograms (hdr-histogram-js encodeIntoCompressedBase64, microseconds), to merge exactly.
`;

interface ClientConfig {
  load: EchoLoadOptions & { connections: number };
  /** Set for --workload http|ws. */
  app: AppLoadOptions | undefined;
  json: boolean;
  quiet: boolean;
}

function parseCommandLine(args: string[]): ClientConfig | 'help' {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      'connect-address': { type: 'string', short: 'a', default: '127.0.0.1' },
      'connect-port': { type: 'string', short: 'p' },
      connections: { type: 'string', short: 'c', default: '1' },
      interval: { type: 'string', short: 'i', default: '100' },
      duration: { type: 'string', short: 'd', default: '0' },
      'source-address': { type: 'string', multiple: true, default: [] },
      'new-rate': { type: 'string', default: '0' },
      timeout: { type: 'string', default: '10000' },
      workload: { type: 'string', default: 'echo' },
      delay: { type: 'string', default: '20' },
      push: { type: 'string', default: '100' },
      json: { type: 'boolean', default: false },
      quiet: { type: 'boolean', short: 'q', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return 'help';

  const host = parseAddressFlag(values['connect-address'], '-a/--connect-address');
  if (values['connect-port'] === undefined) throw new UsageError('missing required option -p/--connect-port');
  const port = parsePortFlag(values['connect-port'], '-p/--connect-port');
  const connections = parseIntegerFlag(values.connections, '-c/--connections', 0, 1_000_000);
  const newRate = parseNumberFlag(values['new-rate'], '--new-rate', 0);
  if (connections === 0 && newRate === 0) throw new UsageError('-c/--connections 0 needs --new-rate');

  const sourceAddresses = values['source-address'].flatMap((list) => list.split(','));
  for (const source of sourceAddresses) {
    parseAddressFlag(source, '--source-address');
    // The kernel would refuse the bind with EINVAL on every connection; say why up front.
    if (isIP(source) !== isIP(host)) {
      throw new UsageError(`--source-address ${source} and -a/--connect-address ${host} are not the same IP version`);
    }
  }

  const load = {
    host,
    port,
    connections,
    intervalMs: parseIntegerFlag(values.interval, '-i/--interval', 0, 86_400_000),
    durationMs: Math.round(parseNumberFlag(values.duration, '-d/--duration', 0) * 1000),
    sourceAddresses,
    newRate,
    timeoutMs: parseIntegerFlag(values.timeout, '--timeout', 1, 86_400_000),
  };
  const workload = values.workload;
  if (workload !== 'echo' && workload !== 'http' && workload !== 'ws') {
    throw new UsageError(`invalid value for --workload: '${workload}' (expected echo, http or ws)`);
  }
  let app: AppLoadOptions | undefined;
  if (workload !== 'echo') {
    // An HTTP or WebSocket load that never stops would be a load generator nobody bounded.
    if (load.durationMs === 0) throw new UsageError(`--workload ${workload} needs -d/--duration`);
    if (newRate > 0) throw new UsageError('--new-rate applies to --workload echo only');
    app = {
      workload,
      host,
      port,
      clients: connections,
      intervalMs: load.intervalMs,
      durationMs: load.durationMs,
      sourceAddresses,
      delayMs: parseIntegerFlag(values.delay, '--delay', 0, 60_000),
      pushMs: parseIntegerFlag(values.push, '--push', 1, 60_000),
      timeoutMs: load.timeoutMs,
    };
  }
  return {
    load,
    app,
    json: values.json,
    quiet: values.quiet,
  };
}

const ms = (value: number): string => `${Math.round(value * 1000) / 1000} ms`;

function formatProgress(p: EchoLoadProgress): string {
  return (
    `${(p.elapsedMs / 1000).toFixed(1)}s  open ${p.open}  echoes/s ${p.echoesPerSec}  ` +
    `lost ${p.lost}  errors ${p.errors}  longest pause ${ms(p.longestPauseMs)}`
  );
}

function formatCounts(counts: Record<string, number>): string {
  return Object.entries(counts)
    .map(([code, n]) => `${code === 'EOF' ? 'EOF (closed by server)' : code} ${n}`)
    .join(', ');
}

function formatSummary(s: EchoLoadSummary): string {
  const lines = [
    `Summary for ${s.target} after ${(s.elapsedMs / 1000).toFixed(1)}s (interval ${s.intervalMs} ms)`,
    `  connections: ${s.connections} requested, ${s.opened} opened, ${s.openAtEnd} open at end, ${s.cut} cut`,
    `  echoes: ${s.echoes} (${s.echoesPerSec}/s), lost ${s.lost}, duplicated ${s.duplicated}, reordered ${s.reordered}`,
    `  errors: ${formatCounts(s.errors)}`,
  ];
  if (s.short.attempted > 0) {
    lines.push(
      `  short connections: ${s.short.attempted} attempted, ${s.short.succeeded} succeeded, ${s.short.failed} failed` +
        ` (${formatCounts(s.short.errors)})`,
    );
  }
  lines.push(
    `  longest pause: ${ms(s.longestPauseMs)}`,
    `  RTT: p50 ${ms(s.rttMs.p50)}, p99 ${ms(s.rttMs.p99)}, max ${ms(s.rttMs.max)} (${s.untimedEchoes} echoes read after the stop not timed)`,
    `  per-connection longest pause: p50 ${ms(s.connectionPauseMs.p50)}, p99 ${ms(s.connectionPauseMs.p99)}, max ${ms(s.connectionPauseMs.max)}`,
    `  client event-loop lag: p99 ${ms(s.lagMs)}, max ${ms(s.lagMaxMs)}`,
    `  result: ${s.ok ? 'OK' : 'FAILED'}`,
  );
  return `${lines.join('\n')}\n`;
}

function formatAppSummary(s: AppLoadSummary): string {
  const what = s.workload === 'http' ? 'requests' : 'messages';
  const lines = [
    `Summary for ${s.target} (${s.workload}) after ${(s.elapsedMs / 1000).toFixed(1)}s: ${s.clients} clients`,
    `  connections: ${s.opened} opened, ${s.reopened} reopened, ${s.closed} closed by the server, ${s.keptFirst} clients on their first at the end`,
    `  ${what}: ${s.sent} sent, ${s.answered} answered, ${s.failed} failed, ${s.hung} hung` +
      (s.workload === 'ws' ? `; pushes ${s.pushes}; lost ${s.lost}, duplicated ${s.duplicated}, reordered ${s.reordered}` : ''),
    `  errors: ${formatCounts(s.errors)}`,
    `  per-client longest gap between answers: p50 ${ms(s.pauseMs.p50)}, p99 ${ms(s.pauseMs.p99)}, max ${ms(s.pauseMs.max)}`,
    `  client event-loop lag: p99 ${ms(s.lagMs)}, max ${ms(s.lagMaxMs)}`,
    `  result: ${s.ok ? 'OK' : 'FAILED'}`,
  ];
  return `${lines.join('\n')}\n`;
}

async function main(args: string[]): Promise<number> {
  const config = parseCommandLineOrExit(COMMAND, USAGE, () => parseCommandLine(args));
  if (typeof config === 'number') return config;
  const { load, json, quiet } = config;
  if (config.app) {
    if (config.app.workload === 'ws') await loadWsClient();
    const summary = await runAppLoad(config.app);
    if (json) process.stdout.write(`${JSON.stringify(summary)}\n`);
    else if (!quiet) process.stdout.write(formatAppSummary(summary));
    return summary.ok ? 0 : 1;
  }

  let progressShown = false;
  const clearProgress = (): void => {
    if (progressShown) process.stderr.write('\r\x1b[K');
    progressShown = false;
  };
  // With --json, stdout carries nothing but the summary object.
  const lineOut = json ? process.stderr : process.stdout;
  const run = runEchoLoad(load, {
    progressIntervalMs: 500,
    onProgress:
      quiet || !process.stderr.isTTY
        ? undefined
        : (progress) => {
            process.stderr.write(`\r${formatProgress(progress)}\x1b[K`);
            progressShown = true;
          },
    onDiscontinuity: quiet
      ? undefined
      : ({ local, got, expected }) => {
          clearProgress();
          // One connection prints the seed's exact line; with many, the local end names the culprit.
          const prefix = load.connections > 1 ? `${local} - ` : '';
          lineOut.write(`${prefix}Seqnum discontinuity !!! (got ${got} != expected ${expected})\n`);
        },
  });
  // First signal: stop and wait for echoes in flight; a second one gives up on them.
  const onSignal = (): void => run.stop();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const summary = await run;
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);

  clearProgress();
  if (json) process.stdout.write(`${JSON.stringify(summary)}\n`);
  else if (!quiet) process.stdout.write(formatSummary(summary));
  return summary.ok ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`${COMMAND}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
