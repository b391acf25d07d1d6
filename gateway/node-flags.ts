/**
 * The node command-line flags the gateway is started with, wherever it is started: `npm start`, the
 * `egressgate` bin (cli.ts's `#!` line), deploy/systemd/egressgate.service, deploy/Dockerfile and
 * the benchmark (bench/run.ts). test/integration/deploy-files.test.ts checks that all of them carry
 * exactly these.
 *
 * `--max-semi-space-size=16` (MiB per young-generation semi-space): where node 20 and 22 stop on
 * 64-bit. Node 24 sizes the young generation from the machine's memory instead; on a 24 GiB machine
 * it let it grow to 128 MiB, and a burst of connections then left ~6 KiB of young generation per
 * tunnel resident (RSS per idle tunnel 15–18 KiB instead of 9–10 KiB). Setting it from inside the
 * process (`v8.setFlagsFromString`) is too late: V8 sizes the heap at start. A/B on node 24, same
 * machine and build: CONNECT setups and absolute-URI requests cost the same CPU with and without it
 * (docs/benchmarks.md, "Seventh pass").
 */
export const NODE_FLAGS: readonly string[] = ['--max-semi-space-size=16'];
