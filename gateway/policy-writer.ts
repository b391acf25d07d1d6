/**
 * Every write to the running policy (SIGHUP's reload, PUT /v1/policy, a rollback) goes through
 * here, so the files the policy names go with it. With an HTTPS listener running, a policy whose
 * `tls` is set has its cert, key and ca read again (a certificate renewed at the same path, or new
 * paths) before it is swapped in:
 *
 *  1. validate the policy (PolicyStore.validate); invalid: refused as ever
 *  2. read and check the TLS files (tls-files.ts), asynchronously, off every connection's path
 *  3. swap, with the files' errors among the check's: a file that cannot be read, holds nothing
 *     usable or a key that is not the certificate's refuses the whole write (its path and file
 *     named), and the running policy and certificate stay
 *  4. in the same tick, new handshakes get the new certificate; live connections keep theirs
 *
 * Writes run one at a time, so the policy and the certificate that serve are always one write's.
 * `tls` turned on or off still waits for a restart (restart-settings.ts): the listener is made at
 * start. The store is the one holder of the policy; this only orders the writes to it.
 */
import type { Config } from '../policy/config.ts';
import { isNoPolicyText } from '../policy/empty-policy.ts';
import type { ConfigError } from '../policy/load-config.ts';
import type { Mode, PolicySnapshot } from '../policy/types.ts';
import type { Logger } from './context.ts';
import type { PolicyStoreLike } from './control-port.ts';
import { readTlsFiles, type TlsFilesResult, type TlsListenerFiles, type TlsSettings } from './listeners/tls-files.ts';
import type { ConfigCheck, PolicyStore, PolicyVersion, ReloadMeta, ReloadResult } from './policy-store.ts';

const NO_POLICY_FILE = 'the config file is empty (nothing, only comments, or null): a file caught half-written? The running policy stays; write {} in it for the built-in defaults';

/** A reload from the config file; `isUnchanged`: the file said what was running (no new version). */
export type FileReloadResult = ReloadResult & { readonly isUnchanged: boolean };

export class PolicyWriter implements PolicyStoreLike {
  private queue: Promise<unknown> = Promise.resolve();

  /** `tls`: the HTTPS listener's files, or null when no HTTPS listener runs (nothing is read then). */
  constructor(
    private readonly store: PolicyStore,
    private readonly tls: TlsListenerFiles | null,
    private readonly log: Logger,
  ) {}

  current(): PolicySnapshot {
    return this.store.current();
  }

  modeOverride(): Mode | null {
    return this.store.modeOverride();
  }

  setMode(mode: Mode | null, author?: string): void {
    this.store.setMode(mode, author ?? null);
  }

  onChange(fn: () => void): () => void {
    return this.store.onChange(fn);
  }

  history(): readonly PolicyVersion[] {
    return this.store.history();
  }

  /** PolicyStore.reload, the TLS files `input` names read first. */
  reload(input: string | object, meta: ReloadMeta = {}): Promise<ReloadResult> {
    return this.serially(() => this.write(input, meta));
  }

  /**
   * A config file's text (SIGHUP). Log rotation signals SIGHUP too: a text that says what is
   * already serving makes no new version (which would push real versions out of the rollback
   * history), its TLS files read again all the same (a certificate renewed in place is taken). The
   * comparison is made in the write's turn, so a SIGHUP queued behind another sees its result.
   * A text that is no policy (empty: policy/empty-policy.ts) is refused unless it is what runs.
   */
  reloadFile(text: string, meta: ReloadMeta = {}): Promise<FileReloadResult> {
    return this.serially(async () => {
      if (this.store.running().configText === text) return { ...(await this.retake()), isUnchanged: true };
      // A file caught half-written (truncated, its text not there yet) would swap the built-in
      // defaults in: monitor mode, no role and no admin token. serve may start on one; a reload
      // replacing a running policy refuses it, as PUT /v1/policy does.
      if (isNoPolicyText(text)) return { ok: false, errors: [{ path: '(root)', message: NO_POLICY_FILE }], isUnchanged: false };
      return { ...(await this.write(text, meta)), isUnchanged: false };
    });
  }

  /** PolicyStore.rollback, the TLS files the version names read first. */
  rollback(version: number, meta: { author?: string | null; check?: ConfigCheck } = {}): Promise<ReloadResult> {
    return this.serially(async () => {
      const kept = this.store.history().find((v) => v.version === version);
      const files = kept ? await this.readFiles(kept.config.tls) : null;
      const result = this.store.rollback(version, { ...meta, check: withFiles(meta.check, files) });
      if (result.ok) this.take(kept?.config.tls, files, result.version);
      return result;
    });
  }

  private async write(input: string | object, meta: ReloadMeta): Promise<ReloadResult> {
    const r = this.store.validate(input, meta);
    if (!r.ok) return { ok: false, errors: r.errors };
    const files = await this.readFiles(r.config.tls);
    const result = this.store.apply(r.config, typeof input === 'string' ? input : null, { ...meta, check: withFiles(meta.check, files) });
    if (result.ok) this.take(r.config.tls, files, result.version);
    return result;
  }

  /** The running policy's TLS files read again, the policy itself unchanged. */
  private async retake(): Promise<ReloadResult> {
    const { config, version } = this.store.current();
    const files = await this.readFiles(config.tls);
    if (files && !files.ok) return { ok: false, errors: files.errors };
    this.take(config.tls, files, version);
    return { ok: true, version };
  }

  private serially<T>(run: () => Promise<T>): Promise<T> {
    const done = this.queue.then(run);
    this.queue = done.catch(() => undefined);
    return done;
  }

  /** The files, read and checked; null when there is nothing to read (no listener, or `tls` off). */
  private readFiles(tls: Config['tls'] | undefined): Promise<TlsFilesResult> | null {
    return this.tls && tls ? readTlsFiles(tls) : null;
  }

  private take(tls: TlsSettings | null | undefined, files: TlsFilesResult | null, version: number): void {
    if (!this.tls || !tls || !files?.ok || !this.tls.take(files.material)) return;
    const c = files.material.certificate;
    this.log.info(
      { cert: tls.cert, subject: c.subject, issuer: c.issuer, validTo: c.validTo, fingerprint256: c.fingerprint256, ca: tls.ca ?? null, requestClientCert: files.material.requestCert, version },
      'TLS listener: new handshakes get this certificate; live connections keep theirs',
    );
  }
}

/** `check`, then the TLS files' errors: both refuse the write. */
function withFiles(check: ConfigCheck | undefined, files: TlsFilesResult | null): ConfigCheck | undefined {
  if (!files || files.ok) return check;
  const errors: readonly ConfigError[] = files.errors;
  return (config) => [...(check?.(config) ?? []), ...errors];
}
