/**
 * The takeover channel's listening socket: where it may live on disk, how it is created
 * safely, and the accept loop that turns each incoming successor into a {@link Channel}.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as native from './native.js';
import { Channel } from './channel.js';
import { ErrorCodes, TakeoverError, systemError } from './errors.js';

const CHANNEL_BACKLOG = 16;
const ACCEPT_RETRY_MS = 100;
/** Channel connections open at once (a takeover, refusals lingering); more are closed at once. */
export const MAX_OPEN_CHANNELS = 16;
/** The same kind of warning is reported at most once per interval, the rest counted into the next. */
export const WARNING_INTERVAL_MS = 1000;
/** bind/connect go through "/proc/self/fd/<fd>/<name>", within sun_path's 107 bytes. */
const MAX_NAME_BYTES = 107 - '/proc/self/fd/'.length - String(2 ** 31).length - 1;
/** Like the kernel's MAXSYMLINKS. */
const MAX_SYMLINKS = 40;

function unsafe(message: string): TakeoverError {
  return new TakeoverError(ErrorCodes.PATH_UNSAFE, message);
}

function errorCode(error: unknown): string | undefined {
  return (error as { code?: string }).code;
}

/** Root and this user are the only ones whose files the channel may depend on. */
function trusted(uid: number): boolean {
  return uid === 0 || uid === process.geteuid!();
}

/**
 * Refuses a directory where another user could add, swap or remove entries: one that others
 * (or the group) can write, unless it is sticky (like /tmp), where only an entry's owner may
 * replace or remove it.
 */
function verifyDirectory(fd: number, dir: string): void {
  const stat = native.statAt(fd, '')!;
  if (!trusted(stat.uid)) throw unsafe(`${dir} belongs to uid ${stat.uid}, not to this user or root`);
  if ((stat.mode & 0o022) !== 0 && (stat.mode & 0o1000) === 0) {
    throw unsafe(`${dir} can be written by other users (mode ${stat.mode.toString(8)})`);
  }
}

/**
 * Opens `dir` (absolute) one component at a time from the root, each relative to the one
 * before and without following links, and verifies every directory on the way: whoever can
 * write to any of them could otherwise swap what comes below. A symlink is followed only if
 * it is root's or ours, in a directory verified so far; its target is then walked from the
 * root like any path. Returns the verified directory's O_PATH fd, owned by the caller.
 */
function openVerifiedDirectory(dir: string): number {
  let pending = dir;
  for (let links = 0; ; ) {
    let fd = native.openDirAt(null, '/');
    try {
      verifyDirectory(fd, '/');
      let walked = '/';
      const names = pending.split('/').filter((name) => name !== '');
      let restart = false;
      for (let i = 0; i < names.length && !restart; i++) {
        const name = names[i]!;
        const next = path.join(walked, name);
        const stat = native.statAt(fd, name);
        if (stat === null) throw unsafe(`the takeover path's directory ${next} cannot be used: ENOENT`);
        if (stat.type === 'symlink') {
          if (!trusted(stat.uid)) throw unsafe(`${next} is a symbolic link of uid ${stat.uid}, not of this user or root`);
          if (++links > MAX_SYMLINKS) throw unsafe(`the takeover path's directory ${dir} cannot be used: ELOOP`);
          pending = path.resolve(walked, native.readlinkAt(fd, name), ...names.slice(i + 1));
          restart = true;
          continue;
        }
        let child: number;
        try {
          child = native.openDirAt(fd, name);
        } catch (error) {
          throw unsafe(`the takeover path's directory ${next} cannot be used: ${errorCode(error)}`);
        }
        native.close(fd);
        fd = child;
        walked = next;
        verifyDirectory(fd, walked);
      }
      if (!restart) return fd;
    } catch (error) {
      native.close(fd);
      throw error;
    }
    native.close(fd);
  }
}

/** Runs `work` in the channel's verified directory, with the socket's name in it. */
function inChannelDirectory<T>(channelPath: string, work: (dirFd: number, name: string) => T): T {
  if (typeof channelPath !== 'string' || channelPath.length === 0) {
    throw new TakeoverError(ErrorCodes.INVALID_OPTION, 'the takeover path must be a non-empty string');
  }
  const absolute = path.resolve(channelPath);
  const name = path.basename(absolute);
  if (name === '' || Buffer.byteLength(absolute) > 107 || Buffer.byteLength(name) > MAX_NAME_BYTES) {
    throw new TakeoverError(
      ErrorCodes.INVALID_OPTION,
      `the takeover path must be at most 107 bytes, its file name at most ${MAX_NAME_BYTES}: ${channelPath}`,
    );
  }
  const dirFd = openVerifiedDirectory(path.dirname(absolute));
  try {
    return work(dirFd, name);
  } finally {
    native.close(dirFd);
  }
}

