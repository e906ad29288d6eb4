import { afterEach, describe, expect, it, vi } from 'vitest';
import { insertMention, mentionAt, mentionNames, mentionsLabel, segments, suggestions } from '../src/mentions';
import { ChatSession } from '../src/session';
import { type Action, type ChatState, initialState, reducer } from '../src/store';
import type { Conversation, Message, User } from '../src/types';

const ADA: User = { id: 'u-ada', username: 'ada' };
const BOB: User = { id: 'u-bob', username: 'bob' };
const BOBBY: User = { id: 'u-bobby', username: 'Bobby' };
const CYD: User = { id: 'u-cyd', username: 'cyd' };
const JDOE: User = { id: 'u-jdoe', username: 'j.doe' };
const USERS = Object.fromEntries([ADA, BOB, BOBBY, CYD, JDOE].map((u) => [u.id, u]));
const MEMBERS = [ADA.id, BOB.id, BOBBY.id, CYD.id, 'u-unknown'];

/** `text` with the caret where `|` is. */
const at = (marked: string) => {
  const caret = marked.indexOf('|');
  return mentionAt(marked.replace('|', ''), caret);
};

describe('the @ token at the caret', () => {
  it('is an @ and at least one name character before the caret', () => {
    expect(at('@b|')).toEqual({ start: 0, end: 2, query: 'b' });
    expect(at('hi @bo|')).toEqual({ start: 3, end: 6, query: 'bo' });
    expect(at('hi @bo| there')).toEqual({ start: 3, end: 6, query: 'bo' });
    expect(at('(@j.d|')).toEqual({ start: 1, end: 5, query: 'j.d' });
    expect(at('line\n@cy|')).toEqual({ start: 5, end: 8, query: 'cy' });
  });

  it('reaches past the caret to the end of the name, which the insertion replaces', () => {
    expect(at('hi @bo|b, there')).toEqual({ start: 3, end: 7, query: 'bo' });
  });

  it('is none for an @ alone, an address, a word, or a caret outside the name', () => {
    expect(at('@|')).toBeNull();
    expect(at('hi @|')).toBeNull();
    expect(at('mail ada@bo|')).toBeNull();
    expect(at('@bob@a|')).toBeNull();
    expect(at('bob|')).toBeNull();
    expect(at('@bob |')).toBeNull();
    expect(at('|@bob')).toBeNull();
    expect(at('')).toBeNull();
    expect(at(`@${'x'.repeat(33)}|`)).toBeNull();
  });

  it('is none when text is selected', () => {
    expect(mentionAt('hi @bob', 4, 7)).toBeNull();
  });
});

describe('the members offered', () => {
  it('are the members whose name starts with the query, any case, without me', () => {
    expect(suggestions(MEMBERS, USERS, ADA.id, 'bo').map((u) => u.username)).toEqual(['bob', 'Bobby']);
    // Names that start with it in the same case come first.
    expect(suggestions(MEMBERS, USERS, ADA.id, 'Bo').map((u) => u.username)).toEqual(['Bobby', 'bob']);
    expect(suggestions(MEMBERS, USERS, ADA.id, 'BO').map((u) => u.username)).toEqual(['bob', 'Bobby']);
    expect(suggestions(MEMBERS, USERS, ADA.id, 'bobb').map((u) => u.username)).toEqual(['Bobby']);
    expect(suggestions(MEMBERS, USERS, ADA.id, 'a')).toEqual([]);
    expect(suggestions(MEMBERS, USERS, BOB.id, 'a')).toEqual([ADA]);
    expect(suggestions(MEMBERS, USERS, ADA.id, 'z')).toEqual([]);
  });

  it('are members only, with known names, and at most a few', () => {
    // j.doe is a user, not a member; u-unknown is a member without a known name.
    expect(suggestions(MEMBERS, USERS, ADA.id, 'j')).toEqual([]);
    expect(suggestions(MEMBERS, USERS, ADA.id, 'u')).toEqual([]);
    const many = Array.from({ length: 12 }, (_, i) => ({ id: `u-${i}`, username: `user${String(i).padStart(2, '0')}` }));
    const list = suggestions(
      many.map((u) => u.id),
      Object.fromEntries(many.map((u) => [u.id, u])),
      undefined,
      'user',
    );
    expect(list.map((u) => u.username)).toEqual(many.slice(0, 8).map((u) => u.username));
  });
});

