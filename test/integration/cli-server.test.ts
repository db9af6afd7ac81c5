/**
 * `takeover-server` end to end: real processes, real sockets, the seed's log lines checked
 * character for character. Every wait is on a log line, an echo or a process exit.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { EventEmitter, once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, afterEach, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runEchoLoad } from '../../tools/echo-load.js';
import { distDir, probeEcho, tempDir, ipv6Available, waitFor, waitStopped, killPids, within } from '../helpers.js';

const SERVER = fileURLToPath(import.meta.resolve('#lib/cli/server.js'));
// Per test, not per suite: a suite's timeout cancels the tests after a hung one as well.
// Generous: a test that chains successors starts several Node processes on a loaded machine.
const timeout = 60_000;

/**
 * Every process a test started, successors started by SIGUSR2 included (recorded from their log
 * lines, whether or not the test got that far); killed after each test, and once more at the end
 * for those a timed-out test, still running, started after its cleanup.
 */
const pids = new Set<number>();
const dirs: string[] = [];

afterEach(() => {
  killPids(pids);
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});
after(() => killPids(pids));

function channelPath(): string {
  const dir = tempDir();
  dirs.push(dir);
  return path.join(dir, 'takeover.sock');
}

/** Resolves at the emitter's next 'change', or after `ms`: one step of a bounded wait. */
function changeWithin(events: EventEmitter, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      events.off('change', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    events.on('change', done);
  });
}

type Stream = 'out' | 'err';
type LogRecord = Record<string, unknown> & { msg: string; pid: number };

/** A server process whose stdout and stderr lines can be awaited. */
class Server {
  readonly child: ChildProcessWithoutNullStreams;
  readonly lines: Record<Stream, string[]> = { out: [], err: [] };
  /** Resolves at 'exit', not 'close': a successor started by SIGUSR2 keeps the pipes open. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly ended: Record<Stream, boolean> = { out: false, err: false };
  private readonly events = new EventEmitter();

  constructor(args: string[], env: NodeJS.ProcessEnv = {}) {
    this.child = spawn(process.execPath, [SERVER, ...args], { stdio: 'pipe', env: { ...process.env, ...env } });
    pids.add(this.child.pid!);
    this.child.stdin.end();
    this.collect('out', this.child.stdout);
    this.collect('err', this.child.stderr);
    this.exited = once(this.child, 'exit').then(
      ([code, signal]) => ({ code, signal }) as { code: number | null; signal: NodeJS.Signals | null },
    );
  }

  get pid(): number {
    return this.child.pid!;
  }

  private collect(stream: Stream, input: NodeJS.ReadableStream): void {
    let rest = '';
    input.setEncoding('utf8');
    input.on('data', (chunk: string) => {
      const parts = (rest + chunk).split('\n');
      rest = parts.pop()!;
      this.lines[stream].push(...parts);
      // Text or JSON: a successor (one stopped by pause-at too) is killed at cleanup even if the test never reads its line.
      for (const part of parts) {
        const successor = /SIGUSR2: starting successor pid (\d+)/.exec(part);
        if (successor) pids.add(Number(successor[1]));
      }
      this.events.emit('change');
    });
    input.on('end', () => {
      this.ended[stream] = true;
      this.events.emit('change');
    });
  }

  /** The first line at or after `from` that `match` accepts; rejects if the stream ends first, or after `timeoutMs`. */
  async find<T>(
    stream: Stream,
    match: (line: string) => T | undefined,
    from = 0,
    timeoutMs = 30_000,
  ): Promise<{ value: T; index: number }> {
    const deadline = performance.now() + timeoutMs;
    const fail = (why: string) =>
      new Error(`std${stream} of ${this.pid} ${why};\nstdout:\n${this.lines.out.join('\n')}\nstderr:\n${this.lines.err.join('\n')}`);
    for (let index = from; ; ) {
      for (; index < this.lines[stream].length; index++) {
        const value = match(this.lines[stream][index]!);
        if (value !== undefined) return { value, index };
      }
      if (this.ended[stream]) throw fail('ended without the line');
      const left = deadline - performance.now();
      if (left <= 0) throw fail(`had no such line (from line ${from}) within ${timeoutMs} ms`);
      await changeWithin(this.events, left);
    }
  }

