/**
 * Raw TCP (any `net.Server`): the engine cannot see request boundaries in an unknown protocol,
 * so a connection is quiet unless the application marked it busy (`Takeover.busy()`), which the
 * engine checks for every adapter.
 */
import type * as net from 'node:net';
import type { Carried, ConnectionAdapter, Readiness } from './adapter.js';
import { replayCarried, startInherited } from '../sockets.js';

export class NetAdapter implements ConnectionAdapter {
  readonly kind = 'net' as const;

  constructor(private readonly server: net.Server) {}

  readiness(): Readiness {
    return 'quiet';
  }

  capture(): undefined {
    return undefined;
  }

  forget(): void {}

  retain(): void {}

  adopt(socket: net.Socket, { input, output }: Carried, prepare: () => void): void {
    replayCarried(socket, input, output);
    startInherited(socket, this.server, prepare);
  }
}
