#!/usr/bin/env node
/**
 * `takeover-server`: the seed's frame-echo server on top of the takeover engine. It echoes each
 * whole 4-byte frame, prints the seed's log lines, and can be taken over (`-t`), take over
 * (`-T`), or start its own successor on SIGUSR2. `--app http|ws` serves an example HTTP or
 * WebSocket application (./apps.ts) instead, with the same takeover flags.
 *
 * It uses only the library's public API. A successor's start-up time is part of every
 * takeover's duration, so it imports only what serving needs.
 */
import { once } from 'node:events';
import * as fs from 'node:fs';
import module from 'node:module';
import type * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { ListenTarget, Takeover, TakeoverError as TakeoverErrorType, TakeoverStats } from '../index.js';
import {
  UsageError,
  parseCommandLineOrExit,
  createLogger,
  formatPeer,
  parseAddressFlag,
  parseIntegerFlag,
  parsePortFlag,
  type LogFormat,
  type Logger,
} from './format.js';
import { APP_NAMES, createApp, type App, type AppName } from './apps.js';
import { workerStatus, writeJsonFile } from './worker-status.js';
import type { PoolCommand } from './pool.js';

/**
 * Node's default for SIGUSR2 is to exit, and a successor that SIGUSR2 started may be sent one
 * while it loads or takes over. Caught from here on, before the library loads (tens of ms), and
 * kept until the server can act on it; only Node's own start-up, before any JavaScript runs,
 * is left uncovered.
 */
const successorSignal: { pending: boolean; handle: (() => void) | undefined } = { pending: false, handle: undefined };
process.on('SIGUSR2', () => {
  if (successorSignal.handle) successorSignal.handle();
  else successorSignal.pending = true;
});

/**
 * V8's code cache on disk (Node 22.1 and later; NODE_DISABLE_COMPILE_CACHE turns it off): a
 * successor then loads the library without compiling it again, on the cores the old process
 * serves with. Node's default directory is in TMPDIR, /tmp for most, where any user may have
 * made it first, and V8 runs what it loads from there as this user: so only a directory this
 * user owns and no one else can write. NODE_COMPILE_CACHE, the user's own choice, Node applied
 * before any of this runs.
 */
function enableCompileCache(): void {
  const { enableCompileCache: enable } = module as { enableCompileCache?: (dir: string) => unknown };
  if (!enable || 'NODE_DISABLE_COMPILE_CACHE' in process.env || 'NODE_COMPILE_CACHE' in process.env) return;
  const dir = path.join(os.tmpdir(), 'node-compile-cache');
  try {
    fs.mkdirSync(dir, { mode: 0o700 });
  } catch {
    // There already, or TMPDIR not writable: lstat says which.
  }
  try {
    const stat = fs.lstatSync(dir);
    if (!stat.isDirectory() || stat.uid !== process.getuid?.() || (stat.mode & 0o022) !== 0) return;
  } catch {
    return;
  }
  enable(dir);
}
// Before the library's import, so that the cache covers it.
enableCompileCache();
const { ErrorCodes, fdOf, Takeover: TakeoverClass, TakeoverError } = await import('../index.js');

const COMMAND = 'takeover-server';

