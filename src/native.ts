/**
 * Typed access to the `takeover` native addon: the few syscalls JS cannot make.
 *
 * This is the only module that loads the addon. Every function works on raw file
 * descriptors (plain numbers); the TSDoc of each says who owns the fds it returns
 * and who must close them. Rules that apply throughout:
 *
 * - Every fd this module creates is non-blocking and close-on-exec.
 * - {@link close} is only for fds that libuv does not own. Once an fd has been
 *   wrapped (`new net.Socket({ fd })`, `server.listen({ fd })`), release it through
 *   the Node object (`destroy()` / `close()`), never through {@link close}.
 * - System call failures throw `Error`s shaped like Node's system errors:
 *   `code` (e.g. `'ECONNREFUSED'`), `errno` (negative), `syscall`, and the message
 *   `` `${syscall} ${code}` ``. Wrong argument types throw `TypeError` with code
 *   `'ERR_INVALID_ARG_TYPE'`; out-of-range numbers throw `RangeError` with code
 *   `'ERR_OUT_OF_RANGE'`.
 *
 * node-gyp-build finds the addon under the package root: build/Release, then build/Debug (a build
 * from source), then the prebuild in prebuilds/ that matches this platform, architecture and libc.
 * The environment variable `SOCKET_TAKEOVER_ADDON` names another `.node` file instead.
 * Importing this module throws an Error with code `'ERR_TAKEOVER_ADDON_LOAD'` when the addon
 * cannot be loaded.
 *
 * @module
 */
import { readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getSystemErrorName } from 'node:util';
import { ErrorCodes, TakeoverError } from './errors.js';

/** Credentials of the process at the other end of a Unix socket (`SO_PEERCRED`). */
export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

/**
 * One message read from a SOCK_SEQPACKET socket.
 *
 * `data.length === 0 && fds.length === 0` means the peer closed (EOF): a zero-length
 * message from a peer that did not close throws `ERR_EMPTY_MESSAGE` instead (see
 * {@link receiveMessage}), and {@link sendMessage} refuses to send one.
 */
export interface ReceivedMessage {
  /** The message bytes (a copy; the caller owns it). */
  data: Buffer;
  /**
   * The fds that arrived with it, in the sender's order. They are new fds in this
   * process, close-on-exec, and owned by the caller: close each one with {@link close},
   * or hand it to a Node object that then owns it.
   */
  fds: number[];
}

/** What kind of socket an fd is (`SO_DOMAIN`, `SO_TYPE`, `SO_ACCEPTCONN`). */
export interface SocketInfo {
  domain: 'inet' | 'inet6' | 'unix' | 'other';
  type: 'stream' | 'seqpacket' | 'dgram' | 'other';
  /** True for a socket that `listen()` was called on. */
  listening: boolean;
}

/** A TCP socket's state (`TCP_INFO`), by the kernel's name; OTHER for one this module does not know. */
export type TcpState =
  | 'ESTABLISHED'
  | 'SYN_SENT'
  | 'SYN_RECV'
  | 'FIN_WAIT1'
  | 'FIN_WAIT2'
  | 'TIME_WAIT'
  | 'CLOSE'
  | 'CLOSE_WAIT'
  | 'LAST_ACK'
  | 'LISTEN'
  | 'CLOSING'
  | 'OTHER';

/**
 * Readiness watcher for one fd (a libuv `uv_poll_t` on this thread's loop).
 * The Poller does not own the fd: close the Poller first, then the fd.
 * Call the methods on the Poller itself: detached (`const { close } = poller`) or
 * called on another object, they throw TypeError `ERR_INVALID_THIS`.
 */
export interface Poller {
  /**
   * Watch for the given readiness (level-triggered: the callback fires on every
   * loop turn while the condition holds). Both false is the same as {@link Poller.stop}.
   * While started, the Poller keeps the process alive. Throws `ERR_POLLER_CLOSED` after close().
   */
  start(readable: boolean, writable: boolean): void;
  /** Stop watching. A stopped Poller does not keep the process alive. No-op after close(). */
  stop(): void;
  /**
   * Stop watching for good: the fd leaves the event loop at once, the callback is
   * released at once, and the libuv handle is freed once the Poller object is
   * garbage-collected. Idempotent, at any time after the first call.
   *
   * Required, and before the fd is closed. A Poller that is never closed is never
   * garbage-collected: it stays registered (and, while started, keeps the process alive)
   * until its thread exits, which closes it. It is deliberately not closed on collection,
   * because closing unregisters the fd number from the event loop, and by then that
   * number may belong to another socket.
   */
  close(): void;
}

