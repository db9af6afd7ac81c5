/**
 * node:http through require, not an ESM import. Importing a builtin builds its ESM facade, which
 * reads every export, and node:http's lazy exports load undici: about 40 ms of CPU at every
 * start on Node 22-26, also in the raw servers that never touch HTTP. A successor's start-up is
 * part of every takeover, and it runs on the cores the old process is serving with.
 */
import type * as Http from 'node:http';
import { createRequire } from 'node:module';

export const nodeHttp = createRequire(import.meta.url)('node:http') as typeof Http;
