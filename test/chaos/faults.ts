/**
 * Process faults at each protocol step, under load. The successor stops itself (SIGSTOP) at a
 * step through the library's `onStep` option (test/fixtures/echo-server.ts); from there the case
 * kills it, kills the old process, or leaves either stopped past the other's timeout and then
 * continues it. The old process is reached at a known point the same way: stopped successor,
 * so the old one waits for its next frame.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ServerProcess, tempDir, waitStopped, within, type ServerConfig, type ServerEvent } from '../helpers.js';
import { WAVES_IN_FLIGHT } from '#lib/predecessor.js';
import { alive, Churn, listenerPids, loadedClients, tally, type NewConnects, type Tally } from './load.js';

export const FAULTS = ['kill-successor', 'stop-successor', 'kill-old', 'stop-old'] as const;
export type Fault = (typeof FAULTS)[number];
/** The successor's steps, and the old process's 'stop-accepting' (COMMIT read, LISTENING not sent): there the old one stops itself. */
export const STEPS = ['hello', 'listeners', 'precopy', 'prepare', 'stop-accepting', 'wave0', 'wave1'] as const;
export type Step = (typeof STEPS)[number];

export const FAULT_TEXT: Record<Fault, string> = {
  'kill-successor': 'SIGKILL of the successor',
  'stop-successor': 'SIGSTOP of the successor past the timeout, then SIGCONT',
  'kill-old': 'SIGKILL of the old process',
  'stop-old': 'SIGSTOP of the old process past the timeout, then SIGCONT',
};

export interface FaultPlan {
  connections: number;
  waveSize: number;
  /** The timeout of the side that waits for the stopped one. */
  timeoutMs: number;
}

/** 2 s: short enough for a quick run, long enough that a busy machine does not time out the side that is not stopped. */
export const DEFAULT_PLAN: FaultPlan = { connections: 300, waveSize: 100, timeoutMs: 2000 };
/** The timeout of a side that is not meant to time out. */
const PATIENT_MS = 60_000;

type Holder = 'old' | 'successor' | 'none';

/** What the contract allows: who holds the listener afterwards, and how many connections may be lost. */
export interface Expectation {
  /** Who may hold the listener afterwards (one of these). */
  listener: Holder[];
  minKept: number;
  maxKept: number;
  why: string;
}

export function expectation(fault: Fault, step: Step, plan: FaultPlan): Expectation {
  const n = plan.connections;
  // A successor stopped at wave N has acknowledged waves 0 to N-1: the old process may have sent
  // up to WAVES_IN_FLIGHT more. They die with a killed successor; a stopped one starts them when
  // it wakes, even after it gave up (it reads the channel to its end), so nothing may be lost then.
  const waves = step.startsWith('wave') ? Number(step.slice(4)) + WAVES_IN_FLIGHT : 0;
  if (step === 'stop-accepting' && fault === 'stop-successor') {
    return {
      listener: ['old', 'successor'],
      minKept: n,
      maxKept: n,
      why: 'the old process wakes and times out: on the ACK of connections accepted meanwhile (it resumes), or once LISTENING is out (partial handover)',
    };
  }
  if (waves === 0) {
    if (fault === 'kill-old')
      return { listener: ['none'], minKept: 0, maxKept: 0, why: 'the server died before LISTENING; the successor drops its copies' };
    return {
      listener: ['old'],
      minKept: n,
      maxKept: n,
      why: `${step === 'stop-accepting' ? 'resume after COMMIT' : 'rollback before COMMIT'}: the old process serves everything`,
    };
  }
  const started = Math.min(n, waves * plan.waveSize);
  switch (fault) {
    case 'kill-successor':
      return {
        listener: ['old'],
        minKept: n - started,
        maxKept: n,
        why: `the waves the dead successor held (≤ ${started}) die with it; the old process resumes the rest`,
      };
    case 'kill-old':
      return {
        listener: ['successor'],
        minKept: 1,
        maxKept: started,
        why: `the connections not yet moved die with the old process; the successor keeps its waves (≤ ${started})`,
      };
    default:
      return {
        listener: ['successor'],
        minKept: n,
        maxKept: n,
        why: 'partial handover: the successor keeps its waves and the listeners, the old process finishes the rest',
      };
  }
}

