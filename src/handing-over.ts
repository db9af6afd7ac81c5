/**
 * The old process handing itself over, as its PredecessorSession sees it: the listeners it
 * duplicates, the connections it freezes (each through the adapter that speaks for it), and
 * what it does once they moved. The lifecycle (states, events, `upgrade()`) stays with Takeover,
 * which hears about each step through {@link HandoverEvents}.
 */
import type * as net from 'node:net';
import * as native from './native.js';
import type { ChannelListener } from './channel-listener.js';
import type { CapturedState, PredecessorHost } from './predecessor.js';
import type { ListenerEntry } from './protocol.js';
import { releaseMoved, serverFd, stopAccepting, type LateUse } from './sockets.js';
import { ErrorCodes, TakeoverError, hookError } from './errors.js';
import type { RollbackReport, TakeoverStats } from './stats.js';
import type { ResolvedOptions } from './options.js';
import { CHANNEL_LISTENER_NAME, DEFAULT_BACKLOG, listenOnFd, type ListenerRegistry } from './listeners.js';
import type { Connections } from './connections.js';
import type { ConnectionAdapter, Readiness } from './adapters/adapter.js';
import type { WebSocketAdapter } from './adapters/ws.js';

/** What this process serves, as a handover reads it. */
export interface Served {
  readonly options: ResolvedOptions;
  readonly registry: ListenerRegistry;
  readonly connections: Connections;
  readonly webSocketAdapters: readonly WebSocketAdapter[];
}

/** What the lifecycle hears from a handover. */
export interface HandoverEvents {
  warning(error: TakeoverError): void;
  /** The application's listener of a step, which must not stop the handover halfway. */
  step(event: 'defer' | 'freeze' | 'release', socket: net.Socket): void;
  successor(peer: { pid: number; uid: number }): void;
  rollback(error: TakeoverError, started: boolean, report: RollbackReport): void;
  /** Everything that could move has moved (a warning came first when the successor stopped early). */
  handover(stats: TakeoverStats): void;
}

export class HandingOver implements PredecessorHost {
  readonly options: ResolvedOptions;

  /** One reporter for every released connection: a closure per connection would outlive it in the heap. */
  private readonly reportLateUse: LateUse = (socket, what) => {
    const error = new TakeoverError(
      ErrorCodes.CONNECTION_MOVED,
      `${what}() on a connection that moved to the successor: it does not reach the client from this process`,
      { socket },
    );
    this.events.warning(error);
    return error;
  };

  constructor(
    private readonly served: Served,
    private readonly channelListener: ChannelListener,
    private readonly peerUid: number,
    private readonly events: HandoverEvents,
  ) {
    this.options = served.options;
  }

  duplicateListeners(): (ListenerEntry & { fd: number })[] {
    const records = this.served.registry.records;
    const stopped = records.find((r) => serverFd(r.server) < 0);
    if (stopped) throw new TakeoverError(ErrorCodes.INVALID_STATE, `server '${stopped.name}' is not listening`);
    const entries: (ListenerEntry & { fd: number })[] = records.map((r) => ({
      name: r.name,
      kind: r.kind,
      backlog: r.backlog,
      fd: native.dup(serverFd(r.server)),
    }));
    entries.push({ name: CHANNEL_LISTENER_NAME, kind: 'channel', backlog: DEFAULT_BACKLOG, fd: native.dup(this.channelListener.fd) });
    return entries;
  }

  connections(): ReadonlyMap<number, { socket: net.Socket; listener: number }> {
    return this.served.connections.all;
  }

  readiness(id: number): Readiness {
    const known = this.connection(id);
    return known ? this.served.connections.readiness(known.socket, known.adapter) : 'never';
  }

  capture(id: number): CapturedState | 'failed' {
    const known = this.connection(id);
    if (!known) return 'failed';
    const { socket, adapter } = known;
    try {
      const protocolState = adapter.capture(socket);
      const state = this.options.captureState?.(socket);
      if (state !== undefined && !Buffer.isBuffer(state))
        throw new TypeError(`captureState returned ${typeof state}, not a Buffer or undefined`);
      return { adapter: adapter.kind, protocolState, state };
    } catch (error) {
      this.events.warning(hookError('capturing the connection state (the connection stays here)', error));
      return 'failed';
    }
  }

  retain(id: number): void {
    const known = this.connection(id);
    known?.adapter.retain(known.socket);
  }

  settle(id: number): void {
    const known = this.connection(id);
    known?.adapter.settle?.(known.socket);
  }

  resume(id: number): void {
    const known = this.connection(id);
    known?.adapter.resume?.(known.socket);
  }

  stopAccepting(): void {
    try {
      this.served.options.onStep?.('stop-accepting');
    } catch {
      // An observer's failure is not the takeover's.
    }
    this.channelListener.setAccepting(false);
    for (const r of this.served.registry.records) stopAccepting(r.server);
  }

  resumeAccepting(listeners: readonly (ListenerEntry & { fd: number })[]): void {
    for (const entry of listeners) {
      const record = this.served.registry.records.find((r) => r.name === entry.name);
      if (record && serverFd(record.server) < 0) listenOnFd(record.server, entry.fd, record.backlog);
      else native.close(entry.fd);
    }
    this.channelListener.setAccepting(true);
  }

  onFreeze(socket: net.Socket): void {
    this.events.step('freeze', socket);
  }

  onDefer(socket: net.Socket): void {
    this.events.step('defer', socket);
  }

  release(id: number, socket: net.Socket): void {
    const { adapter } = this.connection(id)!;
    this.events.step('release', socket);
    this.served.connections.delete(id);
    adapter.forget(socket);
    releaseMoved(socket, this.reportLateUse);
  }

  onHello(pid: number): void {
    this.events.successor({ pid, uid: this.peerUid });
  }

  onRollback(error: TakeoverError, started: boolean, report: RollbackReport): void {
    this.events.rollback(error, started, report);
  }

  onPartialHandover(error: TakeoverError, stats: TakeoverStats): void {
    this.events.warning(error);
    this.events.handover(stats);
  }

  onHandover(stats: TakeoverStats): void {
    this.events.handover(stats);
  }

  /**
   * A connection the session still names, with the adapter speaking for it now (an upgraded one
   * belongs to its WebSocket server); undefined once it closed (the session records it as closed).
   */
  private connection(id: number): { socket: net.Socket; adapter: ConnectionAdapter } | undefined {
    const known = this.served.connections.all.get(id);
    if (!known) return undefined;
    const { socket, listener } = known;
    const adapter = this.served.webSocketAdapters.find((a) => a.owns(socket)) ?? this.served.registry.records[listener]!.adapter;
    return { socket, adapter };
  }
}
