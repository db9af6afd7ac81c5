/**
 * The successor's CPU per inherited connection before COMMIT (issue #10): checking what each fd is
 * and wrapping it in a net.Socket, as src/successor.ts does in chunks of 400, then the one
 * setNoDelay(true) an application such as takeover-server makes when it adopts the socket.
 *
 * N real loopback connections (the clients in a child process). This process accepts them, sets
 * TCP_NODELAY as takeover-server does, keeps a dup of each fd and closes Node's own, so that it
 * ends up holding N raw connection fds, as a successor does once the transfer is over. Then it
 * times the check (one SocketInspection per chunk), the wrap (wrapInherited) and the application's
 * setNoDelay(true), each in CPU time of the event loop's thread.
 *
 * Usage: node dist-dev/bench/wrap-cost.js [N [RUNS]]   (npm run bench:wrap-cost)
 * Each run is its own process, alternating two servers: one whose application sets TCP_NODELAY in
 * its 'connection' handler (takeover-server), one created with `noDelay: true`, whose accept
 * options make the wrap set it. Prints one JSON object: µs per connection, each run and the medians.
 */
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { holdConnections } from './held-connections.js';
import * as net from 'node:net';
import * as native from '#lib/native.js';
import { acceptOptions, socketFd, wrapInherited } from '#lib/sockets.js';

/** src/successor.ts's WRAP_CHUNK. */
const CHUNK = 400;
type Server = 'app' | 'server';

if (process.argv[2] === 'clients') {
  await holdConnections(Number(process.argv[3]), Number(process.argv[4]), (socket) => once(socket, 'connect'));
} else if (process.argv[2] === 'measure') {
  await measure(Number(process.argv[3]), process.argv[4] as Server);
} else {
  const [n = '10000', runs = '3'] = process.argv.slice(2);
  if (!/^[1-9]\d*$/.test(n) || !/^[1-9]\d*$/.test(runs)) {
    process.stderr.write('usage: node dist-dev/bench/wrap-cost.js [N [RUNS]]\n');
    process.exit(2);
  }
  const results: Run[] = [];
  for (let i = 0; i < Number(runs); i++) {
    for (const server of ['app', 'server'] as const) {
      const out = execFileSync(process.execPath, [process.argv[1]!, 'measure', n, server], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      results.push(JSON.parse(out) as Run);
    }
  }
  const median = (server: Server, key: keyof Run['perConnectionUs']) => {
    const values = results
      .filter((r) => r.server === server)
      .map((r) => r.perConnectionUs[key])
      .sort((a, b) => a - b);
    return values[Math.floor(values.length / 2)]!;
  };
  const medians = Object.fromEntries(
    (['app', 'server'] as const).map((server) => [
      server,
      Object.fromEntries((['check', 'wrap', 'appNoDelay', 'total'] as const).map((key) => [key, median(server, key)])),
    ]),
  );
  process.stdout.write(`${JSON.stringify({ node: process.version, connections: Number(n), medians, runs: results }, null, 2)}\n`);
}

interface Run {
  server: Server;
  /** CPU time of the event loop's thread per connection, in µs. */
  perConnectionUs: { check: number; wrap: number; appNoDelay: number; total: number };
  /** Wall time of the whole loop, in ms. */
  wallMs: number;
}

async function measure(n: number, serverKind: Server): Promise<void> {
  const fds: number[] = [];
  const accepting = net.createServer({ noDelay: true }, (socket) => {
    fds.push(native.dup(socketFd(socket)));
    // Node's fd only: the dup keeps the connection open, and no FIN goes out.
    socket.destroy();
  });
  accepting.listen(0, '127.0.0.1');
  await once(accepting, 'listening');
  const clients = spawn(process.execPath, [process.argv[1]!, 'clients', String((accepting.address() as net.AddressInfo).port), String(n)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  await once(clients.stdout!, 'data');
  while (fds.length < n) await new Promise((resolve) => setImmediate(resolve));
  accepting.close();

  const options = acceptOptions(serverKind === 'server' ? net.createServer({ noDelay: true }) : net.createServer());
  const inspection = new native.SocketInspection(CHUNK);
  const sockets: net.Socket[] = [];
  let check = 0;
  let wrap = 0;
  let appNoDelay = 0;
  const start = performance.now();
  for (let from = 0; from < n; from += CHUNK) {
    const count = Math.min(CHUNK, n - from);
    let t = native.threadCpuMs();
    for (let i = 0; i < count; i++) inspection.fds[i] = fds[from + i]!;
    inspection.inspect(count);
    for (let i = 0; i < count; i++) {
      if (inspection.type(i) !== 'stream' || inspection.listening(i) || inspection.tcpState(i) !== 'ESTABLISHED') {
        throw new Error(`fd ${fds[from + i]} is not an established TCP connection`);
      }
    }
    let now = native.threadCpuMs();
    check += now - t;
    t = now;
    for (let i = 0; i < count; i++) sockets.push(wrapInherited(fds[from + i]!, 'tcp', options, inspection.noDelay(i)));
    now = native.threadCpuMs();
    wrap += now - t;
    t = now;
    if (serverKind === 'app') for (let i = from; i < from + count; i++) sockets[i]!.setNoDelay(true);
    appNoDelay += native.threadCpuMs() - t;
  }
  const wallMs = performance.now() - start;
  const us = (ms: number) => Math.round((ms * 1000 * 100) / n) / 100;
  const run: Run = {
    server: serverKind,
    perConnectionUs: { check: us(check), wrap: us(wrap), appNoDelay: us(appNoDelay), total: us(check + wrap + appNoDelay) },
    wallMs: Math.round(wallMs * 10) / 10,
  };
  for (const socket of sockets) socket.destroy();
  clients.stdin!.end();
  await once(clients, 'exit');
  process.stdout.write(`${JSON.stringify(run)}\n`);
}
