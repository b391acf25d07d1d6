/**
 * Everything under deploy/ is checked here, since a broken deployment file would otherwise only
 * show up when an operator uses it:
 * 1. every example policy (and the one in the Kubernetes base) passes the real validator;
 * 2. every Kubernetes manifest parses and has the fields the rollout relies on, and runs the image
 *    docs/deploy.md builds; with kubectl present the overlays are rendered with `kubectl kustomize`;
 * 3. the Dockerfile has the instructions it needs (no Docker engine in CI: parsed, not built);
 * 4. the systemd units have their hardening, and pass `systemd-analyze verify` where it exists;
 *    docs/deploy.md's install puts a working `egressgate` on PATH, and checks the file it reloads;
 * 5. the nftables script renders, rejects bad arguments, and passes `nft -c` where it can run.
 */
import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import ts from 'typescript';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { NODE_FLAGS, THREADPOOL_SIZE } from '../../gateway/node-flags.ts';
import { loadConfig } from '../../policy/load-config.ts';
import { skipNotice } from '../helpers/skip-notice.ts';
import { CLI } from '../helpers/serve-process.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const DEPLOY = join(ROOT, 'deploy');
const read = (rel: string): string => readFileSync(join(ROOT, rel), 'utf8');

/** The first ```sh block after `heading` in a Markdown text (the commands docs/deploy.md has operators run). */
function shBlockAfter(text: string, heading: string): string {
  const at = text.indexOf(`\n${heading}\n`);
  if (at < 0) throw new Error(`no heading ${heading}`);
  const block = /\n```sh\n([\s\S]*?)\n```\n/.exec(text.slice(at));
  if (!block) throw new Error(`no sh block after ${heading}`);
  return block[1]!;
}

