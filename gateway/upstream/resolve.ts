/**
 * Name resolution for the data plane: IP literals as they are, then `resolver.hosts` static answers
 * (checked by the caller through the snapshot), then DNS through the OS resolver with a timeout and a
 * small positive cache. The address returned here is the one that is classified AND dialled: there
 * is never a second lookup (SPEC §4).
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { LRUCache } from 'lru-cache';
import { GatewayError } from '../errors.ts';
import type { Resolver } from '../context.ts';

export interface DnsResolverOptions {
  timeoutMs?: number;
  cacheTtlMs?: number;
  cacheMax?: number;
}

/** A Resolver on the OS resolver (getaddrinfo), cached briefly so hot destinations skip the thread pool. */
export function createDnsResolver(opts: DnsResolverOptions = {}): Resolver {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const cache = new LRUCache<string, string[]>({ max: opts.cacheMax ?? 10_000, ttl: opts.cacheTtlMs ?? 30_000 });
  return {
    async lookup(host: string): Promise<string[]> {
      if (isIP(host)) return [host];
      const hit = cache.get(host);
      if (hit) return hit;
      let timer: NodeJS.Timeout | undefined;
      try {
        const answers = await Promise.race([
          lookup(host, { all: true, verbatim: true }),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new GatewayError('EGW_DNS_FAILED', `lookup of ${host} timed out`)), timeoutMs);
          }),
        ]);
        const ips = answers.map((a) => a.address);
        if (ips.length === 0) throw new GatewayError('EGW_DNS_FAILED', `no address for ${host}`);
        cache.set(host, ips);
        return ips;
      } catch (err) {
        if (err instanceof GatewayError) throw err;
        throw new GatewayError('EGW_DNS_FAILED', `lookup of ${host} failed`, { cause: err });
      } finally {
        if (timer) clearTimeout(timer);
      }
    },
  };
}
