/**
 * The client side of the micro-benchmarks that need N real loopback connections held by another
 * process, so that the measuring process holds only the server side, as a server does.
 */
import * as net from 'node:net';

/**
 * Opens `n` connections to 127.0.0.1:`port` in steps of 256, so that the listen backlog never
 * overflows into SYN retries; each step waits for what `opened` returns for its connections.
 * Then says `ready` on stdout and holds them until stdin closes.
 */
export async function holdConnections(port: number, n: number, opened: (socket: net.Socket) => Promise<unknown>): Promise<void> {
  for (let start = 0; start < n; start += 256) {
    const step: Promise<unknown>[] = [];
    for (let i = start; i < Math.min(n, start + 256); i++) {
      const socket = net.connect(port, '127.0.0.1');
      socket.on('error', () => {});
      step.push(opened(socket));
    }
    await Promise.all(step);
  }
  process.stdout.write('ready\n');
  process.stdin.on('close', () => process.exit(0));
  process.stdin.resume();
}