function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function skipLoudly(what: string, why: string): void {
  console.warn(`\n!!! deploy-files: SKIPPED ${what}: ${why} — this check did NOT run here.\n`);
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
/** `get(o, 'spec.template.spec')` with no throwing on a missing step. */
function get(o: unknown, path: string): unknown {
  let cur: unknown = o;
  for (const key of path.split('.')) {
    if (Array.isArray(cur) && /^\d+$/.test(key)) cur = cur[Number(key)];
    else if (isObj(cur)) cur = cur[key];
    else return undefined;
  }
  return cur;
}

// ---- 1. example policies -----------------------------------------------------------------------

const POLICY_FILES = [
  ...readdirSync(join(DEPLOY, 'examples'))
    .filter((f) => /\.(ya?ml|json)$/.test(f))
    .map((f) => `deploy/examples/${f}`),
  'deploy/k8s/base/policy.yaml',
];

describe('example policies pass the validator', () => {
  it('finds the starter monitor and enforce policies', () => {
    expect(POLICY_FILES).toEqual(expect.arrayContaining(['deploy/examples/monitor.yaml', 'deploy/examples/enforce.yaml']));
  });

  it.each(POLICY_FILES)('%s', (file) => {
    const result = loadConfig(read(file));
    if (!result.ok) throw new Error(`${file} is invalid:\n${JSON.stringify(result.errors, null, 2)}`);
    expect(result.ok).toBe(true);
  });

  // The CLI runs the same loadConfig as above; spawning it for the two starter policies proves the
  // command an operator runs, without paying a process start-up for every file.
  it('`egressgate check` accepts the starter policies (exit 0, one-line summary)', async () => {
    const results = await Promise.all(
      ['deploy/examples/monitor.yaml', 'deploy/examples/enforce.yaml'].map(
        (file) =>
          new Promise<{ file: string; code: number | null; stdout: string; stderr: string }>((done) => {
            execFile(
              process.execPath,
              [CLI, 'check', '--config', file],
              { cwd: ROOT, timeout: 55_000 },
              (err, stdout, stderr) => done({ file, code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
            );
          }),
      ),
    );
    for (const r of results) {
      expect(r.stderr, r.file).toBe('');
      expect(r.code, r.file).toBe(0);
      expect(r.stdout.trim().split('\n'), r.file).toHaveLength(1);
    }
  }, 60_000);

  it('the validator is not vacuous: a broken copy of the starter policy is rejected with a path', () => {
    const broken = read('deploy/examples/monitor.yaml').replace('ports: [22, 443]', 'ports: [22, 70000]');
    const result = loadConfig(broken);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(JSON.stringify(result.errors)).toContain('roles.workstation.allow[1].ports');
  });

  it('monitor.yaml monitors and enforce.yaml enforces, for the same small-company roles', () => {
    const monitor = loadConfig(read('deploy/examples/monitor.yaml'));
    const enforce = loadConfig(read('deploy/examples/enforce.yaml'));
    if (!monitor.ok || !enforce.ok) throw new Error('example policies must be valid');
    expect(monitor.config.mode).toBe('monitor');
    expect(enforce.config.mode).toBe('enforce');
    for (const cfg of [monitor.config, enforce.config]) {
      expect(Object.keys(cfg.roles).sort()).toEqual(['ci', 'server', 'workstation']);
      expect(cfg.identity.hosts.flatMap((h) => h.roles).sort()).toEqual(['ci', 'server', 'workstation']);
      // No role may quietly opt out of the global mode in the shipped examples.
      for (const role of Object.values(cfg.roles)) expect(role.mode).toBeUndefined();
      expect(cfg.deny.privateRanges).toBe(true);
    }
  });

  // Broke: monitor.yaml and enforce.yaml carried the hashes of CHANGE-ME-ops (admin scope),
  // CHANGE-ME-soc and two agent tokens, plaintexts written beside them. Installed as docs/deploy.md
  // says, a gateway took `Bearer CHANGE-ME-ops` for PUT /v1/mode (enforce -> monitor, 200).
  it.each(POLICY_FILES)('%s grants no credential (a token in a published file is everyone\'s)', (file) => {
    const r = loadConfig(read(file));
    if (!r.ok) throw new Error(`${file} must be valid`);
    expect(r.config.admin.tokens, file).toEqual([]);
    expect(r.config.identity.agents, file).toEqual([]);
    expect(r.config.identity.users, file).toEqual([]);
  });

  it('the container policy writes state and flow logs only to the image volumes', () => {
    const r = loadConfig(read('deploy/examples/container-policy.yaml'));
    if (!r.ok) throw new Error('container policy must be valid');
    expect(r.config.state.path?.startsWith('/var/lib/egressgate/')).toBe(true);
    expect(r.config.flowLog.path?.startsWith('/var/log/egressgate/')).toBe(true);
  });
});

// ---- 2. Kubernetes ------------------------------------------------------------------------------

function listYaml(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...listYaml(p));
    else if (/\.ya?ml$/.test(entry.name)) out.push(p);
  }
  return out.sort();
}

const K8S_FILES = listYaml(join(DEPLOY, 'k8s'));

function docsOf(file: string): Obj[] {
  const docs = parseAllDocuments(readFileSync(file, 'utf8'));
  const out: Obj[] = [];
  for (const doc of docs) {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`);
    const value: unknown = doc.toJS();
    if (value !== null && value !== undefined) out.push(value as Obj);
  }
  return out;
}

/** All manifests of the base (not the kustomizations, not the policy). */
function baseObjects(): Obj[] {
  const k = docsOf(join(DEPLOY, 'k8s/base/kustomization.yaml'))[0]!;
  return (k['resources'] as string[]).flatMap((r) => docsOf(join(DEPLOY, 'k8s/base', r)));
}

function byKind(objs: Obj[], kind: string): Obj[] {
  return objs.filter((o) => o['kind'] === kind);
}

describe('Kubernetes manifests', () => {
  it('every YAML file under deploy/k8s parses', () => {
    expect(K8S_FILES.length).toBeGreaterThanOrEqual(8);
    for (const f of K8S_FILES) expect(docsOf(f).length, f).toBeGreaterThan(0);
  });

  it('every manifest has apiVersion, kind and metadata.name; every namespaced one a namespace', () => {
    for (const o of baseObjects()) {
      expect(typeof o['apiVersion'], JSON.stringify(o).slice(0, 80)).toBe('string');
      expect(typeof o['kind']).toBe('string');
      expect(typeof get(o, 'metadata.name')).toBe('string');
      if (o['kind'] !== 'Namespace') expect(typeof get(o, 'metadata.namespace'), String(get(o, 'metadata.name'))).toBe('string');
    }
  });

  it('kustomizations reference files that exist, and the overlays set the mode', () => {
    for (const dir of ['base', 'overlays/monitor', 'overlays/enforce']) {
      const k = docsOf(join(DEPLOY, 'k8s', dir, 'kustomization.yaml'))[0]!;
      expect(k['kind']).toBe('Kustomization');
      for (const r of k['resources'] as string[]) expect(existsSync(join(DEPLOY, 'k8s', dir, r)), `${dir}: ${r}`).toBe(true);
    }
    const base = docsOf(join(DEPLOY, 'k8s/base/kustomization.yaml'))[0]!;
    const gen = (base['configMapGenerator'] as Obj[]).find((g) => g['name'] === 'egressgate-policy');
    expect(gen?.['files']).toEqual(['policy.yaml']);
    for (const mode of ['monitor', 'enforce']) {
      const text = read(`deploy/k8s/overlays/${mode}/kustomization.yaml`);
      expect(text).toContain('value: --mode');
      expect(text).toContain(`value: ${mode}`);
    }
  });

  // Regression: the manifests ran egressgate:0.1.0, which no registry serves, and docs/deploy.md's
  // Kubernetes steps built no image (its container steps tag `egressgate`): pods could not pull.
  it("the image the manifests run is the one docs/deploy.md's Kubernetes steps build", () => {
    const images = new Set(
      baseObjects().flatMap((o) => ((get(o, 'spec.template.spec.containers') as Obj[] | undefined) ?? []).map((c) => String(c['image']))),
    );
    expect(images.size).toBe(1);
    const steps = shBlockAfter(read('docs/deploy.md'), '### Kubernetes');
    const built = [...steps.matchAll(/^docker build -f deploy\/Dockerfile -t (\S+) \.$/gm)].map((m) => m[1]);
    expect(built).toEqual([...images]);
    expect(steps.indexOf('docker build')).toBeLessThan(steps.indexOf('kubectl apply'));
  });

  it('the gateway Deployment: 2 replicas, probes on /healthz and /readyz, non-root, read-only root fs, policy mounted', () => {
    const [dep] = byKind(baseObjects(), 'Deployment');
    expect(get(dep, 'spec.replicas')).toBe(2);
    const c = get(dep, 'spec.template.spec.containers.0') as Obj;
    expect(get(c, 'livenessProbe.httpGet.path')).toBe('/healthz');
    expect(get(c, 'readinessProbe.httpGet.path')).toBe('/readyz');
    expect(get(c, 'securityContext.readOnlyRootFilesystem')).toBe(true);
    expect(get(c, 'securityContext.allowPrivilegeEscalation')).toBe(false);
    expect(get(dep, 'spec.template.spec.securityContext.runAsNonRoot')).toBe(true);
    expect((c['args'] as string[]).slice(0, 3)).toEqual(['serve', '--config', '/etc/egressgate/policy.yaml']);
    const volumes = get(dep, 'spec.template.spec.volumes') as Obj[];
    expect(volumes.find((v) => get(v, 'configMap.name') === 'egressgate-policy')).toBeTruthy();
    const ports = (c['ports'] as Obj[]).map((p) => p['containerPort']);
    expect(ports).toEqual(expect.arrayContaining([3128, 1080, 9180]));
  });

  it('Service, PodDisruptionBudget and the workload NetworkPolicy select the gateway', () => {
    const objs = baseObjects();
    const selector = { 'app.kubernetes.io/name': 'egressgate', 'app.kubernetes.io/component': 'gateway' };
    const [svc] = byKind(objs, 'Service');
    expect(get(svc, 'spec.selector')).toEqual(selector);
    const [pdb] = byKind(objs, 'PodDisruptionBudget');
    expect(get(pdb, 'spec.selector.matchLabels')).toEqual(selector);
    expect(get(pdb, 'spec.minAvailable')).toBe(1);
    const [np] = byKind(objs, 'NetworkPolicy');
    expect(get(np, 'spec.policyTypes')).toEqual(['Egress']);
    expect(get(np, 'spec.podSelector')).toEqual({});
    const egress = get(np, 'spec.egress') as Obj[];
    // `get` splits on dots, so read the label map directly.
    const gatewayRule = egress.find((e) => {
      const labels = get(e, 'to.0.podSelector.matchLabels') as Obj | undefined;
      return labels?.['app.kubernetes.io/component'] === 'gateway';
    });
    expect(gatewayRule).toBeTruthy();
    const ports = gatewayRule!['ports'] as Obj[];
    expect(ports.filter((p) => p['protocol'] === 'TCP').map((p) => p['port']).sort()).toEqual([1080, 3128]);
    // The SOCKS5 UDP relays: exactly the range the policy binds them in.
    const relays = loadConfig(read('deploy/k8s/base/policy.yaml'));
    if (!relays.ok) throw new Error('deploy/k8s/base/policy.yaml is invalid');
    const udp = ports.filter((p) => p['protocol'] === 'UDP');
    expect(udp.map((p) => `${p['port']}-${p['endPort']}`)).toEqual([relays.config.limits.udpRelayPorts]);
    // Nothing else but DNS: no ipBlock that would open the outside.
    expect(JSON.stringify(egress)).not.toContain('ipBlock');
  });

  it('the agent DaemonSet: hostPID, read-only /proc, only the two read capabilities', () => {
    const [ds] = byKind(baseObjects(), 'DaemonSet');
    expect(get(ds, 'spec.template.spec.hostPID')).toBe(true);
    const c = get(ds, 'spec.template.spec.containers.0') as Obj;
    expect((c['args'] as string[])[0]).toBe('agent');
    const mount = (c['volumeMounts'] as Obj[]).find((m) => m['name'] === 'host-proc');
    expect(mount?.['readOnly']).toBe(true);
    const vol = (get(ds, 'spec.template.spec.volumes') as Obj[]).find((v) => v['name'] === 'host-proc');
    expect(get(vol, 'hostPath.path')).toBe('/proc');
    expect(get(c, 'securityContext.capabilities.drop')).toEqual(['ALL']);
    expect(get(c, 'securityContext.capabilities.add')).toEqual(['SYS_PTRACE', 'DAC_READ_SEARCH']);
    expect(get(c, 'securityContext.readOnlyRootFilesystem')).toBe(true);
  });

  it('kubectl kustomize renders both overlays (monitor without the lock-down, enforce with it)', () => {
    if (!hasCommand('kubectl')) {
      skipLoudly('kubectl kustomize rendering', 'kubectl not installed');
      return;
    }
    // kubectl before 1.21 embeds kustomize v2, which predates `labels:` and inline `patches:`.
    const version = spawnSync('kubectl', ['version', '--client', '-o', 'json'], { encoding: 'utf8', timeout: 20_000 });
    const minor = Number.parseInt(String((JSON.parse(version.stdout || '{}') as { clientVersion?: { minor?: string } }).clientVersion?.minor), 10);
    if (!(minor >= 21)) {
      skipLoudly('kubectl kustomize rendering', `kubectl client minor version ${minor} < 21 (kustomize too old)`);
      return;
    }
    for (const mode of ['monitor', 'enforce'] as const) {
      const r = spawnSync('kubectl', ['kustomize', join(DEPLOY, 'k8s/overlays', mode)], { encoding: 'utf8', timeout: 20_000 });
      expect(r.stderr, `kubectl kustomize ${mode}`).toBe('');
      expect(r.status).toBe(0);
      const objs = parseAllDocuments(r.stdout).map((d) => d.toJS() as Obj);
      const kinds = objs.map((o) => o['kind']);
      expect(kinds).toEqual(expect.arrayContaining(['Namespace', 'ConfigMap', 'Service', 'Deployment', 'PodDisruptionBudget', 'DaemonSet']));
      expect(kinds.includes('NetworkPolicy')).toBe(mode === 'enforce');
      const [dep] = byKind(objs, 'Deployment');
      const args = get(dep, 'spec.template.spec.containers.0.args') as string[];
      expect(args.slice(-2)).toEqual(['--mode', mode]);
      // The generated ConfigMap (hash-suffixed name) is the one the Deployment mounts, and valid.
      const [cm] = byKind(objs, 'ConfigMap');
      const cmName = get(cm, 'metadata.name') as string;
      expect(cmName).toMatch(/^egressgate-policy-/);
      const vols = get(dep, 'spec.template.spec.volumes') as Obj[];
      expect(vols.some((v) => get(v, 'configMap.name') === cmName)).toBe(true);
      // `get` splits on dots, so read the `policy.yaml` key directly.
      const text = (cm!['data'] as Obj)['policy.yaml'];
      expect(typeof text).toBe('string');
      expect(loadConfig(text as string).ok).toBe(true);
    }
  });
});

// ---- 3. Dockerfile ----------------------------------------------------------------------------

interface Instruction {
  readonly op: string;
  readonly args: string;
  readonly stage: number;
}

/** Dockerfile → instructions (comments dropped, `\` continuations joined), with the stage index. */
function parseDockerfile(text: string): Instruction[] {
  const out: Instruction[] = [];
  let stage = -1;
  let pending = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (pending === '' && (line === '' || line.startsWith('#'))) continue;
    if (line.startsWith('#')) continue; // comment inside a continuation
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1)} `;
      continue;
    }
    const full = (pending + line).trim();
    pending = '';
    if (full === '') continue;
    const m = /^(\S+)\s*(.*)$/.exec(full)!;
    const op = m[1]!.toUpperCase();
    if (op === 'FROM') stage++;
    out.push({ op, args: m[2]!, stage });
  }
  return out;
}

