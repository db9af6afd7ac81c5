#!/usr/bin/env node
/**
 * `takeover-client`: the seed's client. One connection sends 4-byte big-endian sequence numbers,
 * one at a time, `-i` ms after each echo, and checks that every echo is the number it sent.
 *
 * The load mode (thousands of connections, short connections, histograms) is the load client in
 * tools/, outside the package, so that the package has no runtime dependency.
 */
import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import {
  UsageError,
  parseCommandLineOrExit,
  formatPeer,
  parseAddressFlag,
  parseIntegerFlag,
  parseNumberFlag,
  parsePortFlag,
} from './format.js';

const COMMAND = 'takeover-client';
/** How long the stop waits for the echo in flight before counting it lost. */
const STOP_GRACE_MS = 1000;

const USAGE = `Usage: ${COMMAND} [OPTION...]
-a, --connect-address IP    Connection Address (default 127.0.0.1)
-p, --connect-port PORT     Connection Port
-i, --interval MS           Pause after each echo before sending again (default 100)
-d, --duration S            Stop after S seconds; 0 runs until SIGINT/SIGTERM (default 0)
-h, --help                  Display this help message

Prints a line for every echo that is not the number sent, and a summary when it stops. Exits 1
if an echo was lost or duplicated, or if the connection failed. At the stop, the echo in flight
is awaited for up to ${STOP_GRACE_MS} ms; a second SIGINT/SIGTERM gives up on it at once.
`;

interface ClientConfig {
  host: string;
  port: number;
  intervalMs: number;
  durationMs: number;
}

function parseCommandLine(args: string[]): ClientConfig | 'help' {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      'connect-address': { type: 'string', short: 'a', default: '127.0.0.1' },
      'connect-port': { type: 'string', short: 'p' },
      interval: { type: 'string', short: 'i', default: '100' },
      duration: { type: 'string', short: 'd', default: '0' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return 'help';
  const host = parseAddressFlag(values['connect-address'], '-a/--connect-address');
  if (values['connect-port'] === undefined) throw new UsageError('missing required option -p/--connect-port');
  return {
    host,
    port: parsePortFlag(values['connect-port'], '-p/--connect-port'),
    intervalMs: parseIntegerFlag(values.interval, '-i/--interval', 0, 86_400_000),
    durationMs: Math.round(parseNumberFlag(values.duration, '-d/--duration', 0) * 1000),
  };
}

interface Summary {
  target: string;
  elapsedMs: number;
  intervalMs: number;
  opened: boolean;
  /** Why the connection ended before the stop: an error code, or EOF (closed by the server). */
  failure: string | undefined;
  echoes: number;
  /** Numbers skipped by a higher echo, or whose echo never came. */
  lost: number;
  duplicated: number;
  longestPauseMs: number;
}

class SeedClient {
  private readonly socket: Socket;
  private readonly startedAt = performance.now();
  private readonly done: Promise<Summary>;
  private resolve!: (summary: Summary) => void;
  private timer: NodeJS.Timeout | undefined;
  /** The number in flight, or the next one to send when nothing is. */
  private expected = 0;
  /** performance.now() when the echo in flight was sent; -1 when nothing is in flight. */
  private waitSince = -1;
  private partial = 0;
  private partialLength = 0;
  private stopping = false;
  private finished = false;
  private opened = false;
  private failure: string | undefined;
  private echoes = 0;
  private lost = 0;
  private duplicated = 0;
  private longestPauseMs = 0;

  constructor(
    private readonly config: ClientConfig,
    private readonly onDiscontinuity: (got: number, expected: number) => void,
  ) {
    this.done = new Promise((resolve) => (this.resolve = resolve));
    this.socket = connect({ host: config.host, port: config.port, noDelay: true });
    this.socket.on('connect', () => {
      this.opened = true;
      this.send();
    });
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('end', () => this.fail('EOF'));
    this.socket.on('error', (err: NodeJS.ErrnoException) => this.fail(err.code ?? 'ERROR'));
    // Unref'd: a connection that failed earlier must not keep the process alive until then.
    if (config.durationMs > 0) setTimeout(() => this.stop(), config.durationMs).unref();
  }

  get summary(): Promise<Summary> {
    return this.done;
  }

  /** First call: stop sending and wait for the echo in flight. Second call: give up on it. */
  stop(): void {
    if (this.stopping || this.waitSince < 0) {
      if (this.waitSince >= 0) this.lost++;
      this.finish();
      return;
    }
    this.stopping = true;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.stop(), STOP_GRACE_MS);
  }

  private send(): void {
    const message = Buffer.allocUnsafe(4);
    // A misbehaving server can push `expected` past 2^32 - 1; wrap rather than throw.
    message.writeUInt32BE(this.expected >>> 0);
    this.waitSince = performance.now();
    this.socket.write(message);
  }

  // The stream may split or coalesce messages anyhow, so it is consumed 4 bytes at a time.
  private onData(chunk: Buffer): void {
    for (const byte of chunk) {
      this.partial = this.partial * 256 + byte;
      if (++this.partialLength < 4) continue;
      this.onEcho(this.partial);
      this.partial = 0;
      this.partialLength = 0;
      if (this.finished) return;
    }
  }

  private onEcho(got: number): void {
    const expected = this.expected;
    if (got < expected) {
      this.duplicated++;
      this.onDiscontinuity(got, expected);
      return;
    }
    if (got === expected) {
      this.echoes++;
    } else {
      this.lost += got - expected;
      this.onDiscontinuity(got, expected);
    }
    this.expected = got + 1;
    // A server sending ahead of what was asked is checked above, but does not pace the client.
    if (this.waitSince < 0) return;
    this.longestPauseMs = Math.max(this.longestPauseMs, performance.now() - this.waitSince);
    this.waitSince = -1;
    if (this.stopping) this.finish();
    else this.timer = setTimeout(() => this.send(), this.config.intervalMs);
  }

  private fail(code: string): void {
    if (this.finished) return;
    this.failure = code;
    if (this.waitSince >= 0) this.lost++;
    this.finish();
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    clearTimeout(this.timer);
    this.socket.destroy();
    this.resolve({
      target: formatPeer(this.config.host, this.config.port),
      elapsedMs: performance.now() - this.startedAt,
      intervalMs: this.config.intervalMs,
      opened: this.opened,
      failure: this.failure,
      echoes: this.echoes,
      lost: this.lost,
      duplicated: this.duplicated,
      longestPauseMs: this.longestPauseMs,
    });
  }
}

