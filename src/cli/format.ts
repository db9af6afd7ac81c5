import { isIP } from 'node:net';

/**
 * Formats a peer the way the seed's log lines do, `[127.0.0.1]:57796`. Brackets go around every
 * address, not only IPv6 ones, so a log reader can split host and port the same way for both.
 */
export function formatPeer(address: string | undefined, port: number | undefined): string {
  // A socket that is already destroyed has lost its address; keep the line's shape anyway.
  return `[${address ?? '?'}]:${port ?? '?'}`;
}

export type LogFormat = 'text' | 'json';

export interface Logger {
  info(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export interface LoggerOptions {
  format: LogFormat;
  out?: NodeJS.WritableStream;
  err?: NodeJS.WritableStream;
}

const RESERVED_KEYS = new Set(['time', 'level', 'msg']);

/**
 * Text lines are the message verbatim, because the seed's log lines are a contract that scripts
 * grep for; `fields` only appear in JSON lines, where they cannot disturb that shape.
 */
export function createLogger({ format, out = process.stdout, err = process.stderr }: LoggerOptions): Logger {
  const write = (stream: NodeJS.WritableStream, level: string, msg: string, fields?: Record<string, unknown>): void => {
    if (format === 'text') {
      stream.write(`${msg}\n`);
      return;
    }
    const record: Record<string, unknown> = { time: new Date().toISOString(), level, msg };
    for (const [key, value] of Object.entries(fields ?? {})) {
      // A field must never be able to forge the timestamp or the message of a line.
      if (!RESERVED_KEYS.has(key)) record[key] = value;
    }
    stream.write(`${JSON.stringify(record, errorReplacer)}\n`);
  };
  return {
    info: (msg, fields) => write(out, 'info', msg, fields),
    error: (msg, fields) => write(err, 'error', msg, fields),
  };
}

// JSON.stringify turns an Error into `{}`, which would hide exactly what the line is about.
function errorReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    return code === undefined ? { message: value.message } : { message: value.message, code };
  }
  return value;
}

/** A bad command line: the command prints `<command>: <message>` and exits with status 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
  readonly code = 'ERR_USAGE';
}

/**
 * Returns a UsageError for the errors util.parseArgs throws (unknown flag, missing value,
 * unexpected positional) and `err` itself for anything else, so callers can rethrow it.
 */
export function toUsageError(err: unknown): unknown {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_')) {
    // Some of these messages span several lines; a usage error is one line after the command name.
    return new UsageError((err as Error).message.replace(/\s*\n\s*/g, ' ').trim());
  }
  return err;
}

/**
 * A command's start: its configuration, or the exit status once `-h` printed the usage (0) or a
 * bad command line printed `<command>: <message>` (2). Anything else `parse` throws is rethrown.
 */
export function parseCommandLineOrExit<T>(
  command: string,
  usage: string,
  parse: () => T | 'help',
  describe: (error: UsageError) => string = (error) => error.message,
): T | number {
  let config: T | 'help';
  try {
    config = parse();
  } catch (err) {
    const error = toUsageError(err);
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`${command}: ${describe(error)}\n`);
    return 2;
  }
  if (config !== 'help') return config;
  process.stdout.write(usage);
  return 0;
}

/** Parses an integer flag value; rejects `12abc`, `1e3` and anything outside [min, max]. */
export function parseIntegerFlag(text: string, flag: string, min: number, max: number): number {
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) {
    throw new UsageError(`invalid value for ${flag}: '${text}' (expected an integer from ${min} to ${max})`);
  }
  return Number(text);
}

/** Parses a decimal flag value such as a duration in seconds or a rate per second. */
export function parseNumberFlag(text: string, flag: string, min: number): number {
  if (!/^\d+(\.\d+)?$/.test(text) || Number(text) < min) {
    throw new UsageError(`invalid value for ${flag}: '${text}' (expected a number >= ${min})`);
  }
  return Number(text);
}

/** `min` is 0 for a listener that may ask the kernel for any free port. */
export function parsePortFlag(text: string, flag: string, min = 1): number {
  return parseIntegerFlag(text, flag, min, 65535);
}

/** Only literal IPv4/IPv6 addresses are accepted, as the seed's inet_pton does: no name lookups. */
export function parseAddressFlag(text: string, flag: string): string {
  if (isIP(text) === 0) throw new UsageError(`invalid value for ${flag}: '${text}' is not an IPv4 or IPv6 address`);
  return text;
}
