import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { EventEmitter, once } from 'node:events';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as hdr from 'hdr-histogram-js';
import { mergeClients, type ClientRun } from '../../bench/load.js';
import { runEchoLoad, type EchoLoadRun, type EchoLoadSummary, type Percentiles } from '../../tools/echo-load.js';
import { createLogger, formatPeer, toUsageError, UsageError } from '#lib/cli/format.js';
import { ipv6Available } from '../helpers.js';

/** The load client (tools/), which the load tests run; takeover-client is its shipped single-connection mode. */
const LOAD_CLIENT = fileURLToPath(new URL('../../tools/load-client.js', import.meta.url));
const SEED_CLIENT = fileURLToPath(import.meta.resolve('#lib/cli/client.js'));
const TEST_TIMEOUT = 60_000;
const CLIENT_TIMEOUT = 20_000;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

async function runClient(args: string[], onSpawn?: (child: ReturnType<typeof spawn>) => void, script = LOAD_CLIENT): Promise<Run> {
  // A client that hangs is killed, failing its test with code null instead of holding the runner open.
  const child = spawn(process.execPath, [script, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: CLIENT_TIMEOUT,
    killSignal: 'SIGKILL',
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  onSpawn?.(child);
  const [code] = (await once(child, 'close')) as [number | null];
  return { code, stdout, stderr };
}

function summaryOf(run: Run): EchoLoadSummary {
  assert.equal(run.stdout.trim().split('\n').length, 1, `stdout must be one JSON line:\n${run.stdout}`);
  return JSON.parse(run.stdout) as EchoLoadSummary;
}

interface MessageContext {
  socket: net.Socket;
  /** Index of the connection, in accept order. */
  conn: number;
  /** Index of the message on its connection. */
  n: number;
  message: Buffer;
}

interface TestServer {
  port: number;
  messages: number;
  /** Emits 'message' after each complete 4-byte message was handled. */
  events: EventEmitter;
  close(): Promise<void>;
}

/** A server that reassembles 4-byte messages and lets each test decide what to send back. */
async function messageServer(host: string, onMessage: (ctx: MessageContext) => void): Promise<TestServer> {
  const sockets = new Set<net.Socket>();
  const events = new EventEmitter();
  let accepted = 0;
  const state = { messages: 0 };
  const server = net.createServer({ noDelay: true }, (socket) => {
    const conn = accepted++;
    let n = 0;
    let pending = Buffer.alloc(0);
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    // Resets provoked by the tests surface here too; they are what is being tested, not a failure.
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 4 && !socket.destroyed) {
        const message = pending.subarray(0, 4);
        pending = pending.subarray(4);
        state.messages++;
        onMessage({ socket, conn, n: n++, message });
        events.emit('message');
      }
    });
  });
  server.listen(0, host);
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    get messages() {
      return state.messages;
    },
    events,
    async close() {
      for (const socket of sockets) socket.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

const echo = ({ socket, message }: MessageContext): void => {
  socket.write(message);
};

async function withServer<T>(
  onMessage: (ctx: MessageContext) => void,
  body: (server: TestServer) => Promise<T>,
  host = '127.0.0.1',
): Promise<T> {
  const server = await messageServer(host, onMessage);
  try {
    return await body(server);
  } finally {
    await server.close();
  }
}

async function waitForMessages(server: TestServer, count: number): Promise<void> {
  while (server.messages < count) await once(server.events, 'message');
}

async function closedPort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

function uint32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value);
  return buffer;
}

/** hdr-histogram reports the top of a value's bucket: up to 0.1% above the exact value at 3 digits. */
function assertClose(exact: number, fromHistogram: number): void {
  assert.ok(fromHistogram >= exact && fromHistogram <= exact * 1.002, `${fromHistogram} is not ${exact}`);
}

/** Decodes one of the summary's histograms and checks it against the percentiles next to it. */
function decodeMatching(base64: string, percentiles: Percentiles): hdr.Histogram {
  const histogram = hdr.decodeFromCompressedBase64(base64);
  assert.equal(histogram.getValueAtPercentile(50) / 1000, percentiles.p50);
  assert.equal(histogram.getValueAtPercentile(99) / 1000, percentiles.p99);
  assertClose(percentiles.max, histogram.maxValue / 1000);
  return histogram;
}

