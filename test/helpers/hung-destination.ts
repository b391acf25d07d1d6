/**
 * A destination whose TCP connect hangs (Linux): a listener that never accepts, its one-slot accept
 * queue filled from 127.0.0.9, so further SYNs are dropped. Once `release()` frees the queue, the
 * listener accepts for 3.5 s (two SYN retransmissions) and names every peer: a dial left running
 * would connect then, from 127.0.0.1.
 */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';

const ACCEPT_SCRIPT = [
  'import socket,sys,time',
  's=socket.socket()',
  's.bind(("127.0.0.1",0))',
  's.listen(0)',
  'print(s.getsockname()[1],flush=True)',
  'sys.stdin.readline()',
  's.settimeout(0.2)',
  'end=time.time()+3.5',
  'while time.time()<end:',
  '  try:',
  '    c,a=s.accept()',
  '    print("peer",a[0],flush=True)',
  '  except socket.timeout:',
  '    pass',
  'print("done",flush=True)',
].join('\n');

/** A destination whose connect hangs until `release()`; `peers()` names who connected after that. */
export interface HungDestination {
  port: number;
  release(): Promise<string[]>;
  close(): void;
}

export async function hungDestination(): Promise<HungDestination> {
  const py: ChildProcessWithoutNullStreams = spawn(existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3', ['-c', ACCEPT_SCRIPT]);
  let out = '';
  py.stdout.on('data', (c: Buffer) => {
    out += c.toString();
  });
  while (!out.includes('\n')) await once(py.stdout, 'data');
  const port = Number(out.split('\n')[0]);
  const fillers: Socket[] = [];
  for (let i = 0; i < 3; i++) {
    const f = connect({ port, host: '127.0.0.1', localAddress: '127.0.0.9' });
    f.on('error', () => undefined);
    fillers.push(f);
  }
  await once(fillers[0] as Socket, 'connect');
  return {
    port,
    release: async () => {
      py.stdin.write('go\n');
      const deadline = Date.now() + 10_000;
      while (!out.includes('done') && Date.now() < deadline) await once(py.stdout, 'data');
      for (const f of fillers) f.destroy();
      return out
        .split('\n')
        .filter((l) => l.startsWith('peer '))
        .map((l) => l.slice(5));
    },
    close: () => {
      for (const f of fillers) f.destroy();
      py.kill();
    },
  };
}
