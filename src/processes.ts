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
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // After "(comm) ": state ppid pgrp session tty_nr tpgid flags ...
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[0] !== 'Z' && fields[0] !== 'X' && (Number(fields[6]) & PF_EXITING) === 0;
  } catch {
    return false;
  }
}
