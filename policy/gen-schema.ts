/**
 * Emits `policy/schema.json` (JSON Schema for editors) from the same schema `loadConfig` validates
 * with, so the two cannot drift. Run: `node --import tsx policy/gen-schema.ts` (a unit test fails
 * when the checked-in file is stale).
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CONFIG_SCHEMA } from './config-schema.ts';
import { toJsonSchema } from './schema-dsl.ts';

/** The JSON Schema document for the config file. */
export function buildJsonSchema(): Record<string, unknown> {
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $id: 'https://egressgate.dev/schema/policy.json',
    title: 'egressgate policy',
    description:
      'egressgate config file (SPEC §3). Semantic rules (CIDR syntax, host patterns, port ranges, time zones, role references) are enforced by `egressgate check`.',
    ...toJsonSchema(CONFIG_SCHEMA),
  };
}

/** The file text as checked in (stable key order, trailing newline). */
export function schemaText(): string {
  return `${JSON.stringify(buildJsonSchema(), null, 2)}\n`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  writeFileSync(new URL('./schema.json', import.meta.url), schemaText());
}
