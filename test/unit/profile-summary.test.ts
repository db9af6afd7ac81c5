/**
 * bench/profile-summary.ts on hand-made profiles: the window is the takeover's own work, and each
 * sample goes to the innermost category on its stack.
 */
import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import { summarize } from '../../bench/profile-summary.js';

const frame = (id: number, functionName: string, url: string, children: number[] = []) => ({
  id,
  callFrame: { functionName, url },
  children,
});

// root > step (stats.js) > pump (predecessor.js) > sendMessage (native.js)
//      > onStreamRead (node:internal/stream_base_commons)
//      > (garbage collector), (idle)
const nodes = [
  frame(1, '(root)', '', [2, 5, 6, 7]),
  frame(2, 'step', 'file:///x/dist/stats.js', [3]),
  frame(3, 'pump', 'file:///x/dist/predecessor.js', [4]),
  frame(4, 'sendMessage', 'file:///x/dist/native.js'),
  frame(5, 'onStreamRead', 'node:internal/stream_base_commons'),
  frame(6, '(garbage collector)', ''),
  frame(7, '(idle)', ''),
];

test('profile summary: the window spans the takeover steps; samples go to the innermost category', () => {
  // 1 ms per sample: serving, step, GC, serving, idle, step, serving.
  const samples = [5, 4, 6, 5, 7, 4, 5];
  const profile = { nodes, startTime: 0, samples, timeDeltas: samples.map(() => 1000) };
  assert.deepEqual(summarize(profile, false), {
    windowMs: 4,
    busyMs: 4,
    ms: { 'old: pre-copy send': 2, 'garbage collection': 1, 'serving (the application and Node around it)': 1, idle: 1 },
  });
  const fromStart = summarize(profile, true);
  assert.equal(fromStart.windowMs, 6);
  assert.equal(fromStart.ms['serving (the application and Node around it)'], 2);
});

test('profile summary: a profile with no takeover step has an empty window', () => {
  const profile = { nodes, startTime: 0, samples: [5, 5], timeDeltas: [1000, 1000] };
  assert.deepEqual(summarize(profile, false), { windowMs: 0, busyMs: 0, ms: {} });
});