describe('inserting a mention', () => {
  it('replaces the token with @username and a space, the caret after it', () => {
    const text = 'hi @bo';
    expect(insertMention(text, mentionAt(text, 6)!, 'bob')).toEqual({ text: 'hi @bob ', caret: 8 });
  });

  it('keeps the text after the token, with one space between', () => {
    const text = 'hi @bo see this';
    expect(insertMention(text, mentionAt(text, 6)!, 'bob')).toEqual({ text: 'hi @bob see this', caret: 8 });
    const mid = 'hi @bo, ok';
    expect(insertMention(mid, mentionAt(mid, 6)!, 'bob')).toEqual({ text: 'hi @bob , ok', caret: 8 });
  });

  it('replaces the whole name when the caret is inside it, with the exact case', () => {
    const text = '@bOx and more';
    expect(insertMention(text, mentionAt(text, 3)!, 'Bobby')).toEqual({ text: '@Bobby and more', caret: 7 });
  });
});

describe('a body as text and mentions', () => {
  it('marks the names of the ids mentioned, in place', () => {
    expect(segments('@bob see this', [BOB.id], USERS)).toEqual([{ text: '@bob', user_id: BOB.id }, { text: ' see this' }]);
    expect(segments('hi @ada and @bob!', [ADA.id, BOB.id], USERS)).toEqual([
      { text: 'hi ' },
      { text: '@ada', user_id: ADA.id },
      { text: ' and ' },
      { text: '@bob', user_id: BOB.id },
      { text: '!' },
    ]);
    expect(segments('@bob, @bob', [BOB.id], USERS).filter((s) => s.user_id)).toHaveLength(2);
  });

  it('leaves other @words as text: names not mentioned, unknown, other case, or in an address', () => {
    expect(segments('@cyd and @bob', [BOB.id], USERS)).toEqual([{ text: '@cyd and ' }, { text: '@bob', user_id: BOB.id }]);
    expect(segments('@nobody here', [BOB.id], USERS)).toEqual([{ text: '@nobody here' }]);
    expect(segments('@Bob and @bobby', [BOB.id], USERS)).toEqual([{ text: '@Bob and @bobby' }]);
    expect(segments('mail bob@bob.com', [BOB.id], USERS)).toEqual([{ text: 'mail bob@bob.com' }]);
    expect(segments('@ada@bob', [ADA.id, BOB.id], USERS)).toEqual([{ text: '@ada', user_id: ADA.id }, { text: '@bob' }]);
  });

  it('takes a name at the end of a sentence without its full stop, but keeps dots inside names', () => {
    expect(segments('thanks @bob.', [BOB.id], USERS)).toEqual([{ text: 'thanks ' }, { text: '@bob', user_id: BOB.id }, { text: '.' }]);
    expect(segments('ask @j.doe.', [JDOE.id], USERS)).toEqual([{ text: 'ask ' }, { text: '@j.doe', user_id: JDOE.id }, { text: '.' }]);
  });

  it('is the whole body as text without mentions, or when no name is known', () => {
    expect(segments('@bob hi', [], USERS)).toEqual([{ text: '@bob hi' }]);
    expect(segments('@bob hi', undefined, USERS)).toEqual([{ text: '@bob hi' }]);
    expect(segments('@bob hi', ['u-stranger'], USERS)).toEqual([{ text: '@bob hi' }]);
    expect(segments('', [BOB.id], USERS)).toEqual([{ text: '' }]);
    // Nothing is lost or added: the text is the body.
    const body = 'a <b>@bob</b> & @ada.';
    expect(segments(body, [ADA.id, BOB.id], USERS).map((s) => s.text).join('')).toBe(body);
  });

  it('a badge says how many', () => {
    expect(mentionsLabel(1)).toBe('1 mention');
    expect(mentionsLabel(3)).toBe('3 mentions');
  });
});

