/**
 * A tiny schema language for the config file: one description that both validates a parsed
 * document (collecting every error with its path, `roles.dev.allow[2].ports`) and emits JSON Schema
 * for editors (`policy/schema.json`). Hand-rolled rather than a generic JSON Schema validator so the
 * error messages and paths are the ones `egressgate check` promises, and semantic checks (CIDRs,
 * host patterns, time zones) sit next to the shape they refine.
 */

export interface ConfigError {
  /** Dotted path with [index] for arrays and ["key"] for keys that are not simple names. */
  readonly path: string;
  readonly message: string;
}

/** A semantic check: returns an error message or null. */
export type Check = (value: never) => string | null;

export type Node =
  | { readonly t: 'string'; readonly check?: Check; readonly pattern?: string; readonly doc?: string }
  | { readonly t: 'number'; readonly int?: boolean; readonly min?: number; readonly max?: number; readonly doc?: string }
  | { readonly t: 'boolean'; readonly doc?: string }
  | { readonly t: 'enum'; readonly values: readonly string[]; readonly doc?: string }
  | { readonly t: 'array'; readonly items: Node; readonly minItems?: number; readonly doc?: string }
  | { readonly t: 'object'; readonly fields: Readonly<Record<string, Field>>; readonly check?: Check; readonly doc?: string }
  | {
      readonly t: 'record';
      readonly key?: Check;
      readonly keyEnum?: readonly string[];
      readonly values: Node;
      /** The value node of particular keys, in place of `values` (e.g. each detector's own settings). */
      readonly byKey?: Readonly<Record<string, Node>>;
      readonly doc?: string;
    }
  | { readonly t: 'nullable'; readonly inner: Node }
  | { readonly t: 'union'; readonly options: readonly Node[]; readonly doc?: string };

export interface Field {
  readonly node: Node;
  readonly required?: boolean;
}

/** Helpers to write the schema compactly. */
export const s = {
  str: (check?: Check, extra: { pattern?: string; doc?: string } = {}): Node => ({ t: 'string', check, ...extra }),
  num: (o: { int?: boolean; min?: number; max?: number; doc?: string } = {}): Node => ({ t: 'number', ...o }),
  int: (min = 0, max?: number): Node => ({ t: 'number', int: true, min, max }),
  bool: (): Node => ({ t: 'boolean' }),
  enum: (values: readonly string[]): Node => ({ t: 'enum', values }),
  arr: (items: Node, minItems?: number): Node => ({ t: 'array', items, minItems }),
  obj: (fields: Record<string, Node | Field>, check?: Check): Node => ({
    t: 'object',
    fields: Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, 'node' in v ? v : { node: v }])),
    check,
  }),
  rec: (values: Node, key?: Check, keyEnum?: readonly string[]): Node => ({ t: 'record', values, key, keyEnum }),
  /** A record whose keys are exactly `byKey`'s, each value checked by its own node. */
  keyed: (byKey: Record<string, Node>): Node => ({ t: 'record', values: s.obj({}), keyEnum: Object.keys(byKey), byKey }),
  nul: (inner: Node): Node => ({ t: 'nullable', inner }),
  or: (...options: Node[]): Node => ({ t: 'union', options }),
  req: (node: Node): Field => ({ node, required: true }),
};

const SIMPLE_KEY = /^[A-Za-z_][A-Za-z0-9_-]*$/;