interface Addon {
  unixListen(path: string, type: 'seqpacket' | 'stream', backlog: number): number;
  unixConnect(path: string): number;
  accept(fd: number): number;
  peerCredentials(fd: number): PeerCredentials;
  sendMessage(fd: number, data: Buffer, fds: readonly number[]): boolean;
  receiveMessage(fd: number, maxBytes: number): ReceivedMessage | null;
  poll(fd: number, onEvent: (status: number, readable: boolean, writable: boolean) => void): Poller;
  dup(fd: number): number;
  close(fd: number): void;
  growFdTable(highestFd: number): void;
  fdLimit(): { soft: number; hard: number };
  socketInfo(fd: number): SocketInfo;
  inspectSockets(fds: Int32Array, out: Int32Array): void;
  threadCpuMs(): number;
}

/** Names a `.node` file to load instead of the package's own build. */
const ADDON_ENV = 'SOCKET_TAKEOVER_ADDON';

/** The package root, from dist/native.js. */
const packageRoot = fileURLToPath(new URL('../', import.meta.url));

function load(): Addon {
  const require = createRequire(import.meta.url);
  const override = process.env[ADDON_ENV];
  let file: string;
  if (override) {
    // The override is the only candidate: falling back to another build would hide a wrong path.
    file = resolve(override);
  } else {
    try {
      file = (require('node-gyp-build') as NodeGypBuild).resolve(packageRoot);
    } catch (error) {
      throw addonLoadError(
        `no takeover addon built or prebuilt for this system under ${packageRoot} (build it with \`npm rebuild socket-takeover\`)`,
        error,
      );
    }
  }
  try {
    return require(file) as Addon;
  } catch (error) {
    const how = override ? `check ${ADDON_ENV}` : 'rebuild it with `npm rebuild socket-takeover`';
    throw addonLoadError(`cannot load the takeover addon at ${file} (${how})`, error);
  }
}

/** The part of node-gyp-build (no type declarations of its own) used here. */
interface NodeGypBuild {
  /** The path of the build that suits this process; throws when there is none. */
  resolve(dir: string): string;
}

/** `cause` keeps what `require` threw. */
function addonLoadError(message: string, cause: unknown): TakeoverError {
  return new TakeoverError(ErrorCodes.ADDON_LOAD, message, { cause });
}

const addon = load();

/**
 * The most fds one message can carry (the kernel's SCM_MAX_FD). native/takeover.c has its own
 * MAX_FDS; test/unit/native.test.ts checks that the addon takes exactly this many.
 */
export const MAX_FDS_PER_MESSAGE = 253;

/**
 * Create a Unix socket of the given type bound to `path` and listening.
 * Does not unlink a stale socket file or chmod anything: that is the caller's policy.
 *
 * @returns a listening fd owned by the caller (close it with {@link close}).
 * @throws system errors such as EADDRINUSE, EACCES, ENAMETOOLONG (path longer than 107 bytes);
 *   TypeError `ERR_INVALID_ARG_VALUE` for any other `type`.
 */
export function unixListen(path: string, type: 'seqpacket' | 'stream', backlog: number): number {
  return addon.unixListen(path, type, backlog);
}

/**
 * Connect a SOCK_SEQPACKET Unix socket to `path`. The connect completes at once.
 *
 * @returns a connected fd owned by the caller (close it with {@link close}).
 * @throws ENOENT (no such file), ECONNREFUSED (stale socket file, nobody listening),
 *   EAGAIN (the listener's backlog is full), and other system errors.
 */
export function unixConnect(path: string): number {
  return addon.unixConnect(path);
}

/**
 * Accept one pending connection on a listening Unix socket.
 *
 * @returns a new fd owned by the caller, or -1 when no connection is waiting.
 */
export function accept(fd: number): number {
  return addon.accept(fd);
}

/** The pid, uid and gid of the process that connected `fd`'s peer end (SO_PEERCRED). */
export function peerCredentials(fd: number): PeerCredentials {
  return addon.peerCredentials(fd);
}

/**
 * Send one message, with `fds` attached as SCM_RIGHTS when non-empty (MSG_NOSIGNAL:
 * a closed peer gives EPIPE, never SIGPIPE). The fds stay owned by the caller: the
 * receiver gets its own duplicates, so the caller may close its copies after a `true`.
 *
 * @returns true when the whole message was sent, false on EAGAIN (nothing was sent;
 *   wait for writability and retry).
 * @throws RangeError if `fds.length` exceeds {@link MAX_FDS_PER_MESSAGE}, or if both
 *   `data` and `fds` are empty (the receiver would read it as EOF); system errors such
 *   as EPIPE, ECONNRESET and ETOOMANYREFS (too many fds in flight for this user).
 */