export interface FaultOutcome {
  fault: Fault;
  step: Step;
  expected: Expectation;
  /** Who held the listener once the case settled. */
  listener: Holder | 'both';
  oldEvent: string;
  successorEvent: string;
  tally: Tally;
  newConnects: NewConnects;
  /** Processes of the case still alive once their connections closed (the serving one excepted), or that ignored SIGTERM. */
  leftover: number;
  ok: boolean;
  notes: string[];
}

/** The first of `names` the process reports, or how it ended. */
async function outcome(proc: ServerProcess, names: string[], timeoutMs = 30_000): Promise<ServerEvent | { event: string }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const name of names) if (proc.pending(name).length > 0) return proc.next(name);
    // Its output read to the end, not its exit: an 'error' line written just before the exit comes after it.
    if (proc.outputEnded) {
      await within(proc.exited, `server ${proc.pid} to exit once its output ended`);
      return { event: `exit ${proc.proc.exitCode ?? proc.proc.signalCode}` };
    }
    if (Date.now() > deadline)
      return {
        event: `nothing (${
          proc
            .pending('warning')
            .map((w) => `${w.code}: ${w.message}`)
            .join('; ') || 'no warning'
        })`,
      };
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** SIGCONT, to a process that may have exited meanwhile. */
function cont(pid: number): void {
  if (alive(pid)) process.kill(pid, 'SIGCONT');
}

function describe(e: ServerEvent | { event: string }): string {
  const coded = e as ServerEvent;
  return coded.code ? `${coded.event} ${coded.code}${coded.reason ? `/${coded.reason}` : ''}` : coded.event;
}

/** A case that could not run to its end (it never reached its step, say): counted as broken, with why. */
export function brokenCase(fault: Fault, step: Step, plan: FaultPlan, error: unknown): FaultOutcome {
  return {
    fault,
    step,
    expected: expectation(fault, step, plan),
    listener: 'none',
    oldEvent: '-',
    successorEvent: '-',
    tally: { kept: 0, cut: 0, bytesLost: 0, bytesOnCut: 0, corrupt: 0, problems: [] },
    newConnects: { tried: 0, served: 0, refused: 0, failures: [] },
    leftover: 0,
    ok: false,
    notes: [`the case did not run to its end: ${(error as Error).message}`],
  };
}