  async line(pattern: RegExp, from = 0, stream: Stream = 'out'): Promise<{ value: RegExpMatchArray; index: number }> {
    return this.find(stream, (line) => line.match(pattern) ?? undefined, from);
  }

  async record(predicate: (record: LogRecord) => boolean, from = 0, stream: Stream = 'out'): Promise<LogRecord> {
    const found = await this.find(
      stream,
      (line) => {
        const record = JSON.parse(line) as LogRecord;
        return predicate(record) ? record : undefined;
      },
      from,
    );
    return found.value;
  }

  /**
   * Resolves once every process writing to this stdout and stderr (this one and its successors)
   * is gone and both are read to the end: 'exit' can come before the last lines are read.
   */
  async closed(): Promise<void> {
    await within(
      (async () => {
        while (!this.ended.out || !this.ended.err) await once(this.events, 'change');
      })(),
      `every process writing to the pipes of ${this.pid} to exit`,
      30_000,
    );
  }
}

/** A short-lived run: the status and everything printed. */
async function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const server = new Server(args);
  const { code } = await server.exited;
  await server.closed();
  return { code, stdout: server.lines.out.join('\n'), stderr: server.lines.err.join('\n') };
}

const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const exact = (s: string): RegExp => new RegExp(`^${escapeRegExp(s)}$`);

function frames(...values: number[]): Buffer {
  const buffer = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buffer.writeUInt32BE(v, i * 4));
  return buffer;
}

/** A raw client whose received bytes can be awaited. */
class RawClient {
  readonly socket: net.Socket;
  received = Buffer.alloc(0);
  private readonly events = new EventEmitter();

  constructor(port: number, host = '127.0.0.1') {
    this.socket = net.connect({ port, host, noDelay: true });
    this.socket.on('data', (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk]);
      this.events.emit('change');
    });
    this.socket.on('close', () => this.events.emit('change'));
  }

  get peer(): string {
    return `[${this.socket.localAddress}]:${this.socket.localPort}`;
  }

  async bytes(count: number): Promise<number[]> {
    const deadline = performance.now() + 20_000;
    while (this.received.length < count) {
      if (this.socket.destroyed) throw new Error(`connection closed after ${this.received.length} of ${count} bytes`);
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`only ${this.received.length} of ${count} bytes within 20 s`);
      await changeWithin(this.events, left);
    }
    return Array.from({ length: this.received.length / 4 }, (_, i) => this.received.readUInt32BE(i * 4));
  }

  async closed(): Promise<void> {
    await within(
      (async () => {
        while (!this.socket.destroyed) await once(this.events, 'change');
      })(),
      `the server to close the connection of ${this.peer}`,
    );
  }
}

async function listeningServer(args: string[], env?: NodeJS.ProcessEnv): Promise<{ server: Server; port: number; fd: number }> {
  const server = new Server(args, env);
  const { value } = await server.line(/^Starting TCP server on \[[^\]]+\]:(\d+) \(fd:(\d+)\)$/);
  return { server, port: Number(value[1]), fd: Number(value[2]) };
}

/** A server on a new channel whose successors (SIGUSR2's, which inherit this) stop themselves at `step`. */
async function serverPausingSuccessorsAt(step: string, args: string[] = []): Promise<{ server: Server; port: number; channel: string }> {
  const channel = channelPath();
  const preload = path.join(distDir, 'test', 'fixtures', 'pause-at.js');
  const { server, port } = await listeningServer([...args, '-p', '0', '-t', channel], {
    SOCKET_TAKEOVER_TEST_PAUSE_AT: step,
    NODE_OPTIONS: `--import ${preload}`,
  });
  await server.line(/^Starting Takeover channel/);
  return { server, port, channel };
}