const noErrors = { ECONNRESET: 0, ECONNREFUSED: 0, EPIPE: 0, EOF: 0, ETIMEDOUT: 0 };

describe('the clients against test servers', { timeout: TEST_TIMEOUT }, () => {
  test('a correct echo server: exit 0 and a consistent JSON summary', async () => {
    await withServer(echo, async (server) => {
      const run = await runClient(['-p', String(server.port), '-c', '20', '-i', '20', '-d', '1', '--json']);
      assert.equal(run.code, 0, run.stderr);
      const s = summaryOf(run);
      assert.equal(s.ok, true);
      assert.equal(s.target, `[127.0.0.1]:${server.port}`);
      assert.equal(s.connections, 20);
      assert.equal(s.opened, 20);
      assert.equal(s.openAtEnd, 20);
      assert.equal(s.cut, 0);
      assert.deepEqual([s.lost, s.duplicated, s.reordered], [0, 0, 0]);
      assert.deepEqual(s.errors, noErrors);
      assert.deepEqual(s.short, { attempted: 0, succeeded: 0, failed: 0, errors: noErrors });
      // The client waits for every echo in flight before closing, so both sides agree exactly.
      assert.equal(s.echoes, server.messages);
      assert.ok(s.echoes >= 20, `only ${s.echoes} echoes: not one per connection`);
      assert.ok(s.echoes <= 20 * (1000 / 20 + 1), `${s.echoes} echoes: the interval was not respected`);
      // No upper bound on the run's length: the echo count above already fails a run that outlasts its 1 s.
      assert.ok(s.elapsedMs >= 1000, String(s.elapsedMs));
      assert.ok(s.rttMs.p50 <= s.rttMs.p99 && s.rttMs.p99 <= s.rttMs.max && s.rttMs.max > 0);
      assert.ok(s.connectionPauseMs.p50 <= s.connectionPauseMs.max);
      assertClose(s.connectionPauseMs.max, s.longestPauseMs);
      assert.ok(s.lagMs >= 0 && s.lagMaxMs >= s.lagMs, `lag p99 ${s.lagMs}, max ${s.lagMaxMs}`);
      // At most one echo per connection is in flight when the run stops.
      assert.ok(s.untimedEchoes <= s.connections, String(s.untimedEchoes));
      assert.equal(decodeMatching(s.histograms.rttUs, s.rttMs).totalCount, s.echoes - s.untimedEchoes);
      assert.equal(decodeMatching(s.histograms.connectionPauseUs, s.connectionPauseMs).totalCount, s.opened);
      assert.equal(
        s.timeline.reduce((sum, bucket) => sum + bucket.echoes, 0),
        s.echoes,
      );
      s.timeline.forEach((bucket, i) => assert.equal(bucket.t, i * 100));
      assertClose(Math.max(...s.timeline.map((b) => b.maxRttMs)), s.rttMs.max);
    });
  });

  test('a server that drops one message: lost counted, exit 1', async () => {
    await withServer(
      (ctx) => {
        if (!(ctx.conn === 0 && ctx.n === 2)) echo(ctx);
      },
      async (server) => {
        const run = await runClient(['-p', String(server.port), '-c', '2', '-i', '10', '-d', '1', '--timeout', '200', '--json']);
        assert.equal(run.code, 1, run.stderr);
        const s = summaryOf(run);
        assert.equal(s.ok, false);
        assert.equal(s.lost, 1);
        assert.equal(s.duplicated, 0);
        assert.equal(s.errors.ETIMEDOUT, 1);
        assert.equal(s.cut, 0);
        assert.equal(s.openAtEnd, 1);
        assert.ok(s.longestPauseMs >= 200, String(s.longestPauseMs));
      },
    );
  });

  test('a server that echoes one message twice, coalesced in one write: duplicated, exit 1', async () => {
    await withServer(
      (ctx) => {
        ctx.socket.write(ctx.conn === 0 && ctx.n === 2 ? Buffer.concat([ctx.message, ctx.message]) : ctx.message);
      },
      async (server) => {
        const run = await runClient(['-p', String(server.port), '-c', '2', '-i', '10', '-d', '0.5', '--json']);
        assert.equal(run.code, 1, run.stderr);
        const s = summaryOf(run);
        assert.deepEqual([s.duplicated, s.lost, s.reordered], [1, 0, 0]);
        assert.equal(s.echoes, server.messages);
        assert.equal(s.openAtEnd, 2);
        // With --json the line goes to stderr, prefixed by the connection's local end.
        assert.match(run.stderr, /^\[127\.0\.0\.1\]:\d+ - Seqnum discontinuity !!! \(got 2 != expected 3\)$/m);
      },
    );
  });

  test('a late echo overtaken by the next number counts as reordered, not lost', async () => {
    await withServer(
      (ctx) => {
        // Answer 2 with "3, 2" coalesced in one write: the client sees 3 first, then the late 2.
        ctx.socket.write(ctx.n === 2 ? Buffer.concat([uint32(3), uint32(2)]) : ctx.message);
      },
      async (server) => {
        const run = await runClient(['-p', String(server.port), '-i', '10', '-d', '0.3', '--json']);
        assert.equal(run.code, 1, run.stderr);
        const s = summaryOf(run);
        assert.deepEqual([s.reordered, s.lost, s.duplicated], [1, 0, 0]);
        assert.match(run.stderr, /^Seqnum discontinuity !!! \(got 3 != expected 2\)$/m);
        assert.match(run.stderr, /^Seqnum discontinuity !!! \(got 2 != expected 4\)$/m);
      },
    );
  });

  test('a server that resets connections: cut and ECONNRESET counted, exit 1', async () => {
    await withServer(
      (ctx) => {
        if (ctx.n === 0) echo(ctx);
        else ctx.socket.resetAndDestroy();
      },
      async (server) => {
        const run = await runClient(['-p', String(server.port), '-c', '5', '-i', '10', '-d', '0.5', '--json']);
        assert.equal(run.code, 1, run.stderr);
        const s = summaryOf(run);
        assert.equal(s.opened, 5);
        assert.equal(s.cut, 5);
        assert.equal(s.openAtEnd, 0);
        assert.equal(s.errors.ECONNRESET, 5);
        assert.equal(s.echoes, 5);
        // Each connection had its second message in flight when it was reset.
        assert.equal(s.lost, 5);
      },
    );
  });

  test('a server that closes connections: EOF counted as cut, exit 1', async () => {
    await withServer(
      (ctx) => {
        echo(ctx);
        ctx.socket.end();
      },
      async (server) => {
        const run = await runClient(['-p', String(server.port), '-c', '3', '-i', '10', '-d', '0.5', '--json']);
        assert.equal(run.code, 1, run.stderr);
        const s = summaryOf(run);
        assert.equal(s.cut, 3);
        assert.equal(s.errors.EOF, 3);
        assert.equal(s.echoes, 3);
        assert.equal(s.lost, 0);
      },
    );
  });

  test('IPv6: -a ::1', async (t) => {
    if (!(await ipv6Available())) {
      t.skip('no IPv6 loopback');
      return;
    }
    await withServer(
      echo,
      async (server) => {
        const run = await runClient([
          '-a',
          '::1',
          '-p',
          String(server.port),
          '-c',
          '3',
          '-i',
          '20',
          '-d',
          '0.5',
          '--source-address',
          '::1',
          '--json',
        ]);
        assert.equal(run.code, 0, run.stderr);
        const s = summaryOf(run);
        assert.equal(s.target, `[::1]:${server.port}`);
        assert.equal(s.opened, 3);
        assert.ok(s.echoes > 0);
        assert.equal(s.echoes, server.messages);
      },
      '::1',
    );
  });

  test('echoes split into 1-byte writes still count as ok', async () => {
    await withServer(
      ({ socket, message }) => {
        const writeFrom = (i: number): void => {
          if (i === message.length || socket.destroyed) return;
          socket.write(message.subarray(i, i + 1));
          // A separate turn of the loop per byte, so the bytes leave in separate segments.
          setImmediate(writeFrom, i + 1);
        };
        writeFrom(0);
      },
      async (server) => {
        const run = await runClient(['-p', String(server.port), '-c', '4', '-i', '10', '-d', '0.5', '--json']);
        assert.equal(run.code, 0, run.stderr);
        const s = summaryOf(run);
        assert.ok(s.echoes > 10);
        assert.equal(s.echoes, server.messages);
        assert.deepEqual([s.lost, s.duplicated, s.reordered], [0, 0, 0]);
      },
    );
  });

  test('echoes split unevenly across writes still count as ok', async () => {
    const cuts = [1, 3, 2];
    await withServer(
      ({ socket, message, n }) => {
        const cut = cuts[n % cuts.length]!;
        socket.write(message.subarray(0, cut));
        setImmediate(() => socket.destroyed || socket.write(message.subarray(cut)));
      },
      async (server) => {
        const run = await runClient(['-p', String(server.port), '-c', '3', '-i', '10', '-d', '0.5', '--json']);
        assert.equal(run.code, 0, run.stderr);
        const s = summaryOf(run);
        assert.ok(s.echoes > 10);
        assert.equal(s.echoes, server.messages);
      },
    );
  });

  test('takeover-client, and the load client with one connection, print the discontinuity with the real numbers', async () => {
    await withServer(
      (ctx) => {
        // A jump past 2^16 also checks that all 4 bytes are read, on this echo and the next ones.
        ctx.socket.write(ctx.n === 2 ? uint32(0x10002) : ctx.message);
      },
      async (server) => {
        for (const script of [SEED_CLIENT, LOAD_CLIENT]) {
          // Stopped once the server has had 4 messages, not after a time: 0.5 s at the default 100 ms
          // interval left a loaded machine no room for the 3 echoes the jump needs. The 4th message came
          // after the 3rd echo; its own echo and one more message may or may not make it before the SIGINT.
          const before = server.messages;
          const run = await runClient(
            ['-p', String(server.port)],
            (child) => void waitForMessages(server, before + 4).then(() => child.kill('SIGINT')),
            script,
          );
          assert.equal(run.code, 1, run.stderr);
          assert.match(run.stdout, /^Seqnum discontinuity !!! \(got 65538 != expected 2\)$/m);
          assert.equal(run.stdout.match(/Seqnum discontinuity/g)?.length, 1, run.stdout);
          assert.match(run.stdout, /echoes: [3-5] \(\d+\/s\), lost 65536, duplicated 0\b/);
          assert.match(run.stdout, /result: FAILED/);
        }
      },
    );
  });

  test('takeover-client and the load client run until SIGINT, then print the summary and exit 0', async () => {
    for (const script of [SEED_CLIENT, LOAD_CLIENT]) {
      await withServer(echo, async (server) => {
        const run = await runClient(
          ['-p', String(server.port)],
          (child) => {
            void waitForMessages(server, 3).then(() => child.kill('SIGINT'));
          },
          script,
        );
        assert.equal(run.code, 0, run.stderr);
        assert.match(run.stdout, /^Summary for \[127\.0\.0\.1\]:\d+/m);
        assert.match(run.stdout, /1 opened, 1 open at end, 0 cut/);
        assert.match(run.stdout, /result: OK/);
        assert.equal(run.stderr, '');
      });
    }
  });

  test('takeover-client: a server that closes the connection is a failure', async () => {
    await withServer(
      (ctx) => (ctx.n === 2 ? ctx.socket.end() : ctx.socket.write(ctx.message)),
      async (server) => {
        const run = await runClient(['-p', String(server.port)], undefined, SEED_CLIENT);
        assert.equal(run.code, 1, run.stderr);
        assert.match(run.stdout, /echoes: 2 \(\d+\/s\), lost 1, duplicated 0/);
        assert.match(run.stdout, /error: EOF \(closed by server\)/);
        assert.match(run.stdout, /1 opened, 0 open at end, 1 cut/);
        assert.match(run.stdout, /result: FAILED/);
      },
    );
  });

  test('takeover-client: a duplicated echo is reported and fails the run', async () => {
    await withServer(
      (ctx) => ctx.socket.write(ctx.n === 1 ? Buffer.concat([ctx.message, ctx.message]) : ctx.message),
      async (server) => {
        const run = await runClient(['-p', String(server.port), '-i', '10', '-d', '0.3'], undefined, SEED_CLIENT);
        assert.equal(run.code, 1, run.stderr);
        assert.match(run.stdout, /^Seqnum discontinuity !!! \(got 1 != expected 2\)$/m);
        assert.match(run.stdout, /lost 0, duplicated 1/);
      },
    );
  });

  test('--new-rate against a closed port counts refused short connections', async () => {
    const port = await closedPort();
    const run = await runClient(['-p', String(port), '--new-rate', '50', '-d', '0.5', '--json']);
    assert.equal(run.code, 1, run.stderr);
    const s = summaryOf(run);
    assert.equal(s.opened, 0);
    assert.equal(s.errors.ECONNREFUSED, 1);
    assert.ok(s.short.attempted >= 20, String(s.short.attempted));
    assert.equal(s.short.failed, s.short.attempted);
    assert.equal(s.short.succeeded, 0);
    assert.equal(s.short.errors.ECONNREFUSED, s.short.attempted);
  });

  test('--new-rate against an echo server: every short connection succeeds', async () => {
    await withServer(echo, async (server) => {
      const run = await runClient(['-p', String(server.port), '-c', '0', '--new-rate', '100', '-d', '0.5', '--json']);
      assert.equal(run.code, 0, run.stderr);
      const s = summaryOf(run);
      assert.ok(s.short.attempted >= 40, String(s.short.attempted));
      assert.equal(s.short.succeeded, s.short.attempted);
      assert.equal(server.messages, s.short.attempted);
    });
  });
});

