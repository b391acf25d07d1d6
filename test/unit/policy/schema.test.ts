import { readFileSync } from 'node:fs';
import { Check } from 'typebox/schema';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { schemaText } from '../../../policy/gen-schema.ts';

const schemaFile = readFileSync(new URL('../../../policy/schema.json', import.meta.url), 'utf8');
const schema = JSON.parse(schemaFile) as Record<string, unknown>;

describe('policy/schema.json', () => {
  it('is up to date with the validator (regenerate: node --import tsx policy/gen-schema.ts)', () => {
    expect(schemaFile).toBe(schemaText());
  });
  it('accepts the SPEC §3 example', () => {
    const doc = parse(readFileSync(new URL('./fixtures/spec-example.yaml', import.meta.url), 'utf8'));
    expect(Check(schema, doc)).toBe(true);
  });
  it.each([
    ['unknown key', { bogus: 1 }],
    ['wrong mode', { mode: 'loud' }],
    ['port out of range', { roles: { dev: { allow: [{ host: 'a.com', ports: [70000] }] } } }],
    ['unknown detector', { detection: { detectors: { 'an0081.nope': {} } } }],
    ['bad HH:MM', { schedule: { businessHours: { start: '8:00' } } }],
  ])('rejects %s', (_name, doc) => {
    expect(Check(schema, doc)).toBe(false);
  });
});