function assertInOrder(lines: string[], patterns: RegExp[]): void {
  let from = 0;
  for (const pattern of patterns) {
    const index = lines.findIndex((line, i) => i >= from && pattern.test(line));
    assert.ok(index >= 0, `no ${pattern} after line ${from} in:\n${lines.join('\n')}`);
    from = index + 1;
  }
}

/** The one-line summary; captures connections, waves and, unless given, both pids. */
function summaryLine(from = String.raw`(\d+)`, to = String.raw`(\d+)`): RegExp {
  const bytes = String.raw`\d+(?:\.\d)? (?:B|KiB|MiB)`;
  return new RegExp(
    String.raw`^Takeover complete: (\d+) connections?, (\d+) waves?, in ${bytes} / out ${bytes}, max pause \d+\.\d ms, total \d+ ms \(pid ${from} -> pid ${to}\)$`,
  );
}

describe('takeover-server command line', () => {
  test('-h prints the seed-style usage and exits 0', { timeout }, async () => {
    const { code, stdout, stderr } = await run(['-h']);
    assert.equal(code, 0);
    assert.equal(stderr, '');
    assert.match(stdout, /^Usage: takeover-server \[OPTION\.\.\.\]\n/);
    for (const flag of [
      '-a, --listen-address',
      '-p, --listen-port',
      '-b, --listen-backlog',
      '-t, --takeover-path',
      '-T, --takeover',
      '-h, --help',
    ]) {
      assert.match(stdout, new RegExp(`^${escapeRegExp(flag)} `, 'm'));
    }
  });

  const usageErrors: [string[], RegExp][] = [
    [[], /missing required option -p\/--listen-port/],
    [['-p', '70000'], /-p\/--listen-port: '70000'/],
    [['-p', '12ab'], /-p\/--listen-port: '12ab'/],
    [['-p', '0', '-b', '0'], /-b\/--listen-backlog: '0'/],
    [['-p', '0', '-a', '300.1.1.1'], /-a\/--listen-address: '300.1.1.1' is not an IPv4 or IPv6 address/],
    [['-p', '0', '-a', 'localhost'], /-a\/--listen-address: 'localhost'/],
    [['-p', '0', '--bogus'], /Unknown option '--bogus'/],
    [['-p', '0', '-t', '/tmp/x', '-T', '/tmp/x'], /-t\/--takeover-path and -T\/--takeover cannot be used together/],
    [['-p', '0', '--log-format', 'xml'], /--log-format: 'xml'/],
    [['-p', '0', '-t'], /argument missing/],
  ];
  for (const [args, message] of usageErrors) {
    test(`usage error, exit 2: ${args.join(' ') || '(no flags)'}`, { timeout }, async () => {
      const { code, stdout, stderr } = await run(args);
      assert.equal(code, 2);
      assert.equal(stdout, '');
      assert.match(stderr, /^takeover-server: .* \(ERR_USAGE\)$/);
      assert.match(stderr, message);
    });
  }
});

