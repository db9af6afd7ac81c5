/**
 * `http.Server` keep-alive connections move only between requests: nothing being parsed (Node's
 * native parser keeps consumed bytes to itself, so a half-read request could not move), no
 * response pending or unflushed. The new process's `http.Server` then sees the connection as if
 * it had accepted it, and the keep-alive (or first-request) idle timer keeps running from where
 * it was instead of starting again.
 *
 * Uses `server[Symbol(http.server.connections)].active()` (the parsers in the middle of a
 * message, which Node keeps for its own request timeouts) and `socket._httpMessage` (the
 * response the socket is bound to); test/integration/http.test.ts exercises both across real
 * takeovers.
 */
import type * as http from 'node:http';
import type * as net from 'node:net';
import type { Carried, ConnectionAdapter, Readiness } from './adapter.js';
import { replayCarried, startInherited } from '../sockets.js';

interface ConnectionsList {
  active(): { socket?: net.Socket | null }[];
}

interface HttpSocket extends net.Socket {
  _httpMessage?: http.ServerResponse | null;
}

interface IdleState {
  /** ms since the last response finished, or since the connection was accepted. */
  idleMs: number;
  /** A request was served: keepAliveTimeout applies, else headersTimeout. */
  served: boolean;
}

/** An http.Server (or a subclass such as Express's or Fastify's server), without loading node:http. */
export function isHttpServer(server: net.Server): server is http.Server {
  return (
    typeof (server as { setTimeout?: unknown }).setTimeout === 'function' && 'keepAliveTimeout' in server && 'headersTimeout' in server
  );
}

export class HttpAdapter implements ConnectionAdapter {
  readonly kind = 'http' as const;
  /** When each connection last became idle (accepted, or a response finished). */
  private readonly idleSince = new WeakMap<net.Socket, { at: number; served: boolean }>();
  /** Sockets that asked to upgrade: their protocol is no longer HTTP. */
  private readonly upgraded = new WeakSet<net.Socket>();
  /** Adopted sockets running on the idle timer carried from the old process. */
  private readonly carriedTimer = new WeakSet<net.Socket>();
  private readonly retained = new WeakSet<net.Socket>();
  /** The sockets with a message in Node's parser, computed once per synchronous pass. */
  private activeCache: Set<net.Socket> | undefined;

  constructor(
    private readonly server: http.Server,
    /** Tells the engine a connection may have become quiet, so a waiting takeover moves it at once. */
    onMaybeQuiet: (socket: net.Socket) => void,
  ) {
    server.prependListener('connection', (socket: net.Socket) => this.idleSince.set(socket, { at: performance.now(), served: false }));
    server.prependListener('upgrade', (_req: http.IncomingMessage, socket: net.Socket) => this.upgraded.add(socket));
    server.prependListener('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      const socket = req.socket;
      if (this.carriedTimer.delete(socket)) socket.setTimeout(server.timeout);
      if (this.retained.has(socket)) res.shouldKeepAlive = false;
      // Registered after Node's own 'finish' handler, which unbinds the response first.
      res.once('finish', () => {
        this.idleSince.set(socket, { at: performance.now(), served: true });
        if (this.retained.has(socket)) {
          if (this.readiness(socket) === 'quiet') socket.end();
        } else {
          onMaybeQuiet(socket);
        }
      });
    });
  }

  readiness(socket: net.Socket): Readiness {
    if (this.upgraded.has(socket)) return 'busy';
    if ((socket as HttpSocket)._httpMessage) return 'busy';
    // Node counts a connection as active from its accept until its first request completes (its
    // headersTimeout runs from there): one that has not sent a byte yet is idle all the same.
    return this.activeSockets().has(socket) && socket.bytesRead > 0 ? 'busy' : 'quiet';
  }

  capture(socket: net.Socket): Buffer {
    const since = this.idleSince.get(socket);
    const state: IdleState = { idleMs: since ? Math.max(0, performance.now() - since.at) : 0, served: since?.served ?? false };
    return Buffer.from(JSON.stringify(state));
  }

  forget(socket: net.Socket): void {
    this.idleSince.delete(socket);
  }

  /**
   * The connection stays here: the request in progress is its last (HTTP lets a server close a
   * keep-alive connection between requests), and an idle one is closed at once.
   */
  retain(socket: net.Socket): void {
    this.retained.add(socket);
    const response = (socket as HttpSocket)._httpMessage;
    if (response && !response.headersSent) response.shouldKeepAlive = false;
    else if (this.readiness(socket) === 'quiet') socket.end();
  }

  adopt(socket: net.Socket, { input, output, protocolState }: Carried, prepare: () => void): void {
    replayCarried(socket, input, output);
    startInherited(socket, this.server, prepare);
    const { idleMs, served } = parseIdleState(protocolState);
    const limit = served ? this.server.keepAliveTimeout : this.server.headersTimeout;
    this.idleSince.set(socket, { at: performance.now() - idleMs, served });
    if (limit > 0) {
      // Node arms this timer itself only after a response; here it must run from the old
      // process's last response, or a takeover would revive an idle connection for good.
      socket.setTimeout(Math.max(1, limit - idleMs));
      this.carriedTimer.add(socket);
    }
  }

  private activeSockets(): Set<net.Socket> {
    if (this.activeCache) return this.activeCache;
    const list = connectionsList(this.server);
    const active = new Set<net.Socket>();
    for (const parser of list?.active() ?? []) if (parser.socket) active.add(parser.socket);
    this.activeCache = active;
    queueMicrotask(() => (this.activeCache = undefined));
    return active;
  }
}

function parseIdleState(state: Buffer | undefined): IdleState {
  try {
    const parsed = JSON.parse(state?.toString('utf8') ?? '{}') as Partial<IdleState>;
    return { idleMs: Number.isFinite(parsed.idleMs) ? Number(parsed.idleMs) : 0, served: parsed.served === true };
  } catch {
    return { idleMs: 0, served: false };
  }
}

/** Node's list of an http.Server's parsers (set up when the server starts listening). */
function connectionsList(server: http.Server): ConnectionsList | undefined {
  const key = Object.getOwnPropertySymbols(server).find((s) => s.description === 'http.server.connections');
  return key ? (server as unknown as Record<symbol, ConnectionsList | undefined>)[key] : undefined;
}