// The first lines keep the seed server's wording.
const USAGE = `Usage: ${COMMAND} [OPTION...]
-a, --listen-address IP     Address to bind TCP listener on (default 127.0.0.1)
-p, --listen-port PORT      Port to bind TCP listener on (0: any free port)
-b, --listen-backlog N      TCP listener backlog (default 511)
-t, --takeover-path PATH    Takeover channel unix domain path
-T, --takeover PATH         Perform takeover operation from the server on PATH, then serve
                            and be takeover-able on PATH (-a/-p/-b are then not needed)
    --fd-store              Put the listener in systemd's fd store (FDSTORE=1), so that a
                            crash or a restart keeps it (default: when $FDSTORE is set)
-q, --quiet                 No per-message or per-connection lines
    --log-format text|json  One JSON object per line with --log-format json (default text)
    --app echo|http|ws      What to serve (default echo: the seed's 4-byte frame echo, with its
                            log lines). http: keep-alive HTTP; GET /delay?ms=N answers after N ms,
                            GET /stream?ms=N&every=M streams a line every M ms for N ms, POST
                            /upload answers the body's length. ws: the same HTTP routes plus
                            WebSockets on any path, each text message echoed as echo:<text>,
                            and ?push=MS in the URL pushes {"push":n} every MS ms. ws needs the
                            optional 'ws' package. A successor (-T) must serve the same app;
                            http and ws log only start and takeover lines.
    --reuse-port            Join the port's SO_REUSEPORT group (needs -t or -T): several servers
                            of this user share the port, the kernel spreading new connections
    --status-file FILE      Write this server's pid, connections and last takeover to FILE
                            (JSON) once ready, then each second while it serves
-w, --workers N             Run a pool: a supervisor (holding no socket) starts N workers on the
                            port with --reuse-port, worker i take-over-able on DIR/worker-<i>.sock
                            with -t DIR. -T DIR: a new supervisor adopts the pool in DIR (the old
                            supervisor exits, the workers serve on), then upgrades it. SIGUSR2 to
                            the supervisor upgrades the workers one at a time. A crashed worker
                            is restarted. SIGTERM stops the pool.
    --status DIR            Print the status of the pool in DIR (each worker's pid, connections,
                            last takeover) and exit
-h, --help                  Display this help message

kill -USR2 <pid> makes a server with a takeover path start its own successor and hand over.
Under systemd (with -t), it speaks sd_notify when $NOTIFY_SOCKET is set, and serves the sockets of
a .socket unit ($LISTEN_FDS; -p then optional) and takes -p's listener back from the fd store.
`;

const OPTIONS = {
  'listen-address': { type: 'string', short: 'a', default: '127.0.0.1' },
  'listen-port': { type: 'string', short: 'p' },
  'listen-backlog': { type: 'string', short: 'b', default: '511' },
  'takeover-path': { type: 'string', short: 't' },
  takeover: { type: 'string', short: 'T' },
  quiet: { type: 'boolean', short: 'q', default: false },
  'fd-store': { type: 'boolean', default: false },
  'log-format': { type: 'string', default: 'text' },
  app: { type: 'string', default: 'echo' },
  'reuse-port': { type: 'boolean', default: false },
  'status-file': { type: 'string' },
  workers: { type: 'string', short: 'w' },
  status: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

interface ServerConfig {
  /** Undefined with -T: the successor serves whatever it inherits. No port: only what systemd passed. */
  listen: { host: string; port: number | undefined; backlog: number } | undefined;
  channel: { path: string; mode: 'fresh' | 'successor' } | undefined;
  quiet: boolean;
  fdStore: boolean;
  logFormat: LogFormat;
  app: AppName;
  reusePort: boolean;
  statusFile: string | undefined;
  /** The command line without -t/-T, for the successor SIGUSR2 starts. */
  successorArgs: string[];
}

/** The command line minus the options named (and their values). */
function withoutOptions(args: string[], tokens: ReturnType<typeof parseArgs>['tokens'], names: readonly string[]): string[] {
  const dropped = new Set<number>();
  for (const token of tokens ?? []) {
    if (token.kind !== 'option' || !names.includes(token.name)) continue;
    dropped.add(token.index);
    if (token.value !== undefined && !token.inlineValue) dropped.add(token.index + 1);
  }
  return args.filter((_, i) => !dropped.has(i));
}

function parseCommandLine(args: string[], activated: boolean): ServerConfig | PoolCommand | 'help' {
  const { values, tokens } = parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: false, tokens: true });
  if (values.help) return 'help';
  if (values.status !== undefined) return { kind: 'status', dir: values.status };

  const from = values.takeover;
  const path = values['takeover-path'];
  if (path !== undefined && from !== undefined) throw new UsageError('-t/--takeover-path and -T/--takeover cannot be used together');
  if (path === '' || from === '') throw new UsageError('the takeover path must not be empty');
  const logFormat = values['log-format'];
  if (logFormat !== 'text' && logFormat !== 'json') {
    throw new UsageError(`invalid value for --log-format: '${logFormat}' (expected text or json)`);
  }
  const app = values.app as AppName;
  if (!APP_NAMES.includes(app)) throw new UsageError(`invalid value for --app: '${values.app}' (expected ${APP_NAMES.join(', ')})`);
  // Validated even with -T: a successor started by SIGUSR2 carries them along.
  const host = parseAddressFlag(values['listen-address'], '-a/--listen-address');
  const backlog = parseIntegerFlag(values['listen-backlog'], '-b/--listen-backlog', 1, 65535);
  const portText = values['listen-port'];
  if (portText === undefined && from === undefined && !(activated && path !== undefined))
    throw new UsageError('missing required option -p/--listen-port (or -T/--takeover PATH, or -t PATH under socket activation)');
  const port = portText === undefined ? undefined : parsePortFlag(portText, '-p/--listen-port', 0);
  if (values['reuse-port'] && path === undefined && from === undefined) throw new UsageError('--reuse-port needs -t or -T');
  if (values['status-file'] === '') throw new UsageError('the status file path must not be empty');

  if (values.workers !== undefined) {
    const workers = parseIntegerFlag(values.workers, '-w/--workers', 1, 64);
    const dir = path ?? from;
    if (dir === undefined) throw new UsageError('--workers needs -t DIR (a new pool) or -T DIR (adopt the pool in DIR)');
    // A new supervisor serves the same port: it restarts crashed workers with these flags.
    if (port === undefined || port === 0) throw new UsageError('--workers needs -p/--listen-port PORT (not 0: the workers share it)');
    if (values['status-file'] !== undefined) throw new UsageError('--status-file is per worker: the pool writes DIR/worker-<i>.json');
    return {
      kind: 'pool',
      workers,
      dir,
      adopt: from !== undefined,
      logFormat,
      workerArgs: withoutOptions(args, tokens, ['workers', 'takeover-path', 'takeover', 'reuse-port']),
    };
  }
  return {
    listen: from === undefined ? { host, port, backlog } : undefined,
    channel: from !== undefined ? { path: from, mode: 'successor' } : path !== undefined ? { path, mode: 'fresh' } : undefined,
    quiet: values.quiet,
    fdStore: values['fd-store'],
    logFormat,
    app,
    reusePort: values['reuse-port'],
    statusFile: values['status-file'],
    successorArgs: withoutOptions(args, tokens, ['takeover-path', 'takeover']),
  };
}

