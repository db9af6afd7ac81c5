/**
 * The servers given to `listen()` and the listening sockets behind them.
 *
 * Index contract, for the whole library: a listener's index is its position in this registry,
 * in `listen()` order. The old process sends its registry in that order (the channel's own
 * listener last) in the LISTENERS frame, so the `listener` of a connection on the wire is an
 * index into the *old process's* registry. A successor maps it to its own registry by name
 * with {@link ListenerRegistry.forWireIndex}; its own indexes may differ.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as native from './native.js';
import type { ConnectionAdapter } from './adapters/adapter.js';
import { MAX_BACKLOG, type ListenerKind } from './protocol.js';
import type { InheritedListener } from './successor.js';
import type { ActivatedListener } from './systemd.js';
import { isSocketLive } from './channel-listener.js';
import { ErrorCodes, TakeoverError, systemError } from './errors.js';
import { invalidOption } from './options.js';

export type ListenTarget =
  | {
      port: number;
      host?: string;
      backlog?: number;
      ipv6Only?: boolean;
      /**
       * Join the port's SO_REUSEPORT group, with every other listener of this uid that set it: the
       * kernel spreads new connections over them (a pool of workers). Set by the addon before
       * bind, so it works on Node 20 too, which ignores Node's own option. `host` must then be an
       * IP literal (default `'::'`, dual-stack, else `'0.0.0.0'` without IPv6).
       */
      reusePort?: boolean;
      name?: string;
    }
  | { path: string; backlog?: number; name?: string }
  /**
   * Only an inherited listener of that name: the predecessor's (see {@link Takeover.inheritedListeners}),
   * else one systemd passed with that name (see {@link Takeover.activatedListeners}).
   */
  | { name: string; backlog?: number }
  /**
   * The listener systemd passed as fd `3 + systemd` (`$LISTEN_FDS` order), for sockets whose names
   * are not unique. Named `systemd:<index>` unless `name` says otherwise, so that a successor,
   * which gets it from its predecessor, finds it with the same target.
   */
  | { systemd: number; backlog?: number; name?: string };

export interface ListenerRecord {
  readonly name: string;
  readonly kind: 'tcp' | 'unix';
  readonly server: net.Server;
  readonly adapter: ConnectionAdapter;
  /** The listen() backlog: the target's, else the predecessor's, else Node's default. */
  readonly backlog: number;
  /** Unix listeners this process bound and must unlink when it is the last owner. */
  unixPath?: string;
  /** The predecessor's listener this one adopts at LISTENING, instead of binding a new socket. */
  readonly inherited: InheritedListener | undefined;
  /** The listener systemd passed that this one adopts at once, instead of binding a new socket. */
  readonly activated: ActivatedListener | undefined;
  /** Settles when the server listens: at once for a new socket, at LISTENING for an inherited one. */
  listening: Promise<void>;
}

export const CHANNEL_LISTENER_NAME = 'takeover-channel';
/** Node's own default for listen(). */
export const DEFAULT_BACKLOG = 511;

