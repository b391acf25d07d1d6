/**
 * A small structured logger: one JSON line per event on stderr (stdout carries the listening line
 * and, by default, the flow log). Credentials never reach it: callers log names, never secrets.
 */
import type { Logger } from './context.ts';

type Level = 'info' | 'warn' | 'error';
const ORDER: Record<Level | 'silent', number> = { info: 0, warn: 1, error: 2, silent: 3 };

/** A JSON-lines logger on a stream (stderr by default), filtered by level. */
export function createLogger(level: Level | 'silent' = 'info', stream: NodeJS.WritableStream = process.stderr): Logger {
  const min = ORDER[level];
  const emit = (lvl: Level, obj: Record<string, unknown>, msg?: string): void => {
    if (ORDER[lvl] < min) return;
    stream.write(`${JSON.stringify({ level: lvl, time: new Date().toISOString(), msg, ...obj })}\n`);
  };
  return {
    info: (obj, msg) => emit('info', obj, msg),
    warn: (obj, msg) => emit('warn', obj, msg),
    error: (obj, msg) => emit('error', obj, msg),
  };
}
