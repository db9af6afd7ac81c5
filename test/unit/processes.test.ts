import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as fs from 'node:fs';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { lowerPriority } from '#lib/processes.js';

/** Each thread's nice value: Linux keeps one per thread, and V8 and libuv start threads of their own. */
const priorities = () => fs.readdirSync('/proc/self/task').map((tid) => os.getPriority(Number(tid)));

test('lowerPriority lowers every thread only when it can raise them back, and raises them back', () => {
  const original = os.getPriority();
  const before = priorities();
  assert.ok(before.length > 1, `Node runs helper threads (${before.length} seen)`);
  const restore = lowerPriority(3);
  try {
    if (restore === undefined) {
      // Not allowed to raise it back (no root, RLIMIT_NICE too low): nothing was lowered.
      assert.deepEqual(priorities(), before);
    } else {
      assert.deepEqual(
        priorities(),
        before.map((p) => Math.min(19, p + 3)),
      );
    }
  } finally {
    restore?.();
  }
  assert.deepEqual(priorities(), before, 'as they were');
  assert.equal(os.getPriority(), original, 'as it was');
  assert.equal(lowerPriority(0), undefined, 'zero steps lower nothing');
  assert.equal(os.getPriority(), original);
});

test('lowerPriority raises back the threads started while it was lowered (they inherited the lowered value)', async () => {
  const original = os.getPriority();
  assert.deepEqual(new Set(priorities()), new Set([original]), 'every thread starts at the main thread value');
  const restore = lowerPriority(3);
  if (restore === undefined) return; // Not allowed to raise it back: nothing was lowered (the test above checks it).
  const before = priorities().length;
  const worker = new Worker('setInterval(() => {}, 1000)', { eval: true });
  try {
    await once(worker, 'online');
    assert.ok(priorities().length > before, 'the worker added threads');
    assert.ok(priorities().includes(Math.min(19, original + 3)));
    restore();
    assert.deepEqual(new Set(priorities()), new Set([original]));
  } finally {
    await worker.terminate();
  }
});

test('overlapping lowerings (two successor sessions in one process) leave every thread as it was, whichever is raised back first', () => {
  const before = priorities();
  for (const order of ['first-first', 'last-first']) {
    const first = lowerPriority(10);
    if (first === undefined) return; // Not allowed to raise it back: nothing was lowered (the first test checks it).
    const second = lowerPriority(10);
    assert.ok(second !== undefined, 'the second session runs lowered too');
    if (order === 'first-first') {
      first();
      second();
    } else {
      second();
      first();
    }
    assert.deepEqual(priorities(), before, `as they were (${order})`);
  }
});
