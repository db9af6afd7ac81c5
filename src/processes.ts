import * as fs from 'node:fs';

/**
 * Running or stopped, not gone. Linux: a zombie (dead, waiting for its parent to reap it, as a
 * successor started by SIGUSR2 whose parent exited may be) counts as gone, which kill(pid, 0)
 * would not tell.
 */
export function isAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return false;
  }
}