const ms = (value: number): string => `${Math.round(value * 1000) / 1000} ms`;

const ok = (s: Summary): boolean => s.opened && s.failure === undefined && s.lost === 0 && s.duplicated === 0;

// The wording follows the load client's summary, so that both read the same.
function formatSummary(s: Summary): string {
  const openAtEnd = s.opened && s.failure === undefined ? 1 : 0;
  const lines = [
    `Summary for ${s.target} after ${(s.elapsedMs / 1000).toFixed(1)}s (interval ${s.intervalMs} ms)`,
    `  connections: 1 requested, ${s.opened ? 1 : 0} opened, ${openAtEnd} open at end, ${s.opened ? 1 - openAtEnd : 0} cut`,
    `  echoes: ${s.echoes} (${Math.round((s.echoes * 1000) / s.elapsedMs)}/s), lost ${s.lost}, duplicated ${s.duplicated}`,
  ];
  if (s.failure !== undefined) lines.push(`  error: ${s.failure === 'EOF' ? 'EOF (closed by server)' : s.failure}`);
  lines.push(`  longest pause: ${ms(s.longestPauseMs)}`, `  result: ${ok(s) ? 'OK' : 'FAILED'}`);
  return `${lines.join('\n')}\n`;
}

async function main(args: string[]): Promise<number> {
  const config = parseCommandLineOrExit(COMMAND, USAGE, () => parseCommandLine(args));
  if (typeof config === 'number') return config;
  const client = new SeedClient(config, (got, expected) => {
    process.stdout.write(`Seqnum discontinuity !!! (got ${got} != expected ${expected})\n`);
  });
  const onSignal = (): void => client.stop();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const summary = await client.summary;
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  process.stdout.write(formatSummary(summary));
  return ok(summary) ? 0 : 1;
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
