/** One pending wait for the other side of a takeover: each new wait replaces the previous one. */
export class Deadline {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly ms: number,
    private readonly onExpired: (what: string, ms: number) => void,
  ) {}

  /** Calls the expiry handler unless {@link clear} or another `expect` comes within `ms` (by default the timeout). */
  expect(what: string, ms = this.ms): void {
    this.clear();
    ms = Math.min(ms, 2 ** 31 - 1);
    const timer = setTimeout(() => {
      // Decided after this turn's I/O: a process stopped or blocked past the deadline wakes
      // with its timers first, while what it waited for (a HELLO, an ACK) may sit unread.
      setImmediate(() => {
        if (this.timer !== timer) return;
        this.timer = undefined;
        this.onExpired(what, ms);
      });
    }, ms);
    this.timer = timer;
  }

  get armed(): boolean {
    return this.timer !== undefined;
  }

  clear(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
