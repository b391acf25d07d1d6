/**
 * Duplicate keys in a JSON document. JSON.parse (and fastify's body parser) keeps the last value of a
 * key written twice and drops the first without a word, where the YAML reader refuses the document:
 * a JSON policy whose `roles.dev` came twice ran on the second definition alone (a `host: "*"`
 * entry in it admitted every destination), and `"mode": "enforce", …, "mode": "monitor"` ran in
 * monitor mode. So JSON text is scanned for them once it has parsed, and each is an error at its path.
 * The admin API scans every JSON body so (admin/app.ts), agent reports of up to 4 MiB included: the
 * scan allocates nothing per object or array (one frame per depth, reused), and a path is spelled
 * only for a key found twice.
 */
import { addError, type ConfigError, joinPath } from './schema-dsl.ts';

interface Frame {
  /** Keys seen so far in this object (cleared when the frame is reused); unused for an array. */
  readonly keys: Set<string>;
  isObject: boolean;
  /** The key whose value comes next (objects) or the index of the next item (arrays). */
  key: string | number;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/** Whether the string between the quotes at `start` and `end` (a key: short) has an escape. */
function hasEscape(text: string, start: number, end: number): boolean {
  for (let i = start + 1; i < end; i++) if (text.charCodeAt(i) === BACKSLASH) return true;
  return false;
}

/** The path of the value frames[depth - 1] is reading, from the frames' keys (only for an error). */
function pathOf(frames: readonly Frame[], depth: number): string {
  let path = '';
  for (let d = 0; d < depth; d++) path = joinPath(path, (frames[d] as Frame).key);
  return path;
}

/**
 * Every key written twice in one object of `text`, which must be valid JSON (JSON.parse accepted it),
 * as errors at the key's path (`roles.dev`). One pass over the text; only keys are decoded.
 */
export function duplicateJsonKeys(text: string): ConfigError[] {
  const errors: ConfigError[] = [];
  // frames[d] is the object or array at depth d; a frame is reused by the next container at its depth.
  const frames: Frame[] = [];
  let depth = 0;
  let isKeyNext = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      const start = i;
      // The closing quote: the next one not escaped (after an even run of backslashes).
      let end = text.indexOf('"', start + 1);
      for (;;) {
        let b = end - 1;
        while (text.charCodeAt(b) === BACKSLASH) b--;
        if ((end - 1 - b) % 2 === 0) break;
        end = text.indexOf('"', end + 1);
      }
      i = end;
      const top = depth > 0 ? (frames[depth - 1] as Frame) : undefined;
      if (!isKeyNext || top === undefined || !top.isObject) continue;
      // A key spelled with escapes ("\u0064ev") is the same key as its plain spelling.
      const key = hasEscape(text, start, end) ? (JSON.parse(text.slice(start, end + 1)) as string) : text.slice(start + 1, end);
      if (top.keys.has(key)) {
        addError(errors, { path: joinPath(pathOf(frames, depth - 1), key), message: `duplicate key "${key}": JSON keeps only its last value and drops the others; write each key once` });
      }
      top.keys.add(key);
      top.key = key;
      isKeyNext = false;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      const isObject = c === 0x7b;
      const frame = frames[depth];
      if (frame === undefined) frames.push({ keys: new Set(), isObject, key: isObject ? '' : 0 });
      else {
        if (frame.keys.size > 0) frame.keys.clear();
        frame.isObject = isObject;
        frame.key = isObject ? '' : 0;
      }
      depth++;
      isKeyNext = isObject;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      depth--;
    } else if (c === 0x2c /* , */) {
      const top = frames[depth - 1];
      if (top !== undefined && !top.isObject) top.key = (top.key as number) + 1;
      else isKeyNext = true;
    }
  }
  return errors;
}
