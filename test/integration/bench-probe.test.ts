/**
 * The benchmark's loop probe (bench/loop-probe.ts) preloaded into a real process: it samples
 * nothing until the benchmark's signal, then the library's LoopSampler from that signal to the
 * process's exit, and writes what it saw where the benchmark said.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { PROBE_FILE_ENV, PROBE_START_SIGNAL, type LoopProbe } from '../../bench/loop-probe.js';
import { distDir, tempDir, within } from '../helpers.js';

const PROBE = path.join(distDir, 'bench', 'loop-probe.js');
const BLOCK_MS = 30;

/** A process that says when it runs; told PROBE_START_SIGNAL, it blocks its loop BLOCK_MS, then exits (SIGTERM: at once). */
const SCRIPT = `
process.on('${PROBE_START_SIGNAL}', () => setTimeout(() => {
  const until = performance.now() + ${BLOCK_MS};
  while (performance.now() < until);
  setTimeout(() => process.exit(0), 100);
}, 100));
process.on('SIGTERM', () => process.exit(0));
setInterval(() => {}, 1000);
process.stdout.write('ready\\n');
`;

/** What the probe wrote, if anything. */
async function runProbed(signal: boolean): Promise<LoopProbe | undefined> {
  const dir = tempDir();
  const file = path.join(dir, 'probe.json');
  const child = spawn(process.execPath, ['--import', PROBE, '-e', SCRIPT], {
    env: { ...process.env, [PROBE_FILE_ENV]: file },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = once(child, 'exit');
  await within(once(child.stdout!, 'data'), 'the probed process running');
  if (signal) child.kill(PROBE_START_SIGNAL);
  else child.kill('SIGTERM');
  await within(exited, 'the probed process exit');
  try {
    return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as LoopProbe) : undefined;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('the loop probe samples from its signal to the exit, and writes its figures to the named file', async () => {
  const probe = await runProbed(true);
  assert.ok(probe, 'a probe file written at the exit');
  assert.ok(probe.loop.max >= BLOCK_MS - 1, `the ${BLOCK_MS} ms block seen (max ${probe.loop.max} ms)`);
  assert.ok(probe.windowMs >= 200 + BLOCK_MS, `window ${probe.windowMs} ms`);
  assert.ok(probe.series.length >= 2, 'figures every 50 ms meanwhile');
  const last = probe.series.at(-1)!;
  assert.ok(last.ms <= probe.windowMs && last.loop.max <= probe.loop.max);
});

test('the loop probe does nothing until its signal', async () => {
  assert.equal(await runProbed(false), undefined);
});
