/**
 * The part of js-yaml 4 (which ships no types) that `load-config.ts` uses.
 */
declare module 'js-yaml' {
  export interface Schema {
    readonly __schema: unique symbol;
  }
  export const CORE_SCHEMA: Schema;
  export interface LoadOptions {
    filename?: string;
    schema?: Schema;
    json?: boolean;
  }
  export function load(text: string, opts?: LoadOptions): unknown;
  export class YAMLException extends Error {
    reason: string;
    mark: { line: number; column: number } | null;
  }
}
