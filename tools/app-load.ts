/**
 * Load engines for `takeover-server --app http|ws` (and the benchmark's plain copies of those
 * apps): what a client of an HTTP or WebSocket server sees while the server is replaced.
 *
 * - http: each client is one keep-alive connection (an http.Agent with one socket) requesting
 *   `/delay?ms=<random 0..delayMs>` in a loop, `intervalMs` after each answer. It counts the
 *   requests that failed (an error, or a status other than 200), those that hung (no answer
 *   within `timeoutMs`, then abandoned), and the connections it had to open beyond its first.
 * - ws: each client is one WebSocket with the server's numbered push stream (`?push=pushMs`) and
 *   its own numbered messages, sent `intervalMs` after each echo. It counts pushes and echoes
 *   lost, duplicated or reordered, and WebSockets closed by the server (then reopens after
 *   RECONNECT_MS, and a new WebSocket's pushes count from 0 again).
 *
 * Both report each client's longest gap between two consecutive answers (HTTP responses, or
 * WebSocket messages of either kind): the pause the switch caused, on top of the steady gap.
 * Load generators must stay bounded: each run stops by itself after `durationMs`.
 */
import * as http from 'node:http';
import type * as net from 'node:net';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import * as hdr from 'hdr-histogram-js';
import { ELD_RESOLUTION_MS, errorCounts, eventLoopLag, newHistogram, percentilesMs, type Percentiles } from './echo-load.js';
import { formatPeer } from '#lib/cli/format.js';

export type AppWorkload = 'http' | 'ws';

export interface AppLoadOptions {
  workload: AppWorkload;
  host: string;
  port: number;
  clients: number;
  /** Pause after each answer before the client's next request or message. */
  intervalMs: number;
  durationMs: number;
  sourceAddresses?: string[];
  /** http: the handler's delay is random in [0, delayMs]. */
  delayMs?: number;
  /** ws: the server pushes every pushMs. */
  pushMs?: number;
  /** A request (http) or an echo (ws) not answered within this is counted hung and abandoned. */
  timeoutMs?: number;
}

export interface AppLoadSummary {
  workload: AppWorkload;
  target: string;
  elapsedMs: number;
  clients: number;
  /** Connections (http) or WebSockets (ws) opened, first ones included. */
  opened: number;
  /** Opened beyond each client's first: how often a client had to reconnect. */
  reopened: number;
  /** Connections (http) or WebSockets (ws) the server closed or reset while the client used them. */
  closed: number;
  /** Clients whose first connection was still the one in use at the end. */
  keptFirst: number;
  /** http: requests sent; ws: client messages sent. */
  sent: number;
  /** http: 200 responses; ws: echoes. */
  answered: number;
  /** ws: pushes received. */
  pushes: number;
  /** http: requests that got an error or a non-200 status. */
  failed: number;
  /** No answer within timeoutMs. */
  hung: number;
  /** ws: pushes or echoes skipped (an echo pending when its WebSocket closed counts as lost). */
  lost: number;
  duplicated: number;
  reordered: number;
  errors: Record<string, number>;
  /** Per client, the longest gap between two consecutive answers, timed until the stop. */
  pauseMs: Percentiles;
  histograms: { pauseUs: string };
  lagMs: number;
  lagMaxMs: number;
  ok: boolean;
}

const SWEEP_MS = 100;
const RECONNECT_MS = 100;

/** What both workloads count; each client reports into one of these. */
class Tally {
  readonly errors = errorCounts();
  opened = 0;
  reopened = 0;
  closed = 0;
  sent = 0;
  answered = 0;
  pushes = 0;
  failed = 0;
  hung = 0;
  lost = 0;
  duplicated = 0;
  reordered = 0;
  readonly pause = newHistogram();

  error(code: string | undefined): void {
    const key = code ?? 'ERROR';
    this.errors[key] = (this.errors[key] ?? 0) + 1;
  }
}

/** The longest gap between consecutive answers of one client, timed until the stop. */
class Gaps {
  private last = -1;
  longestUs = 0;

  answer(now: number, stoppedAt: number): void {
    if (this.last >= 0 && now <= stoppedAt) this.longestUs = Math.max(this.longestUs, Math.round((now - this.last) * 1000));
    this.last = now;
  }

  /** A gap still open at the stop counts up to it: a client that never got an answer again paused that long. */
  close(stoppedAt: number): number {
    if (this.last >= 0 && stoppedAt > this.last) this.longestUs = Math.max(this.longestUs, Math.round((stoppedAt - this.last) * 1000));
    return this.longestUs;
  }
}

