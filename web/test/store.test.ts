import { describe, expect, it } from 'vitest';
import {
  type Action,
  type ChatState,
  initialState,
  mergeMessages,
  reducer,
  sinceFor,
  sortedConversations,
  TYPING_MS,
  typingIn,
  unknownConversations,
} from '../src/store';
import type { Conversation, Message } from '../src/types';

const ME = { id: 'u-me', username: 'ada' };
const BOB = 'u-bob';

function conv(id: string, extra: Partial<Conversation> = {}): Conversation {
  return {
    id,
    kind: 'direct',
    title: null,
    members: [ME.id, BOB],
    owner_id: null,
    created_at: '2025-03-14T09:00:00Z',
    last_seq: 0,
    unread: 0,
    ...extra,
  };
}

function msg(conversation_id: string, seq: number, extra: Partial<Message> = {}): Message {
  return {
    message_id: `m-${conversation_id}-${seq}`,
    client_msg_id: `k-${seq}`,
    conversation_id,
    seq,
    sender_id: BOB,
    body: `hello ${seq}`,
    sent_at: `2025-03-14T09:${String(10 + seq).padStart(2, '0')}:00Z`,
    origin: 'user',
    ...extra,
  };
}

const run = (actions: Action[], start: ChatState = initialState) => actions.reduce(reducer, start);
const base = () => run([{ type: 'me', user: ME }, { type: 'conversations', list: [conv('c1', { last_seq: 4, read_seq: 2, unread: 2 })] }]);
const frame = (f: unknown, now = 0): Action => ({ type: 'frame', frame: f as never, now });

describe('mergeMessages', () => {
  it('keeps ascending seq order without duplicates, whatever the arrival order', () => {
    const a = [msg('c', 3), msg('c', 4)];
    expect(mergeMessages(a, [msg('c', 5)]).map((m) => m.seq)).toEqual([3, 4, 5]);
    expect(mergeMessages(a, [msg('c', 1), msg('c', 2)]).map((m) => m.seq)).toEqual([1, 2, 3, 4]);
    expect(mergeMessages(a, [msg('c', 4), msg('c', 2), msg('c', 6)]).map((m) => m.seq)).toEqual([2, 3, 4, 6]);
    expect(mergeMessages([], [msg('c', 2), msg('c', 1), msg('c', 2)]).map((m) => m.seq)).toEqual([1, 2]);
  });

  it('the first copy of a seq wins', () => {
    const first = msg('c', 1, { body: 'first' });
    expect(mergeMessages([first], [msg('c', 1, { body: 'second' })])[0].body).toBe('first');
  });
});