export function sendMessage(fd: number, data: Buffer, fds: readonly number[]): boolean {
  return addon.sendMessage(fd, data, fds);
}

/**
 * Receive one message of at most `maxBytes` bytes, with any fds attached to it.
 *
 * @returns the message (see {@link ReceivedMessage} for fd ownership), or null when
 *   nothing is waiting (EAGAIN).
 * @throws Error with code `ERR_FDS_TRUNCATED` if the kernel could not deliver every fd
 *   (MSG_CTRUNC, typically RLIMIT_NOFILE reached), or `ERR_MESSAGE_TRUNCATED` if the
 *   message was longer than `maxBytes` (MSG_TRUNC), or `ERR_EMPTY_MESSAGE` for a
 *   zero-length message without fds (which would otherwise read as EOF). In each case
 *   the message is gone, every fd that did arrive has already been closed (their count
 *   is in the error's `closedFds` property), and the channel should be considered broken.
 */
export function receiveMessage(fd: number, maxBytes: number): ReceivedMessage | null {
  return addon.receiveMessage(fd, maxBytes);
}

/**
 * Watch `fd` for readiness on the event loop. The Poller starts stopped: call
 * {@link Poller.start}. `onEvent` gets `status` 0 with the ready directions, or a
 * negative errno (libuv then stops the Poller; e.g. -9 EBADF on a socket error).
 * A throw from `onEvent` becomes an 'uncaughtException'.
 *
 * The caller keeps owning `fd` and must {@link Poller.close} the Poller before closing it.
 */
export function poll(fd: number, onEvent: (status: number, readable: boolean, writable: boolean) => void): Poller {
  return addon.poll(fd, onEvent);
}

/**
 * Duplicate `fd` (F_DUPFD_CLOEXEC). The copy shares the open file (and so its
 * O_NONBLOCK flag) but is owned by the caller. Use it to keep a listener alive
 * while the `net.Server` that owns the original is closed.
 */
export function dup(fd: number): number {
  return addon.dup(fd);
}

/**
 * Close an fd that this process holds raw (from this module, or `dup`). Never use
 * it on an fd that libuv owns (a wrapped socket or server): that aborts or spins the loop.
 */
export function close(fd: number): void {
  addon.close(fd);
}

/**
 * Make the kernel grow this process's fd table to hold `highestFd` (capped below the
 * RLIMIT_NOFILE soft limit) in one step, before receiving many fds: growing it piecemeal
 * during recvmsg is slow in a multithreaded process. Opens and closes a temporary fd;
 * never touches fds in use.
 */
export function growFdTable(highestFd: number): void {
  addon.growFdTable(highestFd);
}

/** RLIMIT_NOFILE: how many fds this process may hold (Infinity when unlimited). */
export function fdLimit(): { soft: number; hard: number } {
  return addon.fdLimit();
}

/** CPU time of the event loop's thread, in ms (sub-µs resolution): work without the waits for a core. */
export function threadCpuMs(): number {
  return addon.threadCpuMs();
}

/**
 * Describe the socket behind `fd`.
 *
 * @throws ENOTSOCK if `fd` is not a socket, EBADF if it is not open.
 */
export function socketInfo(fd: number): SocketInfo {
  return addon.socketInfo(fd);
}

/** Numbers per fd in what the addon's inspectSockets writes, at these offsets (native/takeover.c, INSPECT_FIELDS). */
const FIELDS = 6;
const DOMAIN = 0;
const TYPE = 1;
const LISTENING = 2;
const TCP_STATE = 3;
const NO_DELAY = 4;
const ERRNO = 5;
/** The addon's codes, in its order. */
const DOMAINS: readonly SocketInfo['domain'][] = ['other', 'unix', 'inet', 'inet6'];
const TYPES: readonly SocketInfo['type'][] = ['other', 'stream', 'seqpacket', 'dgram'];
/** By the kernel's number (include/net/tcp_states.h), the same on every architecture. */
const TCP_STATES: readonly TcpState[] = [
  'OTHER',
  'ESTABLISHED',
  'SYN_SENT',
  'SYN_RECV',
  'FIN_WAIT1',
  'FIN_WAIT2',
  'TIME_WAIT',
  'CLOSE',
  'CLOSE_WAIT',
  'LAST_ACK',
  'LISTEN',
  'CLOSING',
];

