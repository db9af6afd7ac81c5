/**
 * The options of a {@link Takeover}, checked once at construction: wrong types, out-of-range
 * numbers and unknown (often misspelled) keys are refused with ERR_TAKEOVER_INVALID_OPTION.
 */
import type * as net from 'node:net';
import { ErrorCodes, TakeoverError } from './errors.js';
import { MAX_QUIESCE_MS } from './protocol.js';
import type { SuccessorStep } from './successor.js';
import type { TakeoverStats } from './stats.js';

export interface TakeoverOptions {
  /**
   * Path of the takeover channel (a Unix socket, created mode 0600), resolved against the working
   * directory: at most 107 bytes, its file name at most 82. Every directory from `/` down must
   * belong to root or this user and not be writable by others unless sticky (like /tmp), and the
   * path must hold nothing but this user's socket: else ERR_TAKEOVER_PATH_UNSAFE.
   */
  path: string;
  /**
   * 'fresh': start a new server (fails if one is live on `path`); 'successor': take over from
   * the server on `path` (fails if there is none); 'auto' (default): a successor if one is live.
   */
  mode?: 'auto' | 'fresh' | 'successor';
  /** Uids allowed on the other end of the channel (SO_PEERCRED). Default: this process's uid. */
  allowUids?: readonly number[];
  /**
   * How long to wait for each step of the other side before giving up, and for `upgrade()`'s
   * child to connect. 1 to 2^31-1 ms; default 10,000 ms.
   */
  timeoutMs?: number;
  /**
   * Connections frozen and started together; each pauses for one wave (which also stops growing
   * at 64 MiB). 1 to 1,000,000. Default: up to 128, as many as about 1.5 ms of the old process's
   * CPU freezes, sends and releases (measured on the waves so far), so that its event loop never
   * stalls long; a number given here makes every wave that size (the last one aside).
   */
  waveSize?: number;
  /**
   * How long the old process waits, from the start of the waves, for busy connections (a
   * request being handled, a reply pending, a frame half-read) to become quiet. Past it they
   * stay with the old process, which finishes them. 0 to 86,400,000 ms; default 10,000 ms.
   */
  quiesceTimeoutMs?: number;
  /**
   * Old process, just before the freeze: application state of a connection (e.g. a half-parsed
   * frame). A throw, or a result that is neither a Buffer nor undefined, keeps the connection in
   * the old process, with a 'warning' (ERR_TAKEOVER_HOOK_FAILED).
   */
  captureState?: (socket: net.Socket) => Buffer | undefined;
  /**
   * New process, before the application first sees the connection ('adopt', 'connection'): the
   * state captured by the old one, when there is one. A throw, or a state with no hook set, is a
   * 'warning' (ERR_TAKEOVER_HOOK_FAILED); the connection goes on.
   */
  restoreState?: (socket: net.Socket, state: Buffer) => void;
  /**
   * Called at each protocol step of a successor, and in the old process at `'stop-accepting'`
   * (the successor committed; this process stops accepting next), for tracing and for
   * fault-injection tests; a throw is ignored.
   */
  onStep?: (step: SuccessorStep | 'stop-accepting') => void;
  /**
   * Once `ready()` resolves, send the parent process a {@link ReadyMessage} through its IPC
   * channel (`process.send`), when there is one: the signal a supervisor waits for before it
   * upgrades the next worker of a pool. Default false.
   */
  notifyParent?: boolean;
  /**
   * Speak to systemd (default true): sd_notify when `$NOTIFY_SOCKET` is set, and the listeners
   * systemd passes (`$LISTEN_FDS`) for `listen()`. False leaves both to the application.
   */
  systemd?: boolean;
  /**
   * Put each listener this process binds in systemd's fd store (`FDSTORE=1`), so that a crash or a
   * restart keeps it open. Default: when `$FDSTORE` (set by systemd >= 254 to
   * FileDescriptorStoreMax=) is positive. Needs `FileDescriptorStoreMax=` in the unit.
   */
  fdStore?: boolean;
}

/** What `notifyParent` sends: this process serves, with `stats` of the takeover it made (null when fresh). */
export interface ReadyMessage {
  type: 'socket-takeover:ready';
  pid: number;
  /** Connections this process serves now. */
  connections: number;
  stats: TakeoverStats | null;
}

export type ResolvedOptions = Required<Omit<TakeoverOptions, 'captureState' | 'restoreState' | 'onStep'>> &
  Pick<TakeoverOptions, 'captureState' | 'restoreState' | 'onStep'> & {
    /** No waveSize given: waves are also cut by time (see TakeoverOptions.waveSize). */
    timedWaves: boolean;
  };

/** setTimeout's limit: a longer delay fires at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

const KNOWN: readonly (keyof TakeoverOptions)[] = [
  'path',
  'mode',
  'allowUids',
  'timeoutMs',
  'waveSize',
  'quiesceTimeoutMs',
  'captureState',
  'restoreState',
  'onStep',
  'notifyParent',
  'systemd',
  'fdStore',
];

export function invalidOption(message: string): TakeoverError {
  return new TakeoverError(ErrorCodes.INVALID_OPTION, message);
}

function integerIn(value: unknown, name: string, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw invalidOption(`${name} must be an integer in ${min}..${max}`);
  }
  return value;
}

export function resolveOptions(options: TakeoverOptions): ResolvedOptions {
  if (options === null || typeof options !== 'object') throw invalidOption('options must be an object');
  const unknown = Object.keys(options).filter((key) => !(KNOWN as readonly string[]).includes(key));
  if (unknown.length > 0) throw invalidOption(`unknown option${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => `'${k}'`).join(', ')}`);
  if (typeof options.path !== 'string' || options.path.length === 0) throw invalidOption('path must be a non-empty string');
  const mode = options.mode ?? 'auto';
  if (!['auto', 'fresh', 'successor'].includes(mode)) throw invalidOption(`mode must be 'auto', 'fresh' or 'successor'`);
  const allowUids = options.allowUids ?? [process.getuid!()];
  if (!Array.isArray(allowUids) || allowUids.some((u) => !Number.isInteger(u) || u < 0)) {
    throw invalidOption('allowUids must be an array of uids');
  }
  if (options.notifyParent !== undefined && typeof options.notifyParent !== 'boolean')
    throw invalidOption('notifyParent must be a boolean');
  for (const hook of ['captureState', 'restoreState', 'onStep'] as const) {
    if (options[hook] !== undefined && typeof options[hook] !== 'function') throw invalidOption(`${hook} must be a function`);
  }
  for (const flag of ['systemd', 'fdStore'] as const) {
    if (options[flag] !== undefined && typeof options[flag] !== 'boolean') throw invalidOption(`${flag} must be a boolean`);
  }
  return {
    path: options.path,
    mode,
    allowUids: [...allowUids],
    timeoutMs: integerIn(options.timeoutMs, 'timeoutMs', 1, MAX_TIMER_MS, 10_000),
    waveSize: integerIn(options.waveSize, 'waveSize', 1, 1_000_000, 128),
    timedWaves: options.waveSize === undefined,
    quiesceTimeoutMs: integerIn(options.quiesceTimeoutMs, 'quiesceTimeoutMs', 0, MAX_QUIESCE_MS, 10_000),
    captureState: options.captureState,
    restoreState: options.restoreState,
    onStep: options.onStep,
    notifyParent: options.notifyParent ?? false,
    systemd: options.systemd ?? true,
    fdStore: options.fdStore ?? Number(process.env.FDSTORE) > 0,
  };
}
