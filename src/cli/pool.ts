/**
 * `takeover-server --workers N`: a supervisor that holds no socket, and N workers that share the
 * port through SO_REUSEPORT, each one take-over-able on its own channel in the pool's directory.
 *
 * The directory is the pool's whole state, so that a supervisor can be replaced without touching
 * a worker:
 * - `worker-<i>.sock`: worker i's takeover channel;
 * - `worker-<i>.json`: written by whichever process serves worker i (its pid, connections, last
 *   takeover): how a supervisor finds a worker it did not start;
 * - `supervisor.json`: the supervisor in charge. A new one (`-T DIR`) writes its own pid there;
 *   the old one sees it, and exits without signalling a worker.
 *
 * Workers run detached (their own process group) and are tied to the supervisor by nothing
 * once ready: the IPC channel carries their ready message, then the supervisor disconnects it.
 * A supervisor watches the workers it started through their exit, and adopted ones through
 * /proc. Upgrading worker i is one takeover of its channel: start a successor with `-T`, wait
 * for its ready message, then for the old process's exit. A successor that fails leaves the old
 * worker serving (the library rolls back) and stops the upgrade.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ErrorCodes, TakeoverError, type ReadyMessage } from '../index.js';
import { Systemd } from '../systemd.js';
import { statFields } from '../processes.js';
import { createLogger, type LogFormat, type Logger } from './format.js';
import { formatWorkerStatus, readWorkerStatus, writeJsonFile } from './worker-status.js';

export type PoolCommand =
  | { kind: 'status'; dir: string }
  | {
      kind: 'pool';
      workers: number;
      dir: string;
      /** -T DIR: adopt the pool in DIR (its supervisor exits), then upgrade it. */
      adopt: boolean;
      logFormat: LogFormat;
      /** Each worker's flags, without -t/-T, --reuse-port and --status-file, which the pool adds. */
      workerArgs: string[];
    };

/** A worker that does not report ready in this time is killed: a fresh start, or a successor. */
const READY_TIMEOUT_MS = 60_000;
/** How long an upgrade waits for the old worker to exit before it moves on (it finishes the connections it kept). */
const OLD_EXIT_TIMEOUT_MS = 30_000;
/** How often adopted workers and the supervisor file are looked at. */
const WATCH_INTERVAL_MS = 200;
/** A worker that exits within this time of its start is restarted only after this delay. */
const RESTART_DELAY_MS = 1000;

interface Worker {
  readonly index: number;
  readonly pid: number;
  /** With the pid, names this process and no later one that gets its pid (undefined: it was gone at once). */
  readonly startTime: string | undefined;
  /** Resolves with how the process ended: its exit code or signal, or 'exited' when not our child. */
  readonly exited: Promise<string>;
  readonly startedAt: number;
}

/**
 * The process's start time (field 22 of /proc/<pid>/stat, in clock ticks since boot), or
 * undefined when it is gone or a zombie. A pid with its start time names one process for good: a
 * recycled pid has another start time.
 */
function startTimeOf(pid: number): string | undefined {
  const fields = statFields(pid);
  return fields === undefined || fields[0] === 'Z' ? undefined : fields[19];
}

function isAlive(pid: number): boolean {
  return startTimeOf(pid) !== undefined;
}

/** A process named by its pid and start time: still that process, alive? */
function runs(named: { pid: number; startTime: string | undefined }): boolean {
  return named.startTime !== undefined && startTimeOf(named.pid) === named.startTime;
}

/** A recycled pid is not the worker: the process must have the channel on its command line. */
function servesChannel(pid: number, channel: string): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(channel) && isAlive(pid);
  } catch {
    return false;
  }
}

interface SupervisorRecord {
  pid: number;
  startTime: string | undefined;
}

