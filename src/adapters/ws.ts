/**
 * WebSockets served by the `ws` package (a peer dependency; this module only touches the
 * objects the application gives it). An open WebSocket moves at a frame boundary: its receiver
 * idle with nothing buffered or fragmented, its sender queue empty, no close in progress. The
 * new process rebuilds a `ws` WebSocket on the adopted socket with the negotiated subprotocol and
 * permessage-deflate parameters, and hands it to the application's WebSocketServer as a
 * `'connection'` with the original upgrade request's method, URL and headers.
 *
 * permessage-deflate with context takeover keeps zlib windows that cannot move, so a server
 * registered here negotiates no context takeover in both directions; a connection that
 * negotiated context takeover anyway stays in the old process.
 *
 * Uses ws 8 internals that its own WebSocketServer uses: `_socket`, `_receiver`, `_sender`,
 * `_protocol`, `_extensions`, `setSocket()`, and the sender's `dequeue()`;
 * test/integration/ws.test.ts exercises them across real takeovers.
 */
import { createRequire } from 'node:module';
import type * as http from 'node:http';
import type * as net from 'node:net';
import * as path from 'node:path';
import type { Carried, ConnectionAdapter, Readiness } from './adapter.js';
import { replayCarried } from '../sockets.js';
import { nodeHttp } from '../node-http.js';

/** A `ws` WebSocketServer, as far as the public API needs to know. */
export interface WebSocketServerLike {
  options: object;
  handleUpgrade: unknown;
}

/** The parts of a `ws` WebSocketServer this adapter uses (its public API and its options). */
interface WebSocketServer {
  options: {
    WebSocket: new (address: null, protocols: undefined, options: object) => WebSocketLike;
    perMessageDeflate?: boolean | object;
    maxPayload?: number;
    [key: string]: unknown;
  };
  clients?: Set<unknown>;
  handleUpgrade(
    req: http.IncomingMessage,
    socket: net.Socket,
    head: Buffer,
    cb: (ws: WebSocketLike, req: http.IncomingMessage) => void,
  ): void;
  emit(event: 'connection', ws: WebSocketLike, req: http.IncomingMessage): boolean;
  shouldHandle(req: { url?: string }): boolean | Promise<boolean>;
}

interface Deflate {
  params: Record<string, unknown> | null;
}

/** The parts of a `ws` WebSocket this adapter uses (internals of ws 8, see above). */
export interface WebSocketLike {
  readyState: number;
  _socket: net.Socket | null;
  _protocol: string;
  _extensions: Record<string, Deflate>;
  _closeFrameSent?: boolean;
  _closeFrameReceived?: boolean;
  _receiver?: {
    _state: number;
    _bufferedBytes: number;
    _fragmented: number;
    _fragments: unknown[];
    writableLength: number;
  };
  _sender?: { _state: number; _bufferedBytes: number; _queue: unknown[]; dequeue(): void };
  setSocket(socket: net.Socket, head: Buffer, options: object): void;
  on(event: 'close', listener: () => void): unknown;
}

const OPEN = 1;
const DEFLATE = 'permessage-deflate';

/** What travels with a WebSocket: enough to rebuild it and to give the application its upgrade request again. */
interface WebSocketState {
  /** Which of the process's webSockets() servers it belonged to, by registration order. */
  server: number;
  protocol: string;
  deflate: Record<string, unknown> | null;
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  httpVersion: string;
}

export class WebSocketAdapter implements ConnectionAdapter {
  readonly kind = 'ws' as const;
  private readonly sockets = new WeakMap<net.Socket, { ws: WebSocketLike; request: WebSocketState }>();
  private readonly server: WebSocketServer;
  /** Sockets whose input settle() holds back. */
  private readonly held = new WeakSet<net.Socket>();

