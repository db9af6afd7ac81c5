import * as fs from 'node:fs';

/** The kernel's PF_EXITING task flag: set as a process starts to exit, before its fds are closed. */
const PF_EXITING = 0x4;

/**
 * Running or stopped, not gone. Linux: a zombie (dead, waiting for its parent to reap it, as a
 * successor started by SIGUSR2 whose parent exited may be) counts as gone, which kill(pid, 0)
 * would not tell; so does a process on its way out. A killed process's channel closes while it
 * exits, before it is a zombie: asked then, the exiting flag is what tells that it is dying.
 */
export function isAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // After the command name: state, ppid, pgrp, session, tty_nr, tpgid, flags...
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[0] !== 'Z' && fields[0] !== 'X' && (Number(fields[6]) & PF_EXITING) === 0;
  } catch {
    return false;
  }
}
