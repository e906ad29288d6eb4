// The WebSocket half of the protocol (docs/protocol.md §5), as a small state machine
// that owns one socket at a time:
//
//   connect → `ready` → send `sync` (since: the last seq held per conversation)
//           → `synced`: online; resend every unconfirmed send with its client_msg_id
//   close, network loss or silence → "reconnecting", wait (exponential backoff with
//           jitter), connect again
//
// A send stays unconfirmed until its own `message` echo arrives (an `accepted` is not
// a storage promise, §5.4), so a reconnect resends it; the server answers a retry of a
// stored message with the same message_id and does not deliver it twice. Edits,
// deletes and reactions (v1.1) go the same way, and are also done when an `accepted`
// says they changed nothing (then no echo comes).
//
// Everything that touches the outside (the socket, timers, randomness, the auth check)
// is injected, so the tests drive it with a fake socket and fake timers.

import type { ChangeFrame, ClientFrame, ServerFrame } from './types';

export type Status = 'connecting' | 'online' | 'reconnecting' | 'stopped';

/** The part of the browser's WebSocket the client uses. */
export interface SocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  setInterval(fn: () => void, ms: number): unknown;
  clearInterval(handle: unknown): void;
  now(): number;
}

const realTimers: Timers = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (h) => globalThis.clearTimeout(h as number),
  setInterval: (fn, ms) => globalThis.setInterval(fn, ms),
  clearInterval: (h) => globalThis.clearInterval(h as number),
  now: () => Date.now(),
};

export interface Backoff {
  baseMs: number;
  maxMs: number;
}

/** Delay before reconnect attempt `attempt` (0-based): doubling, capped, with jitter
 * in [50%, 100%] so that many clients of a restarted server do not return at once. */
