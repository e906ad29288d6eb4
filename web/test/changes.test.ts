import { describe, expect, it } from 'vitest';
import { canDelete, canEdit, DELETED, fold, foldAll, isChange, lastShown, reactedBy } from '../src/changes';
import { snippet } from '../src/replies';
import { type Action, type ChatState, initialState, reducer } from '../src/store';
import type { Message } from '../src/types';
import { attachment } from './fakes';

const ME = { id: 'u-ada', username: 'ada' };
const BOB = { id: 'u-bob', username: 'bob' };
const CYD = { id: 'u-cyd', username: 'cyd' };
const USERS = { [ME.id]: ME, [BOB.id]: BOB, [CYD.id]: CYD };
const C = 'c-1';

function text(seq: number, extra: Partial<Message> = {}): Message {
  return {
    message_id: `m-${seq}`,
    client_msg_id: `k-${seq}`,
    conversation_id: C,
    seq,
    sender_id: BOB.id,
    body: `hello ${seq}`,
    sent_at: `2025-03-14T09:${String(10 + seq).padStart(2, '0')}:00Z`,
    origin: 'user',
    attachments: [],
    reply_to: null,
    mentions: [],
    kind: 'text',
    target_id: null,
    emoji: null,
    remove: false,
    deleted: false,
    edited_at: null,
    ...extra,
  };
}

const edit = (seq: number, target: number, body: string, extra: Partial<Message> = {}) =>
  text(seq, { kind: 'edit', target_id: `m-${target}`, body, ...extra });
const del = (seq: number, target: number, sender_id = BOB.id) =>
  text(seq, { kind: 'delete', target_id: `m-${target}`, body: '', sender_id });
const react = (seq: number, target: number, sender_id: string, emoji: string, remove = false) =>
  text(seq, { kind: 'reaction', target_id: `m-${target}`, body: '', sender_id, emoji, remove });

describe('fold', () => {
  it('shows a message without changes as it is', () => {
    const m = text(1);
    expect(fold(m)).toEqual({ ...m, edited_at: null, deleted: false, reactions: [] });
    // A server before changes sends no kind: a message.
    const { kind: _kind, ...old } = m;
    expect(isChange(old)).toBe(false);
    expect(isChange(edit(2, 1, 'x'))).toBe(true);
  });

  it('takes the body and mentions of the edit with the highest seq, whatever the order', () => {
    const edits = [edit(5, 1, 'third', { mentions: [CYD.id] }), edit(2, 1, 'first'), edit(3, 1, 'second')];
    const shown = fold(text(1), edits);
    expect(shown.body).toBe('third');
    expect(shown.mentions).toEqual([CYD.id]);
    expect(shown.edited_at).toBe(edits[0].sent_at);
    // The message itself is left as it was.
    expect(shown.message_id).toBe('m-1');
    expect(shown.seq).toBe(1);
  });

  it("keeps the message's own edited_at when the edit entries are not held", () => {
    expect(fold(text(1, { edited_at: '2025-03-14T10:00:00Z' })).edited_at).toBe('2025-03-14T10:00:00Z');
  });

  it('reactions: added and taken back per user and emoji, in seq order, a repeat counted once', () => {
    const changes = [
      react(2, 1, BOB.id, '👍'),
      react(3, 1, ME.id, '👍'),
      react(4, 1, ME.id, '🎉'),
      react(5, 1, BOB.id, '👍'), // again: still one
      react(6, 1, ME.id, '🎉', true), // taken back: the emoji goes
      react(7, 1, CYD.id, '😂'),
      react(8, 1, CYD.id, '❤️', true), // taking back what was never given: nothing
    ];
    expect(fold(text(1), changes).reactions).toEqual([
      { emoji: '👍', users: [BOB.id, ME.id] },
      { emoji: '😂', users: [CYD.id] },
    ]);
    // Shuffled: the same, applied by seq.
    expect(fold(text(1), [...changes].reverse()).reactions).toEqual(fold(text(1), changes).reactions);
  });

  it('a toggle: add, take back, add again puts the emoji last', () => {
    const changes = [react(2, 1, ME.id, '👍'), react(3, 1, BOB.id, '🎉'), react(4, 1, ME.id, '👍', true), react(5, 1, ME.id, '👍')];
    expect(fold(text(1), changes).reactions).toEqual([
      { emoji: '🎉', users: [BOB.id] },
      { emoji: '👍', users: [ME.id] },
    ]);
    expect(fold(text(1), changes.slice(0, 3)).reactions).toEqual([{ emoji: '🎉', users: [BOB.id] }]);
  });

  it('a delete leaves no body, attachments, mentions, edits or reactions', () => {
    const m = text(1, { attachments: [attachment(1)], mentions: [ME.id], body: '@ada look' });
    const shown = fold(m, [edit(2, 1, 'edited'), react(3, 1, ME.id, '👍'), del(4, 1)]);
    expect(shown).toMatchObject({ body: '', attachments: [], mentions: [], deleted: true, edited_at: null, reactions: [] });
    // Or the message says so itself (history read after the delete).
    expect(fold(text(1, { deleted: true, body: '' })).deleted).toBe(true);
    expect(snippet(shown)).toBe(DELETED);
  });
});