/** Appends a key to a path in the documented form. */
export function joinPath(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  if (SIMPLE_KEY.test(key)) return path === '' ? key : `${path}.${key}`;
  return `${path}[${JSON.stringify(key)}]`;
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

/**
 * A path under construction: a string, or a link to the parent and one key. Validation walks every
 * value of a 10,000-entry policy, so the text is only built when an error is reported.
 */
export type PathRef = string | { readonly parent: PathRef; readonly key: string | number };

function pathText(p: PathRef): string {
  return typeof p === 'string' ? p : joinPath(pathText(p.parent), p.key);
}

/**
 * The most errors one validation reports. Past it the walk stops: an alias bomb of unknown keys
 * under the 2M-value budget made two million errors (205 MB of JSON, 11 s of a blocked event loop,
 * 2 GB of memory) for any token allowed to validate a policy.
 */
export const MAX_ERRORS = 200;

/** Add an error unless MAX_ERRORS are there already (then a last one says the list was cut). */
export function addError(errors: ConfigError[], error: ConfigError): void {
  if (errors.length > MAX_ERRORS) return;
  if (errors.length === MAX_ERRORS) {
    errors.push({ path: '(root)', message: `more errors not listed: the first ${MAX_ERRORS} are` });
    return;
  }
  errors.push(error);
}

// A plain function, not a closure per call (see PathRef).
function fail(errors: ConfigError[], path: PathRef, message: string): void {
  const text = pathText(path);
  addError(errors, { path: text === '' ? '(root)' : text, message });
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function expected(node: Node): string {
  switch (node.t) {
    case 'string':
      return 'a string';
    case 'number':
      return node.int ? 'an integer' : 'a number';
    case 'boolean':
      return 'true or false';
    case 'enum':
      return `one of ${node.values.join(', ')}`;
    case 'array':
      return 'a list';
    case 'object':
    case 'record':
      return 'a mapping';
    case 'nullable':
      return `${expected(node.inner)} or null`;
    case 'union':
      return node.options.map(expected).join(' or ');
  }
}

/** Validates `value` against `node`, pushing every error found; returns true when it is clean. */
export function validate(node: Node, value: unknown, path: PathRef, errors: ConfigError[]): boolean {
  if (errors.length >= MAX_ERRORS) return false;
  const before = errors.length;
  switch (node.t) {
    case 'string':
      if (typeof value !== 'string') fail(errors, path, `expected a string, got ${typeName(value)}`);
      else if (node.check) {
        const m = node.check(value as never);
        if (m !== null) fail(errors, path, m);
      }
      break;
    case 'number':
      if (typeof value !== 'number' || !Number.isFinite(value)) fail(errors, path, `expected ${expected(node)}, got ${typeName(value)}`);
      else if (node.int && !Number.isInteger(value)) fail(errors, path, `expected an integer, got ${value}`);
      else if (node.min !== undefined && value < node.min) fail(errors, path, `must be >= ${node.min}, got ${value}`);
      else if (node.max !== undefined && value > node.max) fail(errors, path, `must be <= ${node.max}, got ${value}`);
      break;
    case 'boolean':
      if (typeof value !== 'boolean') fail(errors, path, `expected true or false, got ${typeName(value)}`);
      break;
    case 'enum':
      if (typeof value !== 'string' || !node.values.includes(value)) fail(errors, path, `expected one of ${node.values.join(', ')}, got ${JSON.stringify(value)}`);
      break;
    case 'array':
      if (!Array.isArray(value)) fail(errors, path, `expected a list, got ${typeName(value)}`);
      else {
        if (node.minItems !== undefined && value.length < node.minItems) fail(errors, path, `needs at least ${node.minItems} item(s)`);
        for (let i = 0; i < value.length; i++) validate(node.items, value[i], { parent: path, key: i }, errors);
      }
      break;
    case 'object':
      if (!isPlainObject(value)) fail(errors, path, `expected a mapping, got ${typeName(value)}`);
      else {
        for (const k in node.fields) {
          const f = node.fields[k]!;
          if (value[k] === undefined) {
            if (f.required) fail(errors, { parent: path, key: k }, 'is required');
          } else validate(f.node, value[k], { parent: path, key: k }, errors);
        }
        for (const k in value) {
          if (!Object.hasOwn(node.fields, k)) {
            const known = Object.keys(node.fields).join(', ');
            fail(errors, { parent: path, key: k }, `unknown key (allowed here: ${known})`);
          }
        }
        if (node.check && errors.length === before) {
          const m = node.check(value as never);
          if (m !== null) fail(errors, path, m);
        }
      }
      break;
    case 'record':
      if (!isPlainObject(value)) fail(errors, path, `expected a mapping, got ${typeName(value)}`);
      else {
        for (const [k, v] of Object.entries(value)) {
          const p: PathRef = { parent: path, key: k };
          // A parsed document may hold "__proto__" as a key of its own, but merged into the config
          // it sets the object's prototype instead: the entry would vanish (a role "not defined").
          if (k === '__proto__') {
            fail(errors, p, 'the name "__proto__" is reserved (it cannot be a key of a JavaScript object); choose another');
            continue;
          }
          if (node.keyEnum && !node.keyEnum.includes(k)) {
            fail(errors, p, `unknown name "${k}" (known: ${node.keyEnum.join(', ')})`);
            // Its settings are another name's, if any: checking them would only add noise.
            if (node.byKey !== undefined) continue;
          } else if (node.key) {
            const m = node.key(k as never);
            if (m !== null) fail(errors, p, m);
          }
          validate(node.byKey !== undefined && Object.hasOwn(node.byKey, k) ? node.byKey[k]! : node.values, v, p, errors);
        }
      }
      break;
    case 'nullable':
      if (value !== null) validate(node.inner, value, path, errors);
      break;
    case 'union': {
      // The first option whose base type fits decides the messages (better than "matches none").
      const fit = node.options.find((o) => baseFits(o, value));
      if (fit === undefined) fail(errors, path, `expected ${expected(node)}, got ${typeName(value)}`);
      else validate(fit, value, path, errors);
      break;
    }
  }
  return errors.length === before;
}

function baseFits(node: Node, v: unknown): boolean {
  switch (node.t) {
    case 'string':
    case 'enum':
      return typeof v === 'string';
    case 'number':
      return typeof v === 'number';
    case 'boolean':
      return typeof v === 'boolean';
    case 'array':
      return Array.isArray(v);
    case 'object':
    case 'record':
      return isPlainObject(v);
    case 'nullable':
      return v === null || baseFits(node.inner, v);
    case 'union':
      return node.options.some((o) => baseFits(o, v));
  }
}

type Json = { [k: string]: unknown };

/** JSON Schema (draft 2020-12) for `node`; semantic checks become `pattern`s or descriptions. */
export function toJsonSchema(node: Node): Json {
  const doc = 'doc' in node && node.doc !== undefined ? { description: node.doc } : {};
  switch (node.t) {
    case 'string':
      return { type: 'string', ...(node.pattern ? { pattern: node.pattern } : {}), ...doc };
    case 'number':
      return {
        type: node.int ? 'integer' : 'number',
        ...(node.min !== undefined ? { minimum: node.min } : {}),
        ...(node.max !== undefined ? { maximum: node.max } : {}),
        ...doc,
      };
    case 'boolean':
      return { type: 'boolean', ...doc };
    case 'enum':
      return { type: 'string', enum: [...node.values], ...doc };
    case 'array':
      return { type: 'array', items: toJsonSchema(node.items), ...(node.minItems ? { minItems: node.minItems } : {}), ...doc };
    case 'object': {
      const required = Object.entries(node.fields)
        .filter(([, f]) => f.required)
        .map(([k]) => k);
      return {
        type: 'object',
        properties: Object.fromEntries(Object.entries(node.fields).map(([k, f]) => [k, toJsonSchema(f.node)])),
        ...(required.length ? { required } : {}),
        additionalProperties: false,
        ...doc,
      };
    }
    case 'record':
      if (node.byKey !== undefined) {
        const keys = node.keyEnum ?? Object.keys(node.byKey);
        return { type: 'object', properties: Object.fromEntries(keys.map((k) => [k, toJsonSchema(node.byKey?.[k] ?? node.values)])), additionalProperties: false, ...doc };
      }
      return {
        type: 'object',
        additionalProperties: toJsonSchema(node.values),
        ...(node.keyEnum ? { propertyNames: { enum: [...node.keyEnum] } } : {}),
        ...doc,
      };
    case 'nullable': {
      const inner = toJsonSchema(node.inner);
      return { anyOf: [inner, { type: 'null' }] };
    }
    case 'union':
      return { anyOf: node.options.map(toJsonSchema), ...doc };
  }
}
