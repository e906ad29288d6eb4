import { afterEach, describe, expect, it, vi } from 'vitest';
import { auth } from '../src/api';
import { sendErrorMessage } from '../src/format';
import { findOriginal, NOT_LOADED, quoteView, replyBar, seekOlder, snippet, SNIPPET_CHARS, UNAVAILABLE } from '../src/replies';
import { ChatSession } from '../src/session';
import { type ChatState, initialState, reducer } from '../src/store';
import type { Message } from '../src/types';
import { attachment } from './fakes';

const ME = { id: 'u-ada', username: 'ada' };
const BOB = { id: 'u-bob', username: 'bob' };
const USERS = { [ME.id]: ME, [BOB.id]: BOB };
const C1 = 'c-1';
const C2 = 'c-2';

function msg(conversation_id: string, seq: number, extra: Partial<Message> = {}): Message {
  return {
    message_id: `m-${conversation_id}-${seq}`,
    client_msg_id: `k-${seq}`,
    conversation_id,
    seq,
    sender_id: BOB.id,
    body: `hello ${seq}`,
    sent_at: '2025-03-14T09:26:53Z',
    origin: 'user',
    attachments: [],
    reply_to: null,
    ...extra,
  };
}

describe('snippet', () => {
  it('keeps a short text, with its white space made single spaces', () => {
    expect(snippet({ body: 'see you at 10' })).toBe('see you at 10');
    expect(snippet({ body: '  first line\n\n  second\tline  ' })).toBe('first line second line');
  });

  it('cuts a long text at about 100 characters, at a word when one is near, with an ellipsis', () => {
    const words = 'The quick brown fox jumps over the lazy dog and keeps on running through the field until the evening comes.';
    const s = snippet({ body: words });
    expect(s.endsWith('…')).toBe(true);
    expect([...s].length).toBeLessThanOrEqual(SNIPPET_CHARS + 1);
    expect(s).toBe('The quick brown fox jumps over the lazy dog and keeps on running through the field until the…');
    // One long word: cut at exactly 100 characters.
    expect(snippet({ body: 'x'.repeat(150) })).toBe(`${'x'.repeat(100)}…`);
    // Exactly 100: not cut.
    expect(snippet({ body: 'y'.repeat(100) })).toBe('y'.repeat(100));
  });

  it('never cuts a character in half', () => {
    const s = snippet({ body: '😀'.repeat(120) });
    expect(s).toBe(`${'😀'.repeat(100)}…`);
    expect(s.includes('\ufffd')).toBe(false);
  });

  it('names the attachment of a message that has only attachments', () => {
    expect(snippet({ body: '', attachments: [attachment(1, { name: 'cat.png' })] })).toBe('Attachment: cat.png');
    expect(snippet({ body: ' \n', attachments: [attachment(1), attachment(2), attachment(3)] })).toBe('3 attachments');
    expect(snippet({ body: 'with text', attachments: [attachment(1)] })).toBe('with text');
    expect(snippet({ body: '' })).toBe('Empty message');
  });
});

describe('quotes', () => {
  const held = [msg(C1, 1), msg(C1, 2, { sender_id: ME.id, body: 'mine' }), msg(C1, 3, { reply_to: `m-${C1}-1` })];

  it('finds the original among the messages held; a missing or null reply_to is no reply', () => {
    expect(findOriginal(held, `m-${C1}-1`)?.seq).toBe(1);
    expect(findOriginal(held, 'm-elsewhere')).toBeUndefined();
    expect(findOriginal(held, null)).toBeUndefined();
    expect(findOriginal(held, undefined)).toBeUndefined();
  });

  it("shows the original's sender and start, You for the viewer's own", () => {
    expect(quoteView(held[0], USERS, ME.id)).toEqual({ sender: 'bob', text: 'hello 1', state: 'found' });
    expect(quoteView(held[1], USERS, ME.id)).toEqual({ sender: 'You', text: 'mine', state: 'found' });
    expect(quoteView(msg(C1, 4, { sender_id: '0191f0a2-aaaa-7000-8000-000000000000' }), USERS, ME.id).sender).toBe('user 0191f0a2');
  });

  it('says when the original is not loaded, and when the whole history does not have it', () => {
    expect(quoteView(undefined, USERS, ME.id)).toEqual({ sender: null, text: NOT_LOADED, state: 'not-loaded' });
    expect(NOT_LOADED).toBe('Original message not loaded');
    expect(quoteView(undefined, USERS, ME.id, true)).toEqual({ sender: null, text: UNAVAILABLE, state: 'unavailable' });
  });

  it('the bar above the composer says whom the reply answers', () => {
    expect(replyBar(held[0], USERS, ME.id)).toEqual({ who: 'bob', snippet: 'hello 1', label: 'Replying to bob: hello 1' });
    expect(replyBar(held[1], USERS, ME.id).label).toBe('Replying to yourself: mine');
    expect(replyBar(msg(C1, 9, { body: '', attachments: [attachment(1, { name: 'a.pdf' })] }), USERS, ME.id).label).toBe(
      'Replying to bob: Attachment: a.pdf',
    );
    expect(replyBar(undefined, USERS, ME.id).label).toBe('Replying to a message');
  });

  it('a refused reply says the original may be gone', () => {
    expect(sendErrorMessage('not_found', 'x', true)).toMatch(/message it replies to/);
    expect(sendErrorMessage('not_found', 'x')).toBe('This conversation no longer exists.');
  });
});