describe('takeover-server start-up errors leave nothing behind', () => {
  test('a port in use: EADDRINUSE, exit 1, no channel path', { timeout }, async () => {
    const blocker = net.createServer().listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    const { port } = blocker.address() as net.AddressInfo;
    const channel = channelPath();
    try {
      const { code, stdout, stderr } = await run(['-p', String(port), '-t', channel]);
      assert.equal(code, 1);
      assert.equal(stdout, '');
      assert.match(stderr, new RegExp(`^takeover-server: listen EADDRINUSE: .*127\\.0\\.0\\.1:${port} \\(EADDRINUSE\\)$`));
      assert.equal(fs.existsSync(channel), false);
    } finally {
      blocker.close();
    }
  });

  test('an address this host does not have: EADDRNOTAVAIL, exit 1', { timeout }, async () => {
    const channel = channelPath();
    const { code, stderr } = await run(['-a', '192.0.2.1', '-p', '0', '-t', channel]);
    assert.equal(code, 1);
    assert.match(stderr, /^takeover-server: listen EADDRNOTAVAIL: .* \(EADDRNOTAVAIL\)$/);
    assert.equal(fs.existsSync(channel), false);
  });

  test('a channel directory others can write: ERR_TAKEOVER_PATH_UNSAFE, and no listener was opened', { timeout }, async () => {
    const open = path.dirname(channelPath());
    fs.chmodSync(open, 0o777);
    const channel = path.join(open, 'takeover.sock');
    const { code, stdout, stderr } = await run(['-p', '0', '-t', channel]);
    assert.equal(code, 1);
    assert.doesNotMatch(stdout, /Starting TCP server/);
    assert.match(stderr, /^takeover-server: .*can be written by other users.* \(ERR_TAKEOVER_PATH_UNSAFE\)$/);
    assert.equal(fs.existsSync(channel), false);
  });

  test('a channel directory that does not exist: ERR_TAKEOVER_PATH_UNSAFE', { timeout }, async () => {
    const channel = path.join(path.dirname(channelPath()), 'missing', 'takeover.sock');
    const { code, stderr } = await run(['-p', '0', '-t', channel]);
    assert.equal(code, 1);
    assert.match(stderr, /^takeover-server: .*ENOENT \(ERR_TAKEOVER_PATH_UNSAFE\)$/);
    assert.equal(fs.existsSync(channel), false);
  });

  test('-T with nobody listening: ERR_TAKEOVER_NO_PREDECESSOR', { timeout }, async () => {
    const channel = channelPath();
    const { code, stdout, stderr } = await run(['-T', channel]);
    assert.equal(code, 1);
    assert.equal(stdout, '');
    assert.match(stderr, /^takeover-server: nobody listens on the takeover path .* \(ERR_TAKEOVER_NO_PREDECESSOR\)$/);
    assert.equal(fs.existsSync(channel), false);
  });

  test('while a takeover runs: a second SIGUSR2 is ignored, -T is refused, -t finds the channel in use; the server rolls back', {
    timeout,
  }, async () => {
    // The successor stops itself once pre-copy is verified.
    const { server, port, channel } = await serverPausingSuccessorsAt('prepare');
    server.child.kill('SIGUSR2');
    const { value } = await server.line(/^SIGUSR2: starting successor pid (\d+)$/);
    const successor = Number(value[1]);
    const hello = await server.line(/^Accepting connection from Takeover channel$/);

    server.child.kill('SIGUSR2');
    await server.line(exact(`SIGUSR2 ignored: successor pid ${successor} is already taking over`), hello.index);

    const refused = await run(['-T', channel]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /^takeover-server: the predecessor refused: .* \(ERR_TAKEOVER_ABORTED: ERR_TAKEOVER_BUSY\)$/);
    await server.line(/^Takeover refused: .* \(ERR_TAKEOVER_BUSY\)$/, 0, 'err');

    const inUse = await run(['-p', '0', '-t', channel]);
    assert.equal(inUse.code, 1);
    assert.match(inUse.stderr, /^takeover-server: a server already listens on the takeover path .* \(ERR_TAKEOVER_CHANNEL_IN_USE\)$/);
    assert.ok(fs.existsSync(channel), 'a failed start must not remove the live server’s channel');

    process.kill(successor, 'SIGKILL');
    await server.line(/^Takeover rolled back, still serving: .* \(ERR_TAKEOVER_PEER_CLOSED\)$/, 0, 'err');
    await probeEcho(port, '127.0.0.1');

    // The failed successor no longer counts as running.
    const from = server.lines.out.length;
    server.child.kill('SIGUSR2');
    await server.line(/^SIGUSR2: starting successor pid (\d+)$/, from);

    server.child.kill('SIGTERM');
    assert.deepEqual(await server.exited, { code: 0, signal: null });
  });

  test('a SIGUSR2 that reaches a successor while it takes over is kept: the successor serves, then starts its own', {
    timeout,
  }, async () => {
    // Every successor stops itself once pre-copy is verified, so the signal arrives mid-takeover.
    const { server, port } = await serverPausingSuccessorsAt('prepare');
    const client = new RawClient(port);
    client.socket.write(frames(1));
    assert.deepEqual(await client.bytes(4), [1]);

    server.child.kill('SIGUSR2');
    const first = await server.line(/^SIGUSR2: starting successor pid (\d+)$/);
    const successor = Number(first.value[1]);
    await waitStopped(successor);
    // Pending while it is stopped, handled as it goes on: in the middle of its own takeover. The
    // predecessor is stopped meanwhile: the signal may be handled in another thread of the
    // successor, which a loaded machine can leave waiting while the main thread completes the
    // takeover (then it is no longer 'while starting', and that line never comes).
    process.kill(server.pid, 'SIGSTOP');
    await waitStopped(server.pid);
    process.kill(successor, 'SIGUSR2');
    process.kill(successor, 'SIGCONT');
    await server.line(exact('SIGUSR2 while starting: the successor starts once this server serves'), first.index);
    process.kill(server.pid, 'SIGCONT');
    await server.line(summaryLine(String(server.pid), String(successor)), first.index);
    // Not after that summary line: it may be the predecessor's, which another process writes, and
    // the successor's own line can come before it. The successor's comes after its own summary.
    const second = await server.line(/^SIGUSR2: starting successor pid (\d+)$/, first.index + 1);
    const next = Number(second.value[1]);
    assert.notEqual(next, successor);
    await waitStopped(next);
    process.kill(next, 'SIGCONT');
    await server.line(summaryLine(String(successor), String(next)), second.index);
    client.socket.write(frames(2));
    assert.deepEqual(await client.bytes(8), [1, 2], 'the connection went along both takeovers');
    client.socket.destroy();
    process.kill(next, 'SIGTERM');
    await server.closed();
  });

  test('a SIGUSR2 sent to a successor as soon as it can catch one, before the library has loaded, is kept too', { timeout }, async () => {
    const channel = channelPath();
    const { server } = await listeningServer(['-p', '0', '-t', channel]);
    await server.line(/^Starting Takeover channel/);
    server.child.kill('SIGUSR2');
    const first = await server.line(/^SIGUSR2: starting successor pid (\d+)$/);
    const successor = Number(first.value[1]);
    // SigCgt: the signals the process has handlers for, one bit per signal (SIGUSR2 is 12).
    const catchesSigusr2 = () => {
      const mask = /^SigCgt:\s*([0-9a-f]+)$/m.exec(fs.readFileSync(`/proc/${successor}/status`, 'utf8'))![1]!;
      return (BigInt(`0x${mask}`) & (1n << 11n)) !== 0n;
    };
    await waitFor(catchesSigusr2, 'the successor to catch SIGUSR2', timeout, 1);
    process.kill(successor, 'SIGUSR2');
    await server.line(summaryLine(String(server.pid), String(successor)), first.index);
    // After first: the predecessor's summary line may come after the successor's own lines.
    const second = await server.line(/^SIGUSR2: starting successor pid (\d+)$/, first.index + 1);
    const next = Number(second.value[1]);
    await server.line(summaryLine(String(successor), String(next)), second.index);
    process.kill(next, 'SIGTERM');
    await server.closed();
  });

  test('a successor killed mid-waves: the log says how many connections were lost with it, how many resumed, and that the listeners accept again', {
    timeout,
  }, async () => {
    const { server, port } = await serverPausingSuccessorsAt('wave1', ['-q']);
    const clients: net.Socket[] = [];
    // More than the waves sent by the time the successor stops: 16, then up to 128 each, and the
    // window of waves in flight after wave 0's acknowledgement (3 waves, at most 272 connections).
    for (let i = 0; i < 600; i++) {
      const socket = net.connect(port, '127.0.0.1');
      socket.on('error', () => {});
      clients.push(socket);
      // An echo proves the server has accepted (and counts) the connection.
      socket.write(Buffer.alloc(4));
      await once(socket, 'data');
    }
    server.child.kill('SIGUSR2');
    const { value } = await server.line(/^SIGUSR2: starting successor pid (\d+)$/);
    const successor = Number(value[1]);
    // Stopped with wave 1 in hand: waves 0 to 2 left the old process (their sizes are timed, so
    // the count is read from the line), every other connection resumed there.
    await waitStopped(successor);
    process.kill(successor, 'SIGKILL');
    const { value: failed } = await server.line(
      new RegExp(
        `^Takeover failed after the commit: (\\d+) connections lost with successor pid ${successor}, (\\d+) resumed here, listeners accepting again: .* \\(ERR_TAKEOVER_PEER_CLOSED\\)$`,
      ),
      0,
      'err',
    );
    const [lost, resumed] = [Number(failed[1]), Number(failed[2])];
    assert.ok(lost > 0 && resumed > 0, `${lost} lost, ${resumed} resumed`);
    assert.equal(lost + resumed, clients.length);
    await probeEcho(port, '127.0.0.1');
    for (const socket of clients) socket.destroy();
    server.child.kill('SIGTERM');
    assert.deepEqual(await server.exited, { code: 0, signal: null });
  });

  test('SIGUSR2 without a takeover path is logged and ignored', { timeout }, async () => {
    const { server, port } = await listeningServer(['-p', '0']);
    server.child.kill('SIGUSR2');
    await server.line(/^SIGUSR2 ignored: no takeover path/, 0, 'err');
    await probeEcho(port, '127.0.0.1');
    server.child.kill('SIGTERM');
    assert.deepEqual(await server.exited, { code: 0, signal: null });
  });
});