  constructor(
    readonly wss: WebSocketServerLike,
    /** This server's place among the process's webSockets() servers: how the new process finds its own. */
    readonly index: number,
    /** Tells the engine a WebSocket may have become quiet (its sender went idle). */
    private readonly onMaybeQuiet: (socket: net.Socket) => void,
  ) {
    const server = wss as WebSocketServer;
    this.server = server;
    const deflate = server.options.perMessageDeflate;
    if (deflate) {
      server.options.perMessageDeflate = {
        ...(typeof deflate === 'object' ? deflate : {}),
        serverNoContextTakeover: true,
        clientNoContextTakeover: true,
      };
    }
    // handleUpgrade is where every WebSocket of this server is born, with { server } or
    // noServer alike; its callback sees the WebSocket and its request together.
    const handleUpgrade = server.handleUpgrade;
    server.handleUpgrade = function (this: WebSocketServer, req, socket, head, cb) {
      return handleUpgrade.call(this, req, socket, head, (ws, request) => {
        adapter.remember(ws, request);
        cb(ws, request);
      });
    };
    const adapter = this;
  }

  /** The socket under a WebSocket of this server, if it is one. */
  socketOf(target: unknown): net.Socket | undefined {
    const socket = (target as Partial<WebSocketLike> | null)?._socket;
    return socket && this.sockets.get(socket)?.ws === target ? socket : undefined;
  }

  /**
   * New process: how well this server fits a WebSocket from the old process: 2 when it has the
   * old server's place among the webSockets() servers and takes its URL, 1 when it only takes
   * the URL (`shouldHandle`: its `path` option), 0 when it does not.
   */
  fit(protocolState: Buffer | undefined): number {
    try {
      const state = parseState(protocolState);
      if (this.server.shouldHandle({ url: state.url }) === false) return 0;
      return state.server === this.index ? 2 : 1;
    } catch {
      return 0;
    }
  }

  owns(socket: net.Socket): boolean {
    return this.sockets.has(socket);
  }

  readiness(socket: net.Socket): Readiness {
    const ws = this.sockets.get(socket)?.ws;
    if (!ws || ws.readyState !== OPEN || ws._closeFrameSent || ws._closeFrameReceived) return 'never';
    const params = ws._extensions[DEFLATE]?.params;
    if (params && !(params.server_no_context_takeover && params.client_no_context_takeover)) return 'never';
    const sender = ws._sender;
    if (!ws._receiver || !sender) return 'never';
    const sending = sender._state !== 0 || sender._bufferedBytes > 0 || sender._queue.length > 0;
    return !receiverIdle(ws) || sending ? 'busy' : 'quiet';
  }

  capture(socket: net.Socket): Buffer {
    const known = this.sockets.get(socket)!;
    const state: WebSocketState = { ...known.request, deflate: known.ws._extensions[DEFLATE]?.params ?? null };
    return Buffer.from(JSON.stringify(state));
  }

  forget(socket: net.Socket): void {
    const known = this.sockets.get(socket);
    if (known) this.server.clients?.delete(known.ws);
    this.sockets.delete(socket);
  }

  /**
   * A WebSocket busy in both directions all the time (messages every few ms, compressed in the
   * thread pool) is rarely between frames on both sides at once. So once its receiver is between
   * frames, no more input is handed to it: the bytes wait in the socket's buffer, and travel as
   * the connection's input. The sender then drains, and the connection is quiet.
   */
  settle(socket: net.Socket): void {
    const known = this.sockets.get(socket);
    if (!known || this.held.has(socket) || !receiverIdle(known.ws)) return;
    this.held.add(socket);
    socket.pause();
  }

  resume(socket: net.Socket): void {
    if (this.held.delete(socket)) socket.resume();
  }

  retain(socket: net.Socket): void {
    this.resume(socket);
  }

  adopt(socket: net.Socket, { input, output, protocolState }: Carried, prepare: () => void): void {
    const state = parseState(protocolState);
    const { options } = this.server;
    const ws = new options.WebSocket(null, undefined, options);
    ws._protocol = state.protocol;
    if (state.deflate) ws._extensions = { [DEFLATE]: this.deflate(state.deflate) };
    replayCarried(socket, Buffer.alloc(0), output);
    const request = new nodeHttp.IncomingMessage(socket);
    Object.assign(request, {
      method: state.method,
      url: state.url,
      headers: state.headers,
      rawHeaders: state.rawHeaders,
      httpVersion: state.httpVersion,
      complete: true,
    });
    prepare();
    ws.setSocket(socket, input, {
      allowSynchronousEvents: options.allowSynchronousEvents,
      maxBufferedChunks: options.maxBufferedChunks,
      maxFragments: options.maxFragments,
      maxPayload: options.maxPayload,
      skipUTF8Validation: options.skipUTF8Validation,
    });
    this.remember(ws, request);
    if (this.server.clients) {
      const clients = this.server.clients;
      clients.add(ws);
      ws.on('close', () => clients.delete(ws));
    }
    this.server.emit('connection', ws, request);
  }

