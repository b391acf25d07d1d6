/**
 * Run as root inside a network namespace of its own (`unshare -n`, loopback up): clients whose
 * processes an agent names before their CONNECTs (connectsReportedAhead, the detection tests' way),
 * with the kernel short of ports to give them. A gateway (enforce, the test agent) and CLIENTS echo
 * peers start; then the namespace's ephemeral port range is narrowed to RANGE (16 ports; the kernel
 * gives bind and connect ports of one parity each first), so ports come round again at once. Per
 * round, from a client address of its own (127.0.0.21, .22, …): CLIENTS tunnels reported ahead, one
 * byte string echoed on each, the tunnels closed and their records read. Prints one JSON line: per
 * round the report's answer, the CONNECT answers (or the error that stopped the round) and the
 * process each record names.
 */
import { writeFileSync } from 'node:fs';
import { type TcpOrigin, connectsReportedAhead, echoOrigin, echoRoundTrip, testAgent } from './detection-live.ts';
import { startTestGateway } from './gateway.ts';

const ROUNDS = Number(process.env['REPORTED_ROUNDS'] ?? 6);
const CLIENTS = 4;
const RANGE = '40001 40016';

const peers: TcpOrigin[] = [];
for (let i = 0; i < CLIENTS; i++) peers.push(await echoOrigin('127.0.0.1'));
const gw = await startTestGateway({ mode: 'enforce', identity: { agents: [testAgent] } });
writeFileSync('/proc/sys/net/ipv4/ip_local_port_range', RANGE);

const rounds: Array<{ report: unknown; answers: string[]; named: Array<string | null> }> = [];
for (let r = 0; r < ROUNDS; r++) {
  const client = `127.0.0.${21 + r}`;
  try {
    const { report, answers } = await connectsReportedAhead(
      gw,
      client,
      'ws-relay',
      peers.map((p) => ({ target: `127.0.0.1:${p.port}`, process: { pid: 4242 + r, name: 'relayd', user: 'alice' } })),
    );
    for (const a of answers) if (a.status === 200) await echoRoundTrip(a.socket, Buffer.from(`round ${r}`));
    for (const a of answers) a.socket.destroy();
    const recs = await Promise.all(answers.map((a) => gw.waitForClosed((x) => x.client.ip === client && x.client.port === a.localPort)));
    rounds.push({ report, answers: answers.map((a) => String(a.status)), named: recs.map((x) => x.identity.process?.name ?? null) });
  } catch (err) {
    rounds.push({ report: null, answers: [`${(err as NodeJS.ErrnoException).code ?? ''} ${(err as Error).message}`], named: [] });
  }
}
process.stdout.write(`${JSON.stringify({ rounds })}\n`);
await gw.stop();
await Promise.all(peers.map((p) => p.close()));
process.exit(0);
