/**
 * The public lifecycle, in one sentence: `start()` (fresh, or as the successor of whoever listens
 * on the channel path), `listen()` each server, `ready()`; later `upgrade()` (or any successor)
 * takes this process over, `'handover'` fires, and `done()` resolves once nothing is left here.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Channel } from './channel.js';
import {
  ChannelListener,
  checkChannelPath,
  checkReplaceable,
  connectChannel,
  createChannelFd,
  isSocketLive,
  removeChannelPath,
  WarningLimiter,
} from './channel-listener.js';
import { PredecessorSession } from './predecessor.js';
import { encode } from './protocol.js';
import { isTlsServer, serverFd, trackWrites } from './sockets.js';
import * as native from './native.js';
import { ErrorCodes, TakeoverError, hookError, systemError } from './errors.js';
import type { RollbackReport, TakeoverStats } from './stats.js';
import { resolveOptions, invalidOption, type ReadyMessage, type ResolvedOptions, type TakeoverOptions } from './options.js';
import { ListenerRegistry, whenListening, type ListenerRecord, type ListenTarget } from './listeners.js';
import { Connections } from './connections.js';
import type { ConnectionAdapter } from './adapters/adapter.js';
import { NetAdapter } from './adapters/net.js';
import { HttpAdapter, isHttpServer } from './adapters/http.js';
import { WebSocketAdapter, type WebSocketServerLike } from './adapters/ws.js';
import { startUpgrade, type Upgrade, type UpgradeOptions } from './upgrade.js';
import { isAlive } from './processes.js';
import { HandingOver } from './handing-over.js';
import { TakingOver } from './taking-over.js';
import { Systemd, takeActivatedListeners } from './systemd.js';

export type { TakeoverOptions, ReadyMessage } from './options.js';
export type { ListenTarget } from './listeners.js';
export type { UpgradeOptions } from './upgrade.js';

/**
 * - `new`, `starting`, `started` (after `start()`), `readying` (in `ready()`), `serving`;
 * - `handing-over`: a successor is taking this process over (it still serves what has not moved);
 * - `draining`: handed over; connections that could not move are finishing here;
 * - `done`: nothing left here ({@link Takeover.done} has resolved);
 * - `closed` (after `close()`), `failed` (`start()` or `ready()` failed).
 */
export type TakeoverState =
  | 'new'
  | 'starting'
  | 'started'
  | 'readying'
  | 'serving'
  | 'handing-over'
  | 'draining'
  | 'done'
  | 'closed'
  | 'failed';

export interface TakeoverEvents {
  /** Old process: a successor connected, passed the uid check and said HELLO (pid and uid from SO_PEERCRED). */
  successor: [peer: { pid: number; uid: number }];
  /**
   * Old process: a peer was turned away (uid not allowed, or a takeover already running). At most
   * one per kind and second; the ones held back are summed up in the next.
   */
  refused: [error: TakeoverError];
  /**
   * Old process: a takeover failed; everything it had not handed over keeps being served here.
   * After the commit, `report` says how many connections went with a successor that died, how
   * many this process serves on, and that its listeners accept again.
   */
  rollback: [error: TakeoverError, report: RollbackReport];
  /** Old process: a connection was busy when its turn came; it waits (up to `quiesceTimeoutMs`) for a later wave. */
  defer: [socket: net.Socket];
  /** Old process: a connection stopped here, its bytes taken out for the successor. */
  freeze: [socket: net.Socket];
  /** Old process: a connection now lives in the successor; its socket here emits `'moved'`, not `'close'`. */
  release: [socket: net.Socket];
  /** Old process: everything that could move has moved. */
  handover: [stats: TakeoverStats];
  /** Old process: handed over and the last connection left here has closed: time to exit. */
  done: [stats: TakeoverStats];
  /** New process: an inherited connection now lives here (before the server's 'connection'). */
  adopt: [socket: net.Socket];
  /** Old process: `upgrade()` started this successor process. */
  upgrade: [successor: { pid: number; args: readonly string[] }];
  /** Something went wrong that did not stop this process from serving (docs/API.md lists the cases). Never `'error'`. */
  warning: [error: TakeoverError];
}