describe('unread mentions (store)', () => {
  const G = 'c-group';
  const conv = (extra: Partial<Conversation> = {}): Conversation => ({
    id: G,
    kind: 'group',
    title: 'Team',
    members: [ADA.id, BOB.id, CYD.id],
    owner_id: ADA.id,
    created_at: '2025-03-14T09:00:00Z',
    last_seq: 4,
    read_seq: 2,
    unread: 2,
    mentions_unread: 1,
    ...extra,
  });
  const msg = (seq: number, mentions: string[] = [], extra: Partial<Message> = {}): Message => ({
    message_id: `m-${seq}`,
    client_msg_id: `k-${seq}`,
    conversation_id: G,
    seq,
    sender_id: ADA.id,
    body: `hello ${seq}`,
    sent_at: `2025-03-14T09:${String(10 + seq).padStart(2, '0')}:00Z`,
    origin: 'user',
    mentions,
    ...extra,
  });
  const run = (actions: Action[], start: ChatState = initialState) => actions.reduce(reducer, start);
  const frame = (f: unknown): Action => ({ type: 'frame', frame: f as never, now: 0 });
  const live = (m: Message) => frame({ type: 'message', message: m });
  const base = (c: Partial<Conversation> = {}) => run([{ type: 'me', user: BOB }, { type: 'conversations', list: [conv(c)] }]);
  const count = (s: ChatState) => s.conversations[G].mentions_unread;

  it("takes the server's count from the list; a missing one is none, and it is never more than unread", () => {
    expect(count(base())).toBe(1);
    const { mentions_unread: _, ...old } = conv();
    expect(count(run([{ type: 'me', user: BOB }, { type: 'conversations', list: [old] }]))).toBe(0);
    expect(count(base({ unread: 0, mentions_unread: 3 }))).toBe(0);
  });

  it('a live message mentioning me after the read marker adds one; others do not', () => {
    let s = run([live(msg(5, [BOB.id]))], base());
    expect(count(s)).toBe(2);
    expect(s.conversations[G].unread).toBe(3);
    s = run([live(msg(6, [CYD.id])), live(msg(7)), live(msg(8, undefined, { mentions: undefined }))], s);
    expect(count(s)).toBe(2);
    expect(s.conversations[G].unread).toBe(6);
  });

  it('the same message twice (a sync replaying it) counts once', () => {
    const s = run([live(msg(5, [BOB.id])), live(msg(5, [BOB.id]))], base());
    expect(count(s)).toBe(2);
  });

  it('a message at or before the read marker does not count', () => {
    const s = run([live(msg(2, [BOB.id]))], base());
    expect(count(s)).toBe(1);
  });

  it('a message of a conversation not known yet does not count: its count comes with it', () => {
    let s = run([live(msg(1, [BOB.id], { conversation_id: 'c-new' }))], base());
    expect(s.conversations['c-new']).toBeUndefined();
    s = run([{ type: 'conversation', conversation: conv({ id: 'c-new', last_seq: 1, read_seq: 0, unread: 1, mentions_unread: 1 }) }], s);
    expect(s.conversations['c-new'].mentions_unread).toBe(1);
  });

  it('reading to the end clears it, as for unread, whether by me here or in another session', () => {
    const s = run([live(msg(5, [BOB.id]))], base());
    const read = run([{ type: 'read-local', conversation_id: G, seq: 5 }], s);
    expect(count(read)).toBe(0);
    expect(read.conversations[G].unread).toBe(0);
    const elsewhere = run([frame({ type: 'read', conversation_id: G, user_id: BOB.id, seq: 5 })], s);
    expect(count(elsewhere)).toBe(0);
    // Someone else reading changes nothing of mine.
    expect(count(run([frame({ type: 'read', conversation_id: G, user_id: CYD.id, seq: 5 })], s))).toBe(2);
  });

  it('reading part of it counts what is left when every message after the marker is held', () => {
    const page: Action = { type: 'page', conversation_id: G, messages: [msg(1), msg(2), msg(3, [BOB.id]), msg(4)], latest: true };
    let s = run([page, live(msg(5, [BOB.id])), live(msg(6))], base());
    expect(count(s)).toBe(2);
    s = run([{ type: 'read-local', conversation_id: G, seq: 3 }], s);
    expect(count(s)).toBe(1);
    s = run([{ type: 'read-local', conversation_id: G, seq: 5 }], s);
    expect(count(s)).toBe(0);
    expect(s.conversations[G].unread).toBe(1);
  });

  it("reading part of it keeps the server's count when the messages are not all held", () => {
    const s = run([{ type: 'read-local', conversation_id: G, seq: 3 }], base());
    expect(s.conversations[G].unread).toBe(1);
    expect(count(s)).toBe(1);
  });

  describe('changes of messages held after the read marker', () => {
    // Read up to 2; messages 3 and 4 held, 3 not mentioning me.
    const held = () =>
      run([{ type: 'page', conversation_id: G, messages: [msg(1), msg(2), msg(3), msg(4)], latest: true }], base({ mentions_unread: 0 }));
    const edit = (seq: number, target: number, mentions: string[]) =>
      live(msg(seq, mentions, { kind: 'edit', target_id: `m-${target}`, body: mentions.length ? '@bob' : 'nobody' }));

    it('an edit that adds a mention of me adds one; one that takes it away takes it back', () => {
      let s = run([edit(5, 3, [BOB.id])], held());
      expect(count(s)).toBe(1);
      expect(s.conversations[G].unread).toBe(2);
      // Another edit still mentioning me changes nothing; a replay of one held neither.
      s = run([edit(6, 3, [BOB.id, CYD.id]), edit(5, 3, [BOB.id])], s);
      expect(count(s)).toBe(1);
      s = run([edit(7, 3, [CYD.id])], s);
      expect(count(s)).toBe(0);
    });

    it('a live message mentioning me, then edited not to, is no longer counted', () => {
      let s = run([live(msg(5, [BOB.id]))], held());
      expect(count(s)).toBe(1);
      s = run([edit(6, 5, [])], s);
      expect(count(s)).toBe(0);
      expect(s.conversations[G].unread).toBe(3);
    });

    it('a reaction changes nothing; a delete takes the message out of both counts', () => {
      let s = run([edit(5, 3, [BOB.id])], held());
      s = run([live(msg(6, [], { kind: 'reaction', target_id: 'm-3', emoji: '👍', body: '' }))], s);
      expect(s.conversations[G]).toMatchObject({ unread: 2, mentions_unread: 1 });
      s = run([live(msg(7, [], { kind: 'delete', target_id: 'm-3', body: '' }))], s);
      expect(s.conversations[G]).toMatchObject({ unread: 1, mentions_unread: 0 });
      // Deleting it again (a replay out of order) changes nothing more.
      s = run([live(msg(8, [], { kind: 'delete', target_id: 'm-3', body: '' }))], s);
      expect(s.conversations[G]).toMatchObject({ unread: 1, mentions_unread: 0 });
    });

    it('changes of messages at or before the marker, or not held, change nothing', () => {
      const s = run([edit(5, 2, [BOB.id]), edit(6, 99, [BOB.id]), live(msg(7, [], { kind: 'delete', target_id: 'm-1', body: '' }))], held());
      expect(s.conversations[G]).toMatchObject({ unread: 2, mentions_unread: 0 });
    });

    it('reading part of it counts the messages as they show now', () => {
      let s = run([live(msg(5, [BOB.id])), edit(6, 3, [BOB.id]), edit(7, 5, []), live(msg(8, [], { kind: 'delete', target_id: 'm-4', body: '' }))], held());
      expect(s.conversations[G]).toMatchObject({ unread: 2, mentions_unread: 1 });
      s = run([{ type: 'read-local', conversation_id: G, seq: 3 }], s);
      expect(s.conversations[G]).toMatchObject({ unread: 1, mentions_unread: 0 });
    });
  });

  it("a new list (a reload) brings the server's count again", () => {
    let s = run([live(msg(5, [BOB.id]))], base());
    s = run([{ type: 'conversations', list: [conv({ last_seq: 5, read_seq: 2, unread: 3, mentions_unread: 2 })] }], s);
    expect(count(s)).toBe(2);
    // Read in another session meanwhile: nothing left.
    s = run([{ type: 'conversations', list: [conv({ last_seq: 5, read_seq: 5, unread: 0, mentions_unread: 0 })] }], s);
    expect(s.conversations[G].unread).toBe(0);
    expect(count(s)).toBe(0);
  });
});