/** supervisor.json: which process supervises the pool. A record without a start time names no process (a file not ours). */
function readSupervisor(dir: string): SupervisorRecord | undefined {
  try {
    const { pid, startTime } = JSON.parse(fs.readFileSync(path.join(dir, 'supervisor.json'), 'utf8')) as Partial<SupervisorRecord>;
    if (!Number.isInteger(pid) || (pid as number) <= 0) return undefined;
    return { pid: pid as number, startTime: typeof startTime === 'string' ? startTime : undefined };
  } catch {
    return undefined;
  }
}

/**
 * Makes the pool's directory (mode 0700), or checks the one given: this user's, and writable by
 * no other. The supervisor trusts the pids its files name, adopting those processes and
 * signalling them, so no other user may put a file there (a sticky bit does not prevent that).
 */
function preparePoolDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  const stat = fs.statSync(dir);
  const unsafe = (why: string) => new TakeoverError(ErrorCodes.PATH_UNSAFE, `pool directory ${dir} ${why}`);
  if (!stat.isDirectory()) throw unsafe('is not a directory');
  const uid = process.getuid!();
  if (stat.uid !== uid) throw unsafe(`belongs to uid ${stat.uid}, not to this user (uid ${uid})`);
  if ((stat.mode & 0o022) !== 0) {
    throw unsafe(`can be written by other users (mode ${(stat.mode & 0o7777).toString(8)}): make it 0700 or 0755`);
  }
}

/**
 * The supervisor is the service's main process under systemd, and speaks for the pool: a worker
 * that heard $NOTIFY_SOCKET would claim the service (MAINPID=, READY=1), and systemd would then
 * take that worker's exit or crash for the service's end, and signal it, not the supervisor, for
 * a reload.
 */
function workerEnvironment(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.NOTIFY_SOCKET;
  return env;
}

const plural = (n: number, noun: string): string => `${n} ${noun}${n === 1 ? '' : 's'}`;
const describe = (error: unknown) => (error instanceof Error ? error.message : String(error));
/** `<message> (<code>)` for a coded error. */
const describeCoded = (error: unknown) => {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? `${describe(error)} (${code})` : describe(error);
};

class Supervisor {
  private readonly logger: Logger;
  private readonly workers: (Worker | undefined)[] = [];
  /** Workers an upgrade or a restart is acting on: an exit there is theirs to handle. */
  private readonly busy = new Set<number>();
  /** Processes spawned and not ready yet: a stop must not leave them behind. */
  private readonly starting = new Set<ChildProcess>();
  /** Old processes of upgraded workers, until they exit: they finish the connections they kept, and a stop stops them too. */
  private readonly draining = new Set<Worker>();
  private upgrading = false;
  private stopping = false;
  private readonly systemd: Systemd;

  constructor(private readonly command: Extract<PoolCommand, { kind: 'pool' }>) {
    this.logger = createLogger({ format: command.logFormat });
    this.systemd = new Systemd({ enabled: true, fdStore: false }, (error) => this.logError(`Warning: ${error.message} (${error.code})`));
  }

  private log(msg: string, fields?: Record<string, unknown>): void {
    this.logger.info(msg, { pid: process.pid, supervisor: true, ...fields });
  }

  private logError(msg: string, fields?: Record<string, unknown>): void {
    this.logger.error(msg, { pid: process.pid, supervisor: true, ...fields });
  }

  private channel(index: number): string {
    return path.join(this.command.dir, `worker-${index}.sock`);
  }

  private statusFile(index: number): string {
    return path.join(this.command.dir, `worker-${index}.json`);
  }

