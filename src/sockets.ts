/**
 * Everything that touches Node's socket internals lives here, so a Node upgrade that changes
 * them breaks one module and its tests (test/unit/sockets.test.ts), not the whole library.
 *
 * Used internals, each checked against Node 20's lib/net.js, lib/events.js and lib/internal/streams:
 * - `socket._handle.fd`, `server._handle.fd`: the kernel fd behind a libuv handle.
 * - `socket._handle.readStop()` and `.reading`: `pause()` alone keeps libuv reading.
 * - `socket._handle.writeQueueSize`: bytes libuv accepted but the kernel has not taken yet.
 * - `new net.Socket({ fd, manualStart: true })`: wraps an fd without reading from it.
 * - `new net.Socket({ noDelay })` sets the socket's record of TCP_NODELAY (`kSetNoDelay`), which
 *   `setNoDelay()` compares with before it calls the handle; only a connect() applies it to the fd.
 *   `socket[kSetNoDelay] = undefined`, the symbol found by its description, makes both
 *   `setNoDelay(true)` and `setNoDelay(false)` call the handle.
 * - `new net.Socket({ handle })` with a handle built by `socket._handle.constructor` (libuv's TCP
 *   or Pipe wrap, type 0: `TCPConstants.SOCKET`, `PipeConstants.SOCKET`) and its `open(fd)`.
 * - `socket._handle.close()` with no callback, just before `socket.destroy()`: libuv's handle wrap
 *   ignores a second close() and its callback (src/handle_wrap.cc), so destroy() emits no 'close'
 *   and leaves no closure on the handle, yet still records bytesRead and updates the stream state,
 *   the timers and `server._connections`.
 * - `socket._events.data`: EventEmitter's slot for the 'data' listeners, emptied and refilled by a store.
 * - `socket._readableState.ended`: EOF has been read, even if 'end' was not emitted yet.
 * - `socket._readableState.decoder.lastNeed`: bytes of a character a StringDecoder still waits for.
 * - `server._connections` and `socket.server`: what Node's own accept path maintains.
 */
import * as net from 'node:net';
import { getSystemErrorName } from 'node:util';

interface Handle {
  fd: number;
  close(): void;
  reading?: boolean;
  readStop?: () => number;
  writeQueueSize?: number;
}

type WriteCallback = (error?: Error | null) => void;
interface WritableChunk {
  chunk: unknown;
  encoding: BufferEncoding;
}

interface SocketInternals {
  _handle: Handle | null;
  _readableState: { ended: boolean; reading: boolean; decoder: { lastNeed: number } | null };
  _events: { data?: unknown };
  _read(size: number): void;
  _write(chunk: unknown, encoding: BufferEncoding, cb: WriteCallback): void;
  _writev?(chunks: WritableChunk[], cb: WriteCallback): void;
  writableBuffer?: WritableChunk[];
  server: net.Server | null;
  _server: net.Server | null;
}

interface ServerInternals {
  _handle: Handle | null;
  _connections: number;
}

const internals = (socket: net.Socket) => socket as unknown as SocketInternals;

/** The fd of a listening server, or -1 when it is not listening. */
export function serverFd(server: net.Server): number {
  return (server as unknown as ServerInternals)._handle?.fd ?? -1;
}

/** The fd of a connected socket, or -1 when it has none (closed, or not a kernel socket). */
export function socketFd(socket: net.Socket): number {
  const fd = internals(socket)._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

/**
 * The write libuv holds for each tracked socket: its chunks, so that {@link freezeSocket} can
 * recover the part libuv has not written, and its completion, so that {@link releaseMoved} can
 * complete it successfully. Writable dispatches one `_write`/`_writev` at a time.
 */
interface PendingWrite {
  chunks: Buffer[];
  /** Completes the Writable's write once; later calls (libuv's own, after a release) do nothing. */
  complete: WriteCallback;
}
const inFlight = new WeakMap<net.Socket, PendingWrite>();

function toBuffer(chunk: unknown, encoding: BufferEncoding): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  return Buffer.from(String(chunk), encoding);
}

function pendingWrite(socket: net.Socket, chunks: Buffer[], cb: WriteCallback): WriteCallback {
  let done = false;
  const complete: WriteCallback = (error) => {
    if (done) return;
    done = true;
    if (inFlight.get(socket) === pending) inFlight.delete(socket);
    cb(error);
  };
  const pending = { chunks, complete };
  inFlight.set(socket, pending);
  return complete;
}

