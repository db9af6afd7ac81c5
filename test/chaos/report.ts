/** docs/RELIABILITY.md from one chaos run: what was tried, how often, and what happened. */
import { expectation, FAULT_TEXT, type FaultOutcome, type FaultPlan } from './faults.js';
import { CATEGORIES, CATEGORY_TEXT, type CategoryResult, type PredecessorFuzzResult, type SuccessorFuzzResult } from './fuzz.js';
import type { SoakResult } from './soak.js';

export interface Run {
  startedAt: string;
  machine: string;
  loadBefore: number;
  loadAfter: number;
  durationS: number;
  plan: FaultPlan & { repeat: number; fuzz: number; fuzzSuccessor: number; soak: number; soakConnections: number; seed: number };
  /** One list of runs per fault and step. */
  faults: FaultOutcome[][];
  fuzzServer?: SuccessorFuzzResult;
  fuzzSuccessor?: PredecessorFuzzResult;
  soak?: SoakResult;
}

const int = (n: number) => n.toLocaleString('en-US');

function range(values: number[]): string {
  const min = Math.min(...values);
  const max = Math.max(...values);
  return min === max ? int(min) : `${int(min)}–${int(max)}`;
}

function distinct(values: string[]): string {
  return [...new Set(values)].join(', ');
}

function faultTable(run: Run): string[] {
  const { connections, waveSize, timeoutMs } = run.plan;
  const lines = [
    '## Process faults',
    '',
    `Each case: an old process serving ${int(connections)} echo connections (half of them sending a frame split in two every 40 ms, ` +
      `so the server often holds half a frame, half idle), a new connection every 20 ms, waves of ${waveSize}, ` +
      `and a successor that stops itself (SIGSTOP) at the step through \`onStep\`. Then the fault; "past the timeout" is ` +
      `past the waiting side's \`timeoutMs\` of ${int(timeoutMs)} ms. Afterwards every client sends once more and must get ` +
      "every byte back in order; the listener's holder is read from `ss -ltnp`; every process but the one holding the " +
      'listener must exit by itself once its clients close, and that one on SIGTERM.',
    '',
    '| Fault | Step | Runs | As the contract says | What the contract allows | Listener afterwards | Connections kept | Cut | Bytes lost on kept connections | New connects served / tried (refused) | Leftover processes | Reported (old; successor) |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const outcomes of run.faults) {
    const first = outcomes[0]!;
    const ok = outcomes.filter((o) => o.ok).length;
    const e = expectation(first.fault, first.step, run.plan);
    const kept = e.minKept === e.maxKept ? int(e.minKept) : `${int(e.minKept)}–${int(e.maxKept)}`;
    lines.push(
      `| ${FAULT_TEXT[first.fault]} | ${first.step} | ${outcomes.length} | ${ok === outcomes.length ? 'yes' : `**no, ${outcomes.length - ok} of ${outcomes.length}**`} | ` +
        `listener: ${e.listener.join(' or ')}; kept ${kept}: ${e.why} | ${distinct(outcomes.map((o) => o.listener))} | ` +
        `${range(outcomes.map((o) => o.tally.kept))} | ${range(outcomes.map((o) => o.tally.cut))} | ${range(outcomes.map((o) => o.tally.bytesLost))} | ` +
        `${outcomes.map((o) => `${o.newConnects.served}/${o.newConnects.tried} (${o.newConnects.refused})`).join(', ')} | ` +
        `${range(outcomes.map((o) => o.leftover))} | ${distinct(outcomes.map((o) => `${o.oldEvent}; ${o.successorEvent}`))} |`,
    );
  }
  const notes = run.faults.flat().filter((o) => !o.ok);
  if (notes.length > 0) {
    lines.push('', 'Cases that broke the contract:', '');
    for (const o of notes) lines.push(`- ${o.fault} at ${o.step}: ${o.notes.join('; ') || 'see the table'}`);
  }
  return lines;
}

function categoryRows(peer: string, categories: Record<string, CategoryResult>): string[] {
  return CATEGORIES.map((c) => {
    const r = categories[c]!;
    const codes = Object.entries(r.codes)
      .map(([code, n]) => `${code} ×${int(n)}`)
      .join(', ');
    const failures = r.failures.length > 0 ? `**${r.failures.join('; ')}**` : '';
    return `| ${peer} | ${c}: ${CATEGORY_TEXT[c]} | ${int(r.frames)} | ${r.refused === r.frames ? int(r.refused) : `**${int(r.refused)}**`} | ${codes} | ${failures} |`;
  });
}