describe('takeover-server log lines', () => {
  test('the seed lines, with real fds, on both sides of a -T takeover; a partial frame survives it', { timeout }, async () => {
    const channel = channelPath();
    const { server: a, port, fd: listenerFd } = await listeningServer(['-p', '0', '-t', channel]);
    await a.line(exact(`Starting Takeover channel on [${channel}] domain socket`));

    const client = new RawClient(port);
    await once(client.socket, 'connect');
    const peer = client.peer;
    const accepted = await a.line(new RegExp(`^Accepting connection from Peer ${escapeRegExp(peer)} \\(fd:(\\d+)\\)$`));
    const connFd = Number(accepted.value[1]);
    await a.line(exact(`Starting connection with Peer ${peer} (fd:${connFd})`), accepted.index + 1);

    client.socket.write(frames(0, 1, 2));
    assert.deepEqual(await client.bytes(12), [0, 1, 2]);
    // Frame 3 whole, then half of frame 4: the half is application state to hand over.
    client.socket.write(Buffer.concat([frames(3), frames(4).subarray(0, 2)]));
    assert.deepEqual(await client.bytes(16), [0, 1, 2, 3]);
    // Waited for, not looked up: the echo on the socket can overtake the log line on the pipe.
    let from = 0;
    for (const n of [0, 1, 2, 3]) from = (await a.line(exact(`${peer} - seqnum:${n}`), from)).index + 1;

    const b = new Server(['-T', channel]);
    const summary = await b.line(summaryLine());
    assert.deepEqual(summary.value.slice(1, 3), ['1', '1']);
    assert.deepEqual(summary.value.slice(3, 5), [String(a.pid), String(b.pid)]);
    assert.deepEqual(await a.exited, { code: 0, signal: null });
    // Its summary comes just before its exit: every line is in only once its pipes are read to the end.
    await a.closed();

    assertInOrder(a.lines.out, [
      /^Accepting connection from Takeover channel$/,
      exact(`Current fd_array:={[${listenerFd}][${connFd}]}`),
      exact(`Holding connection with Peer ${peer} (fd:${connFd})`),
      exact(`Releasing Peer ${peer} (fd:${connFd})`),
      exact('tcp_peer_release(): Tcp peers released...'),
      summaryLine(String(a.pid), String(b.pid)),
    ]);
    assert.deepEqual(a.lines.err, []);

    assertInOrder(b.lines.out, [
      new RegExp(`^Starting connection with Peer ${escapeRegExp(peer)} \\(fd:\\d+\\)$`),
      exact(`Starting Takeover channel on [${channel}] domain socket`),
    ]);
    assert.ok(b.lines.out.some((line) => new RegExp(`^Starting TCP server on \\[127\\.0\\.0\\.1\\]:${port} \\(fd:\\d+\\)$`).test(line)));
    assert.ok(
      !b.lines.out.some((line) => line.startsWith('Accepting connection from Peer')),
      'an adopted connection is not accepted again',
    );

    client.socket.write(Buffer.concat([frames(4).subarray(2), frames(5)]));
    assert.deepEqual(await client.bytes(24), [0, 1, 2, 3, 4, 5]);
    // Waited for, not looked up: the echo on the socket can overtake the log line on the pipe.
    from = (await b.line(exact(`${peer} - seqnum:4`))).index + 1;
    await b.line(exact(`${peer} - seqnum:5`), from);

    b.child.kill('SIGINT');
    assert.deepEqual(await b.exited, { code: 0, signal: null });
    await b.closed();
    assert.ok(b.lines.out.includes('Stopping server on SIGINT'));
    await client.closed();
    assert.equal(fs.existsSync(channel), false, 'a clean stop removes the channel path');
    assert.deepEqual(b.lines.err, []);
  });

  test('--log-format json: one object per line with structured fields; -q keeps only start, takeover and summary lines', {
    timeout,
  }, async () => {
    const channel = channelPath();
    const a = new Server(['-p', '0', '-t', channel, '--log-format', 'json']);
    const started = await a.record((r) => r.msg.startsWith('Starting TCP server'));
    assert.equal(started.pid, a.pid);
    assert.equal(started.address, '127.0.0.1');
    assert.equal(started.msg, `Starting TCP server on [127.0.0.1]:${started.port} (fd:${started.fd})`);
    await a.record((r) => r.msg.startsWith('Starting Takeover channel') && r.path === channel);

    const client = new RawClient(started.port as number);
    await once(client.socket, 'connect');
    client.socket.write(Buffer.concat([frames(7), frames(8).subarray(0, 2)]));
    assert.deepEqual(await client.bytes(4), [7]);
    const echoed = await a.record((r) => r.seqnum === 7);
    assert.equal(echoed.peer, client.peer);
    assert.equal(echoed.msg, `${client.peer} - seqnum:7`);

    const b = new Server(['-T', channel, '-q', '--log-format', 'json']);
    const successorSummary = await b.record((r) => r.msg.startsWith('Takeover complete'));
    const predecessorSummary = await a.record((r) => r.msg.startsWith('Takeover complete'));
    for (const [record, role] of [
      [successorSummary, 'successor'],
      [predecessorSummary, 'predecessor'],
    ] as const) {
      const stats = record.stats as { role: string; connections: number; stateBytes: number; predecessorPid: number; successorPid: number };
      assert.equal(stats.role, role);
      assert.equal(stats.connections, 1);
      assert.equal(stats.stateBytes, 2, 'the half frame travels as application state');
      assert.deepEqual([stats.predecessorPid, stats.successorPid], [a.pid, b.pid]);
    }
    assert.deepEqual(await a.exited, { code: 0, signal: null });
    await a.closed();

    client.socket.write(Buffer.concat([frames(8).subarray(2), frames(9)]));
    assert.deepEqual(await client.bytes(12), [7, 8, 9]);
    b.child.kill('SIGTERM');
    assert.deepEqual(await b.exited, { code: 0, signal: null });
    await b.closed();

    for (const server of [a, b]) {
      for (const line of server.lines.out) {
        const record = JSON.parse(line) as LogRecord;
        assert.equal(typeof record.msg, 'string');
        assert.equal(record.pid, server.pid);
      }
    }
    const quiet = b.lines.out.map((line) => (JSON.parse(line) as LogRecord).msg);
    const expected = [
      new RegExp(`^Starting TCP server on \\[127\\.0\\.0\\.1\\]:${started.port} \\(fd:\\d+\\)$`),
      exact(`Starting Takeover channel on [${channel}] domain socket`),
      summaryLine(),
      exact('Stopping server on SIGTERM'),
    ];
    assert.equal(quiet.length, expected.length, quiet.join('\n'));
    quiet.forEach((msg, i) => assert.match(msg, expected[i]!));
  });
});