/** What is at the path, for messages: "a regular file", "a symbolic link to /etc/passwd"... */
function describeEntry(dirFd: number, name: string, stat: native.EntryStat): string {
  switch (stat.type) {
    case 'file':
      return `a regular file of uid ${stat.uid}`;
    case 'directory':
      return `a directory of uid ${stat.uid}`;
    case 'symlink':
      return `a symbolic link to ${native.readlinkAt(dirFd, name)} (uid ${stat.uid})`;
    case 'socket':
      return `a socket of uid ${stat.uid}`;
    default:
      return `a special file of uid ${stat.uid}`;
  }
}

function notASocket(channelPath: string, dirFd: number, name: string, stat: native.EntryStat): TakeoverError {
  return unsafe(`${channelPath} is ${describeEntry(dirFd, name, stat)}, not a takeover channel; remove it or choose another path`);
}

/**
 * Refuses a channel path whose directory, or any directory above it, another user could
 * change (see {@link openVerifiedDirectory}), and a path that holds anything but a socket.
 * Who may connect is checked separately, on every connection, with SO_PEERCRED.
 */
export function checkChannelPath(channelPath: string): void {
  inChannelDirectory(channelPath, (dirFd, name) => {
    const stat = native.statAt(dirFd, name);
    if (stat !== null && stat.type !== 'socket') throw notASocket(channelPath, dirFd, name, stat);
  });
}

/** Before replacing a stale socket file: it must be a socket of ours, nothing else. */
export function checkReplaceable(channelPath: string): void {
  inChannelDirectory(channelPath, (dirFd, name) => {
    const stat = native.statAt(dirFd, name);
    if (stat !== null) assertOwnSocket(channelPath, dirFd, name, stat);
  });
}

function assertOwnSocket(channelPath: string, dirFd: number, name: string, stat: native.EntryStat): void {
  if (stat.type !== 'socket') throw notASocket(channelPath, dirFd, name, stat);
  if (stat.uid !== process.geteuid!()) throw unsafe(`${channelPath} is a socket of uid ${stat.uid}, not of this user`);
}

/**
 * The errors of a connect that say what is at the path, rather than whether a server listens
 * there: another user's socket (EACCES: no write permission), a socket of another type, or not
 * a socket at all.
 */
function unusableSocket(channelPath: string, dirFd: number, name: string, error: unknown): TakeoverError | undefined {
  const code = errorCode(error);
  if (code !== 'EACCES' && code !== 'EPERM' && code !== 'EPROTOTYPE' && code !== 'ENOTSOCK') return undefined;
  const stat = native.statAt(dirFd, name);
  const found = stat ? describeEntry(dirFd, name, stat) : 'gone';
  const why =
    code === 'EPROTOTYPE'
      ? ' with a server of another type, not a takeover channel'
      : code === 'ENOTSOCK'
        ? ', not a takeover channel'
        : ', which this user may not connect to';
  return new TakeoverError(ErrorCodes.PATH_UNSAFE, `${channelPath} is ${found}${why} (${code})`, { cause: error });
}

/** Connects to whoever listens on the path; ERR_TAKEOVER_NO_PREDECESSOR when nobody does. */
export function connectChannel(channelPath: string): Channel {
  const fd = inChannelDirectory(channelPath, (dirFd, name) => {
    try {
      return native.unixConnectAt(dirFd, name);
    } catch (error) {
      const code = errorCode(error);
      if (code === 'ENOENT' || code === 'ECONNREFUSED') {
        throw new TakeoverError(ErrorCodes.NO_PREDECESSOR, `nobody listens on the takeover path ${channelPath} (${code})`, {
          cause: error,
        });
      }
      throw unusableSocket(channelPath, dirFd, name, error) ?? systemError(`connect to ${channelPath}`, error);
    }
  });
  return new Channel(fd);
}

/**
 * True when any live socket is bound at the path, whatever its type: our connect is
 * SOCK_SEQPACKET, and the kernel answers EPROTOTYPE for a live socket of another type (a stale
 * file gives ECONNREFUSED first), EAGAIN for one whose backlog is full. A socket this user may
 * not connect to (EACCES), which says nothing about whether it is live, is ERR_TAKEOVER_PATH_UNSAFE.
 */
