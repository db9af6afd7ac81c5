/**
 * Soak: chained takeovers under load. Each successor takes over from the last while every
 * connection echoes and new ones keep arriving; each old process must exit by itself, and the
 * serving process's fds and RSS must stay flat from one takeover to the next.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openFds, ServerProcess, tempDir, within, type ServerConfig } from '../helpers.js';
import { alive, Churn, loadedClients, rssKiB, slope, tally, type NewConnects, type Tally } from './load.js';

export interface SoakResult {
  takeovers: number;
  connections: number;
  /** Takeovers that did not move every connection, by number. */
  incomplete: number[];
  /** Old processes that did not exit by themselves with status 0 (then killed). */
  oldNotExited: number;
  leftover: number;
  tally: Tally;
  newConnects: NewConnects;
  /** The serving process's open fds and RSS (KiB) just after its takeover, one sample per takeover. */
  fds: number[];
  rss: number[];
  fdSlope: number;
  rssSlope: number;
  durationMs: number;
  ok: boolean;
}

/** Samples before this one are left out of the slopes: Node's first fds and its heap warm up. */
const WARM_UP = 2;

export async function soak(takeovers: number, connections: number, progress: (done: number) => void = () => {}): Promise<SoakResult> {
  const started = Date.now();
  const dir = tempDir();
  const config: ServerConfig = { path: path.join(dir, 'channel'), listen: [{ port: 0, host: '127.0.0.1' }] };
  let current = new ServerProcess(config);
  const port = (await current.next('ready', 60_000)).addresses![0]!.port;
  const clients = await loadedClients(connections, port, 200);
  const churn = new Churn(port, 20);
  const pids = [current.pid];
  const incomplete: number[] = [];
  const fds: number[] = [];
  const rss: number[] = [];
  const exits: Promise<boolean>[] = [];
  for (let i = 1; i <= takeovers; i++) {
    const next = new ServerProcess(config);
    pids.push(next.pid);
    const ready = await next.next('ready', 60_000);
    // New connects in flight move too: at least every long-lived one, none left behind.
    if (ready.stats!.connections < connections || ready.stats!.retained > 0) incomplete.push(i);
    // The next takeover need not wait for this exit: it is checked at the end.
    const old = current;
    exits.push(
      within(old.exited, `old process ${old.pid} to exit`, 30_000).then(
        (status) => status === 0,
        () => {
          old.kill('SIGKILL');
          return false;
        },
      ),
    );
    current = next;
    fds.push(openFds(current.pid));
    rss.push(rssKiB(current.pid));
    progress(i);
  }
  const oldNotExited = (await Promise.all(exits)).filter((exited) => !exited).length;
  const t = await tally(clients);
  const newConnects = await churn.stop();
  for (const c of clients) c.close();
  current.kill('SIGTERM');
  await within(current.exited, 'the last server to exit', 10_000).catch(() => current.kill('SIGKILL'));
  const leftover = pids.filter(alive).length;
  fs.rmSync(dir, { recursive: true, force: true });

  const fdSlope = slope(fds.slice(WARM_UP));
  const rssSlope = slope(rss.slice(WARM_UP));
  const span = Math.max(0, fds.length - WARM_UP - 1);
  const meanRss = rss.reduce((a, b) => a + b, 0) / Math.max(1, rss.length);
  // Flat: what the trend adds over the whole run stays within noise (a few in-flight connects,
  // a garbage collector's mood), not a leak of one fd or of ~1% of the heap per takeover.
  const flat = Math.abs(fdSlope * span) < 10 && Math.abs(rssSlope * span) < 0.1 * meanRss;
  const ok =
    incomplete.length === 0 &&
    oldNotExited === 0 &&
    leftover === 0 &&
    t.kept === connections &&
    t.bytesLost === 0 &&
    t.corrupt === 0 &&
    newConnects.served === newConnects.tried &&
    flat;
  return {
    takeovers,
    connections,
    incomplete,
    oldNotExited,
    leftover,
    tally: t,
    newConnects,
    fds,
    rss,
    fdSlope,
    rssSlope,
    durationMs: Date.now() - started,
    ok,
  };
}
