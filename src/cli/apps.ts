/**
 * The example applications `takeover-server --app http|ws` serves, so that the boundaries a
 * takeover waits for (between HTTP requests, between WebSocket frames) can be exercised from a
 * shell. They know nothing of the takeover: the command registers them with it, and the
 * benchmark runs the same code without one for `pm2 reload` and the plain restart.
 *
 * - `http`: keep-alive HTTP/1.1. `/delay?ms=N` answers after N ms; `/stream?ms=N&every=M` sends
 *   a chunked line every M ms for N ms; `/upload` reads a POST body and answers its length;
 *   `/` answers at once. Each answer is JSON (or lines) naming the pid that gave it.
 * - `ws`: the same HTTP routes, plus a `ws` WebSocketServer on every path. It echoes each text
 *   message as `echo:<text>` (binary as is) and, with `?push=MS` in the URL, pushes
 *   `{"push":n}` every MS ms, n counting from 0 across takeovers.
 */
import type * as http from 'node:http';
import { nodeHttp } from '../node-http.js';
import type * as net from 'node:net';

export const APP_NAMES = ['echo', 'http', 'ws'] as const;
export type AppName = (typeof APP_NAMES)[number];

/** The longest delay or stream a request may ask for: an example server must not hold timers for days. */
const MAX_MS = 600_000;

export interface App {
  /** For log lines: `Starting <label> server on ...`. */
  readonly label: string;
  /** One server per listener. */
  createServer(): http.Server;
  /** The `ws` WebSocketServer every server upgrades to, for `takeover.webSockets()`. */
  readonly webSocketServer: { options: object; handleUpgrade: unknown } | undefined;
  /** Per-connection state that must move with a connection: a WebSocket's next push number. */
  captureState(socket: net.Socket): Buffer | undefined;
  restoreState(socket: net.Socket, state: Buffer): void;
}

/** An integer query parameter within [min, max]; anything else is the default, so a typo cannot hang a request. */
function param(url: URL, name: string, min: number, max: number, fallback: number): number {
  const text = url.searchParams.get(name);
  if (text === null || !/^\d+$/.test(text)) return fallback;
  return Math.min(max, Math.max(min, Number(text)));
}

function json(res: http.ServerResponse, status: number, body: object): void {
  const text = JSON.stringify({ pid: process.pid, ...body });
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function handle(req: http.IncomingMessage, res: http.ServerResponse): void {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const ms = param(url, 'ms', 0, MAX_MS, 0);
  switch (url.pathname) {
    case '/': {
      json(res, 200, {});
      return;
    }
    case '/delay': {
      const timer = setTimeout(() => json(res, 200, { ms }), ms);
      // A client that gave up must not keep a timer running for up to MAX_MS.
      res.once('close', () => clearTimeout(timer));
      return;
    }
    case '/stream': {
      const every = param(url, 'every', 1, MAX_MS, 100);
      res.writeHead(200, { 'content-type': 'text/plain' });
      let sent = 0;
      const timer = setInterval(() => {
        if (++sent * every >= ms) {
          clearInterval(timer);
          res.end(`end ${process.pid}\n`);
        } else {
          res.write(`${sent} ${process.pid}\n`);
        }
      }, every);
      res.once('close', () => clearInterval(timer));
      return;
    }
    case '/upload': {
      if (req.method !== 'POST' && req.method !== 'PUT') {
        json(res, 405, { error: 'POST a body to /upload' });
        return;
      }
      let bytes = 0;
      req.on('data', (chunk: Buffer) => (bytes += chunk.length));
      req.on('end', () => json(res, 200, { bytes }));
      return;
    }
    default:
      json(res, 404, { error: 'routes: /, /delay?ms=N, /stream?ms=N&every=M, POST /upload' });
  }
}

/** The error --app ws gives when the optional peer dependency is not installed. */
export const WS_MISSING = 'ERR_TAKEOVER_WS_MISSING';

// Only --app ws loads ws: it is an optional peer dependency, and the other apps must start without it.
async function loadWs(): Promise<typeof import('ws')> {
  try {
    return await import('ws');
  } catch (error) {
    if ((error as { code?: unknown }).code !== 'ERR_MODULE_NOT_FOUND') throw error;
    throw Object.assign(new Error("--app ws needs the 'ws' package, which is not installed (npm install ws)"), {
      code: WS_MISSING,
      cause: error,
    });
  }
}

export async function createApp(name: Exclude<AppName, 'echo'>): Promise<App> {
  if (name === 'http') {
    return {
      label: 'HTTP',
      createServer: () => nodeHttp.createServer(handle),
      webSocketServer: undefined,
      captureState: () => undefined,
      restoreState: () => {},
    };
  }
  const { WebSocketServer } = await loadWs();
  // Keyed by the socket, not the WebSocket: the state travels with the connection, and the
  // successor's WebSocket for it is a new object.
  const nextPush = new WeakMap<net.Socket, number>();
  // One server for every listener: one registration with the takeover covers them all.
  const wss = new WebSocketServer({ noServer: true });
  wss.on('connection', (ws, req) => {
    const socket = req.socket;
    const every = param(new URL(req.url ?? '/', 'http://localhost'), 'push', 0, MAX_MS, 0);
    if (!nextPush.has(socket)) nextPush.set(socket, 0);
    const timer =
      every > 0
        ? setInterval(() => {
            const n = nextPush.get(socket)!;
            nextPush.set(socket, n + 1);
            ws.send(JSON.stringify({ push: n }));
          }, every)
        : undefined;
    // A WebSocket that moved is the successor's to push on; this process only stops.
    socket.once('moved', () => clearInterval(timer));
    ws.on('close', () => clearInterval(timer));
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => ws.send(isBinary ? data : `echo:${data.toString()}`, { binary: isBinary }));
  });
  return {
    label: 'WebSocket',
    createServer: () => {
      const server = nodeHttp.createServer(handle);
      server.on('upgrade', (req, socket, head) =>
        wss.handleUpgrade(req, socket as net.Socket, head, (ws) => wss.emit('connection', ws, req)),
      );
      return server;
    },
    webSocketServer: wss,
    captureState: (socket) => {
      const n = nextPush.get(socket);
      return n === undefined ? undefined : Buffer.from(String(n));
    },
    restoreState: (socket, state) => {
      const n = Number(state.toString());
      if (Number.isSafeInteger(n) && n >= 0) nextPush.set(socket, n);
    },
  };
}