interface Client {
  gaps: Gaps;
  /** The connection or WebSocket in use is the client's first. */
  first: boolean;
  /** performance.now() when the pending request or echo was sent; -1 when none is. */
  waitSince: number;
  timer: NodeJS.Timeout | undefined;
  /** Abandons what is pending (hung): the client goes on with a new request or WebSocket. */
  abandon(): void;
  /** Stops the client for good. */
  stop(): void;
}

export function runAppLoad(options: AppLoadOptions): Promise<AppLoadSummary> {
  const tally = new Tally();
  const eld = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });
  eld.enable();
  const startedAt = performance.now();
  const timeoutMs = options.timeoutMs ?? 5000;
  const sources = options.sourceAddresses ?? [];
  const state = { stopping: false, stoppedAt: Infinity };
  const factory = options.workload === 'http' ? httpClient : wsClient;
  const clients: Client[] = [];
  // Clients start spread over one interval, so their requests do not come in one burst.
  const spacing = options.intervalMs / Math.max(1, options.clients);
  const starts = Array.from({ length: options.clients }, (_, i) =>
    setTimeout(
      () => clients.push(factory(options, tally, state, sources.length === 0 ? undefined : sources[i % sources.length])),
      i * spacing,
    ),
  );
  const sweep = setInterval(() => {
    const now = performance.now();
    for (const client of clients) {
      if (client.waitSince >= 0 && now - client.waitSince > timeoutMs) {
        tally.hung++;
        client.abandon();
      }
    }
  }, SWEEP_MS);
  return new Promise((resolve) => {
    setTimeout(() => {
      state.stopping = true;
      state.stoppedAt = performance.now();
      eld.disable();
      for (const start of starts) clearTimeout(start);
      clearInterval(sweep);
      for (const client of clients) {
        client.stop();
        tally.pause.recordValue(client.gaps.close(state.stoppedAt));
      }
      const keptFirst = clients.filter((c) => c.first).length;
      const pauseMs = percentilesMs(tally.pause);
      resolve({
        workload: options.workload,
        target: formatPeer(options.host, options.port),
        elapsedMs: Math.round(state.stoppedAt - startedAt),
        clients: options.clients,
        opened: tally.opened,
        reopened: tally.reopened,
        closed: tally.closed,
        keptFirst,
        sent: tally.sent,
        answered: tally.answered,
        pushes: tally.pushes,
        failed: tally.failed,
        hung: tally.hung,
        lost: tally.lost,
        duplicated: tally.duplicated,
        reordered: tally.reordered,
        errors: tally.errors,
        pauseMs,
        histograms: { pauseUs: hdr.encodeIntoCompressedBase64(tally.pause) },
        ...eventLoopLag(eld),
        ok:
          tally.failed + tally.hung + tally.lost + tally.duplicated + tally.reordered + tally.closed === 0 && keptFirst === options.clients,
      });
    }, options.durationMs);
  });
}

type RunState = { stopping: boolean; stoppedAt: number };

function httpClient(options: AppLoadOptions, tally: Tally, run: RunState, localAddress: string | undefined): Client {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const sockets = new WeakSet<net.Socket>();
  /** Sockets this client destroyed itself (a hung request's): their close is not the server's. */
  const abandoned = new WeakSet<net.Socket>();
  const delayMs = options.delayMs ?? 20;
  let current: http.ClientRequest | undefined;
  let currentSocket: net.Socket | undefined;
  const client: Client = {
    gaps: new Gaps(),
    first: true,
    waitSince: -1,
    timer: undefined,
    abandon: () => {
      const req = current;
      current = undefined;
      client.waitSince = -1;
      if (req?.socket) abandoned.add(req.socket);
      req?.destroy();
      next();
    },
    stop: () => {
      clearTimeout(client.timer);
      current = undefined;
      agent.destroy();
    },
  };
  const next = (): void => {
    if (run.stopping) return;
    client.timer = setTimeout(request, options.intervalMs);
  };
  const settle = (req: http.ClientRequest, ok: boolean, code?: string): void => {
    // An abandoned (hung) request's late end or error is no news.
    if (current !== req) return;
    current = undefined;
    client.waitSince = -1;
    if (ok) {
      tally.answered++;
      client.gaps.answer(performance.now(), run.stoppedAt);
    } else {
      tally.failed++;
      tally.error(code);
    }
    next();
  };
  const request = (): void => {
    if (run.stopping) return;
    const path = `/delay?ms=${Math.floor(Math.random() * (delayMs + 1))}`;
    const req = http.get({ host: options.host, port: options.port, path, agent, localAddress });
    current = req;
    tally.sent++;
    client.waitSince = performance.now();
    req.on('socket', (socket: net.Socket) => {
      if (sockets.has(socket)) return;
      sockets.add(socket);
      // Only connections that connected count: a refused attempt is a failed request, not a connection.
      let connected = false;
      const onConnect = (): void => {
        connected = true;
        tally.opened++;
        if (currentSocket !== undefined) {
          tally.reopened++;
          client.first = false;
        }
        currentSocket = socket;
      };
      if (socket.connecting) socket.once('connect', onConnect);
      else onConnect();
      socket.on('close', () => {
        // The agent closes nothing while the run lasts: a close before the stop is the server's.
        if (connected && !run.stopping && !abandoned.has(socket)) tally.closed++;
      });
    });
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => settle(req, res.statusCode === 200, `HTTP ${res.statusCode}`));
      res.on('error', (error: NodeJS.ErrnoException) => settle(req, false, error.code));
    });
    req.on('error', (error: NodeJS.ErrnoException) => settle(req, false, error.code));
  };
  request();
  return client;
}