describe("the clients' command lines", { timeout: TEST_TIMEOUT }, () => {
  // A third element names the one command the case is for; without it, it is for both.
  const cases: Array<[string[], RegExp, ('takeover-client' | 'load-client')?]> = [
    [[], /missing required option -p\/--connect-port/],
    [['-p', 'abc'], /-p\/--connect-port: 'abc'/],
    [['-p', '70000'], /-p\/--connect-port: '70000'/],
    [['-p', '0'], /-p\/--connect-port: '0'/],
    [['-p', '1234', '--bogus'], /Unknown option '--bogus'/],
    [['-p', '1234', '-a', 'not-an-ip'], /-a\/--connect-address: 'not-an-ip' is not an IPv4 or IPv6 address/],
    [['-p', '1234', '--connections=-1'], /-c\/--connections: '-1'/, 'load-client'],
    [['-p', '1234', '-c', '-1'], /Option '-c' argument is ambiguous/, 'load-client'],
    [['-p', '1234', '-c', '2'], /Unknown option '-c'/, 'takeover-client'],
    [['-p', '1234', '-p'], /argument missing/],
    [['-p', '1234', '-d', 'soon'], /-d\/--duration: 'soon'/],
    [['-p', '1234', '--source-address', '::1'], /not the same IP version/, 'load-client'],
    [['-p', '1234', 'extra'], /Unexpected argument 'extra'/],
  ];
  const clients = [
    { command: 'takeover-client', script: SEED_CLIENT },
    { command: 'load-client', script: LOAD_CLIENT },
  ];
  for (const { command, script } of clients) {
    for (const [args, message] of cases.filter(([, , only]) => only === undefined || only === command)) {
      test(`${command} usage error: ${args.join(' ') || '(no flags)'}`, async () => {
        const run = await runClient(args, undefined, script);
        assert.equal(run.code, 2);
        assert.equal(run.stdout, '');
        assert.match(run.stderr, new RegExp(`^${command}: `));
        assert.match(run.stderr, message);
        assert.equal(run.stderr.trim().split('\n').length, 1, run.stderr);
      });
    }

    test(`${command} -h prints the seed-style usage and exits 0`, async () => {
      for (const flag of ['-h', '--help']) {
        const run = await runClient([flag], undefined, script);
        assert.equal(run.code, 0);
        assert.equal(run.stderr, '');
        assert.match(run.stdout, new RegExp(`^Usage: ${command} \\[OPTION\\.\\.\\.\\]\\n`));
        for (const line of [
          /^-a, --connect-address .*Connection Address/m,
          /^-p, --connect-port .*Connection Port/m,
          /^-h, --help .*Display this help message/m,
        ]) {
          assert.match(run.stdout, line);
        }
      }
    });
  }
});