/** States before the first 'serving': an upgrade() asked for then waits for it. */
const STARTING_STATES: readonly TakeoverState[] = ['new', 'starting', 'started', 'readying'];

/**
 * One process's takeover lifecycle, on one channel path: see the module comment, and docs/API.md
 * for every member, event and error. Methods called out of order throw (or reject with)
 * ERR_TAKEOVER_INVALID_STATE; bad arguments ERR_TAKEOVER_INVALID_OPTION.
 */
export class Takeover extends EventEmitter<TakeoverEvents> {
  /** The options, validated and with the defaults filled in. */
  readonly options: ResolvedOptions;
  private currentState: TakeoverState = 'new';
  private role: 'fresh' | 'successor' = 'fresh';
  private readonly registry = new ListenerRegistry();
  private readonly connections = new Connections();
  private readonly webSocketAdapters: WebSocketAdapter[] = [];
  private channelListener: ChannelListener | undefined;
  private outgoing: PredecessorSession | undefined;
  private incoming: TakingOver | undefined;
  private readyPromise: Promise<TakeoverStats | null> | undefined;
  private upgrading: Upgrade | undefined;
  private handoverStats: TakeoverStats | undefined;
  private readonly donePromise: Promise<TakeoverStats>;
  private resolveDone!: (stats: TakeoverStats) => void;
  /** Settles when this process first serves (or never will): an upgrade() asked for earlier waits for it. */
  private readonly servingPromise: Promise<void>;
  private settleServing!: { resolve: () => void; reject: (error: Error) => void };
  /** This process created or inherited the channel and no successor has taken it: close() removes the files. */
  private ownsPaths = false;
  /** Failed successors that may still hold copies of the listeners: close() names those still alive. */
  private readonly listenerHolders = new Set<number>();
  /** A peer that reconnects in a loop is refused each time: one 'refused' per kind and second, with a count. */
  private readonly refusals = new WarningLimiter((error) => this.emit('refused', error));
  private readonly systemd: Systemd;
  /** What was wrong with systemd's LISTEN_FDS, told at ready(), once the application listens for warnings. */
  private activationProblems: TakeoverError[] = [];

  /** Validates the options; nothing happens until {@link start}. Throws ERR_TAKEOVER_INVALID_OPTION. */
  constructor(options: TakeoverOptions) {
    super();
    this.options = resolveOptions(options);
    this.donePromise = new Promise((resolve) => (this.resolveDone = resolve));
    this.servingPromise = new Promise((resolve, reject) => (this.settleServing = { resolve, reject }));
    this.servingPromise.catch(() => {});
    this.connections.onMaybeQuiet = (id) => this.outgoing?.connectionMaybeQuiet(id);
    this.systemd = new Systemd({ enabled: this.options.systemd, fdStore: this.options.fdStore }, (error) => this.emit('warning', error));
  }

  /** `new Takeover(options)` then `start()`. */
  static async start(options: TakeoverOptions): Promise<Takeover> {
    const takeover = new Takeover(options);
    await takeover.start();
    return takeover;
  }

  /** Where this process is in its lifecycle (see {@link TakeoverState}). */
  get state(): TakeoverState {
    return this.currentState;
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
    return this.registry.claimable.map((l) => ({ name: l.name, kind: l.kind as 'tcp' | 'unix' }));
  }

  /**
   * The listening sockets systemd passed to this process (socket activation, or its fd store
   * after a restart), after `start()`: `listen(server, { name })` or `{ systemd: index }` adopts
   * one. Those no `listen()` adopts are closed at `ready()`, with a warning.
   */
  get activatedListeners(): readonly { index: number; name: string; kind: 'tcp' | 'unix' }[] {
    return this.registry.activated.map(({ index, name, kind }) => ({ index, name, kind }));
  }