  private remember(ws: WebSocketLike, req: http.IncomingMessage): void {
    const socket = ws._socket;
    if (!socket) return;
    const { method = 'GET', url = '/', headers, rawHeaders, httpVersion } = req;
    const request = { server: this.index, protocol: ws._protocol, deflate: null, method, url, headers, rawHeaders, httpVersion };
    this.sockets.set(socket, { ws, request });
    // A WebSocket that sends all the time (compressing in the thread pool, say) is quiet only
    // between two sends: the moment its sender goes idle is when a waiting takeover can take it.
    const sender = ws._sender;
    if (sender) {
      const dequeue = sender.dequeue;
      const onMaybeQuiet = this.onMaybeQuiet;
      sender.dequeue = function (this: NonNullable<WebSocketLike['_sender']>) {
        dequeue.call(this);
        if (this._state === 0 && this._queue.length === 0) onMaybeQuiet(socket);
      };
    }
  }

  /** A permessage-deflate extension in the state the handshake left it, with fresh zlib streams (no context to carry). */
  private deflate(params: Record<string, unknown>): Deflate {
    const { options } = this.server;
    const extension = new (perMessageDeflateClass(options.WebSocket))({
      ...(typeof options.perMessageDeflate === 'object' ? options.perMessageDeflate : {}),
      isServer: true,
      maxPayload: options.maxPayload,
    });
    extension.params = params;
    return extension;
  }
}

const deflateClasses = new WeakMap<object, new (options: object) => Deflate>();

/**
 * ws does not export PerMessageDeflate (nor allow deep imports): load the one next to the
 * application's WebSocket class, found in the CommonJS cache, so both come from the same copy of ws.
 */
function perMessageDeflateClass(webSocketClass: object): new (options: object) => Deflate {
  let found = deflateClasses.get(webSocketClass);
  if (!found) {
    const require = createRequire(import.meta.url);
    const module = Object.values(require.cache).find(
      (m) => m?.exports === webSocketClass && m.filename.endsWith(path.join('lib', 'websocket.js')),
    );
    if (!module) throw new TypeError("the WebSocketServer's WebSocket class is not from the ws package");
    found = require(path.join(path.dirname(module.filename), 'permessage-deflate.js')) as new (options: object) => Deflate;
    deflateClasses.set(webSocketClass, found);
  }
  return found;
}

/** Between frames: nothing half-read, buffered, fragmented or being inflated. */
function receiverIdle(ws: WebSocketLike): boolean {
  const receiver = ws._receiver;
  if (!receiver) return false;
  return (
    receiver._state === 0 &&
    receiver._bufferedBytes === 0 &&
    receiver._fragmented === 0 &&
    receiver._fragments.length === 0 &&
    receiver.writableLength === 0
  );
}

function parseState(state: Buffer | undefined): WebSocketState {
  const parsed = JSON.parse(state?.toString('utf8') ?? 'null') as Partial<WebSocketState> | null;
  if (!parsed || typeof parsed.method !== 'string' || typeof parsed.url !== 'string' || typeof parsed.headers !== 'object') {
    throw new TypeError('the WebSocket state from the old process is malformed');
  }
  return {
    server: Number.isInteger(parsed.server) ? Number(parsed.server) : -1,
    protocol: typeof parsed.protocol === 'string' ? parsed.protocol : '',
    deflate: parsed.deflate && typeof parsed.deflate === 'object' ? parsed.deflate : null,
    method: parsed.method,
    url: parsed.url,
    headers: parsed.headers,
    rawHeaders: Array.isArray(parsed.rawHeaders) ? parsed.rawHeaders.map(String) : [],
    httpVersion: typeof parsed.httpVersion === 'string' ? parsed.httpVersion : '1.1',
  };
}
