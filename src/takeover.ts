/**
 * The public lifecycle, in one sentence: `start()` (fresh, or take over from whoever listens on
 * the channel path), `listen()` each server, `ready()`; later a successor takes this process
 * over, `'handover'` fires, and the process exits once it has nothing left.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as native from './native.js';
import type { Channel } from './channel.js';
import {
  ChannelListener,
  checkChannelPath,
  checkReplaceable,
  connectChannel,
  createChannelFd,
  isSocketLive,
} from './channel-listener.js';
import { PredecessorSession, type PredecessorHost } from './predecessor.js';
import { SuccessorSession, type InheritedListener, type SuccessorHost } from './successor.js';
import { encode, type ListenerEntry } from './protocol.js';
import { serverFd, startInherited, stopAccepting, trackWrites } from './sockets.js';
import { ErrorCodes, TakeoverError, systemError } from './errors.js';
import type { TakeoverStats } from './stats.js';

export interface TakeoverOptions {
  /** Path of the takeover channel (a Unix socket, created mode 0600). */
  path: string;
  /**
   * 'fresh': start a new server (fails if one is live on `path`); 'takeover': take over from the
   * server on `path` (fails if there is none); 'auto' (default): take over if one is live.
   */
  mode?: 'auto' | 'fresh' | 'takeover';
  /** Uids allowed on the other end of the channel (SO_PEERCRED). Default: this process's uid. */
  allowUids?: readonly number[];
  /** How long to wait for each step of the other side before giving up. Default 10,000 ms. */
  timeoutMs?: number;
  /** Connections frozen and started together; each pauses for one wave. Default 128. */
  waveSize?: number;
  /** Exit (code 0) once handed over and no retained connection is left. Default true. */
  exitOnHandover?: boolean;
  /** Old process, at freeze time: application state of a connection (e.g. a half-parsed frame). */
  captureState?: (socket: net.Socket) => Buffer | undefined;
  /** New process, before the server's 'connection' event: the state captured by the old one. */
  restoreState?: (socket: net.Socket, state: Buffer) => void;
}

export type ListenTarget =
  | { port: number; host?: string; backlog?: number; ipv6Only?: boolean; name?: string }
  | { path: string; backlog?: number; name?: string }
  /** Only an inherited listener of that name (see {@link Takeover.inheritedListeners}). */
  | { name: string };

export interface TakeoverEvents {
  /** Old process: a successor connected and passed the uid check. */
  takeover: [peer: { pid: number; uid: number }];
  /** Old process: a peer was turned away (uid not allowed, or a takeover already running). */
  refused: [error: TakeoverError];
  /** Old process: a takeover failed; everything it had not frozen keeps being served here. */
  rollback: [error: TakeoverError];
  /** Old process: a connection stopped here, its bytes taken out for the successor. */
  freeze: [socket: net.Socket];
  /** Old process: this process's copy of a handed-over connection is about to be closed (no FIN). */
  release: [socket: net.Socket];
  /** Old process: everything is handed over. */
  handover: [stats: TakeoverStats];
  /** Old process: handed over and nothing left; exits next unless `exitOnHandover` is false. */
  exit: [];
  /** New process: an inherited connection now lives here (before the server's 'connection'). */
  adopt: [socket: net.Socket];
  /** Something went wrong that did not stop this process from serving. */
  warning: [error: TakeoverError];
}

interface ListenerRecord {
  name: string;
  kind: 'tcp' | 'unix';
  server: net.Server;
  /** Unix listeners this process created and must unlink when it is the last owner. */
  unixPath?: string;
  /** Adopted from the predecessor (listening from the commit on) rather than bound here. */
  inherited: boolean;
  listening: Promise<void>;
}

interface Claim {
  record: ListenerRecord;
  fd: number;
  resolve: () => void;
  reject: (error: Error) => void;
}