describe('runEchoLoad in-process', { timeout: TEST_TIMEOUT }, () => {
  test('stop() ends the run after the echoes in flight', async () => {
    await withServer(echo, async (server) => {
      const run = runEchoLoad({ host: '127.0.0.1', port: server.port, connections: 5, intervalMs: 5 });
      await waitForMessages(server, 50);
      run.stop();
      const s = await run;
      assert.equal(s.ok, true);
      assert.equal(s.openAtEnd, 5);
      assert.equal(s.echoes, server.messages);
    });
  });

  test('a second stop() gives up on echoes that never come: they count as lost', async () => {
    await withServer(
      () => {},
      async (server) => {
        const run = runEchoLoad({ host: '127.0.0.1', port: server.port, connections: 3, intervalMs: 1 });
        await waitForMessages(server, 3);
        run.stop();
        run.stop();
        const s = await run;
        assert.equal(s.ok, false);
        assert.equal(s.lost, 3);
        assert.equal(s.openAtEnd, 3);
        assert.equal(s.echoes, 0);
      },
    );
  });

  test('a wait in progress at stop() is timed until stop(); its late echo is checked, not timed', async () => {
    const STOP_AFTER_MS = 100;
    const ECHO_AFTER_STOP_MS = 300;
    let run: EchoLoadRun | undefined;
    let heldMs = 0;
    let echoedAfterMs = 0;
    await withServer(
      ({ socket, message, n }) => {
        if (n < 3) {
          socket.write(message);
          return;
        }
        const receivedAt = performance.now();
        // The late echo leaves only after stop(): the two timings the test tells apart cannot overlap.
        setTimeout(() => {
          heldMs = performance.now() - receivedAt;
          run!.stop();
          setTimeout(() => {
            echoedAfterMs = performance.now() - receivedAt;
            if (!socket.destroyed) socket.write(message);
          }, ECHO_AFTER_STOP_MS);
        }, STOP_AFTER_MS);
      },
      async (server) => {
        run = runEchoLoad({ host: '127.0.0.1', port: server.port, intervalMs: 5 });
        const s = await run;
        assert.equal(s.ok, true);
        assert.deepEqual([s.echoes, s.lost, s.untimedEchoes, server.messages], [4, 0, 1, 4]);
        assert.ok(s.elapsedMs >= echoedAfterMs, `the run ended after ${s.elapsedMs} ms, before the late echo (${echoedAfterMs} ms)`);
        // Timed to its echo the wait would last at least until the echo left, and the client's own shutdown would pass for the server's pause.
        // The client's wait began before the server held the message, so it lasted at least as long.
        assert.ok(
          s.longestPauseMs >= heldMs && s.longestPauseMs < echoedAfterMs,
          `${s.longestPauseMs} ms, held ${heldMs} ms, echoed after ${echoedAfterMs} ms`,
        );
        // Neither an rtt nor a timeline bucket counts the held wait: each is shorter than the hold.
        assert.ok(s.rttMs.max < heldMs, `${s.rttMs.max} ms, held ${heldMs} ms`);
        assert.ok(Math.max(...s.timeline.map((b) => b.maxRttMs)) < heldMs);
        assert.equal(
          s.timeline.reduce((sum, bucket) => sum + bucket.echoes, 0),
          4,
        );
        assert.equal(decodeMatching(s.histograms.rttUs, s.rttMs).totalCount, 3);
        const pause = decodeMatching(s.histograms.connectionPauseUs, s.connectionPauseMs);
        assert.equal(pause.totalCount, 1);
        assertClose(s.longestPauseMs, pause.maxValue / 1000);
      },
    );
  });

  test('an echo read after stop() is still checked for loss', async () => {
    let run: EchoLoadRun | undefined;
    await withServer(
      ({ socket, message, n }) => {
        if (n < 3) {
          socket.write(message);
          return;
        }
        setTimeout(() => socket.destroyed || socket.write(uint32(n + 1)), 150);
        setTimeout(() => run!.stop(), 50);
      },
      async (server) => {
        run = runEchoLoad({ host: '127.0.0.1', port: server.port, intervalMs: 5 });
        const s = await run;
        assert.equal(s.ok, false);
        assert.deepEqual([s.echoes, s.lost, s.openAtEnd], [3, 1, 1]);
      },
    );
  });

  test("bench's merge of several clients' histograms is exact, not the largest client's percentiles", async () => {
    const SLOW_MS = 150;
    await withServer(echo, (fast) =>
      withServer(
        ({ socket, message }) => {
          setTimeout(() => socket.destroyed || socket.write(message), SLOW_MS);
        },
        async (slow) => {
          const load = (port: number, connections: number): EchoLoadRun =>
            runEchoLoad({ host: '127.0.0.1', port, connections, intervalMs: 10, durationMs: 700 });
          const summaries = await Promise.all([load(fast.port, 30), load(slow.port, 10)]);
          const [f, s] = summaries;
          assert.ok(f!.connectionPauseMs.max < SLOW_MS && s!.connectionPauseMs.p50 >= SLOW_MS, 'the two clients do not overlap');
          const clients = summaries.map(
            (summary): ClientRun => ({ pid: 0, connections: summary.connections, sources: [], startedAt: 0, exitCode: 0, summary }),
          );
          const merged = mergeClients(clients);
          // 40 connections, 30 of them fast: the median is a fast one, the 99th percentile a slow one.
          // A percentile is its bucket's highest equivalent value: up to 0.1% above the largest sample in it.
          assert.ok(
            merged.connectionPauseMs.p50 <= f!.connectionPauseMs.max * 1.001,
            `p50 ${merged.connectionPauseMs.p50}, fast max ${f!.connectionPauseMs.max}`,
          );
          assert.ok(merged.connectionPauseMs.p99 >= SLOW_MS, `p99 ${merged.connectionPauseMs.p99}`);
          assert.equal(merged.connectionPauseMs.max, s!.connectionPauseMs.max);
          // Echoes: 30 fast connections answer about 15 times as often as 10 slow ones, so the RTT median is fast too.
          assert.ok(merged.rttMs.p50 < SLOW_MS && merged.rttMs.p99 >= SLOW_MS, `RTT p50 ${merged.rttMs.p50}, p99 ${merged.rttMs.p99}`);
          assert.equal(merged.untimedEchoes, f!.untimedEchoes + s!.untimedEchoes);
          assert.equal(merged.lagMaxMs, Math.max(f!.lagMaxMs, s!.lagMaxMs));
        },
      ),
    );
  });

  test('onProgress reports while the run is going', async () => {
    await withServer(echo, async (server) => {
      const run = runEchoLoad(
        { host: '127.0.0.1', port: server.port, connections: 2, intervalMs: 5 },
        {
          progressIntervalMs: 100,
          onProgress: (progress) => {
            if (progress.open === 2 && progress.echoesPerSec > 0) run.stop();
          },
        },
      );
      const s = await run;
      assert.equal(s.ok, true);
      assert.ok(s.echoes > 0);
    });
  });
});

