import * as os from 'node:os';
import * as fs from 'node:fs';

/** The kernel's per-task flag for a process that has begun to exit (include/linux/sched.h). */
const PF_EXITING = 0x4;

/**
 * Running or stopped, not gone and not going. Linux: a zombie (dead, waiting for its parent to
 * reap it, as a successor started by SIGUSR2 whose parent exited may be) counts as gone, which
 * kill(pid, 0) would not tell. So does a process that is exiting: a killed process closes its
 * fds (the peer sees its channel close) before it turns into a zombie, and a peer that checked
 * in between would find it running.
 */
export function isAlive(pid: number): boolean {
  const fields = statFields(pid);
  return fields !== undefined && fields[0] !== 'Z' && fields[0] !== 'X' && (Number(fields[6]) & PF_EXITING) === 0;
}

/**
 * The fields of /proc/<pid>/stat after "(comm) ", from field 3 (state ppid pgrp session tty_nr
 * tpgid flags ...) on, or undefined when there is no such process. The command name may hold
 * spaces and parentheses, hence the last ')'.
 */
export function statFields(pid: number): string[] | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** The soft RLIMIT_NICE: an unprivileged thread may lower its nice value down to 20 minus it. */
function niceLimit(): number {
  try {
    const line = fs
      .readFileSync('/proc/self/limits', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max nice priority'));
    const soft = Number(line?.split(/\s{2,}/)[1]);
    return Number.isFinite(soft) ? soft : 0;
  } catch {
    return 0;
  }
}

/** This process's threads (Linux: each has its own nice value); the main thread's alone elsewhere. */
function threadIds(): number[] {
  try {
    return fs
      .readdirSync('/proc/self/task')
      .map(Number)
      .filter((tid) => Number.isInteger(tid));
  } catch {
    return [process.pid];
  }
}

/**
 * Lowers the scheduling priority of every thread of this process (the event loop's, V8's
 * compiler and garbage-collector helpers, libuv's pool; threads started later inherit it from
 * the thread that starts them, and are raised too) by `steps`, for a stretch of work that must not take cores from
 * another process, and returns what raises them back. Only when raising them back is allowed
 * (root, or RLIMIT_NICE): a process must not be left slower for good. Undefined when nothing
 * was lowered. A call while an earlier lowering is still in force joins it (its `steps` are the
 * earlier call's): the threads are raised back when the last caller raises them.
 */
export function lowerPriority(steps: number): (() => void) | undefined {
  if (steps <= 0) return undefined;
  // Sessions that overlap (two successor Takeovers in one process) share one lowering: each
  // lowering on top of the other, the one raised back last would restore the value the first
  // had set, and leave every thread slower for good.
  if (!shared) {
    const raise = lowerEveryThread(steps);
    if (!raise) return undefined;
    shared = { holders: 0, raise };
  }
  const lowering = shared;
  lowering.holders++;
  let raised = false;
  return () => {
    if (raised) return;
    raised = true;
    if (--lowering.holders > 0) return;
    shared = undefined;
    lowering.raise();
  };
}

/** The lowering in force, and how many callers of {@link lowerPriority} still hold it. */
let shared: { holders: number; raise: () => void } | undefined;

function lowerEveryThread(steps: number): (() => void) | undefined {
  let original: number;
  try {
    original = os.getPriority();
  } catch {
    return undefined;
  }
  const mayRaise = process.getuid?.() === 0 || 20 - niceLimit() <= original;
  const lowered = Math.min(19, original + steps);
  if (!mayRaise || lowered === original) return undefined;
  const changed: { tid: number; priority: number }[] = [];
  for (const tid of threadIds()) {
    try {
      const priority = os.getPriority(tid);
      os.setPriority(tid, Math.min(19, priority + steps));
      changed.push({ tid, priority });
    } catch {
      // A thread that ended meanwhile.
    }
  }
  if (changed.length === 0) return undefined;
  return () => {
    const before = new Map(changed.map(({ tid, priority }) => [tid, priority]));
    // A thread started meanwhile (libuv's pool on the application's first fs call) inherited the
    // lowered value from the thread that started it: it gets the main thread's original one.
    for (const tid of threadIds()) {
      try {
        os.setPriority(tid, before.get(tid) ?? original);
      } catch {
        // Gone meanwhile, or (checked above, so never) not allowed: slower, never wrong.
      }
    }
  };
}