export function trackWrites(socket: net.Socket): void {
  const s = internals(socket);
  const write = s._write;
  s._write = function (chunk, encoding, cb) {
    write.call(this, chunk, encoding, pendingWrite(socket, [toBuffer(chunk, encoding)], cb));
  };
  const writev = s._writev;
  if (writev) {
    s._writev = function (chunks, cb) {
      writev.call(
        this,
        chunks,
        pendingWrite(
          socket,
          chunks.map((c) => toBuffer(c.chunk, c.encoding)),
          cb,
        ),
      );
    };
  }
}

/** What most connections carry (idle ones, both ways), shared: nothing writes into a Buffer of length 0. */
const NO_BYTES = Buffer.alloc(0);

/** The frozen socket's `_read`: the handle must not read; its bytes are the successor's. */
function readNothing(): void {}

/** Sockets that were flowing when frozen, so that {@link thawSocket} can restart them as they were. */
const flowingAtFreeze = new WeakSet<net.Socket>();

export type Frozen = { fate: 'moved'; input: Buffer; output: Buffer } | { fate: 'retained' } | { fate: 'closed' };

/**
 * Stops a socket in place and takes out what a successor needs to carry on exactly where this
 * process stops: the bytes read but not consumed, and the bytes written but not yet taken by
 * the kernel. After a 'moved' result the socket must be released with {@link releaseSocket}
 * in the same tick: libuv must not write the recovered bytes itself.
 *
 * A socket that has half-closed in either direction is 'retained': this process finishes it.
 */
export function freezeSocket(socket: net.Socket): Frozen {
  const s = internals(socket);
  const handle = s._handle;
  if (socket.destroyed || !handle) return { fate: 'closed' };
  if (s._readableState.ended || socket.writableEnded) return { fate: 'retained' };
  // After setEncoding() the buffered input is text and a StringDecoder may hold part of a
  // character: neither converts back to the exact bytes, so such a connection stays here.
  const decoder = s._readableState.decoder;
  if (decoder && (socket.readableLength > 0 || decoder.lastNeed > 0)) return { fate: 'retained' };

  if (socket.readableFlowing) flowingAtFreeze.add(socket);
  handle.readStop?.();
  handle.reading = false;
  socket.pause();
  // read() would restart the handle through _read() and hand the bytes to 'data' listeners;
  // neither may happen: the bytes belong to the successor now. The listeners are hidden for the
  // reads by a store to their existing slot, not removed and added back: a removal can turn the
  // events object into a dictionary (a young allocation that every scavenge copies until a full
  // GC) and tells the application's 'removeListener'/'newListener' listeners of a change that is none.
  s._read = readNothing;
  const events = s._events;
  const dataListeners = events.data;
  if (dataListeners !== undefined) events.data = undefined;
  // read() returns the whole buffer up to Node 24, one chunk at a time from Node 26 on.
  const chunks: Buffer[] = [];
  for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) chunks.push(chunk);
  if (dataListeners !== undefined) events.data = dataListeners;
  const input = chunks.length === 0 ? NO_BYTES : chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);

  const parts: Buffer[] = [];
  const queued = handle.writeQueueSize ?? 0;
  const inflight = inFlight.get(socket);
  if (inflight && queued > 0) {
    const all = Buffer.concat(inflight.chunks);
    parts.push(all.subarray(Math.max(0, all.length - queued)));
  }
  for (const { chunk, encoding } of s.writableBuffer ?? []) parts.push(toBuffer(chunk, encoding));
  // The output is taken: a write or end() from here on (a 'freeze' or 'release' listener) would
  // go out from this process after it, or be dropped by the release. Held until the release
  // reports it, or the thaw lets it through.
  heldUses.set(socket, { write: socket.write, end: socket.end, uses: [] });
  socket.write = holdWrite as typeof socket.write;
  socket.end = holdEnd as typeof socket.end;
  return { fate: 'moved', input, output: parts.length === 0 ? NO_BYTES : Buffer.concat(parts) };
}

/** A frozen socket's own write()/end() and the calls made to them while it was frozen. */
const heldUses = new WeakMap<
  net.Socket,
  { write: net.Socket['write']; end: net.Socket['end']; uses: { what: 'write' | 'end'; args: unknown[] }[] }
>();

function holdWrite(this: net.Socket, ...args: unknown[]): boolean {
  heldUses.get(this)!.uses.push({ what: 'write', args });
  return false;
}

function holdEnd(this: net.Socket, ...args: unknown[]): net.Socket {
  heldUses.get(this)!.uses.push({ what: 'end', args });
  return this;
}

/** Ends the freeze's hold: the calls it held are made again, in order, on the socket's write()/end() as they are now. */
function replayHeldUses(socket: net.Socket): void {
  const held = heldUses.get(socket);
  heldUses.delete(socket);
  for (const { what, args } of held?.uses ?? []) (socket[what] as (...a: unknown[]) => unknown).apply(socket, args);
}

