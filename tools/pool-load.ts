/**
 * The load a pool of workers is judged by, for test/integration/pool.test.ts and the benchmark's
 * pool workload, against `takeover-server --app http` (or any server answering `GET /` with a
 * JSON body naming its `pid`):
 * - {@link KeepAliveClient}: one keep-alive connection that sends `GET /` as soon as the previous
 *   answer is in; a request never answered is lost, a close it did not make is a cut.
 * - {@link NewConnections}: one new connection per tick (`Connection: close`), counting who
 *   served each (each worker's share), and the connects refused.
 */
import * as http from 'node:http';
import * as net from 'node:net';

async function until(condition: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return true;
}

export class KeepAliveClient {
  readonly socket: net.Socket;
  readonly problems: string[] = [];
  sent = 0;
  answered = 0;
  cut = false;
  private buffer = '';
  private readonly timer: NodeJS.Timeout;
  private closedByUs = false;

  /** Sends the next request on the first tick (every `intervalMs`) after the previous answer. */
  constructor(host: string, port: number, intervalMs: number) {
    this.socket = net.connect({ port, host });
    this.socket.setEncoding('latin1');
    this.socket.on('data', (chunk: string) => this.onData(chunk));
    this.socket.on('error', (error: NodeJS.ErrnoException) => this.problems.push(`error ${error.code}`));
    this.socket.on('close', () => {
      if (this.closedByUs) return;
      this.cut = true;
      this.problems.push('cut: closed by the server');
    });
    this.timer = setInterval(() => {
      if (this.answered !== this.sent || this.socket.connecting || this.socket.destroyed) return;
      this.sent++;
      this.socket.write('GET / HTTP/1.1\r\nHost: pool\r\n\r\n');
    }, intervalMs);
  }

  /** Requests sent and never answered (so far). */
  get lost(): number {
    return this.sent - this.answered;
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    for (;;) {
      const end = this.buffer.indexOf('\r\n\r\n');
      if (end < 0) return;
      const length = Number(/content-length: (\d+)/i.exec(this.buffer.slice(0, end))?.[1] ?? 0);
      if (this.buffer.length < end + 4 + length) return;
      if (!this.buffer.startsWith('HTTP/1.1 200')) this.problems.push(`answer: ${this.buffer.slice(0, 20)}`);
      this.answered++;
      this.buffer = this.buffer.slice(end + 4 + length);
    }
  }

  /** Stops sending; resolves once the last request is answered, or the connection is gone, or after 10 s. */
  async drain(): Promise<void> {
    clearInterval(this.timer);
    await until(() => this.answered === this.sent || this.socket.destroyed, 10_000);
    if (this.lost > 0) this.problems.push(`lost: ${this.lost} requests unanswered`);
  }

  close(): void {
    clearInterval(this.timer);
    this.closedByUs = true;
    this.socket.destroy();
  }
}

export class NewConnections {
  /** Connections served, by the pid that answered. */
  readonly servedBy = new Map<number, number>();
  refused = 0;
  readonly failures: string[] = [];
  private readonly timer: NodeJS.Timeout;
  private inFlight = 0;

  constructor(
    private readonly host: string,
    private readonly port: number,
    everyMs: number,
  ) {
    this.timer = setInterval(() => this.one(), everyMs);
  }

  private one(): void {
    this.inFlight++;
    const request = http.get({ host: this.host, port: this.port, path: '/', agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => {
        const { pid } = JSON.parse(body) as { pid: number };
        this.servedBy.set(pid, (this.servedBy.get(pid) ?? 0) + 1);
        this.inFlight--;
      });
    });
    request.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ECONNREFUSED') this.refused++;
      else this.failures.push(error.code ?? error.message);
      this.inFlight--;
    });
  }

  /** Stops opening connections; resolves once every one opened has ended (or after 10 s). */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    await until(() => this.inFlight === 0, 10_000);
  }

  /** Each worker's share of the connections served, a worker's successive pids counted together. */
  shares(workers: number[][]): number[] {
    const total = [...this.servedBy.values()].reduce((a, b) => a + b, 0);
    return workers.map((pids) => pids.reduce((sum, pid) => sum + (this.servedBy.get(pid) ?? 0), 0) / total);
  }
}
