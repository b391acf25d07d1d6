/**
 * Duplicate keys in a JSON document. JSON.parse (and fastify's body parser) keeps the last value of a
 * key written twice and drops the first without a word, where the YAML reader refuses the document:
 * a JSON policy whose `roles.dev` came twice ran on the second definition alone (a `host: "*"`
 * entry in it admitted every destination), and `"mode": "enforce", …, "mode": "monitor"` ran in
 * monitor mode. So JSON text is scanned for them once it has parsed, and each is an error at its path.
 */
import { addError, type ConfigError, joinPath } from './schema-dsl.ts';

interface Frame {
  /** Keys seen so far in this object; null for an array. */
  readonly keys: Set<string> | null;
  readonly path: string;
  /** The key whose value comes next (objects) or the index of the next item (arrays). */
  key: string | number;
}

/**
 * Every key written twice in one object of `text`, which must be valid JSON (JSON.parse accepted it),
 * as errors at the key's path (`roles.dev`). One pass over the text; only keys are decoded.
 */
export function duplicateJsonKeys(text: string): ConfigError[] {
  const errors: ConfigError[] = [];
  const stack: Frame[] = [];
  let isKeyNext = false;
  const valuePath = (): string => {
    const top = stack[stack.length - 1];
    return top === undefined ? '' : joinPath(top.path, top.key);
  };
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const start = i;
      let hasEscape = false;
      for (i++; text.charCodeAt(i) !== 0x22; i++) {
        if (text.charCodeAt(i) === 0x5c /* \ */) {
          hasEscape = true;
          i++;
        }
      }
      const top = stack[stack.length - 1];
      if (!isKeyNext || top?.keys == null) continue;
      // A key spelled with escapes ("\u0064ev") is the same key as its plain spelling.
      const key = hasEscape ? (JSON.parse(text.slice(start, i + 1)) as string) : text.slice(start + 1, i);
      if (top.keys.has(key)) {
        addError(errors, { path: joinPath(top.path, key), message: `duplicate key "${key}": JSON keeps only its last value and drops the others; write each key once` });
      }
      top.keys.add(key);
      top.key = key;
      isKeyNext = false;
    } else if (c === 0x7b /* { */) {
      stack.push({ keys: new Set(), path: valuePath(), key: '' });
      isKeyNext = true;
    } else if (c === 0x5b /* [ */) {
      stack.push({ keys: null, path: valuePath(), key: 0 });
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x2c /* , */) {
      const top = stack[stack.length - 1];
      if (top?.keys === null) top.key = (top.key as number) + 1;
      else isKeyNext = true;
    }
  }
  return errors;
}