describe('deploy/Dockerfile (parsed: no Docker engine in CI)', () => {
  const ins = parseDockerfile(read('deploy/Dockerfile'));
  const froms = ins.filter((i) => i.op === 'FROM');
  const last = froms.length - 1;
  const final = ins.filter((i) => i.stage === last);
  const runs = (stage: number): string => ins.filter((i) => i.stage === stage && i.op === 'RUN').map((i) => i.args).join('\n');

  it('is multi-stage: a build stage with npm ci + npm run build, a runtime with npm ci --omit=dev', () => {
    expect(froms.length).toBeGreaterThanOrEqual(2);
    expect(froms[0]!.args).toMatch(/\bAS\s+build\b/i);
    expect(runs(0)).toMatch(/\bnpm ci\b/);
    expect(runs(0)).toContain('npm run build');
    expect(runs(last)).toContain('npm ci --omit=dev');
    expect(runs(last)).not.toContain('npm run build');
    expect(final.some((i) => i.op === 'COPY' && /--from=build\b.*\bdist\b/.test(i.args))).toBe(true);
  });

  it('runs as a non-root user', () => {
    const users = final.filter((i) => i.op === 'USER');
    expect(users.length).toBeGreaterThan(0);
    const user = users.at(-1)!.args.split(':')[0]!;
    expect(['root', '0', '']).not.toContain(user);
  });

  it('is read-only-root-fs friendly: state and logs on volumes', () => {
    const volumes = final.filter((i) => i.op === 'VOLUME').map((i) => i.args).join(' ');
    expect(volumes).toContain('/var/lib/egressgate');
    expect(volumes).toContain('/var/log/egressgate');
  });

  it('has a HEALTHCHECK on /healthz with node fetch, and an ENTRYPOINT that execs node (PID 1) so SIGTERM reaches it', () => {
    const hc = final.find((i) => i.op === 'HEALTHCHECK');
    expect(hc?.args).toMatch(/CMD\s+\["node",/);
    expect(hc?.args).toContain('fetch(');
    const env = final.filter((i) => i.op === 'ENV').map((i) => i.args).join(' ');
    expect(env).toMatch(/EGRESSGATE_HEALTH_URL=http:\/\/127\.0\.0\.1:9180\/healthz/);
    expect(env).toContain(`UV_THREADPOOL_SIZE=${THREADPOOL_SIZE}`);
    // A shell that sets the umask and `exec`s node (node is PID 1), CMD's words passed on.
    const argv = JSON.parse(final.find((i) => i.op === 'ENTRYPOINT')!.args) as string[];
    expect(argv.slice(0, 2)).toEqual(['/bin/sh', '-c']);
    expect(argv).toHaveLength(4);
    expect(argv[2]).toBe(`umask 0027 && exec node ${NODE_FLAGS.join(' ')} /app/dist/cli.js "$@"`);
    expect(final.find((i) => i.op === 'STOPSIGNAL')?.args).toBe('SIGTERM');
    const cmd = JSON.parse(final.find((i) => i.op === 'CMD')!.args) as string[];
    expect(cmd[0]).toBe('serve');
  });

  // Regression: the image set no umask, so flow logs came out 0644 (world-readable), where the
  // systemd unit's UMask=0027 makes them 0640.
  it("the ENTRYPOINT's shell gives node the systemd unit's umask, exec's it (same pid) and passes CMD's words on", () => {
    const argv = JSON.parse(final.find((i) => i.op === 'ENTRYPOINT')!.args) as string[];
    const dir = mkdtempSync(join(tmpdir(), 'egw-entrypoint-'));
    try {
      // The image's script run here with /app/dist/cli.js a probe: what node gets.
      const probe = join(dir, 'probe.js');
      writeFileSync(probe, "console.log(JSON.stringify({ umask: process.umask().toString(8), pid: process.pid, ppid: process.ppid, args: process.argv.slice(2) }));\n");
      const script = (argv[2] as string).replace('/app/dist/cli.js', probe);
      const r = spawnSync('/bin/sh', ['-c', `echo $$; ${script}`, argv[3] as string, 'serve', '--http', '0.0.0.0:3128'], { encoding: 'utf8', timeout: 30_000 });
      expect(r.status, r.stderr).toBe(0);
      const [shellPid, json] = r.stdout.trim().split('\n');
      const got = JSON.parse(json as string) as { umask: string; pid: number; args: string[] };
      expect(got.umask).toBe('27');
      expect(got.pid).toBe(Number(shellPid));
      expect(got.args).toEqual(['serve', '--http', '0.0.0.0:3128']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const unit = read('deploy/systemd/egressgate.service');
    expect(/^UMask=(\d+)$/m.exec(unit)?.[1]).toBe('0027');
  });

  it('copies only files that exist into the image', () => {
    for (const i of ins.filter((x) => x.op === 'COPY' && !x.args.includes('--from'))) {
      const parts = i.args.split(/\s+/);
      for (const src of parts.slice(0, -1)) if (src !== '.') expect(existsSync(join(ROOT, src)), src).toBe(true);
    }
    expect(parseYaml(read('deploy/examples/container-policy.yaml'))).toBeTruthy();
  });
});

// ---- 4. systemd -------------------------------------------------------------------------------

/** INI → key → every value (systemd keys may repeat). */
function parseUnit(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';') || line.startsWith('[')) continue;
    const eq = line.indexOf('=');
    const key = line.slice(0, eq).trim();
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return out;
}

describe('systemd units', () => {
  const gw = parseUnit(read('deploy/systemd/egressgate.service'));
  const agent = parseUnit(read('deploy/systemd/egressgate-agent.service'));
  const one = (u: Map<string, string[]>, k: string): string | undefined => u.get(k)?.at(-1);

  it('egressgate.service is hardened', () => {
    expect(one(gw, 'DynamicUser') === 'yes' || (one(gw, 'User') ?? 'root') !== 'root').toBe(true);
    expect(one(gw, 'NoNewPrivileges')).toBe('yes');
    expect(one(gw, 'ProtectSystem')).toBe('strict');
    expect(one(gw, 'PrivateTmp')).toBe('yes');
    expect(gw.get('CapabilityBoundingSet')).toEqual(['']);
    expect(one(gw, 'RestrictAddressFamilies')?.split(/\s+/).sort()).toEqual(['AF_INET', 'AF_INET6', 'AF_NETLINK', 'AF_UNIX']);
    expect(one(gw, 'ExecReload')).toBe('/bin/kill -HUP $MAINPID');
    expect(one(gw, 'StateDirectory')).toBe('egressgate');
    expect(one(gw, 'LogsDirectory')).toBe('egressgate');
    expect(one(gw, 'ExecStart')).toMatch(/dist\/cli\.js serve --config \S+/);
  });

  it('egressgate.service starts node with the gateway\'s node flags', () => {
    expect(one(gw, 'ExecStart')).toBe(`/usr/bin/node ${NODE_FLAGS.join(' ')} /opt/egressgate/dist/cli.js serve --config /etc/egressgate/policy.yaml`);
  });

  it('egressgate.service sizes libuv\'s thread pool (DNS lookups at once)', () => {
    expect(gw.get('Environment')).toContain(`UV_THREADPOOL_SIZE=${THREADPOOL_SIZE}`);
  });

  it('LimitNOFILE covers 100,000 flows at 2 fds each plus headroom', () => {
    expect(Number(one(gw, 'LimitNOFILE'))).toBeGreaterThanOrEqual(2 * 100_000 + 10_000);
  });

  it('egressgate-agent.service gets exactly CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, and says why', () => {
    expect(one(agent, 'CapabilityBoundingSet')?.split(/\s+/).sort()).toEqual(['CAP_DAC_READ_SEARCH', 'CAP_SYS_PTRACE']);
    expect(one(agent, 'AmbientCapabilities')?.split(/\s+/).sort()).toEqual(['CAP_DAC_READ_SEARCH', 'CAP_SYS_PTRACE']);
    expect(one(agent, 'NoNewPrivileges')).toBe('yes');
    expect(one(agent, 'ProtectProc')).toBeUndefined(); // "invisible" would hide what it must see
    expect(agent.get('SystemCallFilter')).toContain('~@debug @privileged');
    const text = read('deploy/systemd/egressgate-agent.service');
    expect(text).toMatch(/# .*CAP_DAC_READ_SEARCH: list other users' \/proc\/<pid>\/fd/);
    expect(text).toMatch(/# .*CAP_SYS_PTRACE: readlink \/proc\/<pid>\/fd\/N/);
  });

  // Regression: agent/README.md's unit ran /usr/bin/egressgate, which the /opt install of
  // docs/deploy.md does not create.
  it("agent/README.md's unit runs what the shipped agent unit runs, from the /opt install of docs/deploy.md", () => {
    const readme = /^ExecStart=(\S+) (\S+) agent /m.exec(read('agent/README.md'));
    const shipped = /(\S+) (\S+) agent /.exec(one(agent, 'ExecStart') ?? '');
    expect(readme?.slice(1)).toEqual(shipped?.slice(1));
    expect(readme?.slice(1)).toEqual(['/usr/bin/node', '/opt/egressgate/dist/cli.js']);
    expect(read('docs/deploy.md')).toMatch(/cp -r [^\n]*\bdist\b[^\n]* \/opt\/egressgate\//);
  });

  // Regression: the /opt install of docs/deploy.md left no `egressgate` on PATH, so the rollout's
  // `egressgate check --config … && systemctl reload egressgate` stopped at "command not found" (127).
  it("docs/deploy.md's /opt install puts a working `egressgate` on PATH (the rollout runs `egressgate check`)", () => {
    const install = shBlockAfter(read('docs/deploy.md'), '### systemd');
    const onPath = install.split('\n').filter((l) => l.includes('/usr/local/bin/egressgate'));
    expect(onPath).toHaveLength(1);
    const dir = mkdtempSync(join(tmpdir(), 'egw-deploy-bin-'));
    try {
      // The install's copy, with node_modules linked rather than copied; the bin 0644 as `cp -r` leaves it.
      const opt = join(dir, 'opt/egressgate');
      const bin = join(dir, 'bin');
      mkdirSync(bin, { recursive: true });
      cpSync(join(ROOT, 'dist'), join(opt, 'dist'), { recursive: true });
      copyFileSync(join(ROOT, 'package.json'), join(opt, 'package.json'));
      symlinkSync(join(ROOT, 'node_modules'), join(opt, 'node_modules'));
      chmodSync(join(opt, 'dist/egressgate.cjs'), 0o644);
      const line = onPath[0]!.replaceAll('/opt/egressgate', opt).replaceAll('/usr/local/bin', bin);
      const step = spawnSync('sh', ['-c', line], { encoding: 'utf8', timeout: 10_000 });
      expect(step.stderr).toBe('');
      expect(step.status).toBe(0);
      const env = { ...process.env, PATH: `${bin}:${dirname(process.execPath)}:${process.env['PATH'] ?? ''}` };
      const r = spawnSync('egressgate', ['check', '--config', 'deploy/examples/monitor.yaml'], { cwd: ROOT, env, encoding: 'utf8', timeout: 20_000 });
      expect(r.error?.message).toBeUndefined(); // ENOENT: not on PATH; EACCES: not executable
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(/^ok: mode monitor, 3 roles/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("the rollout's `egressgate check … && systemctl reload egressgate` checks the file the unit reloads", () => {
    const config = /--config (\S+)$/.exec(one(gw, 'ExecStart') ?? '')?.[1];
    expect(config).toBe('/etc/egressgate/policy.yaml');
    const checked = [...read('docs/deploy.md').matchAll(/egressgate check --config (\S+) && systemctl reload egressgate/g)].map((m) => m[1]);
    expect(checked.length).toBeGreaterThan(0);
    for (const file of checked) expect(file).toBe(config);
  });

  it('both units pass systemd-analyze verify', () => {
    if (!hasCommand('systemd-analyze')) {
      skipLoudly('systemd-analyze verify', 'systemd-analyze not installed');
      return;
    }
    for (const unit of ['egressgate.service', 'egressgate-agent.service']) {
      const r = spawnSync('systemd-analyze', ['verify', '--man=no', join(DEPLOY, 'systemd', unit)], { encoding: 'utf8', timeout: 20_000 });
      // Warnings ("Unknown key …") go to stderr with exit 0: treat any output as a failure.
      expect(`${r.stderr}${r.stdout}`.trim(), unit).toBe('');
      expect(r.status, unit).toBe(0);
    }
  });
});

// ---- 5. nftables -------------------------------------------------------------------------------

describe('nftables lock-down', () => {
  const script = join(DEPLOY, 'nftables/egress-lockdown.sh');
  const sh = (args: string[]) => spawnSync(script, args, { encoding: 'utf8', timeout: 20_000 });

  it('renders the enforce and monitor rulesets with the parameters as set elements', () => {
    // --force: eth1 need not exist on the machine running the tests (checked below).
    const enforce = sh(['--print', '--force', '--wan', 'eth1', '--gateway-uid', '990', '--gateway-addr', '10.0.0.5', '--gateway-addr', 'fd00::5/128', '--gateway-iface', 'eth2']);
    expect(enforce.status).toBe(0);
    expect(enforce.stdout).toContain('reject with icmpx admin-prohibited');
    expect(enforce.stdout).toContain('add element inet egressgate wan_ifs { "eth1" }');
    expect(enforce.stdout).toContain('add element inet egressgate gateway_uids { 990 }');
    expect(enforce.stdout).toContain('add element inet egressgate gateway_v4 { 10.0.0.5 }');
    expect(enforce.stdout).toContain('add element inet egressgate gateway_v6 { fd00::5/128 }');
    expect(enforce.stdout).toContain('add element inet egressgate gateway_ifs { "eth2" }');
    // A gateway address counts only on its interface, and a forged source is dropped before that.
    expect(enforce.stdout).toContain('iifname @gateway_ifs ip saddr @gateway_v4 counter name "via_gateway" accept');
    expect(enforce.stdout).toContain('iifname @gateway_ifs ip6 saddr @gateway_v6 counter name "via_gateway" accept');
    expect(enforce.stdout).toContain('iifname != @wan_ifs fib saddr . mark . iif oif missing counter name "spoofed" drop');
    // Link control from any uid stays on the WAN link (hop limits, link-scope or broadcast destinations).
    expect(enforce.stdout).toContain('udp sport 68 udp dport 67 ip daddr 255.255.255.255 accept');
    expect(enforce.stdout).toContain('udp sport 546 udp dport 547 ip6 daddr ff02::1:2 accept');
    expect(enforce.stdout).not.toMatch(/^\s*udp sport \d+ udp dport \d+ accept$/m);
    // New inbound connections are dropped unless asked for (port forwards).
    expect(enforce.stdout).toContain('iifname @wan_ifs iifname != @inbound_ifs counter name "inbound" drop');
    expect(enforce.stdout).not.toContain('add element inet egressgate inbound_ifs');
    const inbound = sh(['--print', '--force', '--allow-inbound', '--wan', 'eth1', '--gateway-uid', '990']);
    expect(inbound.stdout).toContain('add element inet egressgate inbound_ifs { "eth1" }');
    const monitor = sh(['--print', '--force', '--monitor', '--wan', 'eth1', '--gateway-uid', '990']);
    expect(monitor.status).toBe(0);
    const rules = monitor.stdout.split('\n').filter((l) => !l.trim().startsWith('#'));
    expect(rules.filter((l) => /\b(reject|drop)\b/.test(l))).toEqual([]);
    expect(monitor.stdout).toContain('counter name "bypass" accept');
  });

  it('rejects bad parameters with exit code 2 before touching nft', () => {
    for (const args of [
      ['--wan', 'eth1"; flush ruleset; "'],
      ['--wan', 'eth1', '--gateway-uid', 'root'],
      ['--wan', 'eth1', '--gateway-addr', 'x', '--gateway-iface', 'eth2'],
      [],
      ['--bogus'],
      // A gateway address on no particular interface is one any client could claim.
      ['--wan', 'eth1', '--gateway-addr', '10.0.0.5'],
      ['--wan', 'eth1', '--gateway-addr', '10.0.0.5', '--gateway-iface', 'eth1'],
    ]) {
      const r = sh(['--print', '--force', ...args]);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stdout).toBe('');
    }
  });

  // Broke: a --wan naming no interface (a typo, `ppp+`, a bridge port) gave an all-accept table with
  // exit 0, from --check too, and --gateway-addr took 0.0.0.0/0 and ::/0.
  it('refuses a --wan that matches no interface (exit 2, says why) unless --force, and gateway addresses that are networks', () => {
    for (const action of ['--print', '--check']) {
      const r = sh([action, '--wan', 'egwnosuch0', '--gateway-uid', '990']);
      expect(r.status, action).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toContain('--wan egwnosuch0: no such interface here');
    }
    const ppp = sh(['--print', '--wan', 'ppp+', '--gateway-uid', '990']);
    expect(ppp.status).toBe(2);
    expect(ppp.stderr).toContain('wildcards');
    const gwif = sh(['--print', '--wan', 'lo', '--gateway-addr', '10.0.0.5', '--gateway-iface', 'egwnosuch0']);
    expect(gwif.status).toBe(2);
    expect(gwif.stderr).toContain('--gateway-iface egwnosuch0: no such interface here');
    const forced = sh(['--print', '--force', '--wan', 'egwnosuch0', '--gateway-uid', '990']);
    expect(forced.status).toBe(0);
    expect(forced.stderr).toContain('no such interface here (--force)');
    expect(forced.stdout).toContain('add element inet egressgate wan_ifs { "egwnosuch0" }');
    for (const addr of ['0.0.0.0/0', '::/0', '10.0.0.0/16', 'fd00::/48', '300.1.2.3']) {
      const r = sh(['--print', '--force', '--wan', 'eth1', '--gateway-iface', 'eth2', '--gateway-addr', addr]);
      expect(r.status, addr).toBe(2);
      expect(r.stdout, addr).toBe('');
    }
    for (const addr of ['10.0.0.0/24', '10.0.0.5/32', 'fd00::/64', 'fd00::5']) {
      expect(sh(['--print', '--force', '--wan', 'eth1', '--gateway-iface', 'eth2', '--gateway-addr', addr]).status, addr).toBe(0);
    }
  });

  it('in a network namespace: a bridge port is refused, a --wan without a default route is warned about', (tctx) => {
    if (!skipNotice(process.getuid?.() === 0 && hasCommand('nft') && hasCommand('unshare') && hasCommand('ip'), 'interface checks of egress-lockdown.sh', 'needs root, nft, ip and unshare')) tctx.skip();
    const inNs = (setup: string, args: string[]) =>
      spawnSync('unshare', ['--net', 'sh', '-c', `${setup} && exec "$0" "$@"`, script, ...args], { encoding: 'utf8', timeout: 20_000 });
    const veth = 'ip link add eth1 type veth peer name eth2 && ip link set eth1 up && ip link set eth2 up && ip addr add 192.0.2.2/24 dev eth1';
    const noDefault = inNs(veth, ['--check', '--wan', 'eth1', '--gateway-uid', '990']);
    expect(noDefault.status).toBe(0);
    expect(noDefault.stderr).toContain('--wan eth1 carries no default route');
    const bridged = inNs(`${veth} && ip link add br0 type bridge && ip link set eth1 master br0`, ['--check', '--wan', 'eth1', '--gateway-uid', '990']);
    if (bridged.stderr.includes('Unknown device type')) {
      skipLoudly('bridge-port check of egress-lockdown.sh', 'no bridge support in this kernel');
      return;
    }
    expect(bridged.status).toBe(2);
    expect(bridged.stderr).toContain('--wan eth1 is a port of br0');
  });

  it('both rulesets pass nft -c (in a throw-away network namespace)', (tctx) => {
    if (!skipNotice(process.getuid?.() === 0 && hasCommand('nft') && hasCommand('unshare') && hasCommand('ip'), 'nft -c of the lock-down rulesets', 'needs root, nft (Debian nftables) and unshare')) tctx.skip();
    for (const variant of ['--enforce', '--monitor']) {
      // eth1 with a default route and eth2 exist only in this namespace (veth pair).
      const setup =
        'ip link add eth1 type veth peer name eth2 && ip link set eth1 up && ip link set eth2 up && ip addr add 192.0.2.2/24 dev eth1 && ip route add default via 192.0.2.1';
      const args = ['--check', variant, '--wan', 'eth1', '--gateway-uid', '990', '--gateway-addr', '10.0.0.0/24', '--gateway-iface', 'eth2'];
      const r = spawnSync('unshare', ['--net', 'sh', '-c', `${setup} && exec "$0" "$@"`, script, ...args], {
        encoding: 'utf8',
        timeout: 20_000,
      });
      expect(r.stderr, variant).toBe('');
      expect(r.status, variant).toBe(0);
    }
  });
});

// ---- node flags: every way of starting the gateway carries gateway/node-flags.ts --------------

describe('node flags (gateway/node-flags.ts) on every launcher', () => {
  it('npm start runs `node <flags> dist/cli.js serve`, with the thread pool sized unless the environment says otherwise', () => {
    const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> };
    expect(pkg.scripts['start']).toContain(`UV_THREADPOOL_SIZE=\${UV_THREADPOOL_SIZE:-${THREADPOOL_SIZE}} node ${NODE_FLAGS.join(' ')} dist/cli.js serve`);
  });

  it('the egressgate bin starts node with them (`env -S` on its #! line)', () => {
    const pkg = JSON.parse(read('package.json')) as { bin: Record<string, string> };
    expect(pkg.bin['egressgate']).toBe('dist/egressgate.cjs');
    expect(read('egressgate.cts').split('\n')[0]).toBe(`#!/usr/bin/env -S node ${NODE_FLAGS.join(' ')}`);
  });

  it('the egressgate bin sizes the thread pool before any ES module loads, unless the environment already does', () => {
    // The bin compiled as tsc compiles it, with an ES module in cli.js's place that makes the pool
    // start and counts the process's threads: libuv starts all of its threads at once.
    const dir = mkdtempSync(join(tmpdir(), 'egw-bin-'));
    try {
      const out = ts.transpileModule(read('egressgate.cts'), {
        fileName: 'egressgate.cts',
        compilerOptions: { module: ts.ModuleKind.NodeNext, target: ts.ScriptTarget.ES2023, rewriteRelativeImportExtensions: true },
      }).outputText;
      expect(out).toContain('import("./cli.js")');
      writeFileSync(join(dir, 'egressgate.cjs'), out);
      writeFileSync(join(dir, 'package.json'), '{"type":"module"}');
      writeFileSync(
        join(dir, 'cli.js'),
        [
          "import { readFile } from 'node:fs/promises';",
          "import { readdirSync } from 'node:fs';",
          "await Promise.all(Array.from({ length: 32 }, () => readFile(import.meta.filename)));",
          "process.stdout.write(readdirSync('/proc/self/task').length + ' ' + (process.env.UV_THREADPOOL_SIZE ?? ''));",
        ].join('\n'),
      );
      const env = { ...process.env };
      delete env['UV_THREADPOOL_SIZE'];
      const run = (file: string, extra: Record<string, string> = {}): [number, string] => {
        const r = spawnSync(process.execPath, [join(dir, file)], { encoding: 'utf8', env: { ...env, ...extra } });
        expect(r.stderr).toBe('');
        const [threads, size] = r.stdout.split(' ');
        return [Number(threads), size ?? ''];
      };
      const [direct] = run('cli.js'); // libuv's default pool: 4 threads
      const [viaBin, size] = run('egressgate.cjs');
      expect(size).toBe(String(THREADPOOL_SIZE));
      expect(viaBin - direct).toBe(THREADPOOL_SIZE - 4);
      const [chosen, given] = run('egressgate.cjs', { UV_THREADPOOL_SIZE: '6' });
      expect(given).toBe('6');
      expect(chosen - direct).toBe(2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the benchmark starts the gateway with them, and with the thread pool sized', () => {
    expect(read('bench/run.ts')).toContain('const nodeArgs: string[] = [...NODE_FLAGS];');
    expect(read('bench/run.ts')).toContain('UV_THREADPOOL_SIZE: String(THREADPOOL_SIZE)');
  });

  it('node accepts them (a typo would stop the gateway from starting)', () => {
    const r = spawnSync(process.execPath, [...NODE_FLAGS, '-e', 'process.exit(0)'], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });
});