type State = 'new' | 'starting' | 'started' | 'readying' | 'serving' | 'handed-over' | 'closed' | 'failed';

const CHANNEL_LISTENER_NAME = 'takeover-channel';

function invalid(message: string): TakeoverError {
  return new TakeoverError(ErrorCodes.INVALID_OPTION, message);
}

function positiveInteger(value: unknown, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) throw invalid(`${name} must be a positive integer`);
  return value;
}

function listenerName(target: ListenTarget): string {
  if (target.name !== undefined) return target.name;
  if ('path' in target) return `unix:${target.path}`;
  return 'port' in target ? `tcp:${target.host ?? ''}:${target.port}` : '';
}

function whenListening(server: net.Server): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error) => {
      server.off('listening', onListening);
      reject(error);
    };
    const onListening = () => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
  });
}

export class Takeover extends EventEmitter<TakeoverEvents> {
  readonly options: Required<Omit<TakeoverOptions, 'captureState' | 'restoreState'>> &
    Pick<TakeoverOptions, 'captureState' | 'restoreState'>;
  private state: State = 'new';
  private role: 'fresh' | 'successor' = 'fresh';
  private readonly records: ListenerRecord[] = [];
  private readonly conns = new Map<number, { socket: net.Socket; listener: number }>();
  private readonly ids = new WeakMap<net.Socket, number>();
  private nextId = 1;
  private channelListener: ChannelListener | undefined;
  private outgoing: PredecessorSession | undefined;
  private incoming: SuccessorSession | undefined;
  private inherited: InheritedListener[] = [];
  private readonly claims = new Map<string, Claim>();
  private settleReady: { resolve: (stats: TakeoverStats) => void; reject: (error: Error) => void } | undefined;
  private startFailure: ((error: Error) => void) | undefined;
  private readyPromise: Promise<TakeoverStats | null> | undefined;
  private exitScheduled = false;
  /** Why the inbound takeover failed, for a ready() that comes after. */
  private failure: TakeoverError | undefined;
  /** This process created or inherited the channel and no successor has taken it: close() removes the files. */
  private ownsPaths = false;

  /** Validates the options; nothing happens until {@link start}. Throws ERR_TAKEOVER_INVALID_OPTION. */
  constructor(options: TakeoverOptions) {
    super();
    if (options === null || typeof options !== 'object') throw invalid('options must be an object');
    const mode = options.mode ?? 'auto';
    if (!['auto', 'fresh', 'takeover'].includes(mode)) throw invalid(`mode must be 'auto', 'fresh' or 'takeover'`);
    const allowUids = options.allowUids ?? [process.getuid!()];
    if (!Array.isArray(allowUids) || allowUids.some((u) => !Number.isInteger(u) || u < 0)) {
      throw invalid('allowUids must be an array of uids');
    }
    for (const hook of ['captureState', 'restoreState'] as const) {
      if (options[hook] !== undefined && typeof options[hook] !== 'function') throw invalid(`${hook} must be a function`);
    }
    if (typeof options.path !== 'string' || options.path.length === 0) throw invalid('path must be a non-empty string');
    this.options = {
      path: options.path,
      mode,
      allowUids,
      timeoutMs: positiveInteger(options.timeoutMs, 'timeoutMs', 10_000),
      waveSize: positiveInteger(options.waveSize, 'waveSize', 128),
      exitOnHandover: options.exitOnHandover ?? true,
      captureState: options.captureState,
      restoreState: options.restoreState,
    };
  }

  /** `new Takeover(options)` then `start()`. */
  static async start(options: TakeoverOptions): Promise<Takeover> {
    const takeover = new Takeover(options);
    await takeover.start();
    return takeover;
  }

  /** True when this process is taking over (or took over) from a predecessor. */
  get isSuccessor(): boolean {
    return this.role === 'successor';
  }