/**
 * Undoes {@link freezeSocket} for a socket whose wave never left this process (the channel broke
 * as it was sent): the input goes back ahead of anything new, and reading resumes as it was.
 * Nothing was lost: the output never left libuv's queue and the Writable's buffer.
 */
export function thawSocket(socket: net.Socket, input: Buffer): void {
  const s = internals(socket);
  delete (s as Partial<SocketInternals>)._read;
  // The freeze's read() called the no-op _read, which left the stream waiting for a read that
  // never comes: it would never ask the handle again, and the connection would go deaf.
  s._readableState.reading = false;
  if (input.length > 0) socket.unshift(input);
  if (flowingAtFreeze.delete(socket)) socket.resume();
  const held = heldUses.get(socket);
  if (!held) return;
  socket.write = held.write;
  socket.end = held.end;
  replayHeldUses(socket);
}

/** Reports a write()/end() on a connection that moved, and returns the error to give its callback. */
export type LateUse = (socket: net.Socket, what: 'write' | 'end') => Error;

/**
 * The reporter of each released socket. What a release installs on a socket is shared by all of
 * them (module functions, `this` is the socket): a per-socket closure would be a young object
 * hanging off an old socket, which every scavenge copies, then promotes, until a full GC.
 */
const lateUses = new WeakMap<net.Socket, LateUse>();

function completeAtOnce(_chunk: unknown, _encoding: BufferEncoding, cb: WriteCallback): void {
  cb();
}

function completeAllAtOnce(_chunks: WritableChunk[], cb: WriteCallback): void {
  cb();
}

function lateWrite(this: net.Socket, _chunk: unknown, encoding?: unknown, cb?: unknown): boolean {
  const callback = typeof encoding === 'function' ? encoding : cb;
  const error = lateUses.get(this)!(this, 'write');
  if (typeof callback === 'function') process.nextTick(callback as WriteCallback, error);
  return false;
}

function lateEnd(this: net.Socket, chunk?: unknown): net.Socket {
  lateUses.get(this)!(this, chunk === undefined || typeof chunk === 'function' ? 'end' : 'write');
  return this;
}

/**
 * Drops this process's copy of a connection another process now serves: closes the fd only.
 * Never `end()`: that would send FIN on the connection the successor is serving.
 *
 * The application's view stays truthful. The writes it made before the freeze travelled with
 * the connection, so their callbacks succeed. The socket emits `'moved'`, and never `'close'`,
 * `'end'` or `'error'` for the move. A later `write()` or `end()` cannot reach the client from
 * here: `onLateUse` reports it (its error goes to the write's callback), so it is never silently lost.
 * Call it in the same tick as {@link freezeSocket}: libuv must not write the recovered bytes itself.
 */
export function releaseMoved(socket: net.Socket, onLateUse: LateUse): void {
  const s = internals(socket);
  s._write = completeAtOnce;
  s._writev = completeAllAtOnce;
  while (socket.writableCorked > 0) socket.uncork();
  // Completing the write libuv holds lets the Writable pass its buffer through the no-ops above,
  // so every callback succeeds; libuv's own completion, when the handle closes, is ignored.
  inFlight.get(socket)?.complete(null);
  lateUses.set(socket, onLateUse);
  // Closed here without a callback, the handle is already closing when destroy() closes it with
  // one: libuv's wrap ignores a second close() and its callback, so destroy() neither emits
  // 'close' nor leaves a closure on the handle. destroy() still does the rest: the stream state,
  // bytesRead, the timers, and the server's count of connections.
  s._handle?.close();
  socket.destroy();
  socket.write = lateWrite as typeof socket.write;
  socket.end = lateEnd as typeof socket.end;
  replayHeldUses(socket);
  socket.emit('moved');
}

/** Drops a copy of a connection that never started in this process (its fd only, no FIN). */
export function dropCopy(socket: net.Socket): void {
  socket.destroy();
}

/** What Node's accept path would give a socket of this server (lib/net.js onconnection). */
export interface AcceptOptions {
  allowHalfOpen: boolean;
  pauseOnConnect: boolean;
  highWaterMark: number | undefined;
  noDelay: boolean;
  keepAlive: boolean;
  /** Seconds, as net.Server stores it. */
  keepAliveInitialDelay: number;
}

export function acceptOptions(server: net.Server): AcceptOptions {
  const s = server as unknown as Partial<AcceptOptions>;
  return {
    allowHalfOpen: s.allowHalfOpen === true,
    pauseOnConnect: s.pauseOnConnect === true,
    highWaterMark: s.highWaterMark,
    noDelay: s.noDelay === true,
    keepAlive: s.keepAlive === true,
    keepAliveInitialDelay: s.keepAliveInitialDelay ?? 0,
  };
}

