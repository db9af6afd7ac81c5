/**
 * Everything that touches Node's socket internals lives here, so a Node upgrade that changes
 * them breaks one module and its tests (test/sockets.test.ts), not the whole library.
 *
 * Used internals, each checked against Node 20's lib/net.js and lib/internal/streams:
 * - `socket._handle.fd`, `server._handle.fd`: the kernel fd behind a libuv handle.
 * - `socket._handle.readStop()` and `.reading`: `pause()` alone keeps libuv reading.
 * - `socket._handle.writeQueueSize`: bytes libuv accepted but the kernel has not taken yet.
 * - `new net.Socket({ fd, manualStart: true })`: wraps an fd without reading from it.
 * - `socket._readableState.ended`: EOF has been read, even if 'end' was not emitted yet.
 * - `socket._readableState.decoder.lastNeed`: bytes of a character a StringDecoder still waits for.
 * - `server._connections` and `socket.server`: what Node's own accept path maintains.
 */
import * as net from 'node:net';

interface Handle {
  fd: number;
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
  _readableState: { ended: boolean; decoder: { lastNeed: number } | null };
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
 * Remembers the chunks a socket has handed to libuv and not yet seen completed, so that
 * {@link freezeSocket} can recover the part libuv has not written. Installed on every
 * connection the library tracks; Writable dispatches one `_write`/`_writev` at a time.
 */
const inFlight = new WeakMap<net.Socket, Buffer[]>();

function toBuffer(chunk: unknown, encoding: BufferEncoding): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  return Buffer.from(String(chunk), encoding);
}

export function trackWrites(socket: net.Socket): void {
  const s = internals(socket);
  const write = s._write;
  s._write = function (chunk, encoding, cb) {
    inFlight.set(socket, [toBuffer(chunk, encoding)]);
    write.call(this, chunk, encoding, (error) => {
      inFlight.delete(socket);
      cb(error);
    });
  };
  const writev = s._writev;
  if (writev) {
    s._writev = function (chunks, cb) {
      inFlight.set(socket, chunks.map((c) => toBuffer(c.chunk, c.encoding)));
      writev.call(this, chunks, (error) => {
        inFlight.delete(socket);
        cb(error);
      });
    };
  }
}

export type Frozen =
  | { fate: 'moved'; input: Buffer; output: Buffer }
  | { fate: 'retained' }
  | { fate: 'closed' };

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

  handle.readStop?.();
  handle.reading = false;
  socket.pause();
  // read() would restart the handle through _read() and hand the bytes to 'data' listeners;
  // neither may happen: the bytes belong to the successor now.
  const dataListeners = socket.rawListeners('data') as ((...args: unknown[]) => void)[];
  socket.removeAllListeners('data');
  s._read = () => {};
  let input: Buffer = Buffer.alloc(0);
  const buffered = socket.read() as Buffer | null;
  if (buffered !== null) input = buffered as Buffer;
  for (const listener of dataListeners) socket.on('data', listener);

  const parts: Buffer[] = [];
  const queued = handle.writeQueueSize ?? 0;
  const inflight = inFlight.get(socket);
  if (inflight && queued > 0) {
    const all = Buffer.concat(inflight);
    parts.push(all.subarray(Math.max(0, all.length - queued)));
  }
  for (const { chunk, encoding } of s.writableBuffer ?? []) parts.push(toBuffer(chunk, encoding));
  return { fate: 'moved', input, output: Buffer.concat(parts) };
}

/**
 * Drops this process's copy of a socket another process now owns: closes the fd only.
 * Never `end()`: that would send FIN on the connection the successor is serving.
 */
export function releaseSocket(socket: net.Socket): void {
  inFlight.delete(socket);
  socket.destroy();
}

/**
 * Wraps an inherited connection fd without reading from it: the predecessor still serves it.
 * The 28-43 us this costs per socket is paid during pre-copy, not during the pause.
 */
export function wrapInherited(fd: number): net.Socket {
  return new net.Socket({ fd, readable: true, writable: true, manualStart: true } as net.SocketConstructorOpts);
}

/**
 * Makes an inherited socket live in this process, as Node's accept path would, with the
 * predecessor's unsent output first and its unread input ahead of anything new.
 */
export function startInherited(
  socket: net.Socket,
  server: net.Server,
  input: Buffer,
  output: Buffer,
  beforeConnection: () => void,
): void {
  if (output.length > 0) socket.write(output);
  if (input.length > 0) socket.unshift(input);
  const s = internals(socket);
  (server as unknown as ServerInternals)._connections++;
  s.server = server;
  s._server = server;
  beforeConnection();
  server.emit('connection', socket);
  socket.read(0);
}

/** Stops accepting on a server without touching its connections (http.Server's close() would drop idle keep-alive ones). */
export function stopAccepting(server: net.Server): void {
  if (serverFd(server) >= 0) net.Server.prototype.close.call(server);
}
