export { Takeover } from './takeover.js';
export type { TakeoverOptions, TakeoverEvents, TakeoverState, ListenTarget, UpgradeOptions, ReadyMessage } from './takeover.js';
export type { RollbackReport, TakeoverStats } from './stats.js';
export type { SuccessorStep } from './successor.js';
export { TakeoverError, ErrorCodes } from './errors.js';
export { fdOf } from './fd-of.js';
export type { TakeoverErrorCode } from './errors.js';
