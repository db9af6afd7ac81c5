import * as net from 'node:net';
import { serverFd, socketFd } from './sockets.js';

/**
 * The kernel fd behind a listening server or a connected socket, or -1 when it has none (not
 * listening yet, closed, handed over). For logs and diagnostics only: libuv owns the fd, so never
 * close it, and do not keep the number, which the kernel reuses once the socket is closed.
 */
export function fdOf(target: net.Server | net.Socket): number {
  return target instanceof net.Server ? serverFd(target) : socketFd(target);
}
