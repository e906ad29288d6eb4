import { describe, expect, it } from 'vitest';
import type { Message } from '../src/types';
import { backoffDelay, ChatClient, type SocketLike, type Status, type Timers } from '../src/ws';

/** Timers driven by hand: `advance(ms)` runs what falls due, in order. */
class FakeTimers implements Timers {
  t = 0;
  private next = 1;
  private tasks = new Map<number, { at: number; fn: () => void; every?: number }>();
  setTimeout(fn: () => void, ms: number) {
    const id = this.next++;
    this.tasks.set(id, { at: this.t + ms, fn });
    return id;
  }
  clearTimeout(h: unknown) {
    this.tasks.delete(h as number);
  }
  setInterval(fn: () => void, ms: number) {
    const id = this.next++;
    this.tasks.set(id, { at: this.t + ms, fn, every: ms });
    return id;
  }
  clearInterval(h: unknown) {
    this.tasks.delete(h as number);
  }
  now() {
    return this.t;
  }
  advance(ms: number) {
    const end = this.t + ms;
    for (;;) {
      const due = [...this.tasks.entries()].filter(([, x]) => x.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      const [id, task] = due;
      this.t = task.at;
      if (task.every) task.at += task.every;
      else this.tasks.delete(id);
      task.fn();
    }
    this.t = end;
  }
  pending() {
    return this.tasks.size;
  }
}

class FakeSocket implements SocketLike {
  sent: Record<string, unknown>[] = [];
  closed = false;
  onopen: SocketLike['onopen'] = null;
  onmessage: SocketLike['onmessage'] = null;
  onclose: SocketLike['onclose'] = null;
  onerror: SocketLike['onerror'] = null;
  send(data: string) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.closed = true;
  }
  open() {
    this.onopen?.({});
  }
  recv(frame: unknown) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  serverClose(code = 1006) {
    this.onclose?.({ code });
  }
  ofType(type: string) {
    return this.sent.filter((f) => f.type === type);
  }
}

const ME = { id: 'u-me', username: 'ada' };
const C1 = 'c-1';

function msg(seq: number, extra: Partial<Message> = {}): Message {
  return {
    message_id: `m-${seq}`,
    client_msg_id: `k-${seq}`,
    conversation_id: C1,
    seq,
    sender_id: 'u-bob',
    body: `hello ${seq}`,
    sent_at: '2025-03-14T09:26:53.589Z',
    origin: 'user',
    ...extra,
  };
}

function setup(opts: { since?: () => Record<string, number>; checkAuth?: () => Promise<boolean> } = {}) {
  const timers = new FakeTimers();
  const sockets: FakeSocket[] = [];
  const statuses: Status[] = [];
  const frames: unknown[] = [];
  const failed: string[] = [];
  let ids = 0;
  let unauthorized = false;
  const client = new ChatClient({
    url: 'ws://x/api/v1/ws?token=t',
    since: opts.since ?? (() => ({})),
    onFrame: (f) => frames.push(f),
    onStatus: (s) => statuses.push(s),
    onSendFailed: (p, code) => failed.push(`${p.client_msg_id}:${code}`),
    checkAuth: opts.checkAuth,
    onUnauthorized: () => (unauthorized = true),
    createSocket: () => {
      const s = new FakeSocket();
      sockets.push(s);
      return s;
    },
    timers,
    random: () => 1,
    backoff: { baseMs: 100, maxMs: 1_000 },
    pingAfterMs: 1_000,
    deadAfterMs: 3_000,
    newId: () => `id-${++ids}`,
  });
  const last = () => sockets[sockets.length - 1];
  /** Open the current socket and complete the handshake. */
  const handshake = (last_seq: Record<string, number> = {}) => {
    last().open();
    last().recv({ type: 'ready', session_id: 's', user: ME });
    last().recv({ type: 'synced', last_seq, online: [] });
  };
  return { client, timers, sockets, statuses, frames, failed, last, handshake, isUnauthorized: () => unauthorized };
}