describe('seekOlder', () => {
  it('loads older pages until the message is held', async () => {
    let pages = 0;
    const found = await seekOlder(
      () => pages >= 3,
      async () => {
        pages++;
        return true;
      },
    );
    expect(found).toBe(true);
    expect(pages).toBe(3);
  });

  it('loads nothing when it is held already', async () => {
    const load = vi.fn(async () => true);
    expect(await seekOlder(() => true, load)).toBe(true);
    expect(load).not.toHaveBeenCalled();
  });

  it('stops when the history is exhausted', async () => {
    let pages = 0;
    const found = await seekOlder(
      () => false,
      async () => ++pages < 4,
    );
    expect(found).toBe(false);
    expect(pages).toBe(4);
  });

  it('passes a failed page on', async () => {
    await expect(seekOlder(() => false, () => Promise.reject(new Error('offline')))).rejects.toThrow('offline');
  });
});

describe('the reply being written (store)', () => {
  const base: ChatState = {
    ...initialState,
    me: ME,
    messages: { [C1]: [msg(C1, 1), msg(C1, 2)], [C2]: [msg(C2, 1)] },
  };
  const reply = (s: ChatState, conversation_id: string, message_id: string | null) =>
    reducer(s, { type: 'reply', conversation_id, message_id });

  it('starts on a held message of the conversation, and is cancelled with null', () => {
    const s = reply(base, C1, `m-${C1}-2`);
    expect(s.replying).toEqual({ [C1]: `m-${C1}-2` });
    // Another message replaces it.
    expect(reply(s, C1, `m-${C1}-1`).replying).toEqual({ [C1]: `m-${C1}-1` });
    expect(reply(s, C1, null).replying).toEqual({});
    // Nothing to cancel, nothing changes.
    expect(reply(base, C1, null)).toBe(base);
    expect(reply(s, C1, `m-${C1}-2`)).toBe(s);
  });

  it('refuses a message of another conversation, or one not held', () => {
    expect(reply(base, C1, `m-${C2}-1`)).toBe(base);
    expect(reply(base, C1, 'm-unknown')).toBe(base);
    expect(reply(base, 'c-unknown', `m-${C1}-1`)).toBe(base);
  });

  it('is kept per conversation: one does not carry over to another', () => {
    const s = reply(reply(base, C1, `m-${C1}-2`), C2, `m-${C2}-1`);
    expect(s.replying).toEqual({ [C1]: `m-${C1}-2`, [C2]: `m-${C2}-1` });
    expect(reply(s, C2, null).replying).toEqual({ [C1]: `m-${C1}-2` });
  });

  it("sending in a conversation ends its reply, and only its own", () => {
    const s = reply(reply(base, C1, `m-${C1}-2`), C2, `m-${C2}-1`);
    const sent = reducer(s, {
      type: 'outgoing',
      message: { client_msg_id: 'k', conversation_id: C1, body: 'yes', reply_to: `m-${C1}-2` },
    });
    expect(sent.replying).toEqual({ [C2]: `m-${C2}-1` });
    expect(sent.outgoing).toEqual([{ client_msg_id: 'k', conversation_id: C1, body: 'yes', reply_to: `m-${C1}-2` }]);
    // Signing out forgets it.
    expect(reducer(s, { type: 'reset' }).replying).toEqual({});
  });
});

describe('ChatSession', () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    auth.token = null;
  });

  it('sends reply_to with the message and ends the reply; loadOlder shares a page in flight', async () => {
    const session = new ChatSession('tok', ME, () => {});
    const sends: unknown[][] = [];
    session.client.send = (...args: unknown[]) => {
      sends.push(args);
      return 'k-1';
    };
    session.dispatch({ type: 'page', conversation_id: C1, messages: [msg(C1, 51), msg(C1, 52)], latest: true });
    session.replyTo(C1, `m-${C1}-51`);
    expect(session.state.replying[C1]).toBe(`m-${C1}-51`);
    session.send(C1, 'yes', [], `m-${C1}-51`);
    expect(sends).toEqual([[C1, 'yes', [], `m-${C1}-51`]]);
    expect(session.state.outgoing).toEqual([{ client_msg_id: 'k-1', conversation_id: C1, body: 'yes', reply_to: `m-${C1}-51` }]);
    expect(session.state.replying).toEqual({});

    const asked: string[] = [];
    vi.stubGlobal('fetch', async (url: string) => {
      asked.push(String(url));
      const before = Number(new URL(String(url), 'http://x').searchParams.get('before_seq'));
      const messages = Array.from({ length: 50 }, (_, i) => msg(C1, before - 50 + i)).filter((m) => m.seq >= 1);
      return new Response(JSON.stringify({ messages }), { status: 200, headers: { 'content-type': 'application/json' } });
    });
    const [a, b] = [session.loadOlder(C1), session.loadOlder(C1)];
    expect(await a).toBe(true);
    expect(await b).toBe(true);
    expect(asked).toEqual([`/api/v1/conversations/${C1}/messages?before_seq=51&limit=50`]);
    expect(session.state.messages[C1][0].seq).toBe(1);
    // The start of the history: nothing more to load.
    expect(await session.loadOlder(C1)).toBe(false);
    expect(asked).toHaveLength(1);
  });
});
