/**
 * Pipe a downstream (client) socket and an upstream (destination) socket for one flow:
 * - exact payload metering: one addition per chunk into flow.bytesOut / flow.bytesIn;
 * - backpressure both ways (write() === false → pause the other side until 'drain');
 * - half-close both ways (a FIN from one side is passed on; the flow ends when both sides ended
 *   and node has handed each of them its last bytes: a slow reader's tail still queued here, the
 *   client's or the destination's, keeps the flow live, so a SIGTERM drain waits for it and a cut
 *   says `shutdown`, not `closed`; a side reset after its FIN while the other still sends to it ends
 *   the flow as a reset, not `closed`; a destination reset before its FIN resets the client too, after
 *   what the destination sent, and a client gone without its FIN resets the destination, after what
 *   the client sent);
 * - a byte budget towards the destination: not one byte past flow.budgetOut is written upstream
 *   (where flow.onBudget lets the flow run on, it moves flow.budgetOut and the rest meets that);
 * - idle timeout: one timer, on the client socket — every byte either way is a read or a write on
 *   it, and node re-arms a socket's timer on both (only while the flow waits for a slow destination
 *   after both ends, the destination socket gets one too: the client socket may be gone); when it
 *   fires, the client is asked whether it reset (socket-reset.ts askIfReset: a client paused for
 *   backpressure never read its RST), so the record says client-reset, not idle-timeout;
 * - the flow ends once (finish): the handlers stay attached but do nothing after it, so ending a
 *   tunnel costs no listener removals;
 * - bulk directions read into a reused buffer (read-buffer.ts): no allocation per chunk;
 * - flow.abort = reset both sides at once (detector kill, admin DELETE).
 */
import type { Socket } from 'node:net';
import type { FlowTable } from './flow-table.ts';
import type { Flow } from './flow.ts';
import { adoptReadBuffer } from './read-buffer.ts';
import { askIfReset, resetSocket } from './socket-reset.ts';

/**
 * A read at least this large marks a bulk direction: that socket then reads into a buffer of its
 * own (read-buffer.ts) instead of a fresh allocation per read. Idle and chatty tunnels never
 * reach it, so they hold no buffer (RSS per idle tunnel stays small).
 */
const BULK_READ_BYTES = 16 * 1024;

export interface TunnelOptions {
  idleTimeoutMs: number;
  /** Bytes the client already sent after its handshake (they belong upstream). */
  head?: Buffer;
  /** Called when the flow crosses its byte budget (the detection engine raises the alert). */
  onBudgetExceeded?: (flow: Flow) => void;
}

