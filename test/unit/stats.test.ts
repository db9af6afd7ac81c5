import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { LoopSampler, StatsRecorder } from '#lib/stats.js';
import * as native from '#lib/native.js';

const who = { role: 'predecessor', predecessorPid: process.pid, successorPid: 0, listeners: 0 } as const;

/** Keeps this thread busy (on the CPU) for `ms`. */
function spin(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

/** Keeps this thread blocked (off the CPU) for `ms`. */
function block(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

test('the longest loop stall is split into time on the CPU, waiting for a core, and GC pauses; the CPU used is counted', async () => {
  const busy = new StatsRecorder();
  busy.sampleLoop();
  await sleep(5);
  spin(120);
  await sleep(5);
  const busyStats = busy.snapshot(who);
  const spun = busyStats.loopDelayMs;
  assert.ok(busyStats.cpuMs.thread >= spun.maxCpuMs, `the side's CPU holds its longest stall's: ${JSON.stringify(busyStats.cpuMs)}`);
  assert.ok(
    busyStats.cpuMs.process >= busyStats.cpuMs.thread - 1,
    `the process's holds its loop thread's: ${JSON.stringify(busyStats.cpuMs)}`,
  );
  assert.ok(spun.max >= 119, `the stall lasted the 120 ms spin (${spun.max} ms)`);
  assert.ok(spun.maxCpuMs + spun.maxWaitMs >= spun.max * 0.9, `the thread ran or waited to run all along: ${JSON.stringify(spun)}`);
  assert.ok(spun.maxCpuMs + spun.maxWaitMs <= spun.max + 2, `no more than the stall: ${JSON.stringify(spun)}`);
  assert.ok(spun.p99 <= spun.max);

  const idle = new StatsRecorder();
  idle.sampleLoop();
  await sleep(5);
  block(120);
  await sleep(5);
  const blocked = idle.snapshot(who).loopDelayMs;
  assert.ok(blocked.max >= 119, `the stall lasted the 120 ms block (${blocked.max} ms)`);
  assert.ok(
    blocked.maxCpuMs + blocked.maxWaitMs < blocked.max / 2,
    `a blocked thread neither runs nor waits for a core: ${JSON.stringify(blocked)}`,
  );
  // A collection can fall inside the stretch (between its first sample and the block), never
  // inside the 120 ms the thread was blocked.
  assert.ok(blocked.maxGcMs <= blocked.max - 118, `no GC pause while blocked: ${JSON.stringify(blocked)}`);
});

test('a garbage collection inside the longest stall is counted in it', async () => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const recorder = new StatsRecorder();
  recorder.sampleLoop();
  await sleep(5);
  // Enough live objects that a full collection takes a while, in a stall longer than any other.
  const garbage = Array.from({ length: 300_000 }, (_, i) => ({ i, s: String(i) }));
  spin(100);
  gc();
  await sleep(20);
  const loop = recorder.snapshot(who).loopDelayMs;
  assert.equal(garbage.length, 300_000);
  assert.ok(loop.max >= 99, `the stall lasted the spin and the collection (${loop.max} ms)`);
  assert.ok(loop.maxGcMs > 0 && loop.maxGcMs <= loop.max, `the collection's pause is inside it: ${JSON.stringify(loop)}`);
});

test('the event loop is sampled only from the start of the takeover on: a recorder alone holds no fd', () => {
  const before = native.openFdCount();
  const recorder = new StatsRecorder();
  assert.equal(native.openFdCount(), before, 'a peer that never says HELLO costs no fd');
  recorder.sampleLoop();
  assert.equal(native.openFdCount(), before + 1, 'the schedstat file is kept open while sampling');
  recorder.stop();
  assert.equal(native.openFdCount(), before);
  recorder.sampleLoop();
  assert.equal(native.openFdCount(), before, 'never again once stopped');
  assert.equal(recorder.snapshot(who).loopDelayMs.max, 0);
});

test("the loop sampler's figures so far can be read while it samples on (the benchmark's loop probe)", async () => {
  const sampler = new LoopSampler();
  await sleep(5);
  spin(40);
  await sleep(5);
  const first = sampler.peek();
  assert.ok(first.max >= 39, `the 40 ms spin seen (${first.max} ms)`);
  spin(80);
  await sleep(5);
  const later = sampler.peek();
  assert.ok(later.max >= 79, `still sampling: the 80 ms spin seen (${later.max} ms)`);
  const last = sampler.read();
  assert.ok(last.max >= later.max);
});