export function whenListening(server: net.Server): Promise<void> {
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

/**
 * Listens on an existing socket with this backlog. Node re-runs listen(2) on it, and takes the
 * backlog of an fd only from the positional argument (`{ fd, backlog }` would get 511).
 */
export function listenOnFd(server: net.Server, fd: number, backlog: number): void {
  server.listen({ fd }, backlog);
}

function defaultName(target: ListenTarget): string {
  if (target.name !== undefined) return target.name;
  if ('path' in target) return `unix:${target.path}`;
  if ('systemd' in target) return `systemd:${target.systemd}`;
  return 'port' in target ? `tcp:${target.host ?? ''}:${target.port}` : '';
}

export class ListenerRegistry {
  readonly records: ListenerRecord[] = [];
  /** The predecessor's listeners, in its LISTENERS frame's order (successor only). */
  inherited: readonly InheritedListener[] = [];
  /** The listeners systemd passed (`$LISTEN_FDS`), in its order. */
  activated: readonly ActivatedListener[] = [];

  /** The predecessor's listeners an application may claim (the channel's excepted). */
  get claimable(): InheritedListener[] {
    return this.inherited.filter((l) => l.kind !== 'channel');
  }

  get channel(): InheritedListener | undefined {
    return this.inherited.find((l) => l.kind === 'channel');
  }

  forWireIndex(index: number): ListenerRecord | undefined {
    const name = this.inherited[index]?.name;
    return this.records.find((r) => r.name === name);
  }

  unclaimed(): string[] {
    return this.claimable.filter((l) => !this.records.some((r) => r.inherited === l)).map((l) => l.name);
  }

  /** Systemd's listeners that no `listen()` adopted. */
  unadopted(): ActivatedListener[] {
    return this.activated.filter((a) => !this.records.some((r) => r.activated === a));
  }

  /**
   * Checks a `listen()` call; returns the listener's name, kind and the listener it adopts, if
   * any: the predecessor's of the same name first (it is the one serving), else systemd's.
   */
  check(
    server: net.Server,
    target: ListenTarget,
  ): {
    name: string;
    kind: 'tcp' | 'unix';
    backlog: number;
    inherited: InheritedListener | undefined;
    activated: ActivatedListener | undefined;
  } {
    if (target === null || typeof target !== 'object') throw invalidOption('target must be an object');
    if ('path' in target) {
      if (typeof target.path !== 'string' || target.path.length === 0) throw invalidOption('target.path must be a non-empty string');
    } else if ('port' in target) {
      if (!Number.isInteger(target.port) || target.port < 0 || target.port > 65535)
        throw invalidOption('target.port must be an integer in 0..65535');
      checkReusePort(target);
    } else if ('systemd' in target) {
      if (!Number.isInteger(target.systemd) || target.systemd < 0) throw invalidOption('target.systemd must be an integer >= 0');
    } else if (typeof target.name !== 'string') {
      throw invalidOption('target needs a port, a path, a name or a systemd index');
    }
    const backlog = (target as { backlog?: unknown }).backlog;
    if (backlog !== undefined && (!Number.isInteger(backlog) || (backlog as number) < 0 || (backlog as number) > MAX_BACKLOG)) {
      throw invalidOption(`target.backlog must be an integer in 0..${MAX_BACKLOG}`);
    }
    const name = defaultName(target);
    if (name.length === 0 || name.length > 1000 || name === CHANNEL_LISTENER_NAME) {
      throw invalidOption(`a listener name must be 1 to 1000 characters and not '${CHANNEL_LISTENER_NAME}'`);
    }
    if (this.records.some((r) => r.name === name)) throw invalidOption(`a listener named '${name}' is already registered`);
    if (this.records.some((r) => r.server === server)) throw invalidOption('this server is already registered');
    const inherited = this.claimable.find((l) => l.name === name);
    const activated = inherited ? undefined : this.activatedFor(target, name);
    const adopted = inherited ?? activated;
    if (!adopted && !('path' in target) && !('port' in target)) {
      throw invalidOption(
        'systemd' in target
          ? `no listener #${target.systemd} was inherited or passed by systemd (LISTEN_FDS has ${this.activated.length})`
          : `no inherited listener is named '${name}' (from the predecessor or systemd's LISTEN_FDNAMES)`,
      );
    }
    const kind: ListenerKind = 'path' in target ? 'unix' : 'port' in target ? 'tcp' : adopted!.kind;
    if (adopted && adopted.kind !== kind) {
      throw invalidOption(`the ${inherited ? "predecessor's" : "systemd's"} listener '${name}' is ${adopted.kind}, not ${kind}`);
    }
    return {
      name,
      kind: kind as 'tcp' | 'unix',
      backlog: (backlog as number | undefined) ?? inherited?.backlog ?? DEFAULT_BACKLOG,
      inherited,
      activated,
    };
  }

  /** Systemd's listener for `target`: by index, else the one unadopted listener of that name. */
  private activatedFor(target: ListenTarget, name: string): ActivatedListener | undefined {
    const free = this.unadopted();
    if ('systemd' in target) return free.find((a) => a.index === target.systemd);
    const named = free.filter((a) => a.name === name);
    if (named.length > 1) {
      throw invalidOption(`systemd passed ${named.length} listeners named '${name}': choose one with { systemd: <index> }`);
    }
    return named[0];
  }

  /** Binds a new listening socket for `target`, or listens on the one systemd passed for it. */
  bind(record: ListenerRecord, target: ListenTarget): void {
    const { server } = record;
    if (record.activated) {
      listenOnFd(server, record.activated.fd, record.backlog);
    } else if ('path' in target) {
      record.unixPath = target.path;
      listenOnFd(server, createUnixListener(target.path, record.backlog), record.backlog);
    } else if ('port' in target) {
      const { port, host, ipv6Only, reusePort } = target;
      if (reusePort) listenOnFd(server, createReusePortListener(host, port, record.backlog, ipv6Only === true), record.backlog);
      else server.listen({ port, host, backlog: record.backlog, ipv6Only });
    }
  }

  /**
   * The Unix socket files this process bound, or inherited and listens on now: its to remove on
   * close(). Not those systemd passed: their files are the .socket unit's (or the fd store's).
   */
  unixPaths(): string[] {
    return this.records.flatMap((r) => {
      if (r.activated) return [];
      const path = r.unixPath ?? (r.kind === 'unix' ? r.server.address() : null);
      return typeof path === 'string' ? [path] : [];
    });
  }
}

function createUnixListener(path: string, backlog: number): number {
  if (fs.existsSync(path)) {
    if (isSocketLive(path) || !fs.lstatSync(path).isSocket()) throw new TakeoverError(ErrorCodes.SYSTEM, `listen ${path}: EADDRINUSE`);
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

function checkReusePort(target: { host?: string; ipv6Only?: boolean; reusePort?: boolean }): void {
  const { host, ipv6Only, reusePort } = target;
  if (reusePort !== undefined && typeof reusePort !== 'boolean') throw invalidOption('target.reusePort must be a boolean');
  if (ipv6Only !== undefined && typeof ipv6Only !== 'boolean') throw invalidOption('target.ipv6Only must be a boolean');
  // No name lookup: which address a name resolves to must not change between the workers of a pool.
  if (reusePort && host !== undefined && net.isIP(host) === 0) {
    throw invalidOption(`target.host must be an IP address with reusePort (got '${String(host)}')`);
  }
}

/** A listener in the port's SO_REUSEPORT group, made by the addon: Node 20 has no such option. */
function createReusePortListener(host: string | undefined, port: number, backlog: number, ipv6Only: boolean): number {
  const attempt = (address: string) => native.tcpListenReusePort(address, port, backlog, ipv6Only);
  try {
    if (host !== undefined) return attempt(host);
    try {
      return attempt('::');
    } catch (error) {
      // As Node does without a host: the IPv6 wildcard, else IPv4's on a machine without IPv6.
      if ((error as { code?: unknown }).code !== 'EAFNOSUPPORT') throw error;
      return attempt('0.0.0.0');
    }
  } catch (error) {
    throw systemError(`listen ${host === undefined ? '' : `[${host}]`}:${port} with SO_REUSEPORT`, error);
  }
}