export function isSocketLive(socketPath: string): boolean {
  try {
    native.close(native.unixConnect(socketPath));
    return true;
  } catch (error) {
    const code = errorCode(error);
    if (code === 'ECONNREFUSED' || code === 'ENOENT') return false;
    if (code === 'EPROTOTYPE' || code === 'EAGAIN') return true;
    if (code === 'EACCES' || code === 'EPERM') {
      let owner = '';
      try {
        owner = ` of uid ${fs.lstatSync(socketPath).uid}`;
      } catch {
        // Gone meanwhile: the message goes without the owner.
      }
      throw new TakeoverError(ErrorCodes.PATH_UNSAFE, `${socketPath} is a socket${owner}, which this user may not connect to (${code})`, {
        cause: error,
      });
    }
    throw systemError(`connect to ${socketPath}`, error);
  }
}

/**
 * Creates the channel socket at the path, mode 0600, inside the verified directory. A socket file
 * of ours that nobody listens on is stale (its server died) and is replaced; a live one is
 * somebody else's server; anything else is left alone and refused.
 */
export function createChannelFd(channelPath: string): number {
  return inChannelDirectory(channelPath, (dirFd, name) => {
    const stat = native.statAt(dirFd, name);
    if (stat !== null) {
      assertOwnSocket(channelPath, dirFd, name, stat);
      let live = true;
      try {
        native.close(native.unixConnectAt(dirFd, name));
      } catch (error) {
        const code = errorCode(error);
        if (code === 'ECONNREFUSED' || code === 'ENOENT') live = false;
        else if (code !== 'EAGAIN')
          throw unusableSocket(channelPath, dirFd, name, error) ?? systemError(`connect to ${channelPath}`, error);
      }
      if (live) {
        throw new TakeoverError(
          ErrorCodes.CHANNEL_IN_USE,
          `a server already listens on the takeover path ${channelPath}; take it over instead`,
        );
      }
      try {
        native.removeSocketAt(dirFd, name);
      } catch (error) {
        throw unusableSocket(channelPath, dirFd, name, error) ?? systemError(`unlink ${channelPath}`, error);
      }
    }
    try {
      return native.unixListenAt(dirFd, name, 'seqpacket', CHANNEL_BACKLOG, 0o600);
    } catch (error) {
      if (errorCode(error) === 'EADDRINUSE') {
        throw unsafe(`${channelPath} appeared while the channel was being created; something else uses this path`);
      }
      throw systemError(`listen on ${channelPath}`, error);
    }
  });
}

/**
 * Removes the channel's socket file if it is still a socket of this user, and nothing else
 * (not a file or link put there since, not another user's socket). Returns whether it did.
 * Throws ERR_TAKEOVER_PATH_UNSAFE if the directory is no longer safe: then nothing is removed.
 */
export function removeChannelPath(channelPath: string): boolean {
  return inChannelDirectory(channelPath, (dirFd, name) => {
    try {
      return native.removeSocketAt(dirFd, name);
    } catch (error) {
      const code = errorCode(error);
      if (code === 'ENOTSOCK' || code === 'EPERM') return false;
      throw systemError(`unlink ${channelPath}`, error);
    }
  });
}

/**
 * Emits each kind of warning at most once per {@link WARNING_INTERVAL_MS}; the ones held back
 * are summed up in one warning at the end of the interval. A flood of refused connections
 * would otherwise become a flood of log lines.
 */
export class WarningLimiter {
  private readonly kinds = new Map<string, { until: number; held: number; last?: TakeoverError; timer?: NodeJS.Timeout }>();

  constructor(private readonly emit: (error: TakeoverError) => void) {}

  report(kind: string, error: TakeoverError): void {
    const now = performance.now();
    const state = this.kinds.get(kind);
    if (state === undefined || now >= state.until) {
      this.kinds.set(kind, { until: now + WARNING_INTERVAL_MS, held: 0 });
      this.emit(error);
      return;
    }
    state.held++;
    state.last = error;
    state.timer ??= setTimeout(() => this.flush(kind), state.until - now).unref();
  }

  /** Emits what is held back now (the listener is closing). */
  flushAll(): void {
    for (const kind of [...this.kinds.keys()]) this.flush(kind);
  }

