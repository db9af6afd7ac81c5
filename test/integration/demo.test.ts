/**
 * `npm run demo` as a user runs it: it must succeed, and leave no server and no temp dir
 * behind, whether it finishes or is interrupted.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter, once } from 'node:events';
import * as fs from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { isAlive } from '#lib/processes.js';
import { waitFor } from '../helpers.js';

const DEMO = fileURLToPath(new URL('../../tools/demo.js', import.meta.url));

/** Servers get SIGTERM as the demo leaves; their exit is not the demo's to wait for (nor a matter of seconds on a loaded machine). */
async function gone(pids: number[]): Promise<void> {
  await waitFor(
    () => !pids.some(isAlive),
    () => `the servers to exit; still running: ${pids.filter(isAlive).join(', ')}`,
    20_000,
    20,
  );
}

function startDemo(): { child: ChildProcess; output: () => string; changed: EventEmitter; exited: Promise<number | null> } {
  const child = spawn(process.execPath, [DEMO], { stdio: ['ignore', 'pipe', 'inherit'] });
  let output = '';
  const changed = new EventEmitter();
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    output += chunk;
    changed.emit('data');
  });
  const exited = once(child, 'close').then(([code]) => code as number | null);
  return { child, output: () => output, changed, exited };
}

const tempDirOf = (output: string): string => /takeover channel (\/\S+)\/takeover\.sock/.exec(output)![1]!;
const pidsIn = (output: string): number[] => [...output.matchAll(/\bpid (\d+)/g)].map((m) => Number(m[1]));

test('the demo moves 200 clients through 5 takeovers without loss and cleans up', { timeout: 60_000 }, async () => {
  const demo = startDemo();
  assert.equal(await demo.exited, 0, demo.output());
  const output = demo.output();
  const chain = /^Process chain: ((?:\d+ -> ){5}\d+)$/m.exec(output);
  assert.ok(chain, output);
  const rows = output.split('\n').filter((line) => /^\s+\d\s+(-T|SIGUSR2)\s/.test(line));
  assert.deepEqual(
    rows.map((row) => row.trim().split(/\s+/)[1]),
    ['-T', 'SIGUSR2', '-T', 'SIGUSR2', '-T'],
  );
  for (const row of rows) assert.match(row, /\s200\s+\d+\s+[\d.]+ ms\s+[\d.]+ ms\s+yes$/);
  assert.match(output, /lost 0, reordered 0, duplicated 0, errors 0/);
  assert.match(output, /^Result: OK/m);
  assert.equal(fs.existsSync(tempDirOf(output)), false);
  await gone(chain[1]!.split(' -> ').map(Number));
});

test('an interrupted demo stops every server and removes its temp dir', { timeout: 40_000 }, async () => {
  const demo = startDemo();
  // After the SIGUSR2 takeover, the serving process is not the demo's child.
  while (!/Takeover 2\/5.*\n(.*\n)*.*Takeover complete.*\n/.test(demo.output())) await once(demo.changed, 'data');
  demo.child.kill('SIGINT');
  assert.equal(await demo.exited, 130);
  const output = demo.output();
  assert.match(output, /Interrupted: stopping every server/);
  assert.equal(fs.existsSync(tempDirOf(output)), false);
  await gone(pidsIn(output));
});