describe('format helpers', () => {
  test('formatPeer brackets IPv4 and IPv6 alike', () => {
    assert.equal(formatPeer('::1', 40000), '[::1]:40000');
    assert.equal(formatPeer('127.0.0.1', 57796), '[127.0.0.1]:57796');
    assert.equal(formatPeer(undefined, undefined), '[?]:?');
  });

  test('the logger prints the message verbatim as text, or one JSON object per line', () => {
    const lines: string[] = [];
    const sink = { write: (s: string) => lines.push(s) } as unknown as NodeJS.WritableStream;
    createLogger({ format: 'text', out: sink, err: sink }).info('Starting TCP server on [127.0.0.1]:1234 (fd:3)', { fd: 3 });
    assert.deepEqual(lines, ['Starting TCP server on [127.0.0.1]:1234 (fd:3)\n']);

    lines.length = 0;
    const err = Object.assign(new Error('boom'), { code: 'EPIPE' });
    createLogger({ format: 'json', out: sink, err: sink }).error('write failed', { peer: '[::1]:1', err, msg: 'forged' });
    assert.equal(lines.length, 1);
    assert.ok(lines[0]!.endsWith('}\n'));
    const record = JSON.parse(lines[0]!) as Record<string, unknown>;
    assert.deepEqual(Object.keys(record).slice(0, 3), ['time', 'level', 'msg']);
    assert.ok(!Number.isNaN(Date.parse(record.time as string)));
    assert.equal(record.level, 'error');
    assert.equal(record.msg, 'write failed');
    assert.equal(record.peer, '[::1]:1');
    assert.deepEqual(record.err, { message: 'boom', code: 'EPIPE' });
  });

  test('toUsageError turns parseArgs failures into ERR_USAGE and passes others through', () => {
    let thrown: unknown;
    try {
      parseArgs({ args: ['--nope'], options: {}, strict: true });
    } catch (err) {
      thrown = err;
    }
    const usage = toUsageError(thrown);
    assert.ok(usage instanceof UsageError);
    assert.equal(usage.code, 'ERR_USAGE');
    assert.match(usage.message, /--nope/);
    const other = new Error('not a usage problem');
    assert.equal(toUsageError(other), other);
  });
});
