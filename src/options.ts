/**
 * The options of a {@link Takeover}, checked once at construction: wrong types, out-of-range
 * numbers and unknown (often misspelled) keys are refused with ERR_TAKEOVER_INVALID_OPTION.
 */
import type * as net from 'node:net';
import { ErrorCodes, TakeoverError } from './errors.js';
import { MAX_QUIESCE_MS } from './protocol.js';
import type { SuccessorStep } from './successor.js';

export interface TakeoverOptions {
  /** Path of the takeover channel (a Unix socket, created mode 0600). */
  path: string;
  /**
   * 'fresh': start a new server (fails if one is live on `path`); 'successor': take over from
   * the server on `path` (fails if there is none); 'auto' (default): a successor if one is live.
   */
  mode?: 'auto' | 'fresh' | 'successor';
  /** Uids allowed on the other end of the channel (SO_PEERCRED). Default: this process's uid. */
  allowUids?: readonly number[];
  /** How long to wait for each step of the other side before giving up. Default 10,000 ms. */
  timeoutMs?: number;
  /**
   * Connections frozen and started together; each pauses for one wave. Default: up to 128, as
   * many as about 1.5 ms of the old process's CPU freezes, sends and releases (measured on the
   * waves so far), so that its event loop never stalls long; a number given here makes every
   * wave that size (the last one aside).
   */
  waveSize?: number;
  /**
   * How long the old process waits, from the start of the waves, for busy connections (a
   * request being handled, a reply pending, a frame half-read) to become quiet. Past it they
   * stay with the old process, which finishes them. Default 10,000 ms.
   */
  quiesceTimeoutMs?: number;
  /** Old process, at freeze: application state of a connection (e.g. a half-parsed frame). */
  captureState?: (socket: net.Socket) => Buffer | undefined;
  /** New process, before the application first sees the connection: the state captured by the old one. */
  restoreState?: (socket: net.Socket, state: Buffer) => void;
  /** Called at each protocol step of a successor, for tracing and for fault-injection tests. */
  onStep?: (step: SuccessorStep) => void;
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
  for (const hook of ['captureState', 'restoreState', 'onStep'] as const) {
    if (options[hook] !== undefined && typeof options[hook] !== 'function') throw invalidOption(`${hook} must be a function`);
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
  };
}
