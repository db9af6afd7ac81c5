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

function unsafe(message: string): TakeoverError {
  return new TakeoverError(ErrorCodes.PATH_UNSAFE, message);
}

/**
 * Refuses a directory where another user could swap the socket file for their own: one that
 * others can write, unless it is sticky (like /tmp), where only the owner may replace a file.
 * Who may connect is checked separately, on every connection, with SO_PEERCRED.
 */
export function checkChannelPath(channelPath: string): void {
  if (typeof channelPath !== 'string' || channelPath.length === 0) {
    throw new TakeoverError(ErrorCodes.INVALID_OPTION, 'the takeover path must be a non-empty string');
  }
  // sun_path holds 108 bytes including the terminating NUL.
  if (Buffer.byteLength(channelPath) > 107) {
    throw new TakeoverError(ErrorCodes.INVALID_OPTION, `the takeover path is longer than 107 bytes: ${channelPath}`);
  }
  const dir = path.dirname(path.resolve(channelPath));
  let stat: fs.Stats;
  try {
    stat = fs.statSync(dir);
  } catch (error) {
    throw unsafe(`the takeover path's directory ${dir} cannot be used: ${(error as NodeJS.ErrnoException).code}`);
  }
  if (!stat.isDirectory()) throw unsafe(`${dir} is not a directory`);
  const uid = process.getuid!();
  if (stat.uid !== uid && stat.uid !== 0) throw unsafe(`${dir} belongs to uid ${stat.uid}, not to this user or root`);
  const othersCanWrite = (stat.mode & 0o022) !== 0;
  const sticky = (stat.mode & 0o1000) !== 0;
  if (othersCanWrite && !sticky) throw unsafe(`${dir} can be written by other users (mode ${(stat.mode & 0o7777).toString(8)})`);
}

/** Before replacing a stale socket file: it must be a socket of ours, nothing else. */
export function checkReplaceable(channelPath: string): void {
  const uid = process.getuid!();
  let file: fs.Stats;
  try {
    file = fs.lstatSync(channelPath);
  } catch {
    return;
  }
  if (!file.isSocket()) throw unsafe(`${channelPath} exists and is not a socket`);
  if (file.uid !== uid) throw unsafe(`${channelPath} belongs to uid ${file.uid}, not to this user`);
}

/** Connects to whoever listens on the path; ERR_TAKEOVER_NO_PREDECESSOR when nobody does. */
export function connectChannel(channelPath: string): Channel {
  let fd: number;
  try {
    fd = native.unixConnect(channelPath);
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED') {
      throw new TakeoverError(ErrorCodes.NO_PREDECESSOR, `nobody listens on the takeover path ${channelPath} (${code})`, {
        cause: error,
      });
    }
    throw systemError(`connect to ${channelPath}`, error);
  }
  return new Channel(fd);
}

/**
 * True when any live socket is bound at the path, whatever its type: our connect is
 * SOCK_SEQPACKET, and the kernel answers EPROTOTYPE for a live socket of another type (a stale
 * file gives ECONNREFUSED first).
 */
export function isSocketLive(socketPath: string): boolean {
  try {
    native.close(native.unixConnect(socketPath));
    return true;
  } catch (error) {
    const code = (error as { code?: string }).code;
    return code !== 'ECONNREFUSED' && code !== 'ENOENT';
  }
}

/**
 * Creates the channel socket at the path, mode 0600. A socket file that nobody listens on is
 * stale (its server died) and is replaced; a live one is somebody else's server.
 */
export function createChannelFd(channelPath: string): number {
  checkChannelPath(channelPath);
  checkReplaceable(channelPath);
  if (fs.existsSync(channelPath)) {
    if (isSocketLive(channelPath)) {
      throw new TakeoverError(
        ErrorCodes.CHANNEL_IN_USE,
        `a server already listens on the takeover path ${channelPath}; take it over instead`,
      );
    }
    fs.unlinkSync(channelPath);
  }
  let fd: number;
  try {
    fd = native.unixListen(channelPath, 'seqpacket', CHANNEL_BACKLOG);
  } catch (error) {
    throw systemError(`listen on ${channelPath}`, error);
  }
  try {
    // bind() honours the umask (022 leaves the socket unwritable, so unconnectable, for others);
    // 0600 makes owner-only explicit. SO_PEERCRED is checked on every connection regardless.
    fs.chmodSync(channelPath, 0o600);
  } catch (error) {
    native.close(fd);
    throw systemError(`chmod ${channelPath}`, error);
  }
  return fd;
}

/** Accepts successors on a listening channel fd, which it owns from then on. */
export class ChannelListener {
  readonly fd: number;
  private readonly poller: native.Poller;
  private closed = false;
  private accepting = false;

  constructor(fd: number, onChannel: (channel: Channel) => void, onError: (error: TakeoverError) => void) {
    this.fd = fd;
    this.poller = native.poll(fd, (status) => {
      if (this.closed) return;
      if (status < 0) {
        onError(systemError('takeover channel accept', status));
        return;
      }
      for (;;) {
        let accepted: number;
        try {
          accepted = native.accept(fd);
        } catch (error) {
          // Out of fds (EMFILE) and the like: the poll is level-triggered and would fire again
          // at once, so back off and let the successor wait in the backlog meanwhile.
          onError(systemError('takeover channel accept', error));
          this.poller.stop();
          setTimeout(() => this.setAccepting(this.accepting), ACCEPT_RETRY_MS).unref();
          return;
        }
        if (accepted < 0) return;
        let channel: Channel;
        try {
          channel = new Channel(accepted);
        } catch (error) {
          onError(systemError('takeover channel', error));
          continue;
        }
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
  }
}