export async function runFault(fault: Fault, step: Step, plan: FaultPlan = DEFAULT_PLAN): Promise<FaultOutcome> {
  const dir = tempDir();
  const notes: string[] = [];
  const config: ServerConfig = { path: path.join(dir, 'channel'), listen: [{ port: 0, host: '127.0.0.1' }], waveSize: plan.waveSize };
  const stopsOld = fault === 'stop-old';
  // Only the side that waits for the stopped one has the short timeout.
  const oldTimeout = fault === 'stop-successor' ? plan.timeoutMs : PATIENT_MS;
  const successorTimeout = stopsOld ? plan.timeoutMs : PATIENT_MS;
  const old = new ServerProcess(
    { ...config, timeoutMs: oldTimeout },
    { env: step === 'stop-accepting' ? { SOCKET_TAKEOVER_TEST_PAUSE_AT: step } : {} },
  );
  const port = (await old.next('ready')).addresses![0]!.port;
  const clients = await loadedClients(plan.connections, port);
  const churn = new Churn(port);
  // At 'stop-accepting' the old process is the one that stops itself; the successor waits for LISTENING.
  const oldSide = step === 'stop-accepting';
  const successor = new ServerProcess(
    { ...config, timeoutMs: successorTimeout },
    { env: oldSide ? {} : { SOCKET_TAKEOVER_TEST_PAUSE_AT: step } },
  );
  await waitStopped(oldSide ? old.pid : successor.pid);

  let oldEvent = 'killed';
  let successorEvent = 'killed';
  const oldSettled = ['rollback', 'handover'];
  const successorSettled = ['ready', 'error'];
  switch (fault) {
    case 'kill-successor':
      successor.kill('SIGKILL');
      if (oldSide) {
        await successor.exited;
        cont(old.pid);
      }
      oldEvent = describe(await outcome(old, oldSettled));
      break;
    case 'stop-successor':
      if (oldSide) {
        process.kill(successor.pid, 'SIGSTOP');
        await waitStopped(successor.pid);
        cont(old.pid);
      }
      oldEvent = describe(await outcome(old, oldSettled));
      cont(successor.pid);
      successorEvent = describe(await outcome(successor, successorSettled));
      break;
    case 'kill-old':
      old.kill('SIGKILL');
      await old.exited;
      cont(successor.pid);
      successorEvent = describe(await outcome(successor, successorSettled));
      break;
    case 'stop-old':
      if (!oldSide) {
        process.kill(old.pid, 'SIGSTOP');
        await waitStopped(old.pid);
      }
      cont(successor.pid);
      successorEvent = describe(await outcome(successor, successorSettled));
      // The failed successor is gone before the old process wakes, so the old one sees it dead.
      if (successorEvent.startsWith('error')) await successor.exited;
      cont(old.pid);
      oldEvent = describe(await outcome(old, oldSettled));
      break;
  }
  // Let the listener settle where it goes and the new connects show it.
  await new Promise((r) => setTimeout(r, 300));
  const t = await tally(clients);
  const newConnects = await churn.stop();
  const holders = listenerPids(port);
  const holder = (pid: number): Holder => (pid === old.pid ? 'old' : pid === successor.pid ? 'successor' : 'none');
  const listener = holders.length === 0 ? 'none' : holders.length > 1 ? 'both' : holder(holders[0]!);

  // Every process but the listener's holder must go by itself once its connections are gone.
  for (const c of clients) c.close();
  const procs = [old, successor];
  const exitedAlone = await Promise.all(
    procs.map(async (p) => {
      if (holders.includes(p.pid)) return true;
      const deadline = Date.now() + 15_000;
      while (alive(p.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      return !alive(p.pid);
    }),
  );
  let leftover = exitedAlone.filter((x) => !x).length;
  for (const p of procs) if (!exitedAlone[procs.indexOf(p)]) notes.push(`${p === old ? 'old' : 'successor'} process did not exit`);
  for (const p of procs) {
    if (!alive(p.pid)) continue;
    cont(p.pid);
    p.kill('SIGTERM');
    const gone = await within(p.exited, 'exit', 10_000).then(
      () => true,
      () => false,
    );
    if (!gone) {
      leftover++;
      notes.push(`${p === old ? 'old' : 'successor'} process ignored SIGTERM`);
      p.kill('SIGKILL');
    }
  }
  fs.rmSync(dir, { recursive: true, force: true });

  const expected = expectation(fault, step, plan);
  if (t.problems.length > 0 && t.cut < t.problems.length) notes.push(...t.problems.slice(0, 3));
  // A killed process takes the new connections it had accepted with it; nothing else may fail,
  // and nothing may be refused while a process lives to listen.
  const newConnectsOk =
    expected.listener.includes('none') ||
    (newConnects.refused === 0 && (fault.startsWith('kill') || newConnects.served === newConnects.tried));
  if (!newConnectsOk) notes.push(`new connects failed: ${newConnects.failures.join('; ')}`);
  const ok =
    expected.listener.includes(listener as Holder) &&
    t.kept >= expected.minKept &&
    t.kept <= expected.maxKept &&
    t.kept + t.cut === clients.length &&
    t.bytesLost === 0 &&
    t.corrupt === 0 &&
    leftover === 0 &&
    newConnectsOk;
  return { fault, step, expected, listener, oldEvent, successorEvent, tally: t, newConnects, leftover, ok, notes };
}
