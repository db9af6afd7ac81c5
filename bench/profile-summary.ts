/**
 * Where a server process's CPU went during its side of a takeover, from a V8 CPU profile
 * (`node --cpu-prof`): issue #10 asks for the profile behind whatever gap remains.
 *
 * The window runs from the first to the last sample of the takeover's own work (a frame of
 * StatsRecorder.step on the stack); `--from-start` moves its start to the profile's, for a
 * successor, whose start-up is part of the takeover. Each sample in it goes to the first category
 * whose frame is on its stack, searched from the leaf up, so that a wrap inside a takeover step
 * counts as the wrap. Prints one JSON object: the window, and milliseconds per category.
 *
 * Usage: node dist-dev/bench/profile-summary.js FILE.cpuprofile [--from-start]
 *
 * The profiler samples wall-clock time on the event loop's thread: a thread waiting for a core
 * shows as the function it was preempted in. Compare with `stats.cpuMs` for the CPU proper.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** Searched in this order for each frame, leaf first: the first match names the sample. */
const CATEGORIES: [string, (name: string, url: string) => boolean][] = [
  ['garbage collection', (name) => name === '(garbage collector)'],
  ['idle', (name) => name === '(idle)'],
  ['successor: fd checks', (name, url) => url.endsWith('native.js') && name === 'inspect'],
  ['successor: wrap', (name, url) => url.endsWith('sockets.js') && name === 'wrapInherited'],
  ['successor: start a connection (adapter and application)', (name, url) => url.endsWith('taking-over.js') && name === 'adopt'],
  ['successor: fd transfer', (name, url) => url.endsWith('successor.js') && name === 'onConns'],
  ['successor: wave frames (decode, acknowledge)', (name, url) => url.endsWith('successor.js') && name === 'onWaveChunk'],
  ['old: pre-copy send', (name, url) => url.endsWith('predecessor.js') && name === 'pump'],
  ['old: release', (name, url) => url.endsWith('handing-over.js') && name === 'release'],
  ['old: freeze and wave', (name, url) => url.endsWith('predecessor.js') && name === 'nextWave'],
  ['loop sampler', (name, url) => url.endsWith('stats.js') && (name === 'tick' || name === 'sample')],
  ['other takeover work', (name, url) => url.endsWith('stats.js') && name === 'step'],
  [
    'serving (the application and Node around it)',
    (name, url) => url.startsWith('node:') && /onStreamRead|onconnection|afterWrite/.test(name),
  ],
  ['start-up (modules, compile)', (_name, url) => url.startsWith('node:internal/modules') || url.startsWith('node:internal/main')],
];

function isTakeoverStep(node: ProfileNode): boolean {
  return node.callFrame.url.endsWith('stats.js') && node.callFrame.functionName === 'step';
}

export function summarize(profile: Profile, fromStart: boolean): { windowMs: number; busyMs: number; ms: Record<string, number> } {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const stackOf = (id: number): ProfileNode[] => {
    const stack: ProfileNode[] = [];
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) stack.push(byId.get(at)!);
    return stack;
  };
  const times: number[] = [];
  let t = profile.startTime;
  for (const delta of profile.timeDeltas) {
    t += delta;
    times.push(t);
  }
  const inStep = profile.samples.map((id) => stackOf(id).some(isTakeoverStep));
  const first = fromStart ? 0 : inStep.indexOf(true);
  const last = inStep.lastIndexOf(true);
  const ms: Record<string, number> = {};
  let busy = 0;
  for (let i = Math.max(first, 0); i <= last; i++) {
    const sampleMs = (times[i]! - (times[i - 1] ?? profile.startTime)) / 1000;
    const stack = stackOf(profile.samples[i]!);
    let category = 'other (the application, Node, native)';
    search: for (const node of stack) {
      for (const [name, matches] of CATEGORIES) {
        if (matches(node.callFrame.functionName, node.callFrame.url)) {
          category = name;
          break search;
        }
      }
    }
    ms[category] = (ms[category] ?? 0) + sampleMs;
    if (category !== 'idle') busy += sampleMs;
  }
  const windowMs = last < 0 ? 0 : (times[last]! - (fromStart ? profile.startTime : times[first]!)) / 1000;
  const rounded = Object.fromEntries(
    Object.entries(ms)
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => [k, Math.round(v * 10) / 10]),
  );
  return { windowMs: Math.round(windowMs * 10) / 10, busyMs: Math.round(busy * 10) / 10, ms: rounded };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { 'from-start': { type: 'boolean', default: false } } });
  if (positionals.length !== 1) {
    process.stderr.write('Usage: node dist-dev/bench/profile-summary.js FILE.cpuprofile [--from-start]\n');
    process.exit(2);
  }
  const profile = JSON.parse(readFileSync(positionals[0]!, 'utf8')) as Profile;
  process.stdout.write(`${JSON.stringify(summarize(profile, values['from-start']), null, 2)}\n`);
}
