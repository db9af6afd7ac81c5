import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as os from 'node:os';
import { lowerPriority } from '#lib/processes.js';

test('lowerPriority lowers the main thread only when it can raise it back, and raises it back', () => {
  const original = os.getPriority();
  const restore = lowerPriority(3);
  try {
    if (restore === undefined) {
      // Not allowed to raise it back (no root, RLIMIT_NICE too low): nothing was lowered.
      assert.equal(os.getPriority(), original);
    } else {
      assert.equal(os.getPriority(), Math.min(19, original + 3));
    }
  } finally {
    restore?.();
  }
  assert.equal(os.getPriority(), original, 'as it was');
  assert.equal(lowerPriority(0), undefined, 'zero steps lower nothing');
  assert.equal(os.getPriority(), original);
});
