/**
 * What the old process allocates when it freezes and releases its connections in waves, and how
 * much of it a scavenge has to copy and promote (issue #10: the old process's scavenges during the
 * waves). N real loopback connections (the clients in a child process, so that this process holds
 * only the server side, as the old server does), each tracked as Takeover tracks it and echoed
 * once so its stream state is the one of a connection in use; a few full GCs put the sockets in
 * old space, as they are in a server that has run for a while; then waves of BATCH connections,
 * one per loop turn, each connection frozen and released as a wave does (the fd is closed: the
 * client sees a FIN here, where a real takeover's successor would hold a dup).
 *
 * Usage: node dist-dev/bench/release-alloc.js [N [BATCH]]   (npm run bench:release-alloc)
 * Runs the measurement twice, each in its own process: once with a new space large enough that no
 * scavenge runs during the waves, for the bytes one release allocates and the bytes of it that
 * survive two scavenges (what a scavenge during the waves copies and promotes); once with V8's
 * defaults, for the scavenges the waves cause (count, total and longest pause) and the CPU time
 * per release. Prints one JSON object.
 */
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { holdConnections } from './held-connections.js';
import * as net from 'node:net';
import { PerformanceObserver, constants as perfConstants } from 'node:perf_hooks';
import * as v8 from 'node:v8';
import { freezeSocket, releaseMoved, trackWrites } from '#lib/sockets.js';

const FRAME = Buffer.from('ping');

if (process.argv[2] === 'clients') {
  // The child: N connections that each send one frame, read its echo, then hold on.
  await holdConnections(Number(process.argv[3]), Number(process.argv[4]), (socket) => {
    socket.once('connect', () => socket.write(FRAME));
    socket.on('end', () => socket.destroy());
    return once(socket, 'data');
  });
} else if (process.argv[2] === 'measure') {
  await measure(Number(process.argv[3]), Number(process.argv[4]));
} else {
  const [n = '10000', batch = '128'] = process.argv.slice(2);
  if (!/^[1-9]\d*$/.test(n) || !/^[1-9]\d*$/.test(batch)) {
    process.stderr.write('usage: node dist-dev/bench/release-alloc.js [N [BATCH]]\n');
    process.exit(2);
  }
  // A new space large enough for every wave shows what a release allocates and what of it
  // survives, with no scavenge in between; the default one shows the scavenges the waves cause.
  const exact = run(['--min-semi-space-size=64', '--max-semi-space-size=64'], n, batch);
  const natural = run([], n, batch);
  process.stdout.write(
    `${JSON.stringify({ ...natural, perRelease: { ...natural.perRelease, ...exact.perRelease, cpuUs: natural.perRelease.cpuUs } }, null, 2)}\n`,
  );
}

function run(flags: string[], n: string, batch: string): Report {
  const out = execFileSync(process.execPath, ['--expose-gc', ...flags, process.argv[1]!, 'measure', n, batch], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return JSON.parse(out) as Report;
}

interface Report {
  node: string;
  connections: number;
  batch: number;
  perRelease: { cpuUs: number; allocatedBytes: number | null; survivingBytes: number | null };
  duringWaves: { scavenges: number; scavengeMsTotal: number; scavengeMsMax: number; majorGcs: number };
  heapMB: { usedBefore: number; usedAfterWaves: number };
}

async function measure(n: number, batch: number): Promise<void> {
  const gc = (globalThis as { gc?: (options?: { type: 'minor'; execution: 'sync' }) => void }).gc!;
  const sockets: (net.Socket | undefined)[] = [];
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => socket.write(chunk));
    // What Takeover.track() adds to each connection.
    trackWrites(socket);
    socket.once('close', () => {});
    sockets.push(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const clients = spawn(process.execPath, [process.argv[1]!, 'clients', String(port), String(n)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    clients.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    clients.once('exit', (code) => reject(new Error(`the clients exited (${code}) before all ${n} connected`)));
  });

  for (let i = 0; i < 3; i++) gc();
  const gcs: { minor: boolean; ms: number }[] = [];
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const kind = (entry as unknown as { detail?: { kind: number } }).detail?.kind;
      gcs.push({ minor: kind === perfConstants.NODE_PERFORMANCE_GC_MINOR, ms: entry.duration });
    }
  });
  observer.observe({ entryTypes: ['gc'] });
  const onLateUse = (_socket: net.Socket, what: string) => new Error(`${what}() after the release`);
  const heap = () => {
    const spaces = v8.getHeapSpaceStatistics();
    const used = (name: string) => spaces.find((s) => s.space_name === name)!.space_used_size;
    return { young: used('new_space'), old: used('old_space') };
  };
  const before = heap();
  const usedBefore = v8.getHeapStatistics().used_heap_size;
  let cpuUs = 0;
  for (let start = 0; start < sockets.length; start += batch) {
    const end = Math.min(start + batch, sockets.length);
    const cpu = process.cpuUsage();
    for (let i = start; i < end; i++) {
      const socket = sockets[i]!;
      sockets[i] = undefined;
      if (freezeSocket(socket).fate === 'moved') releaseMoved(socket, onLateUse);
    }
    const used = process.cpuUsage(cpu);
    cpuUs += used.user + used.system;
    await new Promise((resolve) => setImmediate(resolve));
  }
  await new Promise((resolve) => setTimeout(resolve, 50));
  const waves = gcs.splice(0);
  const after = heap();
  const usedAfter = v8.getHeapStatistics().used_heap_size;
  // Two scavenges: what survives the first is promoted by the second.
  gc({ type: 'minor', execution: 'sync' });
  gc({ type: 'minor', execution: 'sync' });
  const survivors = heap();
  observer.disconnect();

  const scavenges = waves.filter((g) => g.minor);
  const round = (x: number) => Math.round(x * 10) / 10;
  const report: Report = {
    node: process.version,
    connections: n,
    batch,
    perRelease: {
      cpuUs: round(cpuUs / n),
      // Meaningful only when no GC ran during the waves (the run with a large new space).
      allocatedBytes: waves.length === 0 ? Math.round((after.young - before.young + after.old - before.old) / n) : null,
      survivingBytes: waves.length === 0 ? Math.round((survivors.young + survivors.old - before.young - before.old) / n) : null,
    },
    duringWaves: {
      scavenges: scavenges.length,
      scavengeMsTotal: round(scavenges.reduce((a, g) => a + g.ms, 0)),
      scavengeMsMax: round(Math.max(0, ...scavenges.map((g) => g.ms))),
      majorGcs: waves.length - scavenges.length,
    },
    heapMB: { usedBefore: round(usedBefore / 2 ** 20), usedAfterWaves: round(usedAfter / 2 ** 20) },
  };
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  clients.stdin.end();
  server.close();
}