function fuzzTable(run: Run): string[] {
  const s = run.fuzzServer;
  const p = run.fuzzSuccessor;
  if (!s || !p) return [];
  return [
    '## Hostile peers',
    '',
    `A seeded fuzzer (seed ${s.seed}; the same seed gives the same frames) builds frames with src/protocol.ts's encoders ` +
      'and breaks them. As a fake successor it opens one channel connection per broken frame (sequence) against a live ' +
      `server that serves ${int(s.clients.kept + s.clients.cut)} echo clients throughout. As a fake predecessor it listens on a channel path, lets a ` +
      'successor process connect, sends a valid prefix of the protocol (nothing, WELCOME, LISTENERS, CONNS with real ' +
      'connections) and then the broken frame. "Refused with a code": the peer answered with ABORT and an ' +
      '`ERR_TAKEOVER_*` code (or, as a successor, exited with one) and did not go on.',
    '',
    '| Against | What | Sent | Refused with a code | Codes | Not refused (first few) |',
    '|---|---|---|---|---|---|',
    ...categoryRows('live server', s.categories),
    ...categoryRows('successor process', p.categories),
    '',
    `Live server afterwards: ${int(s.clients.kept)} of ${int(s.clients.kept + s.clients.cut)} echo clients kept, ${int(s.clients.bytesLost)} bytes lost, ` +
      `${s.probes.served} of ${s.probes.tried} new connects served (one every 250 frames); its fd count was back at the baseline ` +
      `(${s.fdBaseline}) at ${s.probes.tried - s.fdLeaks} of ${s.probes.tried} checkpoints (${s.fdAfter} at the end).`,
    `Successor processes: ${p.crashes} exited without a coded error, ${p.hangs} hung.`,
  ];
}

function soakTable(run: Run): string[] {
  const s = run.soak;
  if (!s) return [];
  const span = Math.max(1, s.fds.length - 3);
  return [
    '## Soak',
    '',
    `${int(s.takeovers)} chained takeovers of ${int(s.connections)} echo connections (half sending every 200 ms) with a new ` +
      'connection every 20 ms throughout. After each takeover the old process must exit by itself (status 0) within 30 s, and the ' +
      "new one's open fds (/proc/<pid>/fd) and RSS are sampled as it is ready; the slopes are least squares " +
      'over the takeovers, the first two left out (Node warming up).',
    '',
    '| Takeovers | Connections | As the contract says | Connections kept | Bytes lost | Takeovers that did not move every connection | Old processes that did not exit | Leftover processes | New connects served / tried | fd slope | RSS slope | Duration |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
    `| ${int(s.takeovers)} | ${int(s.connections)} | ${s.ok ? 'yes' : '**no**'} | ${int(s.tally.kept)} | ${int(s.tally.bytesLost)} | ${s.incomplete.length} | ${s.oldNotExited} | ${s.leftover} | ` +
      `${int(s.newConnects.served)} / ${int(s.newConnects.tried)} | ${s.fdSlope.toFixed(4)} fd per takeover (${(s.fdSlope * span).toFixed(1)} over the run; ${range(s.fds)} fds) | ` +
      `${s.rssSlope.toFixed(1)} KiB per takeover (${((s.rssSlope * span) / 1024).toFixed(1)} MiB over the run; ${range(s.rss.map((k) => Math.round(k / 1024)))} MiB) | ${Math.round(s.durationMs / 1000)} s |`,
  ];
}

export function render(run: Run): string {
  const p = run.plan;
  const full = p.repeat >= 3 && p.fuzz >= 3000 && p.soak >= 1000 && p.soakConnections >= 1000;
  return [
    '# Reliability',
    '',
    'Generated by `npm run chaos` (test/chaos/); do not edit by hand. What was tried against the contract ' +
      '(README.md, docs/DESIGN.md), how many times, and what happened.',
    '',
    `Run of ${run.startedAt.slice(0, 16).replace('T', ' ')} UTC on ${run.machine}, shared: load average ${run.loadBefore.toFixed(1)} at the start, ` +
      `${run.loadAfter.toFixed(1)} at the end; ${Math.round(run.durationS / 60)} min. Plan: each fault case ${p.repeat}×, ${int(p.fuzz)} + ${int(p.fuzzSuccessor)} fuzz cases, ` +
      `${int(p.soak)} takeovers of ${int(p.soakConnections)} connections.` +
      (full ? '' : ' **A shorter run than the full plan (3×, 3,000 + 160, 1,000 takeovers of 1,000).**'),
    '',
    ...faultTable(run),
    '',
    ...fuzzTable(run),
    '',
    ...soakTable(run),
    '',
  ].join('\n');
}
