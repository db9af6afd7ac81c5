import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { cleanup, distDir, tempDir, within } from '../helpers.js';

const children: ChildProcess[] = [];
after(() => {
  cleanup();
  for (const child of children) child.kill('SIGKILL');
});

const example = path.resolve(distDir, '..', 'examples', 'http-server.mjs');

/** Starts the README's example and resolves with its process once it printed `expected`. */
async function startExample(args: string[], expected: RegExp) {
  const child = spawn(process.execPath, [example, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const lines = createInterface({ input: child.stdout });
  const seen: string[] = [];
  await new Promise<void>((resolve, reject) => {
    lines.on('line', (line) => {
      seen.push(line);
      if (expected.test(line)) resolve();
    });
    child.once('exit', (code) => reject(new Error(`example exited (${code}) after: ${seen.join(' | ')}`)));
  });
  return { child, seen };
}

test("the README's example serves, then a second copy takes over its open connection", { timeout: 30_000 }, async () => {
  const dir = tempDir();
  const port = await new Promise<number>((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
  const args = [path.join(dir, 'http.takeover'), String(port)];
  const first = await startExample(args, /^serving on/);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const get = () =>
    new Promise<{ body: string; reused: boolean }>((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port, agent }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ body, reused: req.reusedSocket }));
      });
      req.on('error', reject);
    });
  assert.equal((await get()).body, `hello from pid ${first.child.pid}\n`);

  // A request in flight at the takeover is answered by the old process; the connection then moves.
  const inFlight = get();
  const second = await startExample(args, /^took over 1 connections from pid \d+/);
  assert.equal((await inFlight).body, `hello from pid ${first.child.pid}\n`);
  // 'close', not 'exit': its last line, the one checked below, can still be in the pipe at 'exit'.
  const [code] = await within(once(first.child, 'close'), 'the first copy to exit and its output to end');
  assert.equal(code, 0);
  assert.match(first.seen.join('\n'), new RegExp(`handed 1 connections to pid ${second.child.pid}`));
  const after = await get();
  assert.deepEqual(after, { body: `hello from pid ${second.child.pid}\n`, reused: true });
  agent.destroy();
  second.child.kill('SIGTERM');
  await once(second.child, 'exit');
  assert.equal(fs.existsSync(args[0]!), false, 'close() removed the channel path');
  fs.rmSync(dir, { recursive: true, force: true });
});
