/**
 * `npm run chaos`: process faults at every protocol step, hostile peers (the fuzzer, both
 * ways), and the soak; prints each result as it comes and, when all three parts ran, writes
 * the table to docs/RELIABILITY.md. Exits 1 if any case broke the contract.
 *
 *   --quick                  a short run: 1 repetition, 400 + 40 fuzz cases, 20 takeovers of 300 connections
 *   --repeat N               runs of each fault case (3)
 *   --fuzz N                 broken frames against a live server (3000)
 *   --fuzz-successor N       successor processes fed a broken frame by a fake predecessor (160)
 *   --soak N                 chained takeovers (1000)
 *   --soak-connections N     connections during the soak (1000)
 *   --seed N                 the fuzzer's seed (1)
 *   --only faults,fuzz,soak  run only these parts (the docs are then left alone)
 *   --cases 'F at S,...'     only these fault cases, named as the log names them ('stop-old at wave0')
 *   --no-docs                do not write docs/RELIABILITY.md
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { cleanup, distDir } from '../helpers.js';
import { brokenCase, DEFAULT_PLAN, FAULTS, runFault, STEPS, type FaultOutcome } from './faults.js';
import { fuzzServer, fuzzSuccessor } from './fuzz.js';
import { render, type Run } from './report.js';
import { soak } from './soak.js';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    repeat: { type: 'string' },
    fuzz: { type: 'string' },
    'fuzz-successor': { type: 'string' },
    soak: { type: 'string' },
    'soak-connections': { type: 'string' },
    seed: { type: 'string', default: '1' },
    only: { type: 'string', default: 'faults,fuzz,soak' },
    cases: { type: 'string' },
    'no-docs': { type: 'boolean', default: false },
  },
});

function count(value: string | undefined, full: number, quick: number): number {
  const n = value === undefined ? (values.quick ? quick : full) : Number(value);
  if (!Number.isInteger(n) || n < 0) throw new Error(`not a count: ${value}`);
  return n;
}

const parts = new Set(values.only.split(','));
const cases = values.cases === undefined ? undefined : new Set(values.cases.split(',').map((c) => c.trim()));
for (const c of cases ?? []) {
  if (!FAULTS.some((fault) => STEPS.some((step) => c === `${fault} at ${step}`))) throw new Error(`not a fault case: ${c}`);
}
const plan = {
  repeat: count(values.repeat, 3, 1),
  fuzz: count(values.fuzz, 3000, 400),
  fuzzSuccessor: count(values['fuzz-successor'], 160, 40),
  soak: count(values.soak, 1000, 20),
  soakConnections: count(values['soak-connections'], 1000, 300),
  seed: Number(values.seed),
};
const log = (line: string) => process.stderr.write(`[chaos ${new Date().toISOString().slice(11, 19)}] ${line}\n`);

const run: Run = {
  startedAt: new Date().toISOString(),
  machine: `${os.cpus().length} cores, ${os.type()} ${os.release()}, Node ${process.version}`,
  loadBefore: os.loadavg()[0]!,
  loadAfter: 0,
  durationS: 0,
  plan: { ...plan, ...DEFAULT_PLAN },
  faults: [],
};
const started = Date.now();
// A crash of the runner must not leave servers behind.
process.on('exit', cleanup);

if (parts.has('faults')) {
  for (const fault of FAULTS) {
    for (const step of STEPS) {
      if (cases && !cases.has(`${fault} at ${step}`)) continue;
      const outcomes: FaultOutcome[] = [];
      for (let i = 0; i < plan.repeat; i++) {
        outcomes.push(
          await runFault(fault, step).catch((error: unknown) => {
            cleanup();
            return brokenCase(fault, step, DEFAULT_PLAN, error);
          }),
        );
      }
      run.faults.push(outcomes);
      const bad = outcomes.filter((o) => !o.ok);
      log(
        `${fault} at ${step}: ${outcomes.length - bad.length}/${outcomes.length} as the contract says` +
          (bad.length > 0
            ? `; ${JSON.stringify({ ...bad[0], tally: { ...bad[0]!.tally, problems: bad[0]!.tally.problems.slice(0, 3) } })}`
            : ''),
      );
    }
  }
}
if (parts.has('fuzz')) {
  run.fuzzServer = await fuzzServer(plan.fuzz, plan.seed);
  log(`fuzz as a successor: ${JSON.stringify(run.fuzzServer, (k, v) => (k === 'problems' ? undefined : v))}`);
  run.fuzzSuccessor = await fuzzSuccessor(plan.fuzzSuccessor, plan.seed);
  log(`fuzz as a predecessor: ${JSON.stringify(run.fuzzSuccessor)}`);
}
if (parts.has('soak')) {
  run.soak = await soak(plan.soak, plan.soakConnections, (i) => {
    if (i % 50 === 0) log(`soak: ${i} takeovers`);
  });
  const { fds, rss, ...rest } = run.soak;
  log(`soak: ${JSON.stringify(rest, (k, v) => (k === 'problems' ? undefined : v))}`);
}
run.loadAfter = os.loadavg()[0]!;
run.durationS = Math.round((Date.now() - started) / 1000);
cleanup();

const markdown = render(run);
process.stdout.write(markdown);
if (!values['no-docs'] && !cases && ['faults', 'fuzz', 'soak'].every((p) => parts.has(p))) {
  const file = path.join(distDir, '..', 'docs', 'RELIABILITY.md');
  fs.writeFileSync(file, markdown);
  log(`wrote ${path.relative(process.cwd(), file)}`);
}
const failed =
  run.faults.some((o) => o.some((x) => !x.ok)) ||
  (run.fuzzServer !== undefined && !run.fuzzServer.ok) ||
  (run.fuzzSuccessor !== undefined && !run.fuzzSuccessor.ok) ||
  (run.soak !== undefined && !run.soak.ok);
process.exit(failed ? 1 : 0);