interface Coded {
  message?: string;
  code?: string;
  reason?: string;
}

/** `<message> (<code>)`, with the other side's code after an ERR_TAKEOVER_ABORTED. */
function describeError(error: unknown): string {
  const { message = String(error), code, reason } = error as Coded;
  if (code === undefined) return message;
  return `${message} (${reason === undefined ? code : `${code}: ${reason}`})`;
}

function errorFields(error: unknown): Record<string, unknown> {
  const { code, reason } = error as Coded;
  return { code, reason };
}

const plural = (n: number, noun: string): string => `${n} ${noun}${n === 1 ? '' : 's'}`;

function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
}

function formatSummary(s: TakeoverStats): string {
  const parts = [plural(s.connections, 'connection')];
  if (s.retained > 0) parts.push(`${s.retained} retained`);
  if (s.closed > 0) parts.push(`${s.closed} closed during the takeover`);
  parts.push(
    plural(s.waves, 'wave'),
    `in ${formatBytes(s.bytesIn)} / out ${formatBytes(s.bytesOut)}`,
    `max pause ${s.maxPauseMs.toFixed(1)} ms`,
    `total ${Math.round(s.phases.totalMs)} ms`,
  );
  return `Takeover complete: ${parts.join(', ')} (pid ${s.predecessorPid} -> pid ${s.successorPid})`;
}

/**
 * The takeover side of the command, for every app; the echo app, the default, is the seed's
 * server and keeps its log lines, while `app` (http, ws) logs start and takeover lines only.
 */
class TakeoverServer {
  private readonly logger: Logger;
  /** Per-message and per-connection lines, which -q drops; the http and ws apps have none. */
  private readonly verbose: boolean;
  private readonly servers: net.Server[] = [];
  private readonly sockets = new Set<net.Socket>();
  private readonly peers = new WeakMap<net.Socket, string>();
  /** The partial frame of each connection: its application state, handed over with it. */
  private readonly partial = new WeakMap<net.Socket, Buffer>();
  private readonly adopted = new WeakSet<net.Socket>();
  private takeover: Takeover | undefined;
  private serving = false;
  private stopping = false;
  /** The successor SIGUSR2 started, until its upgrade settles. */
  private successorPid: number | undefined;
  /** A SIGUSR2 came before this server served: start() starts the successor once it has said so. */
  private upgradeWhenServing = false;