  /**
   * The predecessor's listeners (after `start()`, when taking over), for a successor that
   * serves whatever its predecessor served: `listen(server, { name })` for each.
   */
  get inheritedListeners(): readonly { name: string; kind: 'tcp' | 'unix' }[] {
    return this.inherited.flatMap((l) => (l.kind === 'channel' ? [] : [{ name: l.name, kind: l.kind }]));
  }

  /** Connections tracked by this process (those of servers passed to {@link listen}). */
  get connectionCount(): number {
    return this.conns.size;
  }

  /**
   * Fresh: checks the channel path. Takeover: connects to the predecessor, checks its uid and
   * receives its listeners; pre-copy of the connections goes on in the background.
   * Throws ERR_TAKEOVER_PATH_UNSAFE, _CHANNEL_IN_USE, _NO_PREDECESSOR, _PEER_REJECTED, _ABORTED...
   */
  async start(): Promise<void> {
    this.expectState('new', 'start');
    this.state = 'starting';
    const { path, mode } = this.options;
    try {
      checkChannelPath(path);
      if (mode === 'fresh' && isSocketLive(path)) {
        throw new TakeoverError(ErrorCodes.CHANNEL_IN_USE, `a server already listens on the takeover path ${path}; take it over instead`);
      }
      const channel = mode === 'fresh' ? undefined : this.connectUnlessAuto(path);
      if (channel) {
        this.role = 'successor';
        await new Promise<void>((resolve, reject) => {
          this.startFailure = reject;
          this.inheritedReady = resolve;
          this.incoming = new SuccessorSession(this.successorHost(), channel);
        });
        this.startFailure = undefined;
      } else {
        checkReplaceable(path);
      }
      this.state = 'started';
    } catch (error) {
      this.state = 'failed';
      throw error;
    }
  }

  private inheritedReady: (() => void) | undefined;

  /** In 'auto' mode nobody listening means a fresh start; in 'takeover' mode it is an error. */
  private connectUnlessAuto(path: string): Channel | undefined {
    try {
      return connectChannel(path);
    } catch (error) {
      if (this.options.mode === 'auto' && (error as TakeoverError).code === ErrorCodes.NO_PREDECESSOR) return undefined;
      throw error;
    }
  }

  /**
   * Makes `server` listen on `target`: on the predecessor's listener of the same name when
   * taking over (the promise then settles at commit, so call `ready()` without awaiting this
   * first), else on a new socket. Every connection of the server is tracked for takeovers.
   * The name defaults to `tcp:<host>:<port>` or `unix:<path>`, exactly as given.
   */
  listen(server: net.Server, target: ListenTarget): Promise<void> {
    this.expectState('started', 'listen');
    if (!(server instanceof net.Server)) throw invalid('server must be a net.Server (or a subclass such as http.Server)');
    if (target === null || typeof target !== 'object') throw invalid('target must be an object');
    if ('path' in target) {
      if (typeof target.path !== 'string' || target.path.length === 0) throw invalid('target.path must be a non-empty string');
    } else if ('port' in target) {
      if (!Number.isInteger(target.port) || target.port < 0 || target.port > 65535) {
        throw invalid('target.port must be an integer in 0..65535');
      }
    } else if (typeof target.name !== 'string' || !this.inherited.some((l) => l.name === target.name && l.kind !== 'channel')) {
      throw invalid(`no inherited listener is named '${String(target.name)}'`);
    }
    const name = listenerName(target);
    if (name.length === 0 || name.length > 1000 || name === CHANNEL_LISTENER_NAME) {
      throw invalid(`a listener name must be 1 to 1000 characters and not '${CHANNEL_LISTENER_NAME}'`);
    }
    if (this.records.some((r) => r.name === name)) throw invalid(`a listener named '${name}' is already registered`);
    if (this.records.some((r) => r.server === server)) throw invalid('this server is already registered');

    const index = this.records.length;
    const inherited = this.inherited.find((l) => l.name === name && l.kind !== 'channel');
    const kind: 'tcp' | 'unix' = 'path' in target ? 'unix' : 'port' in target ? 'tcp' : (inherited!.kind as 'tcp' | 'unix');
    if (inherited && inherited.kind !== kind) throw invalid(`the predecessor's listener '${name}' is ${inherited.kind}, not ${kind}`);
    server.prependListener('connection', (socket: net.Socket) => this.track(socket, index));
    let listening: Promise<void>;
    const record: ListenerRecord = { name, kind, server, inherited: inherited !== undefined, listening: Promise.resolve() };
    if (inherited) {
      listening = new Promise<void>((resolve, reject) => this.claims.set(name, { record, fd: inherited.fd, resolve, reject }));
    } else {
      listening = whenListening(server);
      if ('path' in target) {
        record.unixPath = target.path;
        server.listen({ fd: this.createUnixListener(target.path, target.backlog ?? 511) });
      } else if ('port' in target) {
        const { port, host, backlog, ipv6Only } = target;
        server.listen({ port, host, backlog, ipv6Only });
      }
    }
    // A rejection is reported by ready() as well; this keeps an unawaited listen() from crashing.
    listening.catch(() => {});
    record.listening = listening;
    this.records.push(record);
    return listening;
  }

