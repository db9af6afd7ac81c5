/**
 * The benchmark's baseline server: the same 4-byte frame echo as takeover-server, in plain
 * Node with no takeover, for `pm2 reload` (cluster mode) and the plain restart.
 *
 * Usage: node dist-dev/bench/echo-server.js PORT [HOST]
 * Prints one line once listening. On SIGINT (what pm2 sends) or SIGTERM it stops accepting and
 * exits: established connections cannot outlive their process, which is what the benchmark shows.
 */
import * as net from 'node:net';

const port = Number(process.argv[2]);
const host = process.argv[3] ?? '127.0.0.1';
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  process.stderr.write('usage: echo-server PORT [HOST]\n');
  process.exit(2);
}

const server = net.createServer((socket) => {
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
// Node's default backlog (511), as takeover-server's: a different queue would change what the short connections see.
server.listen({ port, host }, () => {
  process.stdout.write(`echo-server ${process.pid} listening on ${host}:${port}\n`);
});

const stop = (): void => {
  server.close();
  process.exit(0);
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
