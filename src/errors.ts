/**
 * Every failure this library reports is a {@link TakeoverError} with a stable `code`,
 * so callers branch on codes, never on messages. The codes are listed in the README.
 */
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
} as const;

export type TakeoverErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export class TakeoverError extends Error {
  override readonly name = 'TakeoverError';
  readonly code: TakeoverErrorCode;
  /** For `ERR_TAKEOVER_ABORTED`: the code the other side gave. */
  readonly reason: string | undefined;

  constructor(code: TakeoverErrorCode, message: string, options: { cause?: unknown; reason?: string } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.reason = options.reason;
  }
}

/** Wraps anything thrown by a system call into a TakeoverError, keeping the original as `cause`. */
export function systemError(what: string, cause: unknown): TakeoverError {
  if (cause instanceof TakeoverError) return cause;
  const code = (cause as { code?: unknown })?.code;
  return new TakeoverError(ErrorCodes.SYSTEM, `${what}: ${typeof code === 'string' ? code : String(cause)}`, { cause });
}