interface WsModule {
  WebSocket: typeof import('ws').WebSocket;
}
let wsModule: WsModule | undefined;

/** ws is a devDependency: loaded once, and only for the ws workload. */
export async function loadWsClient(): Promise<void> {
  wsModule ??= await import('ws');
}

function wsClient(options: AppLoadOptions, tally: Tally, run: RunState, localAddress: string | undefined): Client {
  const { WebSocket } = wsModule!;
  const url = `ws://${options.host.includes(':') ? `[${options.host}]` : options.host}:${options.port}/?push=${options.pushMs ?? 100}`;
  let ws: import('ws').WebSocket | undefined;
  let opens = 0;
  let expectedPush = 0;
  /** Pushes skipped by a higher one: a late one is reordered, not lost. */
  let missing = new Set<number>();
  let nextMessage = 0;
  const client: Client = {
    gaps: new Gaps(),
    first: true,
    waitSince: -1,
    timer: undefined,
    abandon: () => {
      // An echo that never came: the WebSocket is given up, the echo counted lost with it.
      client.waitSince = -1;
      tally.lost++;
      const dead = ws;
      ws = undefined;
      dead?.terminate();
      reconnect();
    },
    stop: () => {
      clearTimeout(client.timer);
      const last = ws;
      ws = undefined;
      last?.terminate();
    },
  };
  const reconnect = (): void => {
    client.first = false;
    if (!run.stopping) client.timer = setTimeout(open, RECONNECT_MS);
  };
  const send = (): void => {
    if (run.stopping || !ws || ws.readyState !== WebSocket.OPEN) return;
    tally.sent++;
    client.waitSince = performance.now();
    ws.send(`m${nextMessage}`);
  };
  const open = (): void => {
    if (run.stopping) return;
    const socket = new WebSocket(url, { perMessageDeflate: false, localAddress });
    ws = socket;
    let wasOpen = false;
    socket.on('open', () => {
      wasOpen = true;
      if (opens++ > 0) tally.reopened++;
      tally.opened++;
      expectedPush = 0;
      missing = new Set();
      nextMessage = 0;
      client.timer = setTimeout(send, options.intervalMs);
    });
    socket.on('message', (data) => {
      if (ws !== socket) return;
      const now = performance.now();
      client.gaps.answer(now, run.stoppedAt);
      const text = data.toString();
      if (text.startsWith('echo:')) {
        if (text !== `echo:m${nextMessage}` || client.waitSince < 0) {
          tally.duplicated++;
          return;
        }
        tally.answered++;
        nextMessage++;
        client.waitSince = -1;
        client.timer = setTimeout(send, options.intervalMs);
        return;
      }
      const n = (JSON.parse(text) as { push: number }).push;
      tally.pushes++;
      if (n === expectedPush) {
        expectedPush++;
      } else if (n > expectedPush) {
        for (let k = expectedPush; k < n; k++) missing.add(k);
        tally.lost += n - expectedPush;
        expectedPush = n + 1;
      } else if (missing.delete(n)) {
        tally.lost--;
        tally.reordered++;
      } else {
        tally.duplicated++;
      }
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      if (ws === socket) tally.error(error.code);
    });
    socket.on('close', () => {
      if (ws !== socket || run.stopping) return;
      ws = undefined;
      clearTimeout(client.timer);
      // Closed after it opened: the server cut it; before: a refused or reset attempt (an error above).
      if (wasOpen) tally.closed++;
      if (client.waitSince >= 0) tally.lost++;
      client.waitSince = -1;
      reconnect();
    });
  };
  open();
  return client;
}