/**
 * What each fd of a batch is, found by one addon call that builds no JS value per fd: the
 * successor checks every inherited connection with it, thousands per turn of the event loop.
 * Put the fds in {@link SocketInspection.fds}, call {@link SocketInspection.inspect}, then read
 * each fd's answers by its index; the strings are shared constants, none is allocated.
 * An fd that cannot be inspected (closed, negative, not a socket) throws nothing: its
 * {@link SocketInspection.error} names the errno and its other answers are 'other', false
 * or undefined. The fds stay the caller's.
 */
export class SocketInspection {
  /** The fds to inspect, from index 0. */
  readonly fds: Int32Array;
  private readonly out: Int32Array;

  /** Room for `capacity` fds at a time. */
  constructor(readonly capacity: number) {
    this.fds = new Int32Array(capacity);
    this.out = new Int32Array(capacity * FIELDS);
  }

  /** Inspects `fds[0]` to `fds[count - 1]`. Throws RangeError `ERR_OUT_OF_RANGE` beyond the capacity. */
  inspect(count: number): void {
    if (!Number.isInteger(count) || count < 0 || count > this.capacity) {
      throw Object.assign(new RangeError(`count must be an integer from 0 to ${this.capacity}, got ${count}`), {
        code: 'ERR_OUT_OF_RANGE',
      });
    }
    addon.inspectSockets(this.fds.subarray(0, count), this.out);
  }

  domain(i: number): SocketInfo['domain'] {
    return DOMAINS[this.out[i * FIELDS + DOMAIN]!] ?? 'other';
  }

  type(i: number): SocketInfo['type'] {
    return TYPES[this.out[i * FIELDS + TYPE]!] ?? 'other';
  }

  /** True for a socket that `listen()` was called on. */
  listening(i: number): boolean {
    return this.out[i * FIELDS + LISTENING] === 1;
  }

  /** The state of a TCP socket; undefined for any other fd. */
  tcpState(i: number): TcpState | undefined {
    const state = this.out[i * FIELDS + TCP_STATE]!;
    return state < 0 ? undefined : (TCP_STATES[state] ?? 'OTHER');
  }

  /** True for a TCP socket with TCP_NODELAY set. */
  noDelay(i: number): boolean {
    return this.out[i * FIELDS + NO_DELAY] === 1;
  }

  /** The code of the errno that stopped the inspection (`'EBADF'`, `'ENOTSOCK'`...); undefined when none did. */
  error(i: number): string | undefined {
    const errno = this.out[i * FIELDS + ERRNO]!;
    return errno === 0 ? undefined : getSystemErrorName(-errno);
  }
}

/**
 * How many fds this process has open right now (from /proc/self/fd, not counting
 * the one used to read it). For leak checks in tests and diagnostics.
 */
export function openFdCount(): number {
  return readdirSync('/proc/self/fd').length - 1;
}

/** What {@link statAt} found: the entry itself, never what a symlink points to. */
export interface EntryStat {
  type: 'socket' | 'file' | 'directory' | 'symlink' | 'other';
  /** Permission bits, setuid/setgid/sticky included (`st_mode & 0o7777`). */
  mode: number;
  uid: number;
}

// Declaration merging: the functions below, added to the interface the loader uses.
interface Addon {
  openDirAt(dirFd: number | null, name: string): number;
  statAt(dirFd: number, name: string): EntryStat | null;
  readlinkAt(dirFd: number, name: string): string;
  unixListenAt(dirFd: number, name: string, type: 'seqpacket' | 'stream', backlog: number, mode: number): number;
  unixConnectAt(dirFd: number, name: string): number;
  removeSocketAt(dirFd: number, name: string): boolean;
}

/*
 * The *At functions work inside a directory opened once (openDirAt) and verified by the
 * caller, so that no step looks a path up from the root again: see channel-listener.ts.
 * `name` is one path component (a '/' in it throws TypeError `ERR_INVALID_ARG_VALUE`).
 */

/**
 * Open the directory `name` in `dirFd` (null: the current directory, to open `'/'`) as an
 * O_PATH fd, without following a symlink (ENOTDIR for one). The fd can only name the
 * directory for the other *At functions; the caller owns it (close it with {@link close}).
 */
export function openDirAt(dirFd: number | null, name: string): number {
  return addon.openDirAt(dirFd, name);
}

/** lstat of `name` in `dirFd`, or of `dirFd` itself for `''`; null when there is no such entry. */
export function statAt(dirFd: number, name: string): EntryStat | null {
  return addon.statAt(dirFd, name);
}