/** A libuv stream handle class (TCP or Pipe wrap), as Node's own accept path constructs it. */
type HandleClass = new (type: number) => Handle & { open(fd: number): number };
/** `TCPConstants.SOCKET` and `PipeConstants.SOCKET`: a connection, not a listener. */
const CONNECTION_HANDLE = 0;
/**
 * The handle class of each kind of connection, from the first socket Node wrapped from an fd.
 * `new net.Socket({ fd })` asks libuv what the fd is (`guessHandleType`) for every socket: about
 * a third of the cost of a wrap; the caller has checked the fd already.
 */
const handleClasses = new Map<'tcp' | 'unix', HandleClass>();

/**
 * Wraps an inherited connection fd without reading from it: the predecessor still serves it.
 * The stream options are fixed at construction, so they come from the server that will own the
 * socket. `kind` must be what the fd is (the caller checked it: a TCP or a Unix stream socket).
 * `hasNoDelay`: the fd has TCP_NODELAY already (the option lives on the open file description,
 * which came with the fd), so the socket records it as set and needs no setsockopt for it, not
 * even when the application calls `setNoDelay(true)`, while its `setNoDelay(false)` still clears it.
 * That holds while nothing else changes the option: see {@link forgetNoDelay} for the move.
 * Throws a system error (`code`) when libuv cannot open the fd.
 */
export function wrapInherited(fd: number, kind: 'tcp' | 'unix', options: AcceptOptions, hasNoDelay: boolean): net.Socket {
  const stream = {
    readable: true,
    writable: true,
    manualStart: true,
    // Sets the socket's record of TCP_NODELAY (Node's kSetNoDelay), with no system call: Node
    // 20 to 26 apply it only when they connect a socket themselves, which this one never is.
    noDelay: hasNoDelay,
    allowHalfOpen: options.allowHalfOpen,
    readableHighWaterMark: options.highWaterMark,
    writableHighWaterMark: options.highWaterMark,
  };
  const Handle = handleClasses.get(kind);
  let socket: net.Socket;
  if (Handle) {
    const handle = new Handle(CONNECTION_HANDLE);
    const status = handle.open(fd);
    if (status < 0) {
      const code = getSystemErrorName(status);
      throw Object.assign(new Error(`open ${code}: fd ${fd}`), { code, errno: status, syscall: 'open' });
    }
    socket = new net.Socket({ handle, ...stream } as net.SocketConstructorOpts);
  } else {
    socket = new net.Socket({ fd, ...stream } as net.SocketConstructorOpts);
    handleClasses.set(kind, internals(socket)._handle!.constructor as HandleClass);
  }
  if (options.noDelay && !hasNoDelay) socket.setNoDelay(true);
  if (options.keepAlive) socket.setKeepAlive(true, options.keepAliveInitialDelay * 1000);
  return socket;
}

/** Node's `kSetNoDelay`, from the first socket {@link forgetNoDelay} is given. */
let noDelayRecord: symbol | undefined;

/**
 * Makes the socket's record of TCP_NODELAY unknown, so that the application's next
 * `setNoDelay()`, either way, reaches the fd: the old process's application may have changed
 * the option after the wrap, while the connection was still its own. Costs no system call.
 */
export function forgetNoDelay(socket: net.Socket): void {
  noDelayRecord ??= Object.getOwnPropertySymbols(socket).find((s) => s.description === 'kSetNoDelay');
  if (noDelayRecord) (socket as unknown as Record<symbol, unknown>)[noDelayRecord] = undefined;
}

/** Writes the predecessor's unsent output, then puts its unread input back ahead of anything new. */
export function replayCarried(socket: net.Socket, input: Buffer, output: Buffer): void {
  if (output.length > 0) socket.write(output);
  if (input.length > 0) socket.unshift(input);
}

/**
 * Makes an inherited socket live in this process as Node's accept path would: counted by its
 * server, `'connection'` emitted, reading started unless the server pauses on connect.
 */
export function startInherited(socket: net.Socket, server: net.Server, beforeConnection: () => void): void {
  const s = internals(socket);
  (server as unknown as ServerInternals)._connections++;
  s.server = server;
  s._server = server;
  beforeConnection();
  server.emit('connection', socket);
  if (acceptOptions(server).pauseOnConnect) socket.pause();
  else socket.read(0);
}

/** Stops accepting on a server without touching its connections (http.Server's close() would drop idle keep-alive ones). */
export function stopAccepting(server: net.Server): void {
  if (serverFd(server) >= 0) net.Server.prototype.close.call(server);
}

/** A TLS server's sessions live in OpenSSL inside this process: they cannot move. */
export function isTlsServer(server: net.Server): boolean {
  return typeof (server as unknown as { setSecureContext?: unknown }).setSecureContext === 'function';
}
