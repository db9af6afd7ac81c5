/**
 * systemd, as a service manager sees a process that can be taken over:
 *
 * - sd_notify(3) when `$NOTIFY_SOCKET` is set: `READY=1` once serving, `RELOADING=1` when a
 *   takeover of this process begins, `MAINPID=` and `READY=1` from the successor as soon as it
 *   serves the listeners (before the old process can exit), `STATUS=` with the last takeover's
 *   figures, `STOPPING=1` at `close()`.
 * - Listeners systemd passes (sd_listen_fds(3): `$LISTEN_FDS`, `$LISTEN_PID`, `$LISTEN_FDNAMES`),
 *   from a .socket unit or from the service's fd store, which `listen()` adopts by name or index.
 * - The fd store: `FDSTORE=1` of each listener this process bound itself, so that after a crash
 *   or `systemctl restart` systemd hands the very socket back and no connect is refused.
 *
 * The lifecycle (takeover.ts) tells a {@link Systemd} where it is; this module decides what the
 * manager hears. Nothing here can stop serving: a failure is a `'warning'`.
 */
import * as native from './native.js';
import { ErrorCodes, TakeoverError, systemError } from './errors.js';
import type { TakeoverStats } from './stats.js';

/** A listening socket systemd passed to this process, as fd `3 + index`. */
export interface ActivatedListener {
  /** Its position in `$LISTEN_FDS` order. */
  readonly index: number;
  /** Its `$LISTEN_FDNAMES` entry, percent-decoded (see {@link encodeFdName}); `'unknown'` when unnamed. */
  readonly name: string;
  readonly kind: 'tcp' | 'unix';
  readonly fd: number;
}

/** sd_listen_fds(3): passed fds start here. */
const LISTEN_FDS_START = 3;
/** More would be a garbled variable, not a service: no unit has that many sockets. */
const MAX_LISTEN_FDS = 4096;
/** fdname_is_valid() in systemd: at most 255 characters. */
const MAX_FDNAME = 255;
/**
 * The longest a notification may stall the event loop while the manager's queue is full. systemd
 * reads its socket at once; a queue full for this long means it is overwhelmed, and the message
 * is reported (ERR_TAKEOVER_NOTIFY_FAILED, EAGAIN) rather than waited for. Once, not per message:
 * until a send gets through again, the next ones do not wait (see {@link Systemd.send}).
 */
const NOTIFY_TIMEOUT_MS = 250;

function activationError(message: string, cause?: unknown): TakeoverError {
  return new TakeoverError(ErrorCodes.ACTIVATION_INVALID, message, { cause });
}

/**
 * Takes the listeners systemd passed to this process, as sd_listen_fds(3) does: only when
 * `$LISTEN_PID` is this process, each fd made close-on-exec, and the three variables removed
 * from `env` whatever they held, so that no child (a successor included) takes them for its own.
 * Every fd that is not a listening stream socket is left alone (open, close-on-exec) and
 * reported in `problems` with ERR_TAKEOVER_ACTIVATION_INVALID, as are malformed variables.
 * The caller owns the returned fds.
 */
export function takeActivatedListeners(
  env: NodeJS.ProcessEnv = process.env,
  pid: number = process.pid,
): { listeners: ActivatedListener[]; problems: TakeoverError[] } {
  const { LISTEN_PID: pidText, LISTEN_FDS: countText, LISTEN_FDNAMES: namesText } = env;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  // Newer systemd also names the process by its pidfd id; sd_listen_fds(3) removes that too.
  delete env.LISTEN_PIDFDID;
  const listeners: ActivatedListener[] = [];
  const problems: TakeoverError[] = [];
  if (pidText === undefined && countText === undefined) return { listeners, problems };
  if (pidText === undefined || !/^[1-9][0-9]{0,9}$/.test(pidText)) {
    problems.push(activationError(`LISTEN_PID '${pidText ?? ''}' is not a pid: the LISTEN_FDS listeners are ignored`));
    return { listeners, problems };
  }
  if (Number(pidText) !== pid) {
    problems.push(
      activationError(
        `LISTEN_PID is ${pidText}, not this process (${pid}): its listeners are another process's (is a wrapper such as npx or a shell between systemd and node?)`,
      ),
    );
    return { listeners, problems };
  }
  if (countText === undefined || !/^[0-9]{1,5}$/.test(countText) || Number(countText) > MAX_LISTEN_FDS) {
    problems.push(activationError(`LISTEN_FDS '${countText ?? ''}' is not a count of fds: the listeners are ignored`));
    return { listeners, problems };
  }
  const count = Number(countText);
  // An empty LISTEN_FDNAMES is no names, as strv_split() in sd_listen_fds_with_names() reads it.
  let names = namesText === undefined || namesText === '' ? [] : namesText.split(':');
  if (namesText !== undefined && names.length !== count) {
    problems.push(activationError(`LISTEN_FDNAMES has ${names.length} names for ${count} fds: the names are ignored`));
    names = [];
  }
  for (let index = 0; index < count; index++) {
    const fd = LISTEN_FDS_START + index;
    const name = decodeFdName(names[index] ?? 'unknown');
    let info: native.SocketInfo;
    try {
      native.setCloseOnExec(fd);
      info = native.socketInfo(fd);
    } catch (error) {
      problems.push(activationError(`LISTEN_FDS fd ${fd} ('${name}') is not a socket: ${systemError('check', error).message}`, error));
      continue;
    }
    const kind = info.domain === 'unix' ? 'unix' : info.domain === 'inet' || info.domain === 'inet6' ? 'tcp' : undefined;
    if (!info.listening || info.type !== 'stream' || kind === undefined) {
      problems.push(
        activationError(
          `LISTEN_FDS fd ${fd} ('${name}') is a ${info.listening ? 'listening' : 'non-listening'} ${info.domain} ${info.type} socket, not a listening stream socket (Accept=yes and datagram sockets are not served): left alone`,
        ),
      );
      continue;
    }
    listeners.push({ index, name, kind, fd });
  }
  return { listeners, problems };
}