  private flush(kind: string): void {
    const state = this.kinds.get(kind);
    if (state === undefined) return;
    clearTimeout(state.timer);
    this.kinds.delete(kind);
    if (state.held === 0 || state.last === undefined) return;
    // A new interval starts with the summary: a flood that goes on gives one line per interval.
    this.kinds.set(kind, { until: performance.now() + WARNING_INTERVAL_MS, held: 0 });
    const last = state.last;
    this.emit(
      new TakeoverError(last.code, `${state.held} more like this in the last ${WARNING_INTERVAL_MS} ms, the last: ${last.message}`, {
        cause: last,
        reason: last.reason,
      }),
    );
  }
}

/**
 * Accepts successors on a listening channel fd, which it owns from then on. At most
 * {@link MAX_OPEN_CHANNELS} of its channels are open at once: each refused one lingers until its
 * peer has read the ABORT, and a peer opening connections in a loop would otherwise exhaust this
 * process's fds. Connections beyond that are closed at once; a real successor retries.
 * `onError` gets warnings: accept failures, connections dropped that way, and channels that fail
 * before their HELLO (nobody else reports those: no takeover has started), each kind rate-limited.
 */
export class ChannelListener {
  readonly fd: number;
  private readonly poller: native.Poller;
  private readonly open = new Set<Channel>();
  private readonly warnings: WarningLimiter;
  private closed = false;
  private accepting = false;

  constructor(fd: number, onChannel: (channel: Channel) => void, onError: (error: TakeoverError) => void) {
    this.fd = fd;
    this.warnings = new WarningLimiter(onError);
    this.poller = native.poll(fd, (status) => {
      if (this.closed) return;
      if (status < 0) {
        this.warnings.report('accept', systemError('takeover channel accept', status));
        return;
      }
      for (;;) {
        let accepted: number;
        try {
          accepted = native.accept(fd);
        } catch (error) {
          // Out of fds (EMFILE) and the like: the poll is level-triggered and would fire again
          // at once, so back off and let the successor wait in the backlog meanwhile.
          this.warnings.report('accept', systemError('takeover channel accept', error));
          this.poller.stop();
          setTimeout(() => this.setAccepting(this.accepting), ACCEPT_RETRY_MS).unref();
          return;
        }
        if (accepted < 0) return;
        if (this.open.size >= MAX_OPEN_CHANNELS) {
          this.drop(accepted);
          continue;
        }
        let channel: Channel;
        try {
          channel = new Channel(accepted);
        } catch (error) {
          this.warnings.report('accept', systemError('takeover channel', error));
          continue;
        }
        this.watch(channel);
        onChannel(channel);
      }
    });
  }

  /** Start or stop accepting; while stopped, successors wait in the backlog. */
  setAccepting(on: boolean): void {
    this.accepting = on;
    if (this.closed) return;
    if (on) this.poller.start(true, false);
    else this.poller.stop();
  }

  /** Closes this process's fd. The path stays: a successor may hold the same socket. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller.close();
    native.close(this.fd);
    this.warnings.flushAll();
  }

  private drop(fd: number): void {
    let peer = '';
    try {
      const { pid, uid } = native.peerCredentials(fd);
      peer = ` from pid ${pid} (uid ${uid})`;
    } catch {
      // Only for the message.
    }
    native.close(fd);
    this.warnings.report(
      'dropped',
      new TakeoverError(ErrorCodes.BUSY, `${MAX_OPEN_CHANNELS} takeover channel connections are open: closed a new one${peer} at once`),
    );
  }

  /** Registered before the session's own listeners, so it sees the first frame first. */
  private watch(channel: Channel): void {
    this.open.add(channel);
    channel.once('close', () => this.open.delete(channel));
    const who = `pid ${channel.peer.pid} (uid ${channel.peer.uid})`;
    let greeted = false;
    channel.once('frame', (frame) => {
      greeted = true;
      if (frame.type !== 'hello') {
        this.warnings.report(
          'before-hello',
          new TakeoverError(ErrorCodes.PROTOCOL, `takeover channel from ${who}: a ${frame.type} frame before HELLO`),
        );
      }
    });
    channel.on('error', (error) => {
      // A peer that connects and goes away is a liveness probe, not a fault.
      if (greeted || error.code === ErrorCodes.PEER_CLOSED) return;
      this.warnings.report(
        'before-hello',
        new TakeoverError(error.code, `takeover channel from ${who}, before HELLO: ${error.message}`, {
          cause: error,
          reason: error.reason,
        }),
      );
    });
  }
}