describe('names the app does not know', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('a body gives the names it may mention, as the server reads them', () => {
    expect(mentionNames('thanks @bob. and @cyd, cc @bob, mail a@dan.com, @ab @j.doe-')).toEqual(['bob.', 'bob', 'cyd', 'j.doe-', 'j.doe']);
    expect(mentionNames('nobody here @')).toEqual([]);
  });

  it("are looked up: the user list again for a member not known, a search for each name of a body mentioning one; each once", async () => {
    const asked: string[] = [];
    vi.stubGlobal('fetch', async (url: string) => {
      asked.push(String(url));
      const query = new URL(String(url), 'http://x').searchParams.get('query');
      const users = query === '' ? [ADA, BOB, CYD] : query === 'cyd' ? [CYD] : [];
      return new Response(JSON.stringify({ users }), { status: 200, headers: { 'content-type': 'application/json' } });
    });
    const session = new ChatSession('tok', ADA, () => {});
    session.dispatch({
      type: 'conversation',
      conversation: { id: 'g', kind: 'group', title: 'Team', members: [ADA.id, BOB.id], owner_id: ADA.id, created_at: '2025-03-14T09:00:00Z', last_seq: 0, unread: 0 },
    });
    session.rememberUsers([BOB]);
    const flush = () => new Promise((r) => setTimeout(r, 0));
    const m = (body: string, mentions: string[]): Message => ({
      message_id: 'm',
      client_msg_id: 'k',
      conversation_id: 'g',
      seq: 1,
      sender_id: BOB.id,
      body,
      sent_at: '2025-03-14T09:00:00Z',
      origin: 'user',
      mentions,
    });
    // Everyone known: nothing to ask.
    session.learnNames('g', [m('@bob hi', [BOB.id])]);
    await flush();
    expect(asked).toEqual([]);
    // A mentioned user not known: each name of the body not known is searched for, once.
    session.learnNames('g', [m('@cyd and @bob. and @dan.', [CYD.id, BOB.id])]);
    session.learnNames('g', [m('@cyd again', [CYD.id])]);
    await flush();
    expect(asked).toEqual([
      '/api/v1/users?query=cyd&limit=5',
      '/api/v1/users?query=bob.&limit=5',
      '/api/v1/users?query=dan.&limit=5',
      '/api/v1/users?query=dan&limit=5',
    ]);
    expect(session.state.users[CYD.id]).toEqual(CYD);
    // A member not known: the user list is read again, once for that member.
    asked.length = 0;
    session.dispatch({ type: 'conversation', conversation: { ...session.state.conversations.g, members: [ADA.id, BOB.id, 'u-new'] } });
    session.learnNames('g');
    session.learnNames('g');
    await flush();
    expect(asked).toEqual(['/api/v1/users?query=&limit=100']);
  });
});
