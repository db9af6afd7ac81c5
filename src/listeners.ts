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
  /** Only an inherited listener of that name (see {@link Takeover.inheritedListeners}). */
  | { name: string };

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
  return 'port' in target ? `tcp:${target.host ?? ''}:${target.port}` : '';
}

export class ListenerRegistry {
  readonly records: ListenerRecord[] = [];
  /** The predecessor's listeners, in its LISTENERS frame's order (successor only). */
  inherited: readonly InheritedListener[] = [];

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

  /** Checks a `listen()` call; returns the listener's name, kind and the inherited listener it adopts, if any. */
  check(
    server: net.Server,
    target: ListenTarget,
  ): { name: string; kind: 'tcp' | 'unix'; backlog: number; inherited: InheritedListener | undefined } {
    if (target === null || typeof target !== 'object') throw invalidOption('target must be an object');
    if ('path' in target) {
      if (typeof target.path !== 'string' || target.path.length === 0) throw invalidOption('target.path must be a non-empty string');
    } else if ('port' in target) {
      if (!Number.isInteger(target.port) || target.port < 0 || target.port > 65535)
        throw invalidOption('target.port must be an integer in 0..65535');
      checkReusePort(target);
    } else if (typeof target.name !== 'string' || !this.claimable.some((l) => l.name === target.name)) {
      throw invalidOption(`no inherited listener is named '${String((target as { name?: unknown }).name)}'`);
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
    const kind: ListenerKind = 'path' in target ? 'unix' : 'port' in target ? 'tcp' : inherited!.kind;
    if (inherited && inherited.kind !== kind) throw invalidOption(`the predecessor's listener '${name}' is ${inherited.kind}, not ${kind}`);
    return {
      name,
      kind: kind as 'tcp' | 'unix',
      backlog: (backlog as number | undefined) ?? inherited?.backlog ?? DEFAULT_BACKLOG,
      inherited,
    };
  }

  /** Binds a new listening socket for `target` (no inherited listener of its name). */
  bind(record: ListenerRecord, target: ListenTarget): void {
    const { server } = record;
    if ('path' in target) {
      record.unixPath = target.path;
      listenOnFd(server, createUnixListener(target.path, record.backlog), record.backlog);
    } else if ('port' in target) {
      const { port, host, ipv6Only, reusePort } = target;
      if (reusePort) listenOnFd(server, createReusePortListener(host, port, record.backlog, ipv6Only === true), record.backlog);
      else server.listen({ port, host, backlog: record.backlog, ipv6Only });
    }
  }

  /** The Unix socket files this process bound, or inherited and listens on now: its to remove on close(). */
  unixPaths(): string[] {
    return this.records.flatMap((r) => {
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
