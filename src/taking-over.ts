/**
 * The new process taking over, as its SuccessorSession sees it: the predecessor's listeners the
 * application claims with `listen()`, listening on them at LISTENING, and adopting each moved
 * connection through the adapter of its protocol. It turns the session's outcome into what
 * `start()` and `ready()` wait for; the lifecycle stays with Takeover.
 */
import type * as net from 'node:net';
import type { Channel } from './channel.js';
import { SuccessorSession, type InheritedListener, type SuccessorHost } from './successor.js';
import type { WaveRecord } from './protocol.js';
import { acceptOptions, type AcceptOptions } from './sockets.js';
import { ErrorCodes, TakeoverError, hookError } from './errors.js';
import type { TakeoverStats } from './stats.js';
import type { ResolvedOptions } from './options.js';
import { listenOnFd, whenListening, type ListenerRecord, type ListenerRegistry } from './listeners.js';
import type { WebSocketAdapter } from './adapters/ws.js';

/** What the lifecycle does for a takeover into this process. */
export interface TakingOverEvents {
  warning(error: TakeoverError): void;
  /** An adopted connection is this process's own from now on, before the application sees it. */
  track(socket: net.Socket, listener: number): void;
  /** The application's 'adopt' listener, which must not stop the takeover halfway. */
  adopt(socket: net.Socket): void;
  /** LISTENING: this process can be taken over in turn, on the inherited channel. */
  openChannel(fd: number): void;
  /** LISTENING: this process serves the listeners from now on (for systemd, it is the main process). */
  listening(predecessorPid: number): void;
}

interface Claim {
  record: ListenerRecord;
  resolve: () => void;
  reject: (error: Error) => void;
}

export class TakingOver implements SuccessorHost {
  /** Resolves once the predecessor's listeners are known, so that `listen()` can claim them. */
  readonly started: Promise<void>;
  private session: SuccessorSession | undefined;
  /** Done with a warning after LISTENING: it may still read late waves from the predecessor. */
  private givenUp: SuccessorSession | undefined;
  private readonly claims: Claim[] = [];
  private settleStart!: { resolve: () => void; reject: (error: Error) => void };
  private settleReady: { resolve: (stats: TakeoverStats) => void; reject: (error: Error) => void } | undefined;
  /** Why the takeover failed, for a commit() that comes after. */
  private failure: TakeoverError | undefined;

  constructor(
    readonly options: ResolvedOptions,
    private readonly registry: ListenerRegistry,
    private readonly webSocketAdapters: readonly WebSocketAdapter[],
    private readonly events: TakingOverEvents,
    channel: Channel,
  ) {
    this.started = new Promise((resolve, reject) => (this.settleStart = { resolve, reject }));
    this.session = new SuccessorSession(this, channel);
  }

  /** Neither failed nor finished. */
  get running(): boolean {
    return this.session !== undefined;
  }

  /**
   * Gave up after LISTENING and still reads the predecessor's last waves. The predecessor may be
   * stopped: if this process were taken over and exited meanwhile, the predecessor would find its
   * successor dead when it wakes and take the listeners back, next to the process that has them.
   */
  get readingOn(): boolean {
    return this.givenUp?.isReadingOn ?? false;
  }

  get isCommitted(): boolean {
    return this.session?.isCommitted ?? false;
  }

  /** Settles when `record`'s server listens on the inherited listener, at LISTENING. */
  claim(record: ListenerRecord): Promise<void> {
    return new Promise<void>((resolve, reject) => this.claims.push({ record, resolve, reject }));
  }

  /** The application is ready: COMMIT once pre-copy is verified; resolves when the last wave started here. */
  async commit(): Promise<TakeoverStats> {
    const session = this.session;
    if (!session) throw this.failure ?? new TakeoverError(ErrorCodes.INVALID_STATE, 'the takeover is no longer running');
    return new Promise<TakeoverStats>((resolve, reject) => {
      this.settleReady = { resolve, reject };
      session.ready();
    });
  }

  abort(error: TakeoverError): void {
    this.session?.abort(error);
  }

  onListeners(listeners: readonly InheritedListener[]): void {
    this.registry.inherited = [...listeners];
    this.settleStart.resolve();
  }

  unclaimedListeners(): string[] {
    return this.registry.unclaimed();
  }

  acceptOptions(listener: number): AcceptOptions | undefined {
    const record = this.registry.forWireIndex(listener);
    return record && acceptOptions(record.server);
  }

  startListening(predecessorPid: number): void {
    for (const { record, resolve, reject } of this.claims) {
      whenListening(record.server).then(resolve, reject);
      listenOnFd(record.server, record.inherited!.fd, record.backlog);
    }
    this.events.openChannel(this.registry.channel!.fd);
    this.events.listening(predecessorPid);
  }

  adopt(socket: net.Socket, wireListener: number, record: Extract<WaveRecord, { fate: 'moved' }>): void {
    const listener = this.registry.forWireIndex(wireListener)!;
    const index = this.registry.records.indexOf(listener);
    const adapter =
      record.adapter === 'ws'
        ? this.webSocketAdapters
            .map((a) => ({ a, fit: a.fit(record.protocolState) }))
            .filter((c) => c.fit > 0)
            .sort((x, y) => y.fit - x.fit)[0]?.a
        : record.adapter === listener.adapter.kind
          ? listener.adapter
          : undefined;
    if (!adapter) {
      this.events.warning(
        new TakeoverError(
          ErrorCodes.INVALID_STATE,
          `a ${record.adapter} connection arrived on '${listener.name}', which has no ${record.adapter === 'ws' ? 'webSockets() server for it' : `${record.adapter} server`}: it is closed`,
          { socket },
        ),
      );
      socket.destroy();
      return;
    }
    this.events.track(socket, index);
    const prepare = () => {
      if (record.state) {
        try {
          if (!this.options.restoreState) throw new Error('no restoreState hook is set');
          this.options.restoreState(socket, record.state);
        } catch (error) {
          this.events.warning(hookError('restoreState', error));
        }
      }
      this.events.adopt(socket);
    };
    try {
      adapter.adopt(socket, { input: record.input, output: record.output, protocolState: record.protocolState }, prepare);
    } catch (error) {
      this.events.warning(
        // Usually the application's own 'connection' listener, which threw: say what it threw.
        new TakeoverError(
          ErrorCodes.PROTOCOL,
          `a ${adapter.kind} connection could not be adopted (${error instanceof Error ? error.message : String(error)}): it is closed`,
          { cause: error, socket },
        ),
      );
      socket.destroy();
    }
  }

  onFailure(error: TakeoverError): void {
    this.session = undefined;
    this.failure = error;
    for (const claim of this.claims) claim.reject(error);
    this.settleStart.reject(error);
    this.settleReady?.reject(error);
  }

  onDone(stats: TakeoverStats, warning?: TakeoverError): void {
    if (warning) this.givenUp = this.session;
    this.session = undefined;
    if (warning) this.events.warning(warning);
    this.settleReady?.resolve(stats);
  }

  onChannelKeptOpen(error: TakeoverError): void {
    this.events.warning(error);
  }
}
