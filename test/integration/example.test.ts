import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { cleanup, distDir, tempDir, waitFor } from '../helpers.js';

const children: ChildProcess[] = [];
after(() => {
  cleanup();
  for (const child of children) child.kill('SIGKILL');
});

const example = path.resolve(distDir, '..', 'examples', 'echo-server.mjs');

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
  const args = [path.join(dir, 'echo.takeover'), String(port)];
  const first = await startExample(args, /^serving on/);
  const client = net.connect(port, '127.0.0.1');
  await once(client, 'connect');
  let echoed: string = '';
  client.on('data', (d: Buffer) => (echoed += d.toString()));
  client.write('before;');
  await waitFor(() => echoed === 'before;', () => `the echo of 'before;' (got ${JSON.stringify(echoed)})`);

  const second = await startExample(args, /^took over 1 connections from pid \d+/);
  const [code] = await once(first.child, 'exit');
  assert.equal(code, 0);
  assert.match(first.seen.join('\n'), new RegExp(`handed 1 connections to pid ${second.child.pid}`));
  client.write('after');
  await waitFor(() => echoed.endsWith('after'), "the echo of 'after' from the successor");
  assert.equal(echoed, 'before;after');
  client.destroy();
  second.child.kill('SIGTERM');
  await once(second.child, 'exit');
  assert.equal(fs.existsSync(args[0]!), false, 'close() removed the channel path');
  fs.rmSync(dir, { recursive: true, force: true });
});
