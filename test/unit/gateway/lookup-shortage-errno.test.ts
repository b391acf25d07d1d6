/**
 * A lookup that failed for want of descriptors is logged under the errno its probe saw
 * (gateway/upstream/resolve.ts `descriptorShortage`): ENFILE (the system's table full) as ENFILE,
 * not as the process's own EMFILE. A real ENFILE needs the whole host's table filled, so this drives
 * the resolver with a probe that answers it; the EMFILE case runs through `serve` under `ulimit -n`
 * in test/integration/descriptor-exhaustion-lookup.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { lookUp } from '../../../gateway/admission/lookup.ts';
import { lookupShortage } from '../../../gateway/admission/refusals.ts';
import type { Logger } from '../../../gateway/context.ts';
import { DescriptorShortage } from '../../../gateway/descriptor-shortage.ts';
import { createDnsResolver } from '../../../gateway/upstream/resolve.ts';

function errorLog(): { log: Logger; errors: Array<Record<string, unknown>> } {
  const errors: Array<Record<string, unknown>> = [];
  const ignore = (): void => undefined;
  return { log: { info: ignore, warn: ignore, error: (obj) => errors.push(obj) }, errors };
}

const notFound = (): Promise<string[]> => Promise.reject(Object.assign(new Error('getaddrinfo ENOTFOUND'), { code: 'ENOTFOUND' }));

describe('a lookup failed at the descriptor limit: the errno logged is the probe\'s', () => {
  for (const errno of ['ENFILE', 'EMFILE']) {
    it(`${errno}: carried from the probe to the refusal's log line`, async () => {
      const resolver = createDnsResolver({ timeoutMs: 2000, lookup: notFound, descriptorShortage: async () => errno });
      const found = await lookUp({ resolver }, 'short.example.test', '127.0.0.1');
      expect(found).toMatchObject({ ip: null, dnsError: 'EGW_OUT_OF_DESCRIPTORS', shortage: errno });
      const { log, errors } = errorLog();
      const decision = lookupShortage({ descriptors: new DescriptorShortage(log) }, 'short.example.test', 'enforce', found.shortage);
      expect(decision).toMatchObject({ verdict: 'block', reason: 'out-of-descriptors' });
      expect(errors).toEqual([expect.objectContaining({ code: 'EGW_OUT_OF_DESCRIPTORS', errno, failedDials: 1 })]);
    });
  }

  it('a name that failed with descriptors free carries no errno', async () => {
    const resolver = createDnsResolver({ timeoutMs: 2000, lookup: notFound, descriptorShortage: async () => null });
    const found = await lookUp({ resolver }, 'gone.example.test', '127.0.0.1');
    expect(found).toEqual({ ip: null, alternates: [], dnsError: 'EGW_DNS_FAILED' });
  });
});
