/**
 * The seam between the takeover engine and the protocols spoken on its connections. The engine
 * moves file descriptors and bytes; an adapter knows when its protocol allows a connection to
 * move, what protocol state must travel with it, and how the new process brings it back to
 * life. `net` (raw TCP), `http` (http.Server keep-alive) and `ws` (WebSockets on `ws`) are the
 * adapters; docs/DESIGN.md describes the contract.
 */
import type * as net from 'node:net';
import type { AdapterKind } from '../protocol.js';

/**
 * Whether a connection can move now:
 * - `'quiet'`: its application owes it nothing; it may be frozen at once.
 * - `'busy'`: not yet (a request being handled, a reply pending, a frame half-read); the engine
 *   asks again later, until the quiescence bound.
 * - `'never'`: it stays in the old process, which finishes it.
 */
export type Readiness = 'quiet' | 'busy' | 'never';

/** What travels with a moved connection besides its fd. */
export interface Carried {
  /** Bytes the old process read but its application did not consume: replayed first. */
  input: Buffer;
  /** Bytes the old process's application wrote that the kernel had not taken: sent first. */
  output: Buffer;
  /** What {@link ConnectionAdapter.capture} returned in the old process. */
  protocolState: Buffer | undefined;
}

export interface ConnectionAdapter {
  readonly kind: AdapterKind;
  /** Old process: may this connection move now? Must not change anything. */
  readiness(socket: net.Socket): Readiness;
  /** Old process, just before the freeze: the protocol state the new process needs. A throw leaves the connection here. */
  capture(socket: net.Socket): Buffer | undefined;
  /** Old process, once the connection moved: drop it from the protocol's bookkeeping (a moved socket emits no 'close'). */
  forget(socket: net.Socket): void;
  /** Old process: the connection stays here past the quiescence bound; finish it as the protocol allows. */
  retain(socket: net.Socket): void;
  /**
   * Old process, optional: a deferred connection is still busy; steer it towards a boundary it
   * would otherwise rarely rest at (e.g. stop taking new input once between frames). Called on
   * every retry; {@link resume} or {@link retain} undoes it.
   */
  settle?(socket: net.Socket): void;
  /** Old process, optional: the takeover failed and the connection carries on here as before. */
  resume?(socket: net.Socket): void;
  /**
   * New process: make the connection live as if it had been accepted here, with `carried`
   * ahead of anything new. `prepare` restores the application's state; it must run before the
   * application first sees the connection.
   */
  adopt(socket: net.Socket, carried: Carried, prepare: () => void): void;
}