export function backoffDelay(attempt: number, b: Backoff, random: () => number): number {
  const full = Math.min(b.maxMs, b.baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(full * (0.5 + random() / 2));
}

/** A send the server has not confirmed with its `message` echo yet. */
export interface PendingSend {
  client_msg_id: string;
  conversation_id: string;
  body: string;
  /** Attachment ids (uploads of the sender's); none when empty. */
  attachments: string[];
  /** The message_id it answers (same conversation), or null. */
  reply_to: string | null;
  accepted: boolean;
}

type Unsent<F> = F extends unknown ? Omit<F, 'client_msg_id'> : never;
/** A change as asked for: its frame without the client_msg_id the client gives it. */
export type ChangeRequest = Unsent<ChangeFrame>;

export interface ChatClientOptions {
  /** WebSocket URL, token included (`…/api/v1/ws?token=…`). */
  url: string;
  /** The last seq held per conversation, asked for at every `sync`. */
  since: () => Record<string, number>;
  onFrame: (frame: ServerFrame) => void;
  onStatus: (status: Status, retryInMs?: number) => void;
  /** A send, or a change, refused for good (bad_request, too_large, forbidden,
   * not_found, blocked…). */
  onSendFailed?: (send: PendingSend | ChangeFrame, code: string, message: string) => void;
  /** Called when a connection fails before `ready` (the browser hides the upgrade's
   * 401): resolve false when the token is no longer valid. */
  checkAuth?: () => Promise<boolean>;
  onUnauthorized?: () => void;
  createSocket?: (url: string) => SocketLike;
  timers?: Timers;
  random?: () => number;
  backoff?: Backoff;
  /** Send a `ping` after this long without a frame; give up on the socket after
   * `deadAfterMs` without one (a silent network loss never fires `close`). */
  pingAfterMs?: number;
  deadAfterMs?: number;
  newId?: () => string;
}

/** Retry later with the same client_msg_id; everything else is final (§5.4). */
const RETRYABLE = new Set(['rate_limited', 'unavailable', 'internal']);

export class ChatClient {
  private readonly o: Required<Omit<ChatClientOptions, 'onSendFailed' | 'checkAuth' | 'onUnauthorized'>> &
    ChatClientOptions;
  private socket: SocketLike | null = null;
  private status: Status = 'stopped';
  private ready = false;
  private synced = false;
  private attempt = 0;
  private retryTimer: unknown = null;
  private livenessTimer: unknown = null;
  private lastFrameAt = 0;
  private pingSent = false;
  private me: string | null = null;
  private readonly pending = new Map<string, PendingSend>();
  /** Changes not confirmed yet, by client_msg_id, oldest first. */
  private readonly changes = new Map<string, ChangeFrame>();
  private readonly reads = new Map<string, number>();

  constructor(options: ChatClientOptions) {
    this.o = {
      createSocket: (url) => new WebSocket(url) as unknown as SocketLike,
      timers: realTimers,
      random: Math.random,
      backoff: { baseMs: 500, maxMs: 15_000 },
      pingAfterMs: 20_000,
      deadAfterMs: 45_000,
      newId: () => crypto.randomUUID(),
      ...options,
    };
  }

  /** Connect (and keep reconnecting until `stop`). */
  start(): void {
    if (this.status !== 'stopped') return;
    this.setStatus('connecting');
    this.connect();
  }

  stop(): void {
    this.setStatus('stopped');
    this.clearTimers();
    this.drop();
  }

  get currentStatus(): Status {
    return this.status;
  }

  /** Unconfirmed sends, oldest first. */
  unconfirmed(): PendingSend[] {
    return [...this.pending.values()];
  }

  /** Queue a message (answering `reply_to` when given); it goes out now if the session
   * is synced, else after the next `synced`. Returns its client_msg_id. */
  send(conversation_id: string, body: string, attachments: string[] = [], reply_to: string | null = null): string {
    const client_msg_id = this.o.newId();
    const p: PendingSend = {
      client_msg_id,
      conversation_id,
      body,
      attachments: [...attachments],
      reply_to: reply_to || null,
      accepted: false,
    };
    this.pending.set(client_msg_id, p);
    if (this.synced) this.resend(p);
    return client_msg_id;
  }

  /** Queue an edit, delete or reaction like a send: out now if the session is synced,
   * else after the next `synced`, and again after each reconnect until it is done.
   * Returns its client_msg_id. */
  change(request: ChangeRequest): string {
    const frame = { ...request, client_msg_id: this.o.newId() } as ChangeFrame;
    this.changes.set(frame.client_msg_id, frame);
    if (this.synced) this.write(frame);
    return frame.client_msg_id;
  }

  /** Changes not done yet, oldest first. */
  unconfirmedChanges(): ChangeFrame[] {
    return [...this.changes.values()];
  }

  /** Forget an unconfirmed send or change (the user gave up on it). */
  discard(client_msg_id: string): void {
    this.pending.delete(client_msg_id);
    this.changes.delete(client_msg_id);
  }

  /** Send `sync` again (when synced): its `synced` brings the presence of everyone
   * sharing a conversation now, e.g. the members of one just learned of (presence
   * frames only come when someone's first session opens or last one closes). */
  resync(): void {
    if (this.synced) this.write({ type: 'sync', since: this.o.since() });
  }

  typing(conversation_id: string): void {
    if (this.synced) this.write({ type: 'typing', conversation_id });
  }

  /** Move the read marker; kept and sent after the next `synced` when offline. */
  read(conversation_id: string, seq: number): void {
    if (this.synced) this.write({ type: 'read', conversation_id, seq });
    else this.reads.set(conversation_id, Math.max(seq, this.reads.get(conversation_id) ?? 0));
  }

  /** The browser says the network is gone: do not wait for the socket to notice. */
  networkLost(): void {
    if (this.status === 'stopped' || !this.socket) return;
    this.drop();
    this.scheduleReconnect();
  }

  /** The browser says the network is back: try now rather than at the next backoff. */
  networkBack(): void {
    if (this.status !== 'reconnecting' || this.socket) return;
    this.attempt = 0;
    if (this.retryTimer !== null) this.o.timers.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.connect();
  }

  private setStatus(s: Status, retryInMs?: number): void {
    this.status = s;
    this.o.onStatus(s, retryInMs);
  }

  private connect(): void {
    this.retryTimer = null;
    const socket = this.o.createSocket(this.o.url);
    this.socket = socket;
    this.ready = false;
    this.synced = false;
    socket.onopen = () => {
      if (socket !== this.socket) return;
      this.lastFrameAt = this.o.timers.now();
      this.startLiveness();
    };
    socket.onmessage = (ev) => {
      if (socket !== this.socket) return;
      this.lastFrameAt = this.o.timers.now();
      this.pingSent = false;
      let frame: ServerFrame;
      try {
        frame = JSON.parse(String(ev.data)) as ServerFrame;
      } catch {
        return;
      }
      if (frame && typeof frame === 'object' && typeof frame.type === 'string') this.handle(frame);
    };
    socket.onerror = () => {};
    socket.onclose = () => {
      if (socket !== this.socket) return;
      const wasReady = this.ready;
      this.drop();
      if (this.status === 'stopped') return;
      if (!wasReady && this.o.checkAuth) {
        this.setStatus('reconnecting');
        this.o.checkAuth().then(
          (ok) => {
            if (this.status === 'stopped' || this.socket) return;
            if (ok) this.scheduleReconnect();
            else {
              this.stop();
              this.o.onUnauthorized?.();
            }
          },
          () => {
            if (this.status !== 'stopped' && !this.socket) this.scheduleReconnect();
          },
        );
      } else {
        this.scheduleReconnect();
      }
    };
  }

  private handle(frame: ServerFrame): void {
    switch (frame.type) {
      case 'ready':
        this.ready = true;
        this.me = frame.user.id;
        this.write({ type: 'sync', since: this.o.since() });
        break;
      case 'synced': {
        const first = !this.synced;
        this.synced = true;
        this.attempt = 0;
        if (first) {
          this.setStatus('online');
          for (const [conversation_id, seq] of this.reads) this.write({ type: 'read', conversation_id, seq });
          this.reads.clear();
          for (const p of this.pending.values()) this.resend(p);
          for (const c of this.changes.values()) this.write(c);
        }
        break;
      }
      case 'accepted': {
        const p = this.pending.get(frame.client_msg_id);
        if (p) p.accepted = true;
        if (frame.unchanged) this.changes.delete(frame.client_msg_id);
        break;
      }
      case 'message': {
        const m = frame.message;
        const p = this.pending.get(m.client_msg_id) ?? this.changes.get(m.client_msg_id);
        if (p && m.sender_id === this.me && m.conversation_id === p.conversation_id) {
          this.pending.delete(m.client_msg_id);
          this.changes.delete(m.client_msg_id);
        }
        break;
      }
      case 'error': {
        const id = frame.client_msg_id ?? '';
        const p = this.pending.get(id) ?? this.changes.get(id);
        if (p) {
          if (RETRYABLE.has(frame.code)) {
            const wait = frame.retry_after_ms ?? 2_000;
            this.o.timers.setTimeout(() => this.again(id), wait);
          } else {
            this.pending.delete(id);
            this.changes.delete(id);
            this.o.onSendFailed?.(p, frame.code, frame.message);
          }
        }
        break;
      }
    }
    this.o.onFrame(frame);
  }

  /** The `send` frame of a pending send: the same every time, so a retry is the same
   * message to the server (`attachments` only when there are some, `reply_to` only when
   * it answers one). */
  private resend(p: PendingSend): void {
    const frame: Extract<ClientFrame, { type: 'send' }> = { type: 'send', client_msg_id: p.client_msg_id, conversation_id: p.conversation_id, body: p.body };
    if (p.attachments.length) frame.attachments = p.attachments;
    if (p.reply_to) frame.reply_to = p.reply_to;
    this.write(frame);
  }

  /** Send an unconfirmed send or change again (when synced; else the next `synced`
   * does). */
  private again(client_msg_id: string): void {
    if (!this.synced) return;
    const send = this.pending.get(client_msg_id);
    const change = this.changes.get(client_msg_id);
    if (send) this.resend(send);
    else if (change) this.write(change);
  }

  private write(frame: ClientFrame): void {
    try {
      this.socket?.send(JSON.stringify(frame));
    } catch {
      // A socket that is closing throws; its close event starts the reconnect.
    }
  }

  private scheduleReconnect(): void {
    if (this.status === 'stopped') return;
    const delay = backoffDelay(this.attempt, this.o.backoff, this.o.random);
    this.attempt += 1;
    this.setStatus('reconnecting', delay);
    if (this.retryTimer !== null) this.o.timers.clearTimeout(this.retryTimer);
    this.retryTimer = this.o.timers.setTimeout(() => this.connect(), delay);
  }

  private startLiveness(): void {
    if (this.livenessTimer !== null) this.o.timers.clearInterval(this.livenessTimer);
    this.pingSent = false;
    const tick = Math.max(250, Math.min(this.o.pingAfterMs, this.o.deadAfterMs) / 4);
    this.livenessTimer = this.o.timers.setInterval(() => {
      const quiet = this.o.timers.now() - this.lastFrameAt;
      if (quiet >= this.o.deadAfterMs) {
        this.networkLost();
      } else if (quiet >= this.o.pingAfterMs && !this.pingSent && this.ready) {
        this.pingSent = true;
        this.write({ type: 'ping', nonce: this.o.timers.now() });
      }
    }, tick);
  }

  /** Close and forget the current socket, without reacting to its close event. */
  private drop(): void {
    if (this.livenessTimer !== null) this.o.timers.clearInterval(this.livenessTimer);
    this.livenessTimer = null;
    const s = this.socket;
    this.socket = null;
    this.ready = false;
    this.synced = false;
    if (s) {
      s.onopen = s.onmessage = s.onerror = s.onclose = null;
      try {
        s.close(1000, 'reconnecting');
      } catch {
        // already closed
      }
    }
  }

  private clearTimers(): void {
    if (this.retryTimer !== null) this.o.timers.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.livenessTimer !== null) this.o.timers.clearInterval(this.livenessTimer);
    this.livenessTimer = null;
  }
}
