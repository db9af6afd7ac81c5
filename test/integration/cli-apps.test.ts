/**
 * `takeover-server --app http|ws` end to end: real processes, a keep-alive HTTP client and a
 * WebSocket client that stay on their one connection across takeovers.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type * as net from 'node:net';
import * as path from 'node:path';
import { once } from 'node:events';
import { afterEach, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { ProcessGroups, type Child } from '../../bench/procs.js';
import { copyForNobody, tempDir, killPids, waitFor } from '../helpers.js';

const SERVER = fileURLToPath(import.meta.resolve('#lib/cli/server.js'));
const timeout = 30_000;

const groups = new ProcessGroups();
/** Successors started by SIGUSR2: detached, in a process group of their own. */
const detached = new Set<number>();
const dirs: string[] = [];
afterEach(() => {
  groups.killAll();
  killPids(detached);
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

function channelPath(): string {
  const dir = tempDir();
  dirs.push(dir);
  return path.join(dir, 'takeover.sock');
}

type LogRecord = Record<string, unknown> & { msg: string; pid: number };

/** A takeover-server with JSON logs; every record it (and any successor sharing its stdout) prints is kept. */
class Server {
  readonly child: Child;
  readonly records: LogRecord[] = [];

  constructor(args: string[], script = SERVER) {
    this.child = groups.spawn('takeover-server', process.execPath, [script, '--log-format', 'json', ...args]);
    this.child.onLine((line) => {
      if (!line.startsWith('{')) return;
      this.records.push(JSON.parse(line) as LogRecord);
    });
  }

  /**
   * The first record that matches. Gives up once stdout is read to its end, not at this process's
   * exit: a successor started by SIGUSR2 writes to the same stdout after this process is gone.
   */
  async record(predicate: (record: LogRecord) => boolean): Promise<LogRecord> {
    const stdout = this.child.process.stdout!;
    const find = () => this.records.find(predicate);
    const output = () => `stdout: ${JSON.stringify(this.records)}; stderr: ${this.child.stderrTail()}`;
    await waitFor(
      () => find() !== undefined || stdout.readableEnded,
      () => `a matching record from ${this.child.pid}; ${output()}`,
      20_000,
      10,
    );
    const found = find();
    if (!found) throw new Error(`stdout of ${this.child.pid} ended first; ${output()}`);
    return found;
  }

  /** The port, once the server accepts connections and can be taken over. */
  async ready(): Promise<number> {
    const listening = await this.record((r) => typeof r.port === 'number');
    await this.record((r) => r.msg.startsWith('Starting Takeover channel'));
    return listening.port as number;
  }

  successorSummary(): Promise<LogRecord> {
    return this.record((r) => (r.stats as { role?: string } | undefined)?.role === 'successor');
  }
}

test('--app http: a keep-alive client keeps its one connection across a -T takeover, every request answered', { timeout }, async () => {
  const channel = channelPath();
  const old = new Server(['--app', 'http', '-p', '0', '-t', channel]);
  const port = await old.ready();
  const listening = old.records.find((r) => typeof r.port === 'number')!;
  assert.match(listening.msg, /^Starting HTTP server on \[127\.0\.0\.1\]:\d+ \(fd:\d+\)$/);

  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const sockets = new Set<net.Socket>();
  const get = (url: string): Promise<{ pid: number }> =>
    new Promise((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port, path: url, agent }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () =>
          res.statusCode === 200 ? resolve(JSON.parse(body) as { pid: number }) : reject(new Error(`${res.statusCode} ${body}`)),
        );
      });
      req.on('socket', (socket) => sockets.add(socket));
      req.on('error', reject);
    });

  const pids: number[] = [];
  let stop = false;
  // Requests back to back, each answered after a delay: the takeover has to find the gaps between them.
  const loop = (async () => {
    for (let i = 0; !stop; i++) pids.push((await get(`/delay?ms=${i % 7}`)).pid);
  })();
  await waitFor(
    () => pids.length >= 20,
    () => `20 answers before the takeover (${pids.length})`,
    20_000,
    10,
  );
  const successor = new Server(['--app', 'http', '-T', channel]);
  const stats = (await successor.successorSummary()).stats as { connections: number };
  assert.equal(stats.connections, 1);
  assert.deepEqual(await old.child.exited.then((e) => e.code), 0);
  const answered = pids.length;
  await waitFor(
    () => pids.length >= answered + 20,
    () => `20 answers after the takeover (${pids.length - answered})`,
    20_000,
    10,
  );
  stop = true;
  await loop;

  assert.equal(pids[0], old.child.pid);
  assert.equal(pids.at(-1), successor.child.pid);
  assert.equal(sockets.size, 1, 'the client never had to open a second connection');
  // The streamed and the uploaded routes answer on the same connection.
  const streamed = await new Promise<string>((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/stream?ms=50&every=10', agent }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
  assert.match(streamed, new RegExp(`^1 ${successor.child.pid}\\n(?:\\d+ ${successor.child.pid}\\n)*end ${successor.child.pid}\\n$`));
  const uploaded = await new Promise<{ bytes: number }>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: '/upload', method: 'POST', agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve(JSON.parse(body) as { bytes: number }));
    });
    req.on('error', reject);
    req.end(Buffer.alloc(100_000, 1));
  });
  assert.equal(uploaded.bytes, 100_000);
  assert.equal(sockets.size, 1);
  agent.destroy();
});