describe('reducer', () => {
  it("takes the read marker from the server's read_seq", () => {
    const s = base();
    expect(s.conversations.c1.my_read).toBe(2);
    expect(s.conversations.c1.unread).toBe(2);
    expect(s.conversations.c1).not.toHaveProperty('read_seq');
  });

  it('read_seq is the marker even when changes follow it, where last_seq − unread is not', () => {
    // Read up to 3; after it a message, a reaction to it, another message: 2 unread.
    const listed = conv('c1', { last_seq: 6, read_seq: 3, unread: 2 });
    const entries = [
      msg('c1', 3),
      msg('c1', 4),
      msg('c1', 5, { kind: 'reaction', target_id: 'm-c1-4', emoji: '👍', body: '' }),
      msg('c1', 6),
    ];
    const page: Action = { type: 'page', conversation_id: 'c1', messages: entries, latest: true };
    let s = run([{ type: 'conversations', list: [listed] }, page], base());
    expect(s.conversations.c1).toMatchObject({ my_read: 3, unread: 2 });
    // Seeing message 4 leaves message 6 unread.
    s = run([{ type: 'read-local', conversation_id: 'c1', seq: 4 }], s);
    expect(s.conversations.c1).toMatchObject({ my_read: 4, unread: 1 });

    // The guess (a server without read_seq) takes 4 for read, so the same read moves
    // nothing and both messages stay unread.
    const { read_seq: _, ...old } = listed;
    let guessed = run([{ type: 'me', user: ME }, { type: 'conversations', list: [old] }, page]);
    expect(guessed.conversations.c1.my_read).toBe(4);
    guessed = run([{ type: 'read-local', conversation_id: 'c1', seq: 4 }], guessed);
    expect(guessed.conversations.c1).toMatchObject({ my_read: 4, unread: 2 });
  });

  it('a live message raises last_seq and unread', () => {
    const s = run([frame({ type: 'message', message: msg('c1', 5) })], base());
    expect(s.conversations.c1.last_seq).toBe(5);
    expect(s.conversations.c1.unread).toBe(3);
    expect(s.messages.c1.map((m) => m.seq)).toEqual([5]);
  });

  it('a replayed older message lands before a live newer one', () => {
    const s = run(
      [frame({ type: 'message', message: msg('c1', 7) }), frame({ type: 'message', message: msg('c1', 6) })],
      base(),
    );
    expect(s.messages.c1.map((m) => m.seq)).toEqual([6, 7]);
  });

  it('read-local moves the marker forward only, never past last_seq', () => {
    let s = run([{ type: 'read-local', conversation_id: 'c1', seq: 3 }], base());
    expect(s.conversations.c1.unread).toBe(1);
    s = run([{ type: 'read-local', conversation_id: 'c1', seq: 1 }], s);
    expect(s.conversations.c1.my_read).toBe(3);
    s = run([{ type: 'read-local', conversation_id: 'c1', seq: 99 }], s);
    expect(s.conversations.c1.my_read).toBe(4);
    expect(s.conversations.c1.unread).toBe(0);
  });

  it('a read frame of my own (another session) moves my marker; others are kept per user', () => {
    let s = run([frame({ type: 'read', conversation_id: 'c1', user_id: ME.id, seq: 4 })], base());
    expect(s.conversations.c1.unread).toBe(0);
    s = run([frame({ type: 'read', conversation_id: 'c1', user_id: BOB, seq: 3 })], s);
    s = run([frame({ type: 'read', conversation_id: 'c1', user_id: BOB, seq: 2 })], s);
    expect(s.readBy.c1).toEqual({ [BOB]: 3 });
  });

  it('synced raises last_seq of known conversations and replaces presence', () => {
    let s = run([frame({ type: 'presence', user_id: 'u-old', online: true })], base());
    s = run([frame({ type: 'synced', last_seq: { c1: 9, c2: 1 }, online: [BOB] })], s);
    expect(s.conversations.c1.last_seq).toBe(9);
    expect(s.conversations.c1.unread).toBe(7);
    expect(s.online).toEqual({ [BOB]: true });
    expect(unknownConversations(s, { type: 'synced', last_seq: { c1: 9, c2: 1 } })).toEqual(['c2']);
  });

  it('losing the connection forgets presence and typing until the next synced', () => {
    let s = run([frame({ type: 'synced', last_seq: {}, online: [BOB] }), frame({ type: 'typing', conversation_id: 'c1', user_id: BOB }, 0)], base());
    s = run([{ type: 'status', status: 'reconnecting', retryInMs: 500 }], s);
    expect(s.online).toEqual({});
    expect(s.typing).toEqual({});
    s = run([{ type: 'status', status: 'online' }, frame({ type: 'synced', last_seq: {}, online: [BOB] })], s);
    expect(s.online).toEqual({ [BOB]: true });
  });

  it('presence frames flip one user', () => {
    const s = run(
      [frame({ type: 'presence', user_id: BOB, online: true }), frame({ type: 'presence', user_id: BOB, online: false })],
      base(),
    );
    expect(s.online[BOB]).toBe(false);
  });

  it('typing expires, and a message from the typist clears it at once', () => {
    let s = run([frame({ type: 'typing', conversation_id: 'c1', user_id: BOB }, 1000)], base());
    expect(typingIn(s, 'c1', 1000)).toEqual([BOB]);
    expect(typingIn(s, 'c1', 1000 + TYPING_MS)).toEqual([]);
    s = run([frame({ type: 'message', message: msg('c1', 5) }, 1500)], s);
    expect(typingIn(s, 'c1', 1500)).toEqual([]);
    s = run([frame({ type: 'typing', conversation_id: 'c1', user_id: BOB }, 2000), { type: 'expire-typing', now: 2000 + TYPING_MS }], s);
    expect(s.typing).toEqual({});
  });

  it('my own typing is ignored', () => {
    const s = run([frame({ type: 'typing', conversation_id: 'c1', user_id: ME.id }, 0)], base());
    expect(s.typing).toEqual({});
  });

  it('an outgoing message disappears when its echo arrives, and is marked when refused', () => {
    let s = run(
      [
        { type: 'outgoing', message: { client_msg_id: 'k-a', conversation_id: 'c1', body: 'a' } },
        { type: 'outgoing', message: { client_msg_id: 'k-b', conversation_id: 'c1', body: 'b' } },
      ],
      base(),
    );
    s = run([frame({ type: 'message', message: msg('c1', 5, { client_msg_id: 'k-a', sender_id: ME.id }) })], s);
    expect(s.outgoing.map((o) => o.client_msg_id)).toEqual(['k-b']);
    s = run([{ type: 'send-failed', client_msg_id: 'k-b', code: 'too_large', message: 'x' }], s);
    expect(s.outgoing[0].error?.code).toBe('too_large');
    s = run([{ type: 'dismiss', client_msg_id: 'k-b' }], s);
    expect(s.outgoing).toEqual([]);
  });

  it('the first page keeps newer live messages and drops ones that would leave a gap', () => {
    let s = run(
      [frame({ type: 'message', message: msg('c1', 2) }), frame({ type: 'message', message: msg('c1', 60) })],
      base(),
    );
    const page = Array.from({ length: 50 }, (_, i) => msg('c1', 9 + i)); // 9..58
    s = run([{ type: 'page', conversation_id: 'c1', messages: page, latest: true }], s);
    expect(s.messages.c1[0].seq).toBe(9);
    expect(s.messages.c1.at(-1)?.seq).toBe(60);
    expect(s.messages.c1).toHaveLength(51);
    expect(s.loaded.c1).toBe(true);
    // An older page is prepended.
    s = run([{ type: 'page', conversation_id: 'c1', messages: Array.from({ length: 8 }, (_, i) => msg('c1', 1 + i)), latest: false }], s);
    expect(s.messages.c1.map((m) => m.seq).slice(0, 10)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  });
});

describe('message changes in the store', () => {
  const change = (seq: number, kind: 'edit' | 'delete' | 'reaction', extra: Partial<Message> = {}) =>
    msg('c1', seq, { kind, target_id: 'm-c1-3', body: '', ...extra });

  it('edits, deletes and reactions are kept by seq but are not unread and do not move the conversation up', () => {
    let s = run([{ type: 'conversations', list: [conv('c1', { last_seq: 4, read_seq: 2, unread: 2 }), conv('c2', { created_at: '2025-03-14T09:30:00Z' })] }], base());
    expect(sortedConversations(s).map((c) => c.id)).toEqual(['c2', 'c1']);
    s = run(
      [
        frame({ type: 'message', message: change(5, 'edit', { body: 'fixed', sent_at: '2025-03-14T10:00:00Z' }) }),
        frame({ type: 'message', message: change(6, 'reaction', { emoji: '👍', sent_at: '2025-03-14T10:01:00Z' }) }),
        frame({ type: 'message', message: change(7, 'delete', { sent_at: '2025-03-14T10:02:00Z' }) }),
      ],
      s,
    );
    expect(s.messages.c1.map((m) => m.seq)).toEqual([5, 6, 7]);
    expect(s.conversations.c1.last_seq).toBe(7);
    expect(s.conversations.c1.unread).toBe(2);
    expect(sortedConversations(s).map((c) => c.id)).toEqual(['c2', 'c1']);
    // A message counts, and moves it up.
    s = run([frame({ type: 'message', message: msg('c1', 8, { sent_at: '2025-03-14T10:03:00Z' }) })], s);
    expect(s.conversations.c1.unread).toBe(3);
    expect(sortedConversations(s)[0].id).toBe('c1');
  });

  it('reading up to a seq counts the messages after it, not the changes', () => {
    let s = run([{ type: 'conversations', list: [conv('c1', { last_seq: 4, read_seq: 4, unread: 0 })] }], base());
    const live = [msg('c1', 5, { mentions: [ME.id] }), change(6, 'edit', { body: 'x' }), msg('c1', 7), change(8, 'reaction', { emoji: '🎉' })];
    s = run(live.map((m) => frame({ type: 'message', message: m })), s);
    expect(s.conversations.c1).toMatchObject({ unread: 2, mentions_unread: 1 });
    s = run([{ type: 'read-local', conversation_id: 'c1', seq: 6 }], s);
    expect(s.conversations.c1).toMatchObject({ my_read: 6, unread: 1, mentions_unread: 0 });
    s = run([{ type: 'read-local', conversation_id: 'c1', seq: 8 }], s);
    expect(s.conversations.c1).toMatchObject({ my_read: 8, unread: 0 });
    // Not held: the server's count, less the seqs read.
    s = run([{ type: 'conversations', list: [conv('c2', { last_seq: 10, read_seq: 7, unread: 3 })] }], s);
    s = run([{ type: 'read-local', conversation_id: 'c2', seq: 8 }], s);
    expect(s.conversations.c2.unread).toBe(2);
  });

  it('a change that mentions me is no new mention', () => {
    const s = run([frame({ type: 'message', message: change(5, 'edit', { body: '@ada', mentions: [ME.id] }) })], base());
    expect(s.conversations.c1.mentions_unread).toBe(0);
  });

  it('my changes wait for their entry, or an accepted that changed nothing; a refused one is kept until dismissed', () => {
    const sent = (client_msg_id: string, kind: 'edit' | 'delete' | 'reaction'): Action => ({
      type: 'change',
      change: { client_msg_id, conversation_id: 'c1', target_id: 'm-c1-3', kind },
    });
    let s = run([sent('k-e', 'edit'), sent('k-r', 'reaction'), sent('k-d', 'delete')], base());
    expect(s.changes.map((c) => c.client_msg_id)).toEqual(['k-e', 'k-r', 'k-d']);
    s = run([frame({ type: 'message', message: change(5, 'edit', { client_msg_id: 'k-e', sender_id: ME.id }) })], s);
    expect(s.changes.map((c) => c.client_msg_id)).toEqual(['k-r', 'k-d']);
    s = run([frame({ type: 'accepted', client_msg_id: 'k-r', message_id: 'm-x' })], s);
    expect(s.changes).toHaveLength(2);
    s = run([frame({ type: 'accepted', client_msg_id: 'k-r', message_id: 'm-x', unchanged: true })], s);
    expect(s.changes.map((c) => c.client_msg_id)).toEqual(['k-d']);
    s = run([{ type: 'send-failed', client_msg_id: 'k-d', code: 'forbidden', message: 'not yours' }], s);
    expect(s.changes[0].error).toEqual({ code: 'forbidden', message: 'not yours' });
    s = run([{ type: 'dismiss', client_msg_id: 'k-d' }], s);
    expect(s.changes).toEqual([]);
  });
});

describe('sinceFor', () => {
  it('names loaded conversations by the last seq held and others by the last seq known', () => {
    let s = run([{ type: 'conversations', list: [conv('c1', { last_seq: 4 }), conv('c2', { last_seq: 10 }), conv('c3')] }], base());
    s = run([{ type: 'page', conversation_id: 'c1', messages: [msg('c1', 3), msg('c1', 4)], latest: true }], s);
    s = run([frame({ type: 'message', message: msg('c1', 5) })], s);
    expect(sinceFor(s)).toEqual({ c1: 5, c2: 10, c3: 0 });
  });

  it('a loaded conversation whose last_seq is ahead of what is held asks for the difference', () => {
    let s = run([{ type: 'page', conversation_id: 'c1', messages: [msg('c1', 4)], latest: true }], base());
    s = run([frame({ type: 'synced', last_seq: { c1: 8 }, online: [] })], s);
    expect(sinceFor(s)).toEqual({ c1: 4 });
  });
});

describe('sortedConversations', () => {
  it('puts the most recent activity first', () => {
    let s = run(
      [
        {
          type: 'conversations',
          list: [conv('a', { created_at: '2025-01-01T00:00:00Z' }), conv('b', { created_at: '2025-02-01T00:00:00Z' })],
        },
      ],
      base(),
    );
    expect(sortedConversations(s).map((c) => c.id)).toEqual(['c1', 'b', 'a']);
    s = run([frame({ type: 'message', message: msg('a', 1, { sent_at: '2025-06-01T00:00:00Z' }) })], s);
    expect(sortedConversations(s)[0].id).toBe('a');
  });
});