  /**
   * The application is ready to serve. Fresh: opens the channel so this process can be taken
   * over; resolves null. Successor: confirms to the predecessor (the point of no return),
   * receives every connection wave by wave, then opens the channel; resolves with the stats.
   */
  ready(): Promise<TakeoverStats | null> {
    if (this.readyPromise) return this.readyPromise;
    this.expectState('started', 'ready');
    this.state = 'readying';
    this.readyPromise = this.becomeReady().then(
      (stats) => {
        if (this.state !== 'closed') this.state = 'serving';
        return stats;
      },
      (error: Error) => {
        if (this.state !== 'closed') this.state = 'failed';
        throw error;
      },
    );
    return this.readyPromise;
  }

  private async becomeReady(): Promise<TakeoverStats | null> {
    if (!this.isSuccessor) {
      await Promise.all(this.records.map((r) => r.listening));
      this.openChannel(createChannelFd(this.options.path));
      return null;
    }
    // This process's own new listeners must work before it commits: after COMMIT the
    // predecessor is gone, and a listener that failed then would be an outage.
    try {
      await Promise.all(this.records.filter((r) => !r.inherited).map((r) => r.listening));
    } catch (error) {
      const reason = error instanceof TakeoverError ? error : systemError('listen', error);
      this.incoming?.abort(reason);
      throw reason;
    }
    const incoming = this.incoming;
    if (!incoming) throw this.failure ?? new TakeoverError(ErrorCodes.INVALID_STATE, 'the takeover is no longer running');
    const stats = await new Promise<TakeoverStats>((resolve, reject) => {
      this.settleReady = { resolve, reject };
      incoming.ready();
    });
    await Promise.all(this.records.map((r) => r.listening));
    return stats;
  }