describe('backoffDelay', () => {
  it('doubles up to the cap, with jitter between half and all of it', () => {
    const b = { baseMs: 500, maxMs: 15_000 };
    expect(backoffDelay(0, b, () => 1)).toBe(500);
    expect(backoffDelay(1, b, () => 1)).toBe(1000);
    expect(backoffDelay(3, b, () => 1)).toBe(4000);
    expect(backoffDelay(10, b, () => 1)).toBe(15_000);
    expect(backoffDelay(100, b, () => 1)).toBe(15_000);
    expect(backoffDelay(2, b, () => 0)).toBe(1000);
  });
});

describe('ChatClient', () => {
  it('sends sync with the since map right after ready, and is online after synced', () => {
    const { client, last, statuses } = setup({ since: () => ({ [C1]: 7 }) });
    client.start();
    expect(statuses).toEqual(['connecting']);
    last().open();
    expect(last().sent).toEqual([]);
    last().recv({ type: 'ready', session_id: 's', user: ME });
    expect(last().sent).toEqual([{ type: 'sync', since: { [C1]: 7 } }]);
    expect(statuses.at(-1)).toBe('connecting');
    last().recv({ type: 'synced', last_seq: { [C1]: 9 }, online: [] });
    expect(statuses.at(-1)).toBe('online');
  });

  it('passes every frame on, unknown types included', () => {
    const { client, handshake, last, frames } = setup();
    client.start();
    handshake();
    last().recv({ type: 'dance', steps: 3 });
    expect(frames.at(-1)).toEqual({ type: 'dance', steps: 3 });
  });

  it('reconnects with backoff and resumes from the seq held at that moment', () => {
    let held = 3;
    const { client, handshake, last, sockets, timers, statuses } = setup({ since: () => ({ [C1]: held }) });
    client.start();
    handshake();
    held = 5;
    last().serverClose(1001);
    expect(statuses.at(-1)).toBe('reconnecting');
    expect(sockets).toHaveLength(1);
    timers.advance(99);
    expect(sockets).toHaveLength(1);
    timers.advance(1);
    expect(sockets).toHaveLength(2);
    last().open();
    last().recv({ type: 'ready', session_id: 's2', user: ME });
    expect(last().ofType('sync')).toEqual([{ type: 'sync', since: { [C1]: 5 } }]);
    last().recv({ type: 'synced', last_seq: { [C1]: 6 }, online: [] });
    expect(statuses.at(-1)).toBe('online');
  });

  it('backs off further on each failed attempt and starts over after a sync', () => {
    const { client, handshake, last, sockets, timers } = setup();
    client.start();
    last().serverClose(); // never opened: attempt 0 → 100 ms
    timers.advance(100);
    expect(sockets).toHaveLength(2);
    last().serverClose(); // attempt 1 → 200 ms
    timers.advance(199);
    expect(sockets).toHaveLength(2);
    timers.advance(1);
    expect(sockets).toHaveLength(3);
    handshake();
    last().serverClose(); // reset: 100 ms again
    timers.advance(100);
    expect(sockets).toHaveLength(4);
  });

  it('keeps sends unconfirmed until their echo, and resends them after the resync', () => {
    const { client, handshake, last, timers } = setup();
    client.start();
    handshake();
    const id = client.send(C1, 'hi');
    expect(last().ofType('send')).toEqual([{ type: 'send', client_msg_id: id, conversation_id: C1, body: 'hi' }]);
    last().recv({ type: 'accepted', client_msg_id: id, message_id: 'm' });
    expect(client.unconfirmed().map((p) => p.client_msg_id)).toEqual([id]);

    last().serverClose();
    timers.advance(100);
    last().open();
    last().recv({ type: 'ready', session_id: 's2', user: ME });
    // Not before synced: the replay may carry the echo.
    expect(last().ofType('send')).toEqual([]);
    last().recv({ type: 'synced', last_seq: {}, online: [] });
    expect(last().ofType('send')).toEqual([{ type: 'send', client_msg_id: id, conversation_id: C1, body: 'hi' }]);

    last().recv({ type: 'message', message: msg(1, { client_msg_id: id, sender_id: ME.id, body: 'hi' }) });
    expect(client.unconfirmed()).toEqual([]);
  });

  it('carries attachment ids in the send and in every resend, and allows an empty body with them', () => {
    const { client, handshake, last, timers } = setup();
    client.start();
    handshake();
    const ids = ['0191f0a5-0000-7000-8000-00000000000a', '0191f0a5-0000-7000-8000-00000000000b'];
    const given = [...ids];
    const id = client.send(C1, '', given);
    given.push('changed later'); // the client keeps its own copy
    const frame = { type: 'send', client_msg_id: id, conversation_id: C1, body: '', attachments: ids };
    expect(last().ofType('send')).toEqual([frame]);
    expect(client.unconfirmed()[0].attachments).toEqual(ids);
    last().serverClose();
    timers.advance(100);
    handshake();
    expect(last().ofType('send')).toEqual([frame]);
  });

  it('carries reply_to in the send and in the resend after a reconnect, with attachments too', () => {
    const { client, handshake, last, timers } = setup();
    client.start();
    handshake();
    const original = '0191f0a5-1111-7000-8000-000000000001';
    const plain = client.send(C1, 'no reply');
    const id = client.send(C1, 'yes, Thursday', [], original);
    const both = client.send(C1, '', ['0191f0a5-0000-7000-8000-00000000000a'], original);
    const frames = [
      { type: 'send', client_msg_id: plain, conversation_id: C1, body: 'no reply' },
      { type: 'send', client_msg_id: id, conversation_id: C1, body: 'yes, Thursday', reply_to: original },
      {
        type: 'send',
        client_msg_id: both,
        conversation_id: C1,
        body: '',
        attachments: ['0191f0a5-0000-7000-8000-00000000000a'],
        reply_to: original,
      },
    ];
    expect(last().ofType('send')).toEqual(frames);
    expect(client.unconfirmed().map((p) => p.reply_to)).toEqual([null, original, original]);
    // Accepted is no storage promise: the connection drops, all three go again after
    // the resync, reply_to kept.
    last().recv({ type: 'accepted', client_msg_id: id, message_id: 'm' });
    last().serverClose();
    timers.advance(100);
    handshake();
    expect(last().ofType('send')).toEqual(frames);
    // Its echo confirms it; the others are resent once more after the next reconnect.
    last().recv({ type: 'message', message: msg(7, { client_msg_id: id, sender_id: ME.id, body: 'yes, Thursday', reply_to: original }) });
    last().serverClose();
    timers.advance(100);
    handshake();
    expect(last().ofType('send')).toEqual([frames[0], frames[2]]);
  });

  it('a reply refused with not_found (original not in the conversation) is final', () => {
    const { client, handshake, last, failed } = setup();
    client.start();
    handshake();
    const id = client.send(C1, 'answer', [], 'm-elsewhere');
    last().recv({ type: 'error', code: 'not_found', message: 'message m-elsewhere does not exist in conversation c-1', client_msg_id: id });
    expect(failed).toEqual([`${id}:not_found`]);
    expect(client.unconfirmed()).toEqual([]);
  });

  it('does not resend a send whose echo came in the sync replay', () => {
    const { client, handshake, last, timers } = setup();
    client.start();
    handshake();
    const id = client.send(C1, 'hi');
    last().serverClose();
    timers.advance(100);
    last().open();
    last().recv({ type: 'ready', session_id: 's2', user: ME });
    last().recv({ type: 'message', message: msg(4, { client_msg_id: id, sender_id: ME.id }) });
    last().recv({ type: 'synced', last_seq: { [C1]: 4 }, online: [] });
    expect(last().ofType('send')).toEqual([]);
  });

  it('an echo of the same client_msg_id from someone else does not confirm a send', () => {
    const { client, handshake, last } = setup();
    client.start();
    handshake();
    const id = client.send(C1, 'hi');
    last().recv({ type: 'message', message: msg(2, { client_msg_id: id, sender_id: 'u-bob' }) });
    expect(client.unconfirmed()).toHaveLength(1);
  });

  it('queues sends made while offline and sends them in order after synced', () => {
    const { client, handshake, last } = setup();
    client.start();
    const a = client.send(C1, 'one');
    const b = client.send(C1, 'two');
    handshake();
    expect(last().ofType('send').map((f) => f.client_msg_id)).toEqual([a, b]);
  });

  it('retries rate_limited sends after retry_after_ms and gives up on final errors', () => {
    const { client, handshake, last, timers, failed } = setup();
    client.start();
    handshake();
    const a = client.send(C1, 'fast');
    const b = client.send(C1, 'x'.repeat(10));
    last().recv({ type: 'error', code: 'rate_limited', message: 'slow down', client_msg_id: a, retry_after_ms: 50 });
    last().recv({ type: 'error', code: 'too_large', message: 'too big', client_msg_id: b });
    expect(failed).toEqual([`${b}:too_large`]);
    expect(client.unconfirmed().map((p) => p.client_msg_id)).toEqual([a]);
    const before = last().ofType('send').length;
    timers.advance(50);
    expect(last().ofType('send').length).toBe(before + 1);
    expect(last().ofType('send').at(-1)?.client_msg_id).toBe(a);
  });

  it('sends edits, deletes and reactions like sends, each with its own client_msg_id', () => {
    const { client, handshake, last } = setup();
    client.start();
    const target = '0191f0a5-1111-7000-8000-000000000001';
    // Made offline: they wait for the sync.
    const e = client.change({ type: 'edit', conversation_id: C1, message_id: target, body: 'fixed' });
    handshake();
    const r = client.change({ type: 'react', conversation_id: C1, message_id: target, emoji: '👍', remove: false });
    const d = client.change({ type: 'delete', conversation_id: C1, message_id: target });
    expect(last().sent.filter((f) => f.type !== 'sync')).toEqual([
      { type: 'edit', client_msg_id: e, conversation_id: C1, message_id: target, body: 'fixed' },
      { type: 'react', client_msg_id: r, conversation_id: C1, message_id: target, emoji: '👍', remove: false },
      { type: 'delete', client_msg_id: d, conversation_id: C1, message_id: target },
    ]);
    expect(new Set([e, r, d]).size).toBe(3);
    expect(client.unconfirmedChanges().map((f) => f.client_msg_id)).toEqual([e, r, d]);
  });

  it('a change is done when its entry comes, or when accepted as unchanged; until then a reconnect sends it again', () => {
    const { client, handshake, last, timers } = setup();
    client.start();
    handshake();
    const target = 'm-1';
    const e = client.change({ type: 'edit', conversation_id: C1, message_id: target, body: 'fixed' });
    const r = client.change({ type: 'react', conversation_id: C1, message_id: target, emoji: '👍' });
    const again = client.change({ type: 'react', conversation_id: C1, message_id: target, emoji: '🎉' });
    last().recv({ type: 'accepted', client_msg_id: e, message_id: 'm-e' });
    last().recv({ type: 'accepted', client_msg_id: again, message_id: 'm-a', unchanged: true });
    expect(client.unconfirmedChanges().map((f) => f.client_msg_id)).toEqual([e, r]);
    // Someone else's entry with the same key confirms nothing; mine does.
    last().recv({ type: 'message', message: msg(8, { kind: 'edit', client_msg_id: e, sender_id: 'u-bob', target_id: target }) });
    expect(client.unconfirmedChanges()).toHaveLength(2);
    last().serverClose();
    timers.advance(100);
    handshake();
    expect(last().sent.filter((f) => f.type !== 'sync').map((f) => f.client_msg_id)).toEqual([e, r]);
    last().recv({ type: 'message', message: msg(8, { kind: 'edit', client_msg_id: e, sender_id: ME.id, target_id: target }) });
    expect(client.unconfirmedChanges().map((f) => f.client_msg_id)).toEqual([r]);
  });

  it('a refused change is final and reported; a rate-limited one goes again after the wait', () => {
    const { client, handshake, last, timers, failed } = setup();
    client.start();
    handshake();
    const d = client.change({ type: 'delete', conversation_id: C1, message_id: 'm-1' });
    const r = client.change({ type: 'react', conversation_id: C1, message_id: 'm-1', emoji: '👍' });
    last().recv({ type: 'error', code: 'forbidden', message: 'only the sender or the group owner may delete', client_msg_id: d });
    last().recv({ type: 'error', code: 'rate_limited', message: 'slow down', client_msg_id: r, retry_after_ms: 50 });
    expect(failed).toEqual([`${d}:forbidden`]);
    expect(client.unconfirmedChanges().map((f) => f.client_msg_id)).toEqual([r]);
    timers.advance(50);
    expect(last().ofType('react').map((f) => f.client_msg_id)).toEqual([r, r]);
    // Given up on: forgotten.
    client.discard(r);
    expect(client.unconfirmedChanges()).toEqual([]);
  });

  it('keeps read markers made offline and sends the latest after synced', () => {
    const { client, handshake, last } = setup();
    client.start();
    client.read(C1, 3);
    client.read(C1, 5);
    client.read(C1, 4);
    handshake();
    expect(last().ofType('read')).toEqual([{ type: 'read', conversation_id: C1, seq: 5 }]);
  });

  it('resync asks for a fresh synced (presence of new members) without resending', () => {
    const { client, handshake, last } = setup({ since: () => ({ [C1]: 2 }) });
    client.resync();
    client.start();
    handshake();
    client.send(C1, 'x');
    client.resync();
    expect(last().ofType('sync')).toHaveLength(2);
    last().recv({ type: 'synced', last_seq: { [C1]: 2 }, online: ['u-bob'] });
    expect(last().ofType('send')).toHaveLength(1);
  });

  it('drops typing while offline (it is not worth replaying)', () => {
    const { client, handshake, last } = setup();
    client.start();
    client.typing(C1);
    handshake();
    expect(last().ofType('typing')).toEqual([]);
    client.typing(C1);
    expect(last().ofType('typing')).toEqual([{ type: 'typing', conversation_id: C1 }]);
  });

  it('pings a quiet connection and gives it up when nothing comes back', () => {
    const { client, handshake, last, sockets, timers, statuses } = setup();
    client.start();
    handshake();
    timers.advance(1_000);
    expect(last().ofType('ping')).toHaveLength(1);
    timers.advance(2_000);
    expect(sockets[0].closed).toBe(true);
    expect(statuses.at(-1)).toBe('reconnecting');
  });

  it('any frame counts as life', () => {
    const { client, handshake, last, sockets, timers } = setup();
    client.start();
    handshake();
    for (let i = 0; i < 10; i++) {
      timers.advance(900);
      last().recv({ type: 'presence', user_id: 'u-bob', online: true });
    }
    expect(sockets).toHaveLength(1);
    expect(last().ofType('ping')).toHaveLength(0);
  });

  it('networkLost closes at once; networkBack reconnects without waiting for the backoff', () => {
    const { client, handshake, sockets, timers, statuses } = setup();
    client.start();
    handshake();
    client.networkLost();
    expect(sockets[0].closed).toBe(true);
    expect(statuses.at(-1)).toBe('reconnecting');
    client.networkBack();
    expect(sockets).toHaveLength(2);
    timers.advance(10_000);
    expect(sockets).toHaveLength(2);
  });

  it('a connection refused before ready checks the token and stops on 401', async () => {
    const { client, last, sockets, timers, isUnauthorized, statuses } = setup({ checkAuth: async () => false });
    client.start();
    last().serverClose();
    await Promise.resolve();
    await Promise.resolve();
    expect(isUnauthorized()).toBe(true);
    expect(statuses.at(-1)).toBe('stopped');
    timers.advance(60_000);
    expect(sockets).toHaveLength(1);
  });

  it('a connection refused before ready with a good token retries', async () => {
    const { client, last, sockets, timers } = setup({ checkAuth: async () => true });
    client.start();
    last().serverClose();
    await Promise.resolve();
    await Promise.resolve();
    timers.advance(100);
    expect(sockets).toHaveLength(2);
  });

  it('stop closes the socket and leaves no timers behind', () => {
    const { client, handshake, sockets, timers } = setup();
    client.start();
    handshake();
    client.stop();
    expect(sockets[0].closed).toBe(true);
    expect(timers.pending()).toBe(0);
    timers.advance(60_000);
    expect(sockets).toHaveLength(1);
  });
});