  constructor(
    private readonly config: ServerConfig,
    private readonly app: App | undefined,
  ) {
    this.logger = createLogger({ format: config.logFormat });
    this.verbose = !config.quiet && app === undefined;
  }

  // Several processes share one stdout after a SIGUSR2, so every JSON line says whose it is.
  private log(msg: string, fields?: Record<string, unknown>): void {
    this.logger.info(msg, { pid: process.pid, ...fields });
  }

  logError(msg: string, error: unknown, fields?: Record<string, unknown>): void {
    this.logger.error(`${msg}${describeError(error)}`, { pid: process.pid, ...errorFields(error), ...fields });
  }

  /** Resolves once serving; rejects, with nothing left behind, when the server cannot start. */
  async start(): Promise<void> {
    process.on('SIGTERM', () => void this.stop('SIGTERM'));
    process.on('SIGINT', () => void this.stop('SIGINT'));

    const { channel } = this.config;
    const takeover = channel && this.createTakeover(channel.path, channel.mode);
    this.takeover = takeover;
    successorSignal.handle = () => this.onSuccessorSignal();
    if (successorSignal.pending) this.onSuccessorSignal();
    await takeover?.start();
    if (takeover && this.app?.webSocketServer) takeover.webSockets(this.app.webSocketServer);
    const targets: ListenTarget[] = takeover?.isSuccessor ? takeover.inheritedListeners.map(({ name }) => ({ name })) : this.freshTargets();
    for (const target of targets) {
      const server: net.Server = this.app ? this.app.createServer() : net.createServer((socket) => this.onConnection(socket));
      server.on('listening', () => this.onListening(server));
      this.servers.push(server);
      // With a takeover, ready() reports a listen failure too; a successor must not await the
      // listen itself, which only settles once the predecessor has committed.
      if (takeover) void takeover.listen(server, target);
      else server.listen(target);
    }
    const stats = takeover ? await takeover.ready() : await Promise.all(this.servers.map((s) => once(s, 'listening'))).then(() => null);
    this.serving = true;
    for (const server of this.servers) server.on('error', (error) => this.logError('Listener error: ', error));
    if (channel) this.log(`Starting Takeover channel on [${channel.path}] domain socket`, { path: channel.path });
    if (stats) this.log(formatSummary(stats), { stats });
    if (takeover && this.config.statusFile) this.writeStatus(takeover, this.config.statusFile, stats);
    if (this.upgradeWhenServing) this.onSuccessorSignal();
  }

  /** Only while serving: once a successor takes over, the file is its to write. */
  private writeStatus(takeover: Takeover, file: string, stats: TakeoverStats | null): void {
    const write = () => {
      if (takeover.state !== 'serving') return;
      try {
        writeJsonFile(file, workerStatus(takeover.connectionCount, stats));
      } catch (error) {
        this.logError('Status file: ', error);
      }
    };
    write();
    setInterval(write, 1000).unref();
  }

  /**
   * -p's listener (which adopts the socket systemd hands back from its fd store under the same
   * name), and every socket of a .socket unit. A name with ':' is the fd store's (systemd refuses
   * ':' in FileDescriptorName=): one -p no longer names is left unadopted, so it leaves the store.
   */
  private freshTargets(): ListenTarget[] {
    const { host, port, backlog } = this.config.listen!;
    const targets: ListenTarget[] = port === undefined ? [] : [{ port, host, backlog, reusePort: this.config.reusePort }];
    for (const { index, name } of this.takeover?.activatedListeners ?? []) {
      if (!name.includes(':')) targets.push({ systemd: index, backlog });
    }
    if (targets.length === 0) {
      throw new TakeoverError(ErrorCodes.ACTIVATION_INVALID, 'no listener: systemd passed none that can be served (LISTEN_FDS), and no -p');
    }
    return targets;
  }

