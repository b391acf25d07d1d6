/**
 * Summarises a V8 `.cpuprofile` (from `node --cpu-prof`): top functions by self time and top
 * files by self time. `node --import tsx bench/cpuprofile-top.ts FILE.cpuprofile [--top 25]`.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '25' } } });
const file = positionals[0];
if (!file) {
  console.error('usage: cpuprofile-top.ts FILE.cpuprofile [--top N]');
  process.exit(2);
}
const prof = JSON.parse(readFileSync(file, 'utf8')) as Profile;
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const selfUs = new Map<number, number>();
prof.samples.forEach((id, i) => {
  selfUs.set(id, (selfUs.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0));
});
const total = [...selfUs.values()].reduce((a, b) => a + b, 0) || 1;

const short = (url: string): string => url.replace(/^file:\/\/.*?\/(dist|node_modules)\//, '$1/').replace(/^node:/, 'node:');
const fnKey = new Map<string, number>();
const fileKey = new Map<string, number>();
for (const [id, us] of selfUs) {
  const cf = byId.get(id)?.callFrame;
  if (!cf) continue;
  const k = `${cf.functionName || '(anonymous)'} ${short(cf.url)}:${cf.lineNumber + 1}`;
  fnKey.set(k, (fnKey.get(k) ?? 0) + us);
  const f = cf.url ? short(cf.url) : `(${cf.functionName})`;
  fileKey.set(f, (fileKey.get(f) ?? 0) + us);
}
const top = Number(values.top);
const show = (title: string, m: Map<string, number>): void => {
  console.log(`\n${title} (total ${(total / 1e6).toFixed(2)} s sampled)`);
  for (const [k, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`${((us / total) * 100).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(7)} ms  ${k}`);
  }
};
show('Self time by function', fnKey);
show('Self time by file', fileKey);