/**
 * A listener's name as an `FDNAME=`: systemd refuses ':' (its `$LISTEN_FDNAMES` separator),
 * control characters and non-ASCII, so those bytes and '%' are percent-encoded; undefined when
 * the result exceeds systemd's 255 characters. {@link decodeFdName} reverses it.
 */
export function encodeFdName(name: string): string | undefined {
  let encoded = '';
  for (const byte of Buffer.from(name, 'utf8')) {
    encoded +=
      byte <= 0x20 || byte >= 0x7f || byte === 0x3a || byte === 0x25
        ? `%${byte.toString(16).toUpperCase().padStart(2, '0')}`
        : String.fromCharCode(byte);
  }
  return encoded.length > MAX_FDNAME ? undefined : encoded;
}

export function decodeFdName(raw: string): string {
  if (!raw.includes('%')) return raw;
  const bytes: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const hex = raw.slice(i + 1, i + 3);
    if (raw[i] === '%' && /^[0-9A-Fa-f]{2}$/.test(hex)) {
      bytes.push(Number.parseInt(hex, 16));
      i += 2;
    } else {
      bytes.push(...Buffer.from(raw[i]!, 'utf8'));
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

/** CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` wants it (libuv's hrtime is that clock). */
function monotonicUsec(): bigint {
  return process.hrtime.bigint() / 1000n;
}

/** A listener this process could put in the fd store. */
export interface StorableListener {
  readonly name: string;
  readonly fd: number;
}

export interface SystemdOptions {
  /** Speak to systemd at all (default true): sd_notify and `$LISTEN_FDS`. */
  readonly enabled: boolean;
  /** `FDSTORE=1` of the listeners this process binds (default: `$FDSTORE`, set by systemd >= 254, is positive). */
  readonly fdStore: boolean;
}

/**
 * What the service manager hears from this process. Each method is one moment of the
 * lifecycle; none throws. Without `$NOTIFY_SOCKET` (or with `systemd: false`) they do nothing.
 */
export class Systemd {
  private readonly socketPath: string | undefined;
  /** A RELOADING=1 of this process is open: the manager waits for a READY=1. */
  private reloading = false;
  /** This process is the service's main process: it serves the listeners. */
  private main = false;
  /** The code of the last failed send: the next failure of the same kind is not repeated. */
  private failing: string | undefined;

  constructor(
    readonly options: SystemdOptions,
    private readonly warn: (error: TakeoverError) => void,
    env: NodeJS.ProcessEnv = process.env,
  ) {
    this.socketPath = options.enabled && env.NOTIFY_SOCKET ? env.NOTIFY_SOCKET : undefined;
  }

  /**
   * Whether the next notification may wait for room in a full manager queue: not once one waited
   * its whole timeout in vain, until one gets through again.
   */
  get waitsForRoom(): boolean {
    return this.failing !== 'EAGAIN';
  }

  /** Whether a service manager listens (`$NOTIFY_SOCKET`): it may own or hold this service's Unix socket files. */
  get supervised(): boolean {
    return this.socketPath !== undefined;
  }

  /** A fresh process serves: its own listeners go to the fd store, then READY=1. */
  serving(own: readonly StorableListener[]): void {
    this.store(own);
    this.main = true;
    this.send({ READY: '1', MAINPID: process.pid, STATUS: `Serving (pid ${process.pid})` });
  }

  /**
   * The successor got LISTENING: it serves the listeners from now on, whatever happens to the
   * rest of the takeover, so it is the main process. Sent before it acknowledges a single wave,
   * so the old process cannot have exited yet.
   */
  listening(predecessorPid: number): void {
    this.main = true;
    this.send({ MAINPID: process.pid, READY: '1', STATUS: `Taking over from pid ${predecessorPid}` });
  }

  /** The successor received everything: the takeover's figures; its own new listeners go to the store. */
  tookOver(stats: TakeoverStats, own: readonly StorableListener[]): void {
    this.store(own);
    this.send({ STATUS: `Took over from pid ${stats.predecessorPid}: ${figures(stats)}` });
  }

  /** `upgrade()` starts a successor, or one connected unasked: the manager sees a reload until READY=1. */
  handingOver(status: string): void {
    if (!this.main) return;
    const fields: Record<string, string | number | bigint> = { STATUS: status };
    if (!this.reloading) Object.assign(fields, { RELOADING: '1', MONOTONIC_USEC: monotonicUsec() });
    this.reloading = true;
    this.send(fields);
  }

  /**
   * An upgrade refused before it began (one already running, not serving): a reload requested by
   * the manager's ReloadSignal must still be answered, so it begins and ends in one message.
   * `successorServes`: the running takeover is past LISTENING, so its successor's READY=1 may be
   * in the manager's queue already (the signal came here before the manager read its MAINPID=).
   */
  refused(error: TakeoverError, successorServes = false): void {
    if (!this.main) return;
    if (successorServes) {
      // Nothing else would end this reload; a STATUS from here would replace the successor's.
      this.send({ RELOADING: '1', MONOTONIC_USEC: monotonicUsec(), READY: '1' });
      return;
    }
    const status = `Upgrade refused (${error.code}); serving (pid ${process.pid})`;
    // A takeover already running ends with its own READY=1.
    this.send({ RELOADING: '1', MONOTONIC_USEC: monotonicUsec(), ...(this.reloading ? {} : { READY: '1' }), STATUS: status });
  }

  /** The takeover failed and this process serves on: READY=1 ends the reload. */
  resumed(error: TakeoverError): void {
    this.reloaded(`Takeover failed (${error.code}), still serving (pid ${process.pid})`);
  }

  /**
   * A reload ended with this process still the main one (a takeover of it that failed, a pool's
   * rolling upgrade): READY=1 ends it, with MAINPID= should the manager have heard of another.
   */
  reloaded(status: string): void {
    if (!this.reloading) return;
    this.reloading = false;
    this.send({ MAINPID: process.pid, READY: '1', STATUS: status });
  }

  /** Handed over: the successor speaks for the service now (a STATUS from here would overwrite its own). */
  handedOver(): void {
    this.reloading = false;
    this.main = false;
  }

  /** `close()` of the main process: the service is going down. */
  stopping(): void {
    if (this.main) this.send({ STOPPING: '1', STATUS: `Shutting down (pid ${process.pid})` });
  }

  /** A listener systemd handed back that nothing serves any more leaves the fd store (every fd of that name). */
  forget(name: string): void {
    const fdName = encodeFdName(name);
    if (this.options.fdStore && fdName !== undefined) this.send({ FDSTOREREMOVE: '1', FDNAME: fdName });
  }

  /**
   * Sends each listener's fd with FDSTORE=1 and its name. Only listeners this process bound
   * itself: an inherited one is the same socket its predecessor already stored (systemd would
   * keep one copy, but refuses even a duplicate once FileDescriptorStoreMax is reached), and one
   * systemd passed is already held by its .socket unit or the store.
   */
  private store(own: readonly StorableListener[]): void {
    if (!this.options.fdStore) return;
    for (const { name, fd } of own) {
      const fdName = encodeFdName(name);
      if (fdName === undefined) {
        this.warn(
          new TakeoverError(ErrorCodes.NOTIFY_FAILED, `listener '${name}' not stored: its name is longer than systemd's 255 characters`),
        );
        continue;
      }
      this.send({ FDSTORE: '1', FDNAME: fdName }, [fd]);
    }
  }

  private send(fields: Record<string, string | number | bigint>, fds: readonly number[] = []): void {
    if (this.socketPath === undefined) return;
    // One assignment per line: a value with a newline would forge another one.
    const text = Object.entries(fields)
      .map(([key, value]) => `${key}=${String(value).replace(/[\r\n]+/g, ' ')}\n`)
      .join('');
    // A manager that let one message wait the whole timeout is not reading: waiting again for each
    // message would stall this process's event loop that long every time, a takeover's pause
    // included (the successor's MAINPID= is sent between LISTENING and its first WAVE_ACK).
    const timeoutMs = this.waitsForRoom ? NOTIFY_TIMEOUT_MS : 0;
    try {
      native.sdNotify(this.socketPath, Buffer.from(text), fds, timeoutMs);
      this.failing = undefined;
    } catch (error) {
      const code = (error as { code?: string }).code ?? 'unknown';
      if (this.failing === code) return;
      this.failing = code;
      this.warn(
        new TakeoverError(
          ErrorCodes.NOTIFY_FAILED,
          `sd_notify to NOTIFY_SOCKET ${this.socketPath} failed: ${code} (${Object.keys(fields).join(', ')})`,
          {
            cause: error,
          },
        ),
      );
    }
  }
}

function figures(s: TakeoverStats): string {
  const parts = [`${s.connections} connection${s.connections === 1 ? '' : 's'}`];
  if (s.retained > 0) parts.push(`${s.retained} retained`);
  parts.push(
    `${s.waves} wave${s.waves === 1 ? '' : 's'}`,
    `max pause ${s.maxPauseMs.toFixed(1)} ms`,
    `total ${Math.round(s.phases.totalMs)} ms`,
  );
  return parts.join(', ');
}