  private createTakeover(path: string, mode: 'fresh' | 'successor'): Takeover {
    const { app } = this;
    const takeover = new TakeoverClass({
      path,
      mode,
      // A pool's supervisor waits for this before it upgrades the next worker.
      notifyParent: true,
      ...(this.config.fdStore ? { fdStore: true } : {}),
      captureState: (socket) => (app ? app.captureState(socket) : this.partial.get(socket)),
      restoreState: (socket, state) => (app ? app.restoreState(socket, state) : this.partial.set(socket, Buffer.from(state))),
    });
    takeover.on('adopt', (socket) => this.adopted.add(socket));
    takeover.on('successor', ({ pid }) => {
      this.log(app ? `Takeover by successor pid ${pid}` : 'Accepting connection from Takeover channel', { successorPid: pid });
      if (this.verbose) this.logFdArray();
    });
    takeover.on('freeze', (socket) => {
      if (this.verbose) this.logConnection('Holding connection with Peer', socket);
    });
    takeover.on('release', (socket) => {
      if (this.verbose) this.logConnection('Releasing Peer', socket);
    });
    takeover.on('handover', (stats) => {
      if (!app) this.log('tcp_peer_release(): Tcp peers released...');
      this.log(formatSummary(stats), { stats });
    });
    takeover.on('upgrade', ({ pid, args }) => {
      this.successorPid = pid;
      this.log(`SIGUSR2: starting successor pid ${pid}`, { successorPid: pid, argv: args });
    });
    // The old process has nothing left to serve: its exit is this command's to make.
    void takeover.done().then(() => process.exit(0));
    takeover.on('refused', (error) => this.logError('Takeover refused: ', error));
    takeover.on('rollback', (error, report) => {
      if (!report.committed) return this.logError('Takeover rolled back, still serving: ', error);
      // Past the commit the successor may have taken connections with it: say so, not "rolled back".
      const { lost, resumed, successorPid } = report;
      this.logError(
        `Takeover failed after the commit: ${plural(lost, 'connection')} lost with successor pid ${successorPid}, ${resumed} resumed here, listeners accepting again: `,
        error,
        { rollback: report },
      );
    });
    takeover.on('warning', (error) => this.logError('Warning: ', error));
    return takeover;
  }

  private onListening(server: net.Server): void {
    const address = server.address();
    const fd = fdOf(server);
    if (address !== null && typeof address === 'object') {
      this.log(`Starting ${this.app?.label ?? 'TCP'} server on ${formatPeer(address.address, address.port)} (fd:${fd})`, {
        ...address,
        fd,
      });
    } else {
      // A Unix listener inherited from a predecessor that is not this command.
      this.log(`Starting Unix server (fd:${fd})`, { fd });
    }
  }

  /** The seed's list of this process's fds: listeners, then connections. */
  private logFdArray(): void {
    const listeners = this.servers.map(fdOf).filter((fd) => fd >= 0);
    const connections = [...this.sockets].map(fdOf).filter((fd) => fd >= 0);
    const all = [...listeners, ...connections].map((fd) => `[${fd}]`).join('');
    this.log(`Current fd_array:={${all}}`, { listeners, connections });
  }

  private logConnection(what: string, socket: net.Socket): void {
    const peer = this.peer(socket);
    const fd = fdOf(socket);
    this.log(`${what} ${peer} (fd:${fd})`, { peer, fd });
  }

  // remoteAddress is gone once a socket is released or destroyed; the peer is read at the start.
  private peer(socket: net.Socket): string {
    return this.peers.get(socket) ?? formatPeer(undefined, undefined);
  }