  /**
   * Stops being takeover-able: closes the channel and, when no successor took over, removes
   * the channel path and the Unix listener paths this process created. Servers are the app's
   * to close.
   */
  async close(): Promise<void> {
    if (this.state === 'closed') return;
    // Past a commit, the other process depends on this one finishing: let the takeover end.
    if (this.outgoing?.isCommitted) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.off('handover', done);
          this.off('rollback', done);
          resolve();
        };
        this.on('handover', done);
        this.on('rollback', done);
      });
    }
    if (this.incoming?.isCommitted) await this.readyPromise?.catch(() => {});
    const handedOver = this.state === 'handed-over';
    this.state = 'closed';
    const shuttingDown = new TakeoverError(ErrorCodes.ABORTED, 'the server is shutting down');
    this.outgoing?.abort(shuttingDown);
    this.incoming?.abort(shuttingDown);
    this.channelListener?.close();
    this.channelListener = undefined;
    if (handedOver) return;
    // A Unix listener's file is ours if we bound it, or inherited it and listen on it now.
    const unixPaths = this.records.map((r) => r.unixPath ?? (r.kind === 'unix' ? r.server.address() : null));
    for (const p of [this.ownsPaths ? this.options.path : null, ...unixPaths]) {
      if (typeof p === 'string') fs.rmSync(p, { force: true });
    }
  }

  // ---- connections ----

  private track(socket: net.Socket, listener: number): void {
    if (this.ids.has(socket)) return;
    const id = this.nextId++;
    this.ids.set(socket, id);
    this.conns.set(id, { socket, listener });
    trackWrites(socket);
    socket.once('close', () => {
      this.conns.delete(id);
      this.outgoing?.connectionClosed(id);
      this.maybeExit();
    });
    this.outgoing?.connectionAdded(id);
  }

  private createUnixListener(path: string, backlog: number): number {
    if (fs.existsSync(path)) {
      if (isSocketLive(path) || !fs.lstatSync(path).isSocket()) {
        throw new TakeoverError(ErrorCodes.SYSTEM, `listen ${path}: EADDRINUSE`);
      }
      fs.rmSync(path);
    }
    try {
      // Through the addon, not server.listen({ path }): libuv unlinks a path it bound when the
      // server closes, which would pull the file from under the successor.
      return native.unixListen(path, 'stream', backlog);
    } catch (error) {
      throw systemError(`listen ${path}`, error);
    }
  }

  // ---- the channel: successors arrive here ----

  private openChannel(fd: number): void {
    this.ownsPaths = true;
    this.channelListener = new ChannelListener(
      fd,
      (channel) => this.onSuccessor(channel),
      (error) => this.emit('warning', error),
    );
    this.channelListener.setAccepting(true);
  }

  private onSuccessor(channel: Channel): void {
    const refuse = (code: typeof ErrorCodes.PEER_REJECTED | typeof ErrorCodes.BUSY, message: string) => {
      channel.on('error', () => {});
      channel.sendLast(encode.abort(code, message));
      this.emit('refused', new TakeoverError(code, message));
    };
    const { uid, pid } = channel.peer;
    if (!this.options.allowUids.includes(uid)) {
      return refuse(ErrorCodes.PEER_REJECTED, `uid ${uid} (pid ${pid}) is not allowed to take over`);
    }
    if (this.outgoing || this.incoming || this.state !== 'serving') {
      return refuse(ErrorCodes.BUSY, `a takeover is already in progress (refused pid ${pid})`);
    }
    this.outgoing = new PredecessorSession(this.predecessorHost(channel.peer.uid), channel);
  }

  private predecessorHost(peerUid: number): PredecessorHost {
    return {
      options: this.options,
      duplicateListeners: () => {
        const stopped = this.records.find((r) => serverFd(r.server) < 0);
        if (stopped) throw new TakeoverError(ErrorCodes.INVALID_STATE, `server '${stopped.name}' is not listening`);
        const entries: (ListenerEntry & { fd: number })[] = this.records.map((r) => ({
          name: r.name,
          kind: r.kind,
          fd: native.dup(serverFd(r.server)),
        }));
        entries.push({ name: CHANNEL_LISTENER_NAME, kind: 'channel', fd: native.dup(this.channelListener!.fd) });
        return entries;
      },
      connections: () => this.conns,
      captureState: (socket) => {
        if (!this.options.captureState) return undefined;
        try {
          const state = this.options.captureState(socket);
          if (state === undefined || Buffer.isBuffer(state)) return state;
          throw new TypeError(`captureState returned ${typeof state}, not a Buffer or undefined`);
        } catch (error) {
          this.emit('warning', new TakeoverError(ErrorCodes.INVALID_STATE, `captureState failed; the connection stays here: ${String(error)}`, { cause: error }));
          return 'failed';
        }
      },
      stopAccepting: () => {
        this.channelListener?.setAccepting(false);
        for (const r of this.records) stopAccepting(r.server);
      },
      resumeAccepting: (listeners) => {
        for (const entry of listeners) {
          const record = this.records.find((r) => r.name === entry.name);
          if (record && serverFd(record.server) < 0) record.server.listen({ fd: entry.fd });
          else native.close(entry.fd);
        }
        this.channelListener?.setAccepting(true);
      },
      onFreeze: (socket) => this.emitSafely('freeze', socket),
      onRelease: (socket) => this.emitSafely('release', socket),
      onHello: (pid) => this.emit('takeover', { pid, uid: peerUid }),
      onRollback: (error, started) => {
        this.outgoing = undefined;
        if (started) this.emit('rollback', error);
      },
      onPartialHandover: (error, stats) => {
        this.emit('warning', error);
        this.retire(stats);
      },
      onHandover: (stats) => this.retire(stats),
    };
  }

  /** Handed over: the successor owns the channel and listeners; exit once the last connection here closes. */
  private retire(stats: TakeoverStats): void {
    this.outgoing = undefined;
    this.state = 'handed-over';
    this.channelListener?.close();
    this.channelListener = undefined;
    this.emit('handover', stats);
    this.maybeExit();
  }

  /** Application listeners run inside the takeover's steps; one that throws must not stop them halfway. */
  private emitSafely(event: 'freeze' | 'release' | 'adopt', socket: net.Socket): void {
    try {
      this.emit(event, socket);
    } catch (error) {
      this.emit('warning', new TakeoverError(ErrorCodes.INVALID_STATE, `a '${event}' listener threw: ${String(error)}`, { cause: error }));
    }
  }

  private successorHost(): SuccessorHost {
    return {
      options: this.options,
      onListeners: (listeners) => {
        this.inherited = [...listeners];
        this.inheritedReady?.();
      },
      unclaimedListeners: () =>
        this.inherited.filter((l) => l.kind !== 'channel' && !this.claims.has(l.name)).map((l) => l.name),
      startListening: () => {
        for (const claim of this.claims.values()) {
          whenListening(claim.record.server).then(claim.resolve, claim.reject);
          claim.record.server.listen({ fd: claim.fd });
        }
        this.openChannel(this.inherited.find((l) => l.kind === 'channel')!.fd);
      },
      adopt: (socket, listener, input, output, state) => {
        const name = this.inherited[listener]!.name;
        const index = this.records.findIndex((r) => r.name === name);
        const server = this.records[index]!.server;
        this.track(socket, index);
        startInherited(socket, server, input, output, () => {
          if (state) {
            try {
              if (!this.options.restoreState) throw new Error('no restoreState hook is set');
              this.options.restoreState(socket, state);
            } catch (error) {
              this.emit('warning', new TakeoverError(ErrorCodes.INVALID_STATE, `connection state could not be restored: ${String(error)}`, { cause: error }));
            }
          }
          this.emitSafely('adopt', socket);
        });
      },
      onFailure: (error) => {
        this.incoming = undefined;
        this.failure = error;
        for (const claim of this.claims.values()) claim.reject(error);
        this.startFailure?.(error);
        this.settleReady?.reject(error);
      },
      onDone: (stats, warning) => {
        this.incoming = undefined;
        if (warning) this.emit('warning', warning);
        this.settleReady?.resolve(stats);
      },
    };
  }

  private maybeExit(): void {
    if (this.state !== 'handed-over' || this.conns.size > 0 || this.exitScheduled) return;
    this.exitScheduled = true;
    this.emit('exit');
    if (this.options.exitOnHandover) setImmediate(() => process.exit(0));
  }

  private expectState(expected: State, method: string): void {
    if (this.state !== expected) {
      throw new TakeoverError(ErrorCodes.INVALID_STATE, `${method}() cannot be called now (state: ${this.state})`);
    }
  }
}