  /** Connections tracked by this process (those of servers passed to {@link listen}). */
  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Fresh: checks the channel path. Successor: connects to the predecessor, checks its uid and
   * receives its listeners; pre-copy of the connections goes on in the background.
   * Rejects with ERR_TAKEOVER_PATH_UNSAFE, _CHANNEL_IN_USE, _NO_PREDECESSOR, _PEER_REJECTED,
   * _ABORTED (`reason`: the predecessor's code), _FD_LIMIT, _TIMEOUT, _PEER_CLOSED, _PROTOCOL...;
   * the state is then 'failed', and a successor should exit (its predecessor serves on).
   */
  async start(): Promise<void> {
    this.expectState('new', 'start');
    this.currentState = 'starting';
    const { path, mode } = this.options;
    if (this.options.systemd) {
      const { listeners, problems } = takeActivatedListeners();
      this.registry.activated = listeners;
      this.activationProblems = problems;
    }
    try {
      checkChannelPath(path);
      if (mode === 'fresh' && isSocketLive(path)) {
        throw new TakeoverError(ErrorCodes.CHANNEL_IN_USE, `a server already listens on the takeover path ${path}; take it over instead`);
      }
      const channel = mode === 'fresh' ? undefined : this.connectUnlessAuto(path);
      if (channel) {
        this.role = 'successor';
        this.incoming = new TakingOver(
          this.options,
          this.registry,
          this.webSocketAdapters,
          {
            warning: (error) => this.emit('warning', error),
            track: (socket, listener) => this.track(socket, listener),
            adopt: (socket) => this.emitSafely('adopt', socket),
            openChannel: (fd) => this.openChannel(fd),
            // Not the channel's SO_PEERCRED pid: that is whoever first listened on the channel,
            // the head of the chain, not the process this one takes over from.
            listening: (predecessorPid) => this.systemd.listening(predecessorPid),
          },
          channel,
        );
        await this.incoming.started;
      } else {
        checkReplaceable(path);
      }
      this.currentState = 'started';
    } catch (error) {
      this.currentState = 'failed';
      this.settleServing.reject(error as Error);
      throw error;
    }
  }

  /** In 'auto' mode nobody listening means a fresh start; in 'successor' mode it is an error. */
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
   * taking over, else on a new socket. Every connection of the server is tracked for takeovers,
   * through the adapter of its protocol: `http.Server`s move keep-alive connections between
   * requests, other servers whenever they are not marked {@link busy}.
   *
   * Resolves once the server listens, or (successor) once it has claimed the predecessor's
   * listener, at once: the server starts accepting on it after the commit, once the predecessor
   * has stopped. Safe to await before `ready()`. A failure rejects this promise and `ready()`. The
   * name defaults to `tcp:<host>:<port>` or `unix:<path>`, exactly as given. Throws (synchronously)
   * ERR_TAKEOVER_INVALID_STATE, _INVALID_OPTION, _TLS_UNSUPPORTED for a TLS server, and
   * _SYSTEM for a `{ path }` that cannot be bound.
   */
  listen(server: net.Server, target: ListenTarget): Promise<void> {
    this.expectState('started', 'listen');
    if (!(server instanceof net.Server)) throw invalidOption('server must be a net.Server (or a subclass such as http.Server)');
    if (isTlsServer(server)) {
      throw new TakeoverError(
        ErrorCodes.TLS_UNSUPPORTED,
        'a TLS server cannot be handed over (its sessions live in this process); terminate TLS in front and listen() with plain HTTP or TCP',
      );
    }
    const { name, kind, backlog, inherited, activated } = this.registry.check(server, target);
    const index = this.registry.records.length;
    const record: ListenerRecord = {
      name,
      kind,
      backlog,
      server,
      adapter: this.adapterFor(server),
      inherited,
      activated,
      listening: Promise.resolve(),
    };
    server.prependListener('connection', (socket: net.Socket) => this.track(socket, index));
    let claimed: Promise<void>;
    if (inherited) {
      record.listening = this.incoming!.claim(record);
      claimed = Promise.resolve();
    } else {
      record.listening = whenListening(server);
      this.registry.bind(record, target);
      claimed = record.listening;
    }
    // ready() reports a failure to listen as well: an unawaited listen() must not crash the process.
    record.listening.catch(() => {});
    this.registry.records.push(record);
    return claimed;
  }

  /**
   * Hands this `ws` WebSocketServer's connections over at frame boundaries, and gives the ones
   * a predecessor hands over to it as `'connection'` events. Call it once per WebSocketServer,
   * on both sides, in the same order; in a successor before `ready()` (a WebSocket that arrives
   * with no server for it is closed), in a fresh process any time while serving. It makes the
   * server negotiate permessage-deflate without context takeover (compression windows cannot
   * move). Throws ERR_TAKEOVER_INVALID_OPTION, _INVALID_STATE.
   */
  webSockets(wss: WebSocketServerLike): void {
    if (!['started', 'readying', 'serving'].includes(this.currentState)) this.expectState('started', 'webSockets');
    if (
      wss === null ||
      typeof wss !== 'object' ||
      typeof wss.handleUpgrade !== 'function' ||
      typeof (wss.options as { WebSocket?: unknown })?.WebSocket !== 'function'
    ) {
      throw invalidOption('webSockets() takes a ws WebSocketServer');
    }
    if (this.webSocketAdapters.some((a) => a.wss === wss)) throw invalidOption('this WebSocketServer is already registered');
    this.webSocketAdapters.push(new WebSocketAdapter(wss, this.webSocketAdapters.length, this.maybeQuiet));
  }

  /**
   * Marks a connection (a `net.Socket`, or a WebSocket of a server given to {@link webSockets})
   * busy: a takeover does not move it until the returned function is called. Mark each request
   * your application answers asynchronously; a connection still busy at `quiesceTimeoutMs`
   * stays in this process, which finishes it. Marks nest. Throws ERR_TAKEOVER_INVALID_OPTION for
   * anything else.
   */
  busy(connection: net.Socket | object): () => void {
    const socket = connection instanceof net.Socket ? connection : this.webSocketAdapters.map((a) => a.socketOf(connection)).find((s) => s);
    if (!socket) throw invalidOption('busy() takes a net.Socket or a WebSocket of a server given to webSockets()');
    return this.connections.markBusy(socket);
  }

  /**
   * The application is ready to serve. Fresh: opens the channel so this process can be taken
   * over; resolves null. Successor: confirms to the predecessor (the point of no return),
   * listens on the inherited listeners and channel once the predecessor has stopped accepting,
   * receives every connection wave by wave; resolves with the stats. Throws
   * ERR_TAKEOVER_INVALID_STATE unless started (a second call returns the same promise); rejects,
   * with the state 'failed', when a listener or the takeover fails before the waves begin.
   */
  ready(): Promise<TakeoverStats | null> {
    if (this.readyPromise) return this.readyPromise;
    this.expectState('started', 'ready');
    this.currentState = 'readying';
    this.readyPromise = this.becomeReady().then(
      (stats) => {
        if (this.currentState === 'readying') this.currentState = 'serving';
        this.settleServing.resolve();
        if (this.options.notifyParent) this.notifyParent(stats);
        return stats;
      },
      (error: Error) => {
        if (this.currentState === 'readying') this.currentState = 'failed';
        this.settleServing.reject(error);
        throw error;
      },
    );
    return this.readyPromise;
  }

  /** A parent that went away, or never listened, is not this process's failure: nothing to report. */
  private notifyParent(stats: TakeoverStats | null): void {
    if (!process.send || !process.connected) return;
    const message: ReadyMessage = { type: 'socket-takeover:ready', pid: process.pid, connections: this.connections.size, stats };
    process.send(message, undefined, {}, () => {});
  }

  private async becomeReady(): Promise<TakeoverStats | null> {
    for (const problem of this.activationProblems.splice(0)) this.emit('warning', problem);
    this.closeUnadopted();
    const records = this.registry.records;
    if (!this.isSuccessor) {
      await Promise.all(records.map((r) => r.listening));
      this.openChannel(createChannelFd(this.options.path));
      this.systemd.serving(this.ownListeners());
      return null;
    }
    // This process's own new listeners must work before it commits: after COMMIT the
    // predecessor is gone, and a listener that failed then would be an outage.
    try {
      await Promise.all(records.filter((r) => !r.inherited).map((r) => r.listening));
    } catch (error) {
      const reason = systemError('listen', error);
      this.incoming?.abort(reason);
      throw reason;
    }
    const stats = await this.incoming!.commit();
    await Promise.all(records.map((r) => r.listening));
    this.systemd.tookOver(stats, this.ownListeners());
    return stats;
  }

  /** The listeners this process bound itself (not adopted): the ones it may put in systemd's fd store. */
  private ownListeners(): { name: string; fd: number }[] {
    return this.registry.records.filter((r) => !r.inherited && !r.activated).map((r) => ({ name: r.name, fd: serverFd(r.server) }));
  }

  /**
   * A listener systemd passed that nothing adopts would hold its port with nobody accepting:
   * close this process's copy. One from the fd store (a listener since dropped from the
   * configuration) leaves the store too; removing a .socket unit's name from the store is a no-op.
   */
  private closeUnadopted(): void {
    for (const listener of this.registry.unadopted()) {
      native.close(listener.fd);
      // A listener of that name is served, inherited from the predecessor: systemd's copy is the
      // fd store's entry for it (a successor started with the store's $LISTEN_FDS), and
      // FDSTOREREMOVE would leave the listener unstored, lost at the next crash.
      if (this.registry.records.some((r) => r.name === listener.name)) continue;
      this.systemd.forget(listener.name);
      this.emit(
        'warning',
        new TakeoverError(
          ErrorCodes.LISTENER_UNCLAIMED,
          `systemd passed listener #${listener.index} '${listener.name}' (fd ${listener.fd}) and no listen() adopted it: closed`,
        ),
      );
    }
    this.registry.activated = this.registry.activated.filter((a) => this.registry.records.some((r) => r.activated === a));
  }

  /**
   * Starts a successor (this program again, same arguments, unless `options.args` says
   * otherwise) and lets it take this process over. Resolves with this side's stats at the
   * handover; rejects with the rollback's error (this process then serves on), or with
   * ERR_TAKEOVER_SUCCESSOR_FAILED if the successor exits or never connects within `timeoutMs`.
   * One at a time: ERR_TAKEOVER_BUSY while a takeover runs; ERR_TAKEOVER_INVALID_OPTION for bad
   * options. Called before this process serves (while it starts or takes over), it waits until
   * it does; ERR_TAKEOVER_INVALID_STATE if it never does, or once it is handed over or closed.
   * It never throws.
   */
  upgrade(options: UpgradeOptions = {}): Promise<TakeoverStats> {
    if (STARTING_STATES.includes(this.currentState)) {
      // Asked for while this process starts or takes over (a SIGUSR2 to a successor just
      // started): the upgrade comes once it serves, not never.
      const asked = this.currentState;
      return this.servingPromise.then(
        () => this.upgrade(options),
        () => {
          throw new TakeoverError(ErrorCodes.INVALID_STATE, `upgrade() was asked for in state ${asked}, and this process never served`);
        },
      );
    }
    const refuse = (error: TakeoverError) => {
      this.systemd.refused(error, this.outgoing?.isListening === true);
      return Promise.reject(error);
    };
    if (this.upgrading || this.outgoing) return refuse(new TakeoverError(ErrorCodes.BUSY, 'a takeover is already in progress'));
    if (this.currentState !== 'serving') {
      return refuse(new TakeoverError(ErrorCodes.INVALID_STATE, `upgrade() needs a serving process (state: ${this.currentState})`));
    }
    this.systemd.handingOver('Upgrading: starting a successor');
    const upgrade = startUpgrade(options, {
      timeoutMs: this.options.timeoutMs,
      hasSuccessor: () => this.outgoing !== undefined,
      isHandedOver: () => this.handoverStats !== undefined,
      onStart: (upgrade) => {
        this.upgrading = upgrade;
        this.emit('upgrade', upgrade.successor);
      },
      onSettled: (upgrade) => {
        if (this.upgrading === upgrade) this.upgrading = undefined;
      },
    });
    upgrade.catch((error: TakeoverError) => this.systemd.resumed(error));
    return upgrade;
  }

  /**
   * Resolves once this process has handed everything over and the last connection it kept has
   * closed, with the handover's stats: the time to exit. The library never exits the process
   * itself; `takeover.done().then(() => process.exit(0))` is the usual ending.
   */
  done(): Promise<TakeoverStats> {
    return this.donePromise;
  }

  /**
   * Stops being takeover-able: closes the channel and, when no successor took over, removes
   * the channel path and the Unix listener paths this process created. A takeover of this
   * process past its commit is let finish first, one before it is aborted; so is this process's
   * own takeover of a predecessor before its commit. Servers are the app's to close.
   */
  async close(): Promise<void> {
    if (this.currentState === 'closed') return;
    // Past a commit, the other process depends on this one finishing: let the takeover end.
    if (this.outgoing?.isCommitted) {
      await new Promise<void>((resolve) => {
        const settled = () => {
          this.off('handover', settled);
          this.off('rollback', settled);
          resolve();
        };
        this.on('handover', settled);
        this.on('rollback', settled);
      });
    }
    if (this.incoming?.isCommitted) await this.readyPromise?.catch(() => {});
    const handedOver = this.handoverStats !== undefined;
    if (this.currentState === 'serving') this.systemd.stopping();
    this.currentState = 'closed';
    this.settleServing.reject(new TakeoverError(ErrorCodes.INVALID_STATE, 'closed'));
    const shuttingDown = new TakeoverError(ErrorCodes.ABORTED, 'the server is shutting down');
    this.outgoing?.abort(shuttingDown);
    this.incoming?.abort(shuttingDown);
    this.channelListener?.close();
    this.channelListener = undefined;
    for (const pid of this.listenerHolders) if (isAlive(pid)) this.warnListenerHeld(pid, 'still lives as this process stops');
    this.listenerHolders.clear();
    if (handedOver) return;
    try {
      // Only our own socket: whatever was put at the path since stays.
      if (this.ownsPaths) removeChannelPath(this.options.path);
    } catch (error) {
      this.emit('warning', error instanceof TakeoverError ? error : systemError('remove the channel path', error));
    }
    // Under systemd the fd store may hold a listener after this process is gone: its file stays
    // (a stale one is replaced at the next bind).
    if (!(this.systemd.supervised && this.options.fdStore)) for (const p of this.registry.unixPaths()) fs.rmSync(p, { force: true });
  }

  // ---- connections ----

  /** An adapter's word that a connection may have become quiet: a takeover waiting for it moves it now. */
  private readonly maybeQuiet = (socket: net.Socket): void => {
    if (!this.outgoing) return;
    const id = this.connections.idOf(socket);
    if (id !== undefined) this.outgoing.connectionMaybeQuiet(id);
  };

  private adapterFor(server: net.Server): ConnectionAdapter {
    return isHttpServer(server) ? new HttpAdapter(server, this.maybeQuiet) : new NetAdapter(server);
  }

  private track(socket: net.Socket, listener: number): void {
    const connection = this.connections.add(socket, listener);
    if (!connection) return;
    trackWrites(socket);
    socket.once('close', () => {
      this.connections.delete(connection.id);
      this.outgoing?.connectionClosed(connection.id);
      this.maybeDone();
    });
    this.outgoing?.connectionAdded(connection.id);
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
      this.refusals.report(code, new TakeoverError(code, message));
    };
    const { uid, pid } = channel.peer;
    if (!this.options.allowUids.includes(uid)) {
      return refuse(ErrorCodes.PEER_REJECTED, `uid ${uid} (pid ${pid}) is not allowed to take over`);
    }
    if (this.outgoing || this.incoming?.running || this.incoming?.readingOn || this.currentState !== 'serving') {
      const holder = this.outgoing
        ? `, with pid ${this.outgoing.peerPid}`
        : this.incoming?.running
          ? ', this process taking over'
          : this.incoming?.readingOn
            ? ', this process still reading the last waves of the takeover it gave up'
            : ` (state ${this.currentState})`;
      return refuse(ErrorCodes.BUSY, `a takeover is already in progress${holder}: refused pid ${pid}`);
    }
    const { options, registry, connections, webSocketAdapters } = this;
    this.outgoing = new PredecessorSession(
      new HandingOver({ options, registry, connections, webSocketAdapters }, this.channelListener!, uid, {
        warning: (error) => this.emit('warning', error),
        step: (event, socket) => this.emitSafely(event, socket),
        successor: (peer) => {
          this.currentState = 'handing-over';
          this.systemd.handingOver(`Handing over to pid ${peer.pid}`);
          this.emit('successor', peer);
        },
        rollback: (error, started, report) => {
          this.outgoing = undefined;
          if (this.currentState === 'handing-over') this.currentState = 'serving';
          this.systemd.resumed(error);
          if (started) this.emit('rollback', error, report);
          if (report.listenerHolder !== 0) {
            this.listenerHolders.add(report.listenerHolder);
            this.warnListenerHeld(report.listenerHolder, 'still lives');
          }
          this.upgrading?.reject(error);
        },
        handover: (stats) => this.retire(stats),
      }),
      channel,
    );
  }