  async start(): Promise<void> {
    const { dir, workers, adopt } = this.command;
    preparePoolDir(dir);
    const previous = readSupervisor(dir);
    // A record of a process that is gone (a supervisor killed, its pid maybe recycled since) is no pool's supervisor.
    const previousRuns = previous !== undefined && previous.pid !== process.pid && runs(previous);
    if (!adopt && previousRuns) throw new Error(`supervisor pid ${previous.pid} runs the pool in ${dir}: take it over with -T ${dir}`);
    this.checkServing();
    // The workers serve: systemd must know the new main process before the old supervisor exits.
    if (adopt) this.systemd.serving([]);
    // From here on the old supervisor, if any, stands down: it watches this file.
    this.claim();
    process.on('SIGTERM', () => void this.stop('SIGTERM'));
    process.on('SIGINT', () => void this.stop('SIGINT'));
    process.on('SIGUSR2', () => {
      if (this.workers.filter(Boolean).length < this.command.workers) {
        this.log('SIGUSR2 ignored: the pool is starting');
        this.systemd.refused(new TakeoverError(ErrorCodes.INVALID_STATE, 'the pool is starting'));
      } else void this.upgrade('SIGUSR2');
    });
    setInterval(() => this.checkSupervisor(), WATCH_INTERVAL_MS);

    if (adopt) {
      if (previousRuns) {
        this.log(`Taking over the pool in [${dir}] from supervisor pid ${previous.pid}`, { previousPid: previous.pid });
        await this.untilGone(previous, 10_000);
      }
      let adopted = 0;
      for (let i = 0; i < workers; i++) {
        if (this.adoptSuccessor(i)) adopted++;
        else await this.restart(i);
      }
      this.logStatus();
      // Workers started just now already run this supervisor's code.
      if (adopted > 0) await this.upgrade(`-T ${dir}`);
      return;
    }
    this.log(`Starting pool of ${workers} workers in [${dir}]`, { dir, workers });
    // Every start settles before a failure is acted on: the workers already ready are stopped with the rest.
    const started = await Promise.allSettled(Array.from({ length: workers }, (_, i) => this.startWorker(i, false)));
    for (const [i, result] of started.entries()) if (result.status === 'fulfilled') this.install(i, result.value);
    const failed = started.find((result) => result.status === 'rejected');
    if (failed) {
      this.stopping = true;
      await this.stopWorkers();
      fs.rmSync(path.join(dir, 'supervisor.json'), { force: true });
      throw failed.reason;
    }
    this.logStatus();
    this.systemd.serving([]);
  }

  /**
   * Refuses to start when the directory's status files name live workers this supervisor would
   * not run: with -t, any (a pool whose supervisor is gone: adopt it with -T); with -T, one beyond
   * --workers, which would serve on, never upgraded nor stopped.
   */
  private checkServing(): void {
    const { dir, workers, adopt } = this.command;
    for (const file of fs.readdirSync(dir)) {
      const index = Number(/^worker-(\d+)\.json$/.exec(file)?.[1] ?? Number.NaN);
      if (!Number.isSafeInteger(index) || (adopt && index < workers)) continue;
      const pid = readWorkerStatus(this.statusFile(index))?.pid;
      if (pid === undefined || !servesChannel(pid, this.channel(index))) continue;
      const fix = adopt ? `adopt it with --workers ${index + 1} or more (a pool does not shrink)` : `take the pool over with -T ${dir}`;
      const code = adopt ? ErrorCodes.INVALID_OPTION : ErrorCodes.CHANNEL_IN_USE;
      throw new TakeoverError(code, `pid ${pid} serves worker ${index} of the pool in ${dir}: ${fix}`);
    }
  }