  private onConnection(socket: net.Socket): void {
    // Only the verbose lines name the peer: getpeername() per connection costs, at accept and
    // for every connection a successor adopts.
    const peer = this.verbose ? formatPeer(socket.remoteAddress, socket.remotePort) : '';
    if (this.verbose) this.peers.set(socket, peer);
    this.sockets.add(socket);
    socket.setNoDelay(true);
    socket.on('close', () => this.sockets.delete(socket));
    // A peer that resets is one more closed connection, nothing this server has to act on.
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => this.echo(socket, peer, chunk));
    if (this.verbose) {
      if (!this.adopted.has(socket)) this.logConnection('Accepting connection from Peer', socket);
      this.logConnection('Starting connection with Peer', socket);
    }
  }

  private echo(socket: net.Socket, peer: string, chunk: Buffer): void {
    const held = this.partial.get(socket);
    const data = held ? Buffer.concat([held, chunk]) : chunk;
    const whole = data.length - (data.length % 4);
    if (whole > 0) {
      if (this.verbose) {
        for (let i = 0; i < whole; i += 4) {
          const seqnum = data.readUInt32BE(i);
          this.log(`${peer} - seqnum:${seqnum}`, { peer, seqnum });
        }
      }
      socket.write(data.subarray(0, whole));
    }
    if (whole < data.length) this.partial.set(socket, Buffer.from(data.subarray(whole)));
    else this.partial.delete(socket);
  }

  private onSuccessorSignal(): void {
    const path = this.config.channel?.path;
    if (path === undefined) {
      this.logger.error('SIGUSR2 ignored: no takeover path (-t or -T) to hand over on', { pid: process.pid });
      return;
    }
    if (this.stopping) {
      this.log('SIGUSR2 ignored: this server is not serving');
      return;
    }
    // Not upgrade()'s own wait for serving: that would start the successor, and log it, before
    // this server's own serving lines, and the log must read in the order things happen.
    if (!this.serving) {
      this.log('SIGUSR2 while starting: the successor starts once this server serves');
      this.upgradeWhenServing = true;
      return;
    }
    this.upgradeWhenServing = false;
    // upgrade() refuses itself while busy or no longer serving: under systemd, the reload it was
    // asked for is then answered at once.
    const pending = this.successorPid;
    const args = [...process.execArgv, process.argv[1]!, ...this.config.successorArgs, '-T', path];
    this.takeover!.upgrade({ args }).then(
      () => (this.successorPid = undefined),
      (error: TakeoverErrorType) => {
        if (error.code === ErrorCodes.BUSY) {
          this.log(
            pending === undefined
              ? `SIGUSR2 ignored: ${error.message}`
              : `SIGUSR2 ignored: successor pid ${pending} is already taking over`,
          );
          return;
        }
        if (error.code === ErrorCodes.INVALID_STATE) {
          this.log('SIGUSR2 ignored: this server is not serving');
          return;
        }
        const pid = this.successorPid;
        this.successorPid = undefined;
        // A rollback is logged as such; a successor that died before it began is not.
        if (error.code === ErrorCodes.SUCCESSOR_FAILED) this.logError(`Successor pid ${pid} did not take over: `, error);
      },
    );
  }

  private async stop(signal: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.log(`Stopping server on ${signal}`);
    // Before serving, the channel path may be the predecessor's, and close() would remove it;
    // exiting drops this process's copies and the predecessor keeps (or resumes) serving.
    if (this.serving) await this.takeover?.close();
    for (const server of this.servers) {
      server.close();
      // An http.Server's connections are its own to close: this.sockets only has the echo app's.
      (server as Partial<http.Server>).closeAllConnections?.();
    }
    for (const socket of this.sockets) socket.destroy();
    process.exit(0);
  }
}

async function main(args: string[]): Promise<number | undefined> {
  const config = parseCommandLineOrExit(COMMAND, USAGE, () => parseCommandLine(args, process.env.LISTEN_FDS !== undefined), describeError);
  if (typeof config === 'number') return config;
  // Workers never load the supervisor: a successor's start-up time is part of each takeover.
  if ('kind' in config) return (await import('./pool.js')).runPoolCommand(config);
  let app: App | undefined;
  try {
    app = config.app === 'echo' ? undefined : await createApp(config.app);
  } catch (error) {
    process.stderr.write(`${COMMAND}: ${describeError(error)}\n`);
    return 1;
  }
  const server = new TakeoverServer(config, app);
  try {
    await server.start();
  } catch (error) {
    // Nothing to undo: the channel path is created last, once everything else listens, and
    // exiting closes every fd this process holds.
    server.logError(`${COMMAND}: `, error);
    return 1;
  }
  return undefined;
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code !== undefined) process.exit(code);
  },
  (err: unknown) => {
    process.stderr.write(`${COMMAND}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
