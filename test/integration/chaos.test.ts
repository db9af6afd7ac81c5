/**
 * The short part of `npm run chaos` (test/chaos/): a few process faults under load. The whole
 * suite, every step and fault repeated, and its table: npm run chaos, docs/RELIABILITY.md.
 */
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { cleanup } from '../helpers.js';
import { runFault, type FaultOutcome } from '../chaos/faults.js';

after(cleanup);

function summary(o: FaultOutcome): string {
  const { problems, ...counts } = o.tally;
  return JSON.stringify({ ...o, tally: counts, problems: problems.slice(0, 5) });
}

test('a successor killed as wave 0 reaches it: the old process takes the listeners back, every time (10 runs)', {
  timeout: 120_000,
}, async () => {
  // A killed process closes its fds before it turns into a zombie: an old process that asked
  // in between found it "alive", left the listeners to it, and the port refused every connect.
  for (let run = 0; run < 10; run++) {
    const o = await runFault('kill-successor', 'wave0');
    assert.equal(o.listener, 'old', summary(o));
    assert.equal(o.newConnects.refused, 0, summary(o));
    assert.ok(o.ok, summary(o));
  }
});

test('an old process stopped past the timeout while a wave is acknowledged sends no wave after the ABORT it has not read yet', {
  timeout: 60_000,
}, async () => {
  // The successor acks wave 0, times out waiting for wave 1 and sends ABORT; the old process wakes
  // with both queued. It used to act on the ACK first: froze wave 1, sent it to a successor that
  // had given up, and released it: 100 connections cut.
  const o = await runFault('stop-old', 'wave0');
  assert.equal(o.tally.cut, 0, summary(o));
  assert.equal(o.listener, 'successor', summary(o));
  assert.ok(o.ok, summary(o));
});