  /** Spawns worker i, fresh or as the successor of its channel's server; resolves once it is ready. */
  private async startWorker(index: number, successor: boolean): Promise<Worker & { ready: ReadyMessage }> {
    const args = [
      ...process.execArgv,
      process.argv[1]!,
      ...this.command.workerArgs,
      '--reuse-port',
      '--status-file',
      this.statusFile(index),
      successor ? '-T' : '-t',
      this.channel(index),
    ];
    const child = spawn(process.execPath, args, {
      detached: true,
      env: workerEnvironment(),
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const exited = new Promise<string>((resolve) =>
      child.once('exit', (code, signal) => resolve(signal ?? `code ${code}`)).once('error', (error) => resolve(describe(error))),
    );
    const pid = child.pid ?? -1;
    const worker = { index, pid, startTime: startTimeOf(pid), exited, startedAt: Date.now() };
    this.starting.add(child);
    try {
      const ready = await this.whenReady(child, exited);
      await this.untilStatus(index, worker.pid);
      return { ...worker, ready };
    } catch (error) {
      child.kill('SIGKILL');
      throw new Error(`${successor ? 'successor' : 'worker'} pid ${worker.pid} of worker ${index} ${describe(error)}`);
    } finally {
      this.starting.delete(child);
    }
  }

  private whenReady(child: ChildProcess, exited: Promise<string>): Promise<ReadyMessage> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`was not ready within ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
      void exited.then((how) => {
        clearTimeout(timer);
        reject(new Error(`exited (${how}) before it was ready`));
      });
      child.on('message', (message: ReadyMessage) => {
        if (message?.type !== 'socket-takeover:ready') return;
        clearTimeout(timer);
        // Nothing ties a ready worker to this supervisor: it must outlive it.
        child.disconnect();
        resolve(message);
      });
    });
  }

  /** The ready message comes before the worker writes its status file; the status line reads the file. */
  private async untilStatus(index: number, pid: number): Promise<void> {
    for (let waited = 0; waited < 2000 && readWorkerStatus(this.statusFile(index))?.pid !== pid; waited += 20) await sleep(20);
  }

  private async untilGone(named: { pid: number; startTime: string | undefined }, timeoutMs: number): Promise<boolean> {
    for (let waited = 0; waited < timeoutMs; waited += 50) {
      if (!runs(named)) return true;
      await sleep(50);
    }
    return false;
  }

  /** A worker this supervisor did not start: watched through /proc. */
  private adopt(index: number, pid: number): void {
    const startTime = startTimeOf(pid);
    const exited = new Promise<string>((resolve) => {
      const timer = setInterval(() => {
        if (runs({ pid, startTime })) return;
        clearInterval(timer);
        resolve('status unknown: not a child of this supervisor');
      }, WATCH_INTERVAL_MS);
    });
    this.install(index, { index, pid, startTime, exited, startedAt: Date.now() });
  }

  private install(index: number, worker: Worker): void {
    this.workers[index] = worker;
    void worker.exited.then((how) => this.onExit(worker, how));
  }

  private async onExit(worker: Worker, how: string): Promise<void> {
    const { index, pid } = worker;
    if (this.stopping || this.workers[index] !== worker || this.busy.has(index)) return;
    this.log(`Worker ${index} (pid ${pid}) exited (${how})`, { worker: index, workerPid: pid, how });
    this.busy.add(index);
    try {
      // Taken over by a successor this supervisor did not start (the worker's own SIGUSR2, or a
      // -T on its channel)? The old process exits once done, and the successor writes its status.
      for (let waited = 0; waited < RESTART_DELAY_MS; waited += 50) {
        if (this.adoptSuccessor(index, pid)) return;
        await sleep(50);
      }
      if (Date.now() - worker.startedAt < RESTART_DELAY_MS) await sleep(RESTART_DELAY_MS);
      await this.restart(index, pid);
      this.logStatus();
    } finally {
      this.busy.delete(index);
    }
  }

  /**
   * Adopts the process worker i's status file names, when it serves worker i's channel: a worker
   * of the pool this supervisor takes over, or the successor of the worker `gone`.
   */
  private adoptSuccessor(index: number, gone?: number): boolean {
    const status = readWorkerStatus(this.statusFile(index));
    if (!status || status.pid === gone || !servesChannel(status.pid, this.channel(index))) return false;
    this.adopt(index, status.pid);
    const fields = { worker: index, workerPid: status.pid };
    if (gone === undefined) this.log(`Adopting worker ${index}: pid ${status.pid}`, fields);
    else this.log(`Worker ${index}: pid ${gone} was taken over by pid ${status.pid}`, fields);
    return true;
  }

  /**
   * Starts worker i fresh, again and again while it fails: the pool must get back to N workers.
   * A fresh start fails while another process serves the channel: that one is adopted instead.
   */
  private async restart(index: number, gone?: number): Promise<void> {
    while (!this.stopping) {
      if (this.adoptSuccessor(index, gone)) return;
      this.log(`Restarting worker ${index}`, { worker: index });
      try {
        this.install(index, await this.startWorker(index, false));
        return;
      } catch (error) {
        this.logError(`Worker ${index} could not start: ${describe(error)}; retrying in ${RESTART_DELAY_MS} ms`, { worker: index });
        await sleep(RESTART_DELAY_MS);
      }
    }
  }

  /** Upgrades the workers one at a time; stops at the first that fails, which keeps serving. */
  async upgrade(reason: string): Promise<void> {
    if (this.stopping) return;
    if (this.upgrading) {
      this.log(`${reason} ignored: the pool is being upgraded`);
      // The upgrade running ends with READY=1: that answers this reload too.
      this.systemd.refused(new TakeoverError(ErrorCodes.BUSY, 'the pool is being upgraded'));
      return;
    }
    this.upgrading = true;
    const { workers } = this.command;
    this.log(`Upgrading the pool (${reason}): ${workers} workers, one at a time`, { reason });
    this.systemd.handingOver(`Upgrading the pool (${reason})`);
    let outcome = 'Upgrade stopped';
    try {
      for (let i = 0; i < workers; i++) {
        while (this.busy.has(i)) await sleep(50);
        if (this.stopping) return;
        this.busy.add(i);
        try {
          await this.upgradeWorker(i);
        } finally {
          this.busy.delete(i);
          // It died while the upgrade held it: now the usual restart applies.
          const worker = this.workers[i];
          if (worker && !runs(worker)) void this.onExit(worker, 'exited');
        }
      }
      this.log(`Pool upgraded: ${workers} workers`, { upgraded: workers });
      outcome = `Pool upgraded: ${workers} workers`;
    } catch (error) {
      this.logError(`Upgrade stopped: ${describe(error)}`, { upgradeFailed: true });
      outcome = `Upgrade stopped: ${describe(error)}`;
    } finally {
      this.upgrading = false;
      this.logStatus();
      this.systemd.reloaded(`${outcome} (supervisor pid ${process.pid})`);
    }
  }

  private async upgradeWorker(index: number): Promise<void> {
    const old = this.workers[index]!;
    this.log(`Upgrading worker ${index}: successor of pid ${old.pid}`, { worker: index, workerPid: old.pid });
    let successor: Awaited<ReturnType<Supervisor['startWorker']>>;
    try {
      successor = await this.startWorker(index, true);
    } catch (error) {
      const still = runs(old) ? `pid ${old.pid} serves on` : `its pid ${old.pid} is gone`;
      const last = this.command.workers - 1;
      const left = index === last ? `worker ${index}` : `workers ${index} to ${last}`;
      throw new Error(`${describe(error)}; ${still}; ${left} not upgraded`);
    }
    this.install(index, successor);
    this.draining.add(old);
    void old.exited.then(() => this.draining.delete(old));
    const stats = successor.ready.stats;
    this.log(
      `Worker ${index}: pid ${old.pid} -> pid ${successor.pid}, ${plural(stats?.connections ?? 0, 'connection')}, max pause ${(stats?.maxPauseMs ?? 0).toFixed(1)} ms`,
      { worker: index, predecessorPid: old.pid, workerPid: successor.pid, stats },
    );
    const how = await Promise.race([old.exited, sleep(OLD_EXIT_TIMEOUT_MS).then(() => undefined)]);
    if (how === undefined) this.log(`Worker ${index}: old pid ${old.pid} still finishes the connections it kept; moving on`);
    else this.log(`Worker ${index}: old pid ${old.pid} exited (${how})`, { worker: index, oldPid: old.pid, how });
  }

  /**
   * A new supervisor wrote its pid: it is in charge, and every worker serves on. Only another
   * pid counts: a file gone or unreadable is no order to leave the pool unsupervised.
   */
  private checkSupervisor(): void {
    if (this.stopping) return;
    const current = readSupervisor(this.command.dir);
    if (current?.pid === process.pid) return;
    // Gone, unreadable, stale or not a supervisor's record (a pid without its start time): this
    // one is still in charge, and says so again for the next supervisor and --status.
    if (current === undefined || !runs(current)) {
      try {
        this.claim();
      } catch {
        // The directory cannot be written now (removed, full): the next look tries again.
      }
      return;
    }
    this.stopping = true;
    this.log(`Pool taken over by supervisor pid ${current.pid}: exiting, the workers serve on`, { successorPid: current.pid });
    process.exit(0);
  }

  private claim(): void {
    writeJsonFile(path.join(this.command.dir, 'supervisor.json'), { pid: process.pid, startTime: startTimeOf(process.pid) });
  }

  /** Why the pool could not start: on stderr, a JSON line too with --log-format json. */
  logFailure(error: unknown): void {
    this.logError(`takeover-server: ${describeCoded(error)}`, { code: (error as { code?: unknown }).code });
  }

  logStatus(): void {
    for (let i = 0; i < this.command.workers; i++) {
      const status = readWorkerStatus(this.statusFile(i));
      this.log(formatWorkerStatus(i, status, status !== undefined && isAlive(status.pid)), { worker: i, status });
    }
  }

  private async stop(signal: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.log(`Stopping pool on ${signal}`);
    this.systemd.stopping();
    await this.stopWorkers();
    // The pool is gone: no status file may name a worker that a later pool would mistake for its own.
    for (let i = 0; i < this.command.workers; i++) fs.rmSync(this.statusFile(i), { force: true });
    if (readSupervisor(this.command.dir)?.pid === process.pid) fs.rmSync(path.join(this.command.dir, 'supervisor.json'), { force: true });
    process.exit(0);
  }

  /**
   * SIGTERM to each worker (which closes its channel) and each old process still finishing
   * connections, SIGKILL to one still there after 10 s: only to the very processes it started or
   * adopted (pid and start time), never to a process that got a pid of theirs since.
   */
  private async stopWorkers(): Promise<void> {
    for (const child of this.starting) child.kill('SIGKILL');
    const live = [...this.workers, ...this.draining].filter((w): w is Worker => w !== undefined && runs(w));
    const signal = (worker: Worker, name: NodeJS.Signals) => {
      try {
        if (runs(worker)) process.kill(worker.pid, name);
      } catch {
        // Exited between the look and the signal.
      }
    };
    for (const worker of live) signal(worker, 'SIGTERM');
    await Promise.all(
      live.map(async (worker) => {
        if (!(await this.untilGone(worker, 10_000))) signal(worker, 'SIGKILL');
      }),
    );
  }
}

function printStatus(dir: string): number {
  const supervisor = readSupervisor(dir);
  const files = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => /^worker-\d+\.json$/.test(f)) : [];
  if (supervisor === undefined && files.length === 0) {
    process.stderr.write(`takeover-server: no pool in ${dir}\n`);
    return 1;
  }
  const lines = [
    supervisor === undefined ? 'Supervisor: none' : `Supervisor: pid ${supervisor.pid}${runs(supervisor) ? '' : ' (not running)'}`,
  ];
  const indexes = files.map((f) => Number(/\d+/.exec(f)![0])).sort((a, b) => a - b);
  for (const i of indexes) {
    const status = readWorkerStatus(path.join(dir, `worker-${i}.json`));
    lines.push(formatWorkerStatus(i, status, status !== undefined && isAlive(status.pid)));
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}

/** Runs the supervisor (undefined: it serves on) or prints a pool's status (an exit code). */
export async function runPoolCommand(command: PoolCommand): Promise<number | undefined> {
  if (command.kind === 'status') return printStatus(command.dir);
  const supervisor = new Supervisor(command);
  try {
    await supervisor.start();
  } catch (error) {
    supervisor.logFailure(error);
    return 1;
  }
  return undefined;
}
