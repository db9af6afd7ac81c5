/**
 * The connections a process serves through the servers given to `listen()`: an id for the wire,
 * the listener they came through, the adapter that speaks their protocol, and the application's
 * busy marks.
 */
import type * as net from 'node:net';
import type { ConnectionAdapter, Readiness } from './adapters/adapter.js';

export interface Connection {
  readonly id: number;
  readonly socket: net.Socket;
  /** Index of its listener in the listener registry (see listeners.ts). */
  readonly listener: number;
}

/** Ids go on the wire as u32; 0 is never used, and they wrap long before 2^32. */
const MAX_ID = 0xfffffff0;

export class Connections {
  private readonly byId = new Map<number, Connection>();
  private readonly ids = new WeakMap<net.Socket, number>();
  private readonly busyMarks = new WeakMap<net.Socket, number>();
  private nextId = 1;

  /** A marked connection became quiet as far as the application is concerned. */
  onMaybeQuiet: (id: number) => void = () => {};

  get size(): number {
    return this.byId.size;
  }

  /** The live table, by id (read-only for the sessions). */
  get all(): ReadonlyMap<number, Connection> {
    return this.byId;
  }

  idOf(socket: net.Socket): number | undefined {
    return this.ids.get(socket);
  }

  /** Registers a connection; undefined when it is already known. */
  add(socket: net.Socket, listener: number): Connection | undefined {
    if (this.ids.has(socket)) return undefined;
    let id = this.nextId;
    while (this.byId.has(id)) id = id >= MAX_ID ? 1 : id + 1;
    this.nextId = id >= MAX_ID ? 1 : id + 1;
    const connection = { id, socket, listener };
    this.ids.set(socket, id);
    this.byId.set(id, connection);
    return connection;
  }

  delete(id: number): void {
    const connection = this.byId.get(id);
    if (!connection) return;
    this.byId.delete(id);
    this.ids.delete(connection.socket);
  }

  /**
   * Marks a connection busy until the returned function is called (once; later calls do
   * nothing). Marks nest: it is quiet again when every mark is released.
   */
  markBusy(socket: net.Socket): () => void {
    this.busyMarks.set(socket, (this.busyMarks.get(socket) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.busyMarks.get(socket) ?? 1) - 1;
      if (left > 0) {
        this.busyMarks.set(socket, left);
        return;
      }
      this.busyMarks.delete(socket);
      const id = this.ids.get(socket);
      if (id !== undefined) this.onMaybeQuiet(id);
    };
  }

  /** The application's marks first, then the protocol's own answer. */
  readiness(socket: net.Socket, adapter: ConnectionAdapter): Readiness {
    return this.busyMarks.has(socket) ? 'busy' : adapter.readiness(socket);
  }
}
