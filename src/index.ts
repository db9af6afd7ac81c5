export { Takeover } from './takeover.js';
export type { TakeoverOptions, TakeoverEvents, ListenTarget } from './takeover.js';
export type { TakeoverStats } from './stats.js';
export { TakeoverError, ErrorCodes } from './errors.js';
export { fdOf } from './fd-of.js';
export type { TakeoverErrorCode } from './errors.js';
