/**
 * The benchmark's baseline server: the same 4-byte frame echo as takeover-server, or the same
 * HTTP or WebSocket app as `takeover-server --app http|ws` (src/cli/apps.ts), in plain Node with
 * no takeover, for `pm2 reload` (cluster mode) and the plain restart.
 *
 * Usage: node dist-dev/bench/echo-server.js PORT [HOST [echo|http|ws]]
 * Prints one line once listening. On SIGINT (what pm2 sends) or SIGTERM it stops accepting and
 * exits: established connections cannot outlive their process, which is what the benchmark shows.
 * The HTTP and WebSocket apps shut down the way a careful app does before a reload: requests in
 * progress are answered (with `Connection: close`), idle keep-alive connections closed,
 * WebSockets closed with 1001 (going away), for at most GRACE_MS (under pm2's 1,600 ms kill_timeout).
 */
import type * as http from 'node:http';
import * as net from 'node:net';
import { createApp } from '#lib/cli/apps.js';

const GRACE_MS = 1500;

const port = Number(process.argv[2]);
const host = process.argv[3] ?? '127.0.0.1';
const appName = process.argv[4] ?? 'echo';
if (!Number.isInteger(port) || port <= 0 || port > 65535 || !['echo', 'http', 'ws'].includes(appName)) {
  process.stderr.write('usage: echo-server PORT [HOST [echo|http|ws]]\n');
  process.exit(2);
}

function echoServer(): net.Server {
  return net.createServer((socket) => {
    socket.setNoDelay(true);
    socket.on('error', () => {});
    // A frame split across reads is held back so every write carries whole frames, as ours does.
    let partial: Buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      const data = partial.length > 0 ? Buffer.concat([partial, chunk]) : chunk;
      const whole = data.length - (data.length % 4);
      if (whole > 0) socket.write(data.subarray(0, whole));
      partial = data.subarray(whole);
    });
  });
}

const app = appName === 'echo' ? undefined : await createApp(appName as 'http' | 'ws');
const server: net.Server = app ? app.createServer() : echoServer();
// Node's default backlog (511), as takeover-server's: a different queue would change what the short connections see.
server.listen({ port, host }, () => {
  process.stdout.write(`echo-server ${process.pid} listening on ${host}:${port}\n`);
});

let stopping = false;
const stop = (): void => {
  if (stopping) return;
  stopping = true;
  if (!app) {
    server.close();
    process.exit(0);
  }
  const web = server as http.Server;
  // From now on every answer is the connection's last; the client reconnects to the new process.
  web.prependListener('request', (_req: http.IncomingMessage, res: http.ServerResponse) => {
    res.shouldKeepAlive = false;
  });
  web.close(() => process.exit(0));
  web.closeIdleConnections();
  const clients = (app.webSocketServer as { clients?: Set<{ close(code: number): void }> } | undefined)?.clients;
  for (const ws of clients ?? []) ws.close(1001);
  setTimeout(() => process.exit(0), GRACE_MS).unref();
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
