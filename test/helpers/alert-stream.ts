/** An alert stream (`GET /v1/alerts/stream`) opened with a token, read as text: what the SSE tests share. */
import { type ClientRequest, type IncomingMessage, request } from 'node:http';

/** An open alert stream: the text received so far, and whether it ended. */
export interface AlertStream {
  text: string;
  ended: boolean;
  req: ClientRequest;
}

/** Open the stream on the admin listener at `admin` (host:port); resolves once its first comment is in. */
export function openAlertStream(admin: string, token: string): Promise<AlertStream> {
  const u = new URL(`http://${admin}`);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port), path: '/v1/alerts/stream', headers: { authorization: `Bearer ${token}` } });
    const s: AlertStream = { text: '', ended: false, req };
    req.on('response', (res: IncomingMessage) => {
      if (res.statusCode !== 200) return reject(new Error(`stream answered ${res.statusCode}`));
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        s.text += c;
        if (s.text.includes(': connected')) resolve(s);
      });
      res.on('close', () => {
        s.ended = true;
      });
    });
    req.on('error', () => {
      s.ended = true;
    });
    req.end();
  });
}