describe('foldAll and lastShown', () => {
  it('shows only the messages, each with its own changes', () => {
    const entries = [text(1), text(2), edit(3, 1, 'one, edited'), react(4, 2, ME.id, '👍'), del(5, 2), text(6), react(7, 1, BOB.id, '🎉')];
    const shown = foldAll(entries);
    expect(shown.map((m) => [m.seq, m.body, m.deleted, m.reactions.length])).toEqual([
      [1, 'one, edited', false, 1],
      [2, '', true, 0],
      [6, 'hello 6', false, 0],
    ]);
    expect(lastShown(entries)?.seq).toBe(6);
    expect(lastShown([text(1), edit(2, 1, 'new')])?.body).toBe('new');
    expect(lastShown([edit(2, 1, 'new')])).toBeUndefined();
    expect(lastShown([])).toBeUndefined();
  });

  it('changes that come before their message apply once it is held (history comes newest first)', () => {
    const me: Action = { type: 'me', user: ME };
    const frame = (m: Message): Action => ({ type: 'frame', frame: { type: 'message', message: m }, now: 0 });
    let s: ChatState = [me, frame(edit(40, 3, 'fixed typo')), frame(react(41, 3, BOB.id, '👍'))].reduce(reducer, initialState);
    // The changes are held, nothing is shown.
    expect(s.messages[C].map((m) => m.seq)).toEqual([40, 41]);
    expect(foldAll(s.messages[C])).toEqual([]);
    s = reducer(s, { type: 'page', conversation_id: C, messages: [text(3), text(4)], latest: false });
    expect(foldAll(s.messages[C]).map((m) => [m.seq, m.body, m.reactions])).toEqual([
      [3, 'fixed typo', [{ emoji: '👍', users: [BOB.id] }]],
      [4, 'hello 4', []],
    ]);
  });
});

describe('who may change a message', () => {
  const direct = { kind: 'direct' as const, owner_id: null };
  const group = { kind: 'group' as const, owner_id: ME.id };
  const othersGroup = { kind: 'group' as const, owner_id: BOB.id };
  const mine = fold(text(1, { sender_id: ME.id }));
  const bobs = fold(text(2));

  it('edits only their own messages', () => {
    expect(canEdit(mine, ME.id)).toBe(true);
    expect(canEdit(bobs, ME.id)).toBe(false);
    expect(canEdit(mine, undefined)).toBe(false);
  });

  it("deletes their own, or anyone's in a group they own", () => {
    expect(canDelete(mine, direct, ME.id)).toBe(true);
    expect(canDelete(bobs, direct, ME.id)).toBe(false);
    expect(canDelete(bobs, group, ME.id)).toBe(true);
    expect(canDelete(bobs, othersGroup, ME.id)).toBe(false);
    expect(canDelete(mine, othersGroup, ME.id)).toBe(true);
  });

  it('does nothing more with a deleted message', () => {
    const gone = fold(text(1, { sender_id: ME.id }), [del(2, 1, ME.id)]);
    expect(canEdit(gone, ME.id)).toBe(false);
    expect(canDelete(gone, group, ME.id)).toBe(false);
  });
});

describe('reactedBy', () => {
  it('names who reacted, the viewer first as You', () => {
    expect(reactedBy({ emoji: '👍', users: [BOB.id] }, USERS, ME.id)).toBe('bob reacted with 👍');
    expect(reactedBy({ emoji: '👍', users: [ME.id] }, USERS, ME.id)).toBe('You reacted with 👍');
    expect(reactedBy({ emoji: '🎉', users: [BOB.id, ME.id] }, USERS, ME.id)).toBe('You and bob reacted with 🎉');
    expect(reactedBy({ emoji: '🎉', users: [BOB.id, CYD.id, ME.id] }, USERS, ME.id)).toBe('You, bob and cyd reacted with 🎉');
    expect(reactedBy({ emoji: '🎉', users: ['0191f0a2-aaaa-7000-8000-000000000000'] }, USERS, ME.id)).toBe('user 0191f0a2 reacted with 🎉');
  });
});
