/**
 * Watches server processes through /proc: peak RSS (VmHWM, which only /proc knows and which
 * is gone once the process is reaped, hence the polling), CPU time, and the moment each one
 * is gone. Also samples the whole machine's CPU so a run can say how busy other processes kept it.
 */
import { readFileSync } from 'node:fs';
import { now } from './procs.js';

export interface Watched {
  pid: number;
  label: string;
  /** When the watch first saw it exited (gone or a zombie); undefined while it runs. */
  goneAt: number | undefined;
  /** VmHWM in KiB at the last sample before it exited. */
  peakRssKb: number;
  /** utime + stime in clock ticks at the last sample. */
  cpuTicks: number;
  /** ...before the watch started, for a process older than the watch (the benchmark itself). */
  cpuTicksAtStart: number;
}

function readStatus(pid: number): { zombie: boolean; hwmKb: number } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const state = /^State:\s+(\S)/m.exec(text)?.[1];
  const hwm = /^VmHWM:\s+(\d+)/m.exec(text)?.[1];
  return { zombie: state === 'Z' || state === 'X', hwmKb: hwm === undefined ? 0 : Number(hwm) };
}

/** CPU time used and start time since boot, both in clock ticks (USER_HZ, 100 on Linux). */
function readStat(pid: number): { cpuTicks: number; startTicks: number } | undefined {
  try {
    // The command name may contain spaces and parentheses; fields are counted after the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { cpuTicks: Number(fields[11]) + Number(fields[12]), startTicks: Number(fields[19]) };
  } catch {
    return undefined;
  }
}

export const USER_HZ = 100;

function uptimeTicks(): number {
  return Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * USER_HZ;
}

/** Pids of a process's children; how pm2's cluster workers are found (they are the daemon's). */
export function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function machineTicks(): { busy: number; total: number } {
  // user nice system idle iowait irq softirq steal; guest time is already inside user.
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = cpu.reduce((a, b) => a + b, 0);
  return { busy: total - cpu[3]! - cpu[4]!, total };
}

export class ProcWatch {
  private readonly watched = new Map<number, Watched>();
  private readonly timer: NodeJS.Timeout;
  private readonly machineStart = machineTicks();
  private readonly startTicks = uptimeTicks();
  private readonly parents: { pid: number; label: string }[] = [];

  /** 10 ms: the resolution of "old process gone", well under the 1 s being checked. */
  constructor(private readonly intervalMs = 10) {
    this.timer = setInterval(() => this.sample(), this.intervalMs);
  }

  add(pid: number, label: string): Watched {
    let entry = this.watched.get(pid);
    if (!entry) {
      const stat = readStat(pid);
      // Found late (pm2's daemon and workers), it may have run a while: all of it is this run's.
      const before = stat && stat.startTicks < this.startTicks ? stat.cpuTicks : 0;
      entry = { pid, label, goneAt: undefined, peakRssKb: 0, cpuTicks: stat?.cpuTicks ?? 0, cpuTicksAtStart: before };
      this.watched.set(pid, entry);
      this.sampleOne(entry);
    }
    return entry;
  }

  /** Also watches every child that `pid` has now or starts later. */
  addChildrenOf(pid: number, label: string): void {
    this.parents.push({ pid, label });
    this.sample();
  }

  get all(): Watched[] {
    return [...this.watched.values()];
  }

  /** Resolves when the pid has been seen gone, polling at the watch's interval. */
  async gone(pid: number): Promise<number> {
    const entry = this.watched.get(pid) ?? this.add(pid, String(pid));
    while (entry.goneAt === undefined) await new Promise((resolve) => setTimeout(resolve, this.intervalMs));
    return entry.goneAt;
  }

  /**
   * Stops sampling. Returns the shares (0-1, of all cores) of CPU time since the start used by
   * everything, and by processes this watch did not know: other people's work on the machine.
   */
  stop(): { busy: number; others: number } {
    this.sample();
    clearInterval(this.timer);
    const end = machineTicks();
    const busy = end.busy - this.machineStart.busy;
    const total = end.total - this.machineStart.total;
    const watched = this.all.reduce((sum, w) => sum + w.cpuTicks - w.cpuTicksAtStart, 0);
    if (total <= 0) return { busy: 0, others: 0 };
    return { busy: busy / total, others: Math.max(0, busy - watched) / total };
  }

  private sample(): void {
    for (const parent of this.parents) {
      for (const pid of childrenOf(parent.pid)) this.add(pid, parent.label);
    }
    for (const entry of this.watched.values()) this.sampleOne(entry);
  }

  private sampleOne(entry: Watched): void {
    if (entry.goneAt !== undefined) return;
    const status = readStatus(entry.pid);
    if (status === undefined || status.zombie) {
      entry.goneAt = now();
      return;
    }
    entry.peakRssKb = Math.max(entry.peakRssKb, status.hwmKb);
    entry.cpuTicks = readStat(entry.pid)?.cpuTicks ?? entry.cpuTicks;
  }
}
