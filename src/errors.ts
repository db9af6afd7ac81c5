/**
 * Every failure this library reports is a {@link TakeoverError} with a stable `code`,
 * so callers branch on codes, never on messages. The codes, and where each one surfaces, are
 * listed in docs/API.md.
 */
import type { Socket } from 'node:net';

/** Every code, by name: the name is the code without `ERR_TAKEOVER_` (`ErrorCodes.BUSY === 'ERR_TAKEOVER_BUSY'`). */
export const ErrorCodes = {
  /** An option or argument has the wrong type or value. */
  INVALID_OPTION: 'ERR_TAKEOVER_INVALID_OPTION',
  /** A method was called in a state where it makes no sense (e.g. `listen()` after `ready()`). */
  INVALID_STATE: 'ERR_TAKEOVER_INVALID_STATE',
  /** The channel path is in a directory that other users can write, or is owned by someone else. */
  PATH_UNSAFE: 'ERR_TAKEOVER_PATH_UNSAFE',
  /** A fresh start found a live server already listening on the channel path. */
  CHANNEL_IN_USE: 'ERR_TAKEOVER_CHANNEL_IN_USE',
  /** A takeover was asked for but nobody listens on the channel path. */
  NO_PREDECESSOR: 'ERR_TAKEOVER_NO_PREDECESSOR',
  /** The peer's uid is not allowed to take over (SO_PEERCRED). */
  PEER_REJECTED: 'ERR_TAKEOVER_PEER_REJECTED',
  /** Another takeover is already in progress. */
  BUSY: 'ERR_TAKEOVER_BUSY',
  /** The other side aborted the takeover; `reason` holds its code. */
  ABORTED: 'ERR_TAKEOVER_ABORTED',
  /** A channel frame was malformed or came at the wrong time. */
  PROTOCOL: 'ERR_TAKEOVER_PROTOCOL',
  /** The other side did not answer within `timeoutMs`. */
  TIMEOUT: 'ERR_TAKEOVER_TIMEOUT',
  /** The channel closed before the takeover finished. */
  PEER_CLOSED: 'ERR_TAKEOVER_PEER_CLOSED',
  /** File descriptors were lost in transit (MSG_CTRUNC) or the successor cannot hold them all. */
  FD_LIMIT: 'ERR_TAKEOVER_FD_LIMIT',
  /** The successor did not claim one of the predecessor's listeners with `listen()`. */
  LISTENER_UNCLAIMED: 'ERR_TAKEOVER_LISTENER_UNCLAIMED',
  /** A system call failed; `cause` is Node's system error. */
  SYSTEM: 'ERR_TAKEOVER_SYSTEM',
  /** An application hook or event listener threw (`cause`); the takeover went on without it. */
  HOOK_FAILED: 'ERR_TAKEOVER_HOOK_FAILED',
  /** This process wrote to (or ended) a connection that has moved to the successor; `socket` says which. */
  CONNECTION_MOVED: 'ERR_TAKEOVER_CONNECTION_MOVED',
  /** A TLS server was given to `listen()`: its sessions live in this process's OpenSSL and cannot move. */
  TLS_UNSUPPORTED: 'ERR_TAKEOVER_TLS_UNSUPPORTED',
  /** `upgrade()`'s successor process exited, or never connected, before the takeover finished. */
  SUCCESSOR_FAILED: 'ERR_TAKEOVER_SUCCESSOR_FAILED',
  /**
   * A process that was sent copies of the listeners in a failed takeover still lives: it may keep
   * the ports listening (the message names its pid) after this process stops.
   */
  LISTENER_HELD: 'ERR_TAKEOVER_LISTENER_HELD',
  /** The native addon could not be loaded (`cause` says why). */
  ADDON_LOAD: 'ERR_TAKEOVER_ADDON_LOAD',
  /** A notification to systemd (`$NOTIFY_SOCKET`) could not be sent (`cause`); serving goes on. */
  NOTIFY_FAILED: 'ERR_TAKEOVER_NOTIFY_FAILED',
  /** `$LISTEN_PID`, `$LISTEN_FDS` or `$LISTEN_FDNAMES` is malformed, or a passed fd is not a listening stream socket. */
  ACTIVATION_INVALID: 'ERR_TAKEOVER_ACTIVATION_INVALID',
} as const;

export type TakeoverErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/** The one error class of the library: branch on {@link TakeoverError.code}; `cause` keeps the underlying error, if any. */
export class TakeoverError extends Error {
  override readonly name = 'TakeoverError';
  readonly code: TakeoverErrorCode;
  /** For `ERR_TAKEOVER_ABORTED`: the code the other side gave. */
  readonly reason: string | undefined;
  /** For `ERR_TAKEOVER_CONNECTION_MOVED` (and warnings about an adopted connection): the connection concerned. */
  readonly socket: Socket | undefined;

  constructor(code: TakeoverErrorCode, message: string, options: { cause?: unknown; reason?: string; socket?: Socket } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.reason = options.reason;
    this.socket = options.socket;
  }
}

/** Wraps anything thrown by a system call into a TakeoverError, keeping the original as `cause`. */
export function systemError(what: string, cause: unknown): TakeoverError {
  if (cause instanceof TakeoverError) return cause;
  const code = (cause as { code?: unknown })?.code;
  return new TakeoverError(ErrorCodes.SYSTEM, `${what}: ${typeof code === 'string' ? code : describe(cause)}`, { cause });
}

/** A short description of anything thrown, for a message; the thing itself goes in `cause`. */
export function describe(thrown: unknown): string {
  return thrown instanceof Error ? thrown.message : String(thrown);
}

/** An application hook or listener threw: reported with its own code, the original kept as `cause`. */
export function hookError(what: string, thrown: unknown): TakeoverError {
  return new TakeoverError(ErrorCodes.HOOK_FAILED, `${what} threw: ${describe(thrown)}`, { cause: thrown });
}