async function chainedTakeovers(host: string): Promise<void> {
  const channel = channelPath();
  const args = ['-q', '--log-format', 'json'];
  let current = new Server([...args, '-a', host, '-p', '0', '-t', channel]);
  const started = await current.record((r) => r.msg.startsWith('Starting TCP server'));
  assert.equal(started.msg, `Starting TCP server on [${host}]:${started.port} (fd:${started.fd})`);
  await current.record((r) => r.msg.startsWith('Starting Takeover channel'));

  const CLIENTS = 300;
  let allOpen!: () => void;
  const opened = new Promise<void>((resolve) => (allOpen = resolve));
  const load = runEchoLoad(
    { host, port: started.port as number, connections: CLIENTS, intervalMs: 100, timeoutMs: 5000 },
    { progressIntervalMs: 100, onProgress: ({ open }) => open === CLIENTS && allOpen() },
  );
  try {
    await opened;
    const chain = [current.pid];
    const expectMoved = async (summary: LogRecord, predecessor: Server): Promise<void> => {
      const stats = summary.stats as { connections: number; predecessorPid: number; successorPid: number };
      assert.equal(stats.connections, CLIENTS);
      assert.equal(stats.predecessorPid, predecessor.pid);
      chain.push(stats.successorPid);
      assert.deepEqual(await predecessor.exited, { code: 0, signal: null }, `pid ${predecessor.pid} must exit after handing over`);
    };

    for (let i = 0; i < 3; i++) {
      const next = new Server([...args, '-T', channel]);
      await expectMoved(await next.record((r) => (r.stats as { role?: string } | undefined)?.role === 'successor'), current);
      current = next;
    }
    const from = current.lines.out.length;
    current.child.kill('SIGUSR2');
    await current.record((r) => r.msg.startsWith('SIGUSR2: starting successor'), from);
    await expectMoved(await current.record((r) => (r.stats as { role?: string } | undefined)?.role === 'successor', from), current);
    assert.equal(new Set(chain).size, 5, `a chain of five processes: ${chain.join(' -> ')}`);

    load.stop();
    const summary = await load;
    assert.deepEqual(
      { lost: summary.lost, duplicated: summary.duplicated, reordered: summary.reordered, cut: summary.cut, openAtEnd: summary.openAtEnd },
      { lost: 0, duplicated: 0, reordered: 0, cut: 0, openAtEnd: CLIENTS },
    );
    assert.ok(
      Object.values(summary.errors).every((n) => n === 0),
      JSON.stringify(summary.errors),
    );
    assert.ok(summary.ok);
    assert.ok(summary.echoes >= CLIENTS * 4, `only ${summary.echoes} echoes`);

    // The last server is SIGUSR2's child: it writes to the same stdout and closes it on exit.
    process.kill(chain.at(-1)!, 'SIGTERM');
    await current.closed();
    assert.ok(current.lines.out.some((line) => (JSON.parse(line) as LogRecord).msg === 'Stopping server on SIGTERM'));
    assert.equal(fs.existsSync(channel), false);
  } finally {
    load.stop();
    load.stop();
  }
}

describe('takeover-server under load', () => {
  test('IPv4: 300 clients across 3 chained -T takeovers and one SIGUSR2, nothing lost', { timeout }, () => chainedTakeovers('127.0.0.1'));

  test('IPv6: 300 clients across 3 chained -T takeovers and one SIGUSR2, nothing lost', { timeout }, async (t) => {
    if (!(await ipv6Available())) return t.skip('no IPv6 loopback');
    await chainedTakeovers('::1');
  });
});