/** Start piping; the FlowTable closes the flow when the tunnel ends. */
export function tunnel(flows: FlowTable, flow: Flow, down: Socket, up: Socket, opts: TunnelOptions): void {
  let downEnded = false;
  let upEnded = false;
  let done = false;
  // Per side: whether trying buffer mode (read-buffer.ts) is over (switched, or impossible), and
  // whether that side stopped reading for a pending write.
  let isDownSettled = false;
  let isUpSettled = false;
  let isDownStopped = false;
  let isUpStopped = false;
  // Both sides are done, but node still holds bytes for the client or the destination (a slow
  // reader): which of them still waits for its 'finish'.
  let isDelivering = false;
  let isDownOwed = false;
  let isUpOwed = false;
  // The destination reset after its FIN while the client could still send: the client's upload was
  // cut short, so the flow ends upstream-reset (once the client has what the destination sent).
  let isUploadCut = false;

  const finish = (reason: string): void => {
    if (done) return;
    done = true;
    // The handlers stay attached and ignore what comes after this. A side paused or stopped for
    // backpressure would never see its peer's FIN: keep reading (and discarding) so a half-open
    // socket still closes when its peer does, and one that stays silent still goes after the idle
    // timeout, so no peer can hold a socket forever.
    releaseAfterFlow(down, 0);
    releaseAfterFlow(up, opts.idleTimeoutMs);
    flows.close(flow, reason);
  };

  /**
   * Client → destination, metered and budgeted. `afterWrite` is passed on to the write (buffer
   * mode uses it to learn when its buffer is free again).
   */
  const sendUp = (data: Buffer, afterWrite?: () => void): void => {
    let chunk = data;
    // One comparison per chunk; the loop runs again only when the chunk crosses the budget.
    while (chunk.length > flow.budgetOut - flow.bytesOut) {
      // The budget is exact: forward what fits, then cut the flow (both sides reset) — unless the
      // detection engine lets it run on (monitor mode, or not an upload yet: it then moves
      // flow.budgetOut on to where the rule could hold, and the rest of the chunk meets that).
      const room = flow.budgetOut - flow.bytesOut;
      if (room > 0) {
        flow.bytesOut += room;
        up.write(chunk.subarray(0, room));
        chunk = chunk.subarray(room);
      }
      const before = flow.budgetOut;
      const cut = flow.onBudget ? flow.onBudget(flow) : true;
      if (cut) {
        opts.onBudgetExceeded?.(flow);
        cutAtBudget();
        return;
      }
      // A budget that did not move on would be asked again forever.
      if (flow.budgetOut <= before) flow.budgetOut = Number.POSITIVE_INFINITY;
    }
    flow.bytesOut += chunk.length;
    up.write(chunk, afterWrite);
  };

  // 'data' mode: node allocated the chunk; backpressure pauses the other side until 'drain'.
  const onDownData = (chunk: Buffer): void => {
    if (done) return;
    sendUp(chunk);
    if (done) return;
    if (up.writableNeedDrain) down.pause();
    if (chunk.length >= BULK_READ_BYTES && !isDownSettled) isDownSettled = adoptReadBuffer(down, onDownRead) !== 'not-now';
  };
  const onUpData = (chunk: Buffer): void => {
    if (done) return;
    flow.bytesIn += chunk.length;
    if (!down.write(chunk)) up.pause();
    if (chunk.length >= BULK_READ_BYTES && !isUpSettled && !done) isUpSettled = adoptReadBuffer(up, onUpRead) !== 'not-now';
  };

  // Buffer mode: the bytes live in our buffer until the kernel has taken them. A write the kernel
  // took at once leaves writableLength at 0 and reading goes on; otherwise reading stops (return
  // false) until that write has completed.
  const afterUpWrite = (): void => {
    if (isDownStopped && !done) {
      isDownStopped = false;
      down.resume();
    }
  };
  const afterDownWrite = (): void => {
    if (isUpStopped && !done) {
      isUpStopped = false;
      up.resume();
    }
  };
  // After the flow ended the read callbacks stay installed on the sockets: discard, count nothing,
  // but keep reading so the peer's FIN is still seen and the socket can close.
  const onDownRead = (n: number, buf: Buffer): boolean => {
    if (done) return true;
    sendUp(buf.subarray(0, n), afterUpWrite);
    if (done) return false;
    if (up.writableLength > 0) {
      isDownStopped = true;
      return false;
    }
    return true;
  };
  const onUpRead = (n: number, buf: Buffer): boolean => {
    if (done) return true;
    flow.bytesIn += n;
    down.write(buf.subarray(0, n), afterDownWrite);
    if (down.writableLength > 0) {
      isUpStopped = true;
      return false;
    }
    return true;
  };
  /**
   * Both sides ended (or the destination closed after its FIN): the flow is `closed` once node has
   * handed each side every byte it holds for it. Until then it stays live — the idle timeout still
   * applies, a drain waits for it (bounded by its grace) — and one 'finish' listener per side still
   * owed waits, only on this rare path. Without it the record said everything arrived while the tail
   * was lost at a process exit. A side that closes before its 'finish' was reset: client-reset or
   * upstream-reset (onDownClose, onUpClose).
   */
  const closeWhenDelivered = (): void => {
    if (isDelivering) return;
    isDownOwed = down.writableLength > 0 && !down.destroyed;
    isUpOwed = up.writableLength > 0 && !up.destroyed;
    if (!isDownOwed && !isUpOwed) {
      endDelivered();
      return;
    }
    isDelivering = true;
    if (isDownOwed) down.once('finish', onDownDelivered);
    if (isUpOwed) {
      up.once('finish', onUpDelivered);
      // The client socket may close while the destination still reads: its idle timer goes with it.
      if (opts.idleTimeoutMs > 0) up.setTimeout(opts.idleTimeoutMs, onUpTimeout);
    }
  };
  // A side owed nothing when the wait began may not have emitted 'finish' yet: the flags say who waits.
  const onDownDelivered = (): void => {
    isDownOwed = false;
    if (!done && !isUpOwed) endDelivered();
  };
  const onUpDelivered = (): void => {
    isUpOwed = false;
    if (!done && !isDownOwed) endDelivered();
  };
  const endDelivered = (): void => {
    if (!isUploadCut) {
      finish('closed');
      return;
    }
    // What the client still sends would go nowhere: it learns so as it would from the destination
    // itself (a clean end would tell it the upload arrived).
    reset(down);
    finish('upstream-reset');
  };
  const onUpTimeout = (): void => {
    if (done) up.destroy();
    else abort('idle-timeout');
  };
  // 'drain' resumes a side paused in 'data' mode; a side stopped in buffer mode waits for its write.
  const onDownDrain = (): void => {
    if (!isUpStopped && !done) up.resume();
  };
  const onUpDrain = (): void => {
    if (!isDownStopped && !done) down.resume();
  };
  const onDownEnd = (): void => {
    if (done) return;
    downEnded = true;
    up.end();
    if (upEnded) closeWhenDelivered();
  };
  const onUpEnd = (): void => {
    if (done) return;
    upEnded = true;
    down.end();
    if (downEnded) closeWhenDelivered();
  };
  // Live: the flow's idle timeout. After the flow: the client socket outstayed it.
  const onTimeout = (): void => {
    // Handed its last byte while the destination still reads: only the destination's timer counts.
    if (done || (isDelivering && !isDownOwed)) {
      down.destroy();
      return;
    }
    // A client paused for backpressure does not read its reset: it is asked now, so the record says
    // it went (client-reset), not that it was idle. Either way both sides go at once (a destination
    // that stopped reading would otherwise hold what the client sent for another timeout).
    askIfReset(down, (isReset) => {
      if (isReset) abort('client-reset');
      else if (!done) abort('idle-timeout');
    });
  };
  const onDownClose = (hadError: boolean): void => {
    // Closed after its 'finish' while the destination still reads: the flow waits for that.
    if (isDelivering && !isDownOwed) return;
    if (!done) {
      // Closed before it took its last bytes ('finish' comes first otherwise), or reset after its FIN
      // while the destination still sent: the client went. Closed cleanly after its FIN (a socket
      // that does not stay half-open): the client's choice.
      const isClean = downEnded && !isDelivering && !hadError;
      finish(isClean ? 'closed' : 'client-reset');
      // A client gone without its FIN resets the destination, after what the client sent, as a direct
      // connection would: a clean end would tell it the upload was whole (a read-until-close upload
      // would look complete), and a destroy would drop what is still queued for it.
      if (isClean) up.destroy();
      else resetWhenFlushed(up);
    }
  };
  const onUpClose = (hadError: boolean): void => {
    if (done) return;
    if (isDelivering) {
      // Closed before it took the client's last bytes: it reset. What it sent still reaches the client.
      if (isUpOwed) finish('upstream-reset');
      return;
    }
    if (upEnded) {
      // Reset after its FIN while the client's side was still open (a write to it failed, or the
      // reset was read): whatever the client sent or still sends does not arrive.
      if (hadError && !downEnded) isUploadCut = true;
      // Let what the upstream sent reach the client before closing it.
      down.end();
      closeWhenDelivered();
      return;
    }
    // Reset before its FIN: the destination's stream was cut short. The client is handed what the
    // destination sent, then reset, as a direct connection would be: a clean end would tell it the
    // stream was whole (a read-until-close download would look complete).
    finish('upstream-reset');
    resetWhenFlushed(down);
  };
  const onError = (): void => {
    // 'close' follows every 'error'; the close handlers decide the reason.
  };

  /**
   * Budget kill: the client is reset at once, but the upstream gets a FIN after the bytes that fit,
   * so exactly `budgetOut` bytes reach the destination (a reset would drop what is still queued in
   * our send buffers and make the record's bytesOut a lie). Destroyed if it does not close in time.
   */
  function cutAtBudget(): void {
    flow.abort = null;
    if (!done) finish('an0080.bulk-upload');
    reset(down);
    up.end();
    const timer = setTimeout(() => up.destroy(), 5000);
    timer.unref();
    up.once('close', () => clearTimeout(timer));
  }

  function abort(reason: string): void {
    flow.abort = null;
    if (!done) finish(reason);
    reset(down);
    reset(up);
  }

  flow.abort = (reason: string) => {
    // FlowTable.kill() has already closed the flow with the kill reason.
    done = true;
    reset(down);
    reset(up);
    void reason;
  };

  flows.markConnected(flow);
  down.on('data', onDownData);
  up.on('data', onUpData);
  down.on('drain', onDownDrain);
  up.on('drain', onUpDrain);
  down.on('end', onDownEnd);
  up.on('end', onUpEnd);
  down.on('error', onError);
  up.on('error', onError);
  down.on('close', onDownClose);
  up.on('close', onUpClose);
  if (opts.idleTimeoutMs > 0) down.setTimeout(opts.idleTimeoutMs, onTimeout);
  if (opts.head && opts.head.length > 0) {
    sendUp(opts.head);
    if (!done && up.writableNeedDrain) down.pause();
  }
  // A FIN that came with the handshake (request + payload + FIN in one go) emitted 'end' before
  // these listeners existed, even on a paused socket: pass it on now or the flow never ends.
  if (!done && down.readableEnded) onDownEnd();
  if (!done && up.readableEnded) onUpEnd();
  if (!done && down.isPaused() && !up.writableNeedDrain) down.resume();
  if (!done && up.isPaused()) up.resume();
}

function destroySelf(this: Socket): void {
  this.destroy();
}

/**
 * After the flow: keep `s` reading so its peer's FIN still closes it. `idleTimeoutMs` > 0 arms an
 * idle timer of its own on a socket that had none (the destination side), unless it is already
 * closing both ways and will go without any help from its peer.
 */
function releaseAfterFlow(s: Socket, idleTimeoutMs: number): void {
  if (s.destroyed) return;
  s.resume();
  if (idleTimeoutMs > 0 && !(s.readableEnded && s.writableEnded)) s.setTimeout(idleTimeoutMs, destroySelf);
}

const NO_BYTES = Buffer.alloc(0);

/** Reset `s` once node has handed the kernel what is queued for it (at once when nothing is). */
export function resetWhenFlushed(s: Socket): void {
  if (s.destroyed) return;
  if (s.writableLength === 0) {
    reset(s);
    return;
  }
  // The callback runs after the writes queued before it; a client that stops reading is cut by its
  // idle timer (onTimeout destroys it once the flow is done).
  s.write(NO_BYTES, () => {
    if (!s.destroyed) reset(s);
  });
}

/** TCP reset, the HTTPS listener's TLS sockets included (socket-reset.ts). */
function reset(s: Socket): void {
  resetSocket(s);
}