  /** Closing the listeners here does not free their ports while another process holds copies: say who. */
  private warnListenerHeld(pid: number, when: string): void {
    const names = this.registry.records.map((r) => r.name).join(', ');
    this.emit(
      'warning',
      new TakeoverError(
        ErrorCodes.LISTENER_HELD,
        `pid ${pid}, a failed successor that was sent copies of the listeners (${names}), ${when}: it may keep them listening until it exits`,
      ),
    );
  }

  /** Handed over: the successor owns the channel and listeners; done once the last connection here closes. */
  private retire(stats: TakeoverStats): void {
    this.outgoing = undefined;
    this.systemd.handedOver();
    this.handoverStats = stats;
    if (this.currentState !== 'closed') this.currentState = 'draining';
    this.channelListener?.close();
    this.channelListener = undefined;
    this.emit('handover', stats);
    this.upgrading?.resolve(stats);
    this.maybeDone();
  }

  private maybeDone(): void {
    const stats = this.handoverStats;
    if (!stats || this.connections.size > 0 || this.currentState === 'done') return;
    if (this.currentState === 'draining') this.currentState = 'done';
    this.resolveDone(stats);
    this.emit('done', stats);
  }

  /** Application listeners run inside the takeover's steps; one that throws must not stop them halfway. */
  private emitSafely(event: 'defer' | 'freeze' | 'release' | 'adopt', socket: net.Socket): void {
    try {
      this.emit(event, socket);
    } catch (error) {
      this.emit('warning', hookError(`a '${event}' listener`, error));
    }
  }

  private expectState(expected: TakeoverState, method: string): void {
    if (this.currentState !== expected) {
      throw new TakeoverError(ErrorCodes.INVALID_STATE, `${method}() cannot be called now (state: ${this.currentState})`);
    }
  }
}