test('--app ws: a WebSocket stays open across a -T takeover and a SIGUSR2 one; pushes and echoes without a gap', { timeout }, async () => {
  const channel = channelPath();
  const first = new Server(['--app', 'ws', '-p', '0', '-t', channel]);
  const port = await first.ready();
  assert.match(first.records.find((r) => typeof r.port === 'number')!.msg, /^Starting WebSocket server on /);

  const ws = new WebSocket(`ws://127.0.0.1:${port}/?push=5`);
  const pushes: number[] = [];
  const echoes: string[] = [];
  let closed = false;
  ws.on('message', (data) => {
    const text = data.toString();
    if (text.startsWith('echo:')) echoes.push(text.slice(5));
    else pushes.push((JSON.parse(text) as { push: number }).push);
  });
  ws.on('close', () => (closed = true));
  await once(ws, 'open');
  let sent = 0;
  const sender = setInterval(() => ws.send(`m${sent++}`), 5);
  const until = (condition: () => boolean, what: string): Promise<void> => waitFor(condition, what, 20_000, 10);

  await until(() => pushes.length > 20, '20 pushes before the first takeover');
  const second = new Server(['--app', 'ws', '-T', channel]);
  assert.equal(((await second.successorSummary()).stats as { connections: number }).connections, 1);
  assert.equal((await first.child.exited).code, 0);

  // SIGUSR2: the successor it starts carries --app ws along; it writes to the same stdout.
  const seen = pushes.length;
  await until(() => pushes.length > seen + 20, '20 pushes after the -T takeover');
  process.kill(second.child.pid, 'SIGUSR2');
  const upgraded = await second.record((r) => typeof r.successorPid === 'number' && r.msg.startsWith('SIGUSR2: starting successor'));
  detached.add(upgraded.successorPid as number);
  assert.ok((upgraded.argv as string[]).includes('ws'));
  await second.record((r) => r.pid === upgraded.successorPid && (r.stats as { role?: string } | undefined)?.role === 'successor');
  assert.equal((await second.child.exited).code, 0);
  const after = pushes.length;
  await until(() => pushes.length > after + 20, '20 pushes after the SIGUSR2 takeover');

  clearInterval(sender);
  await until(() => echoes.length === sent, 'every echo');
  assert.equal(closed, false);
  assert.deepEqual(
    pushes,
    pushes.map((_, i) => i),
    'pushes numbered from 0 without a gap, a repeat or a swap',
  );
  assert.deepEqual(
    echoes,
    echoes.map((_, i) => `m${i}`),
  );
  ws.close();
});

test('--app with an unknown value is a usage error (exit 2)', { timeout }, async () => {
  const server = new Server(['--app', 'gopher', '-p', '0']);
  const exit = await server.child.exited;
  assert.equal(exit.code, 2);
  assert.match(server.child.stderrTail(), /^takeover-server: invalid value for --app: 'gopher' \(expected echo, http, ws\)/);
});

test('--app ws without the ws package installed: a clear error with its code, exit 1; --app http still starts', { timeout }, async () => {
  // A copy of the package whose node_modules holds only node-gyp-build: an install without the optional peer.
  const { root } = copyForNobody();
  dirs.push(root);
  const script = path.join(root, 'dist', 'cli', 'server.js');
  const ws = new Server(['--app', 'ws', '-p', '0'], script);
  assert.equal((await ws.child.exited).code, 1);
  assert.match(
    ws.child.stderrTail(),
    /--app ws needs the 'ws' package, which is not installed \(npm install ws\) \(ERR_TAKEOVER_WS_MISSING\)/,
  );
  const plain = new Server(['--app', 'http', '-p', '0'], script);
  await plain.record((r) => typeof r.port === 'number');
});