/** The target of the symlink `name` in `dirFd`, as stored (possibly relative). */
export function readlinkAt(dirFd: number, name: string): string {
  return addon.readlinkAt(dirFd, name);
}

/**
 * Create a Unix socket file `name` in `dirFd`, with permission bits exactly `mode` from
 * its creation on, and listen on it. An existing entry, a symlink included, is EADDRINUSE:
 * nothing is followed or replaced. Names longer than about 80 bytes are ENAMETOOLONG
 * (bind goes through `/proc/self/fd/<dirFd>/<name>`, within sun_path's 108 bytes).
 *
 * @returns a listening fd owned by the caller (close it with {@link close}).
 */
export function unixListenAt(dirFd: number, name: string, type: 'seqpacket' | 'stream', backlog: number, mode: number): number {
  return addon.unixListenAt(dirFd, name, type, backlog, mode);
}

/**
 * Connect a SOCK_SEQPACKET socket to the socket file `name` in `dirFd`, whoever owns it,
 * never through a symlink.
 *
 * @returns a connected fd owned by the caller.
 * @throws ENOTSOCK when the entry is not a socket file (a symlink included), and
 *   {@link unixConnect}'s errors: ENOENT, ECONNREFUSED, EAGAIN, EACCES, EPROTOTYPE...
 */
export function unixConnectAt(dirFd: number, name: string): number {
  return addon.unixConnectAt(dirFd, name);
}

/**
 * Remove `name` from `dirFd` if it is a socket file owned by this process's effective uid.
 *
 * @returns true when removed, false when there was nothing.
 * @throws ENOTSOCK (not a socket file) or EPERM (another owner's socket): left in place.
 */
export function removeSocketAt(dirFd: number, name: string): boolean {
  return addon.removeSocketAt(dirFd, name);
}

// ---- TCP listeners in a SO_REUSEPORT group (pool workers) ----

interface Addon {
  tcpListenReusePort(address: string, port: number, backlog: number, ipv6Only: boolean): number;
}

/**
 * Create a TCP socket with SO_REUSEADDR and SO_REUSEPORT, bound to `address` (an IPv4 or IPv6
 * literal) and `port` (0: any free port) and listening with `backlog`, so that several processes
 * of this uid share the port, the kernel spreading new connections over them. An IPv6 socket
 * gets IPV6_V6ONLY = `ipv6Only` (`'::'` is dual-stack unless asked), as Node's `listen()` does.
 * Node 20 ignores `listen({ reusePort })`, and the option must be set before bind.
 *
 * @returns a listening fd owned by the caller: adopt it with `server.listen({ fd })`.
 * @throws system errors such as EADDRINUSE (the port is held without SO_REUSEPORT, or by
 *   another uid), EACCES (a privileged port), EADDRNOTAVAIL, EINVAL (not an IP literal).
 */
export function tcpListenReusePort(address: string, port: number, backlog: number, ipv6Only: boolean): number {
  return addon.tcpListenReusePort(address, port, backlog, ipv6Only);
}

// ---- systemd (src/systemd.ts) ----

interface Addon {
  sdNotify(socketPath: string, data: Buffer, fds: readonly number[], timeoutMs: number): void;
  setCloseOnExec(fd: number): void;
}

/**
 * Send one sd_notify(3) datagram to the service manager's socket: `socketPath` is
 * `$NOTIFY_SOCKET`, a path or an abstract name written `@name`. `fds` travel as SCM_RIGHTS
 * (for `FDSTORE=1`); they stay owned by the caller, the manager gets its own duplicates.
 * When the manager's receive queue is full, the call blocks until it has room, for at most
 * `timeoutMs` (as libsystemd's sd_notify waits, but bounded; 0 never waits).
 *
 * @throws system errors: ENOENT or ECONNREFUSED (nobody there), EAGAIN (the queue stayed full
 *   for `timeoutMs`; nothing was sent), EINVAL (a path that is neither absolute nor
 *   `@`-abstract), ENAMETOOLONG; RangeError for empty data or more than 253 fds.
 */
export function sdNotify(socketPath: string, data: Buffer, fds: readonly number[], timeoutMs: number): void {
  addon.sdNotify(socketPath, data, fds, timeoutMs);
}

/** Mark an inherited fd close-on-exec (FD_CLOEXEC), as sd_listen_fds(3) does. Throws EBADF if it is not open. */
export function setCloseOnExec(fd: number): void {
  addon.setCloseOnExec(fd);
}
