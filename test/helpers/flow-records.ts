/**
 * Flow records in tests of the flow log: a closed record with a recognisable id (`f<i>`) and byte
 * counts, and the records of a flow log's text (JSON lines).
 */
import type { FlowRecord } from '../../gateway/flow/flow.ts';

/** A closed CONNECT record `f<i>`: bytesOut i, bytesIn 2i; `reasons` pads the line as a test needs. */
export function sampleRecord(i: number, reasons: string[]): FlowRecord {
  return {
    id: `f${i}`,
    protocol: 'connect',
    client: { ip: '127.0.0.1', port: 40000 + (i % 20000) },
    identity: { user: null, host: null, roles: ['any'], process: null },
    destination: { host: 'example.test', ip: '127.0.0.9', port: 443 },
    startedAt: new Date(0).toISOString(),
    lastActivityAt: new Date(0).toISOString(),
    endedAt: new Date(0).toISOString(),
    durationMs: 0,
    bytesOut: i,
    bytesIn: 2 * i,
    verdict: 'allow',
    enforced: false,
    reason: 'allowed',
    detector: null,
    state: 'closed',
    closeReason: 'closed',
    connected: true,
    communityId: null,
    matchedRule: null,
    reasons,
  };
}

/**
 * The records of a flow log that may still be being written (a test polling the file or a serve
 * process's stdout): the complete lines only. A batch is one write, and a read can see part of it:
 * the line it cuts is left for the next read (parseRecords would fail on it: 'Unterminated string').
 */
export function parseWrittenRecords(text: string): FlowRecord[] {
  return parseRecords(text.slice(0, text.lastIndexOf('\n') + 1));
}

/** Every record in a flow log's text, in order (each line one JSON record). */
export function parseRecords(text: string): FlowRecord[] {
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as FlowRecord);
}
