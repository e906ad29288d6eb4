// Message changes (protocol v1.1): an edit, a delete or a reaction is an entry of the
// conversation's stream of its own (`kind`), naming the text message it changes
// (`target_id`). It is never shown as a message: a text message shows as the fold of
// the entries that target it (the body of the latest edit, deleted or not, the
// reactions not taken back). The chat store (store.ts) keeps every entry by seq,
// whatever comes first (history is paged newest first, so a change often arrives
// before the message it changes), and the screen folds when it renders. Pure
// functions, so the tests need no browser.

import { userName } from './format';
import type { Conversation, Message, User } from './types';

/** The reactions the picker offers, with what a screen reader calls them. */
export const EMOJI: readonly { emoji: string; name: string }[] = [
  { emoji: '👍', name: 'thumbs up' },
  { emoji: '❤️', name: 'heart' },
  { emoji: '😂', name: 'laughing' },
  { emoji: '🎉', name: 'party' },
  { emoji: '😮', name: 'surprised' },
  { emoji: '😢', name: 'sad' },
];

/** What a deleted message shows instead of its body. */
export const DELETED = 'Message deleted';

/** The reactions with one emoji: who reacted with it, in the order they did. */
export interface Reaction {
  emoji: string;
  users: string[];
}

/** A text message as it shows: the body and mentions of its latest edit (`edited_at`
 * the time of that edit, null when never edited), deleted or not (then without body,
 * attachments, mentions or reactions), its reactions. */
export interface Shown extends Message {
  edited_at: string | null;
  deleted: boolean;
  reactions: Reaction[];
}

/** Whether an entry is an edit, delete or reaction rather than a message. */
export const isChange = (m: Message): boolean => (m.kind ?? 'text') !== 'text';

/** `m`, a text message, with `changes` applied: the entries that target it, in any
 * order. The edit with the highest seq wins; one delete (or `m.deleted`) deletes it;
 * reactions apply in seq order, one per user and emoji (added, or taken back with
 * `remove`), emojis in the order they were first reacted with. */
export function fold(m: Message, changes: Message[] = []): Shown {
  let edit: Message | undefined;
  let deleted = !!m.deleted;
  const reactions = new Map<string, Set<string>>();
  for (const c of [...changes].sort((a, b) => a.seq - b.seq)) {
    if (c.kind === 'edit') edit = c;
    else if (c.kind === 'delete') deleted = true;
    else if (c.kind === 'reaction' && c.emoji) {
      const users = reactions.get(c.emoji) ?? new Set<string>();
      if (c.remove) users.delete(c.sender_id);
      else users.add(c.sender_id);
      if (users.size) reactions.set(c.emoji, users);
      else reactions.delete(c.emoji);
    }
  }
  if (deleted) return { ...m, body: '', attachments: [], mentions: [], deleted, edited_at: null, reactions: [] };
  return {
    ...m,
    body: edit ? edit.body : m.body,
    mentions: edit ? edit.mentions : m.mentions,
    deleted,
    edited_at: edit ? edit.sent_at : (m.edited_at ?? null),
    reactions: [...reactions].map(([emoji, users]) => ({ emoji, users: [...users] })),
  };
}

/** The text messages among a conversation's entries (ascending by seq), each folded
 * with the changes held that target it. */
export function foldAll(entries: Message[]): Shown[] {
  const changes = new Map<string, Message[]>();
  for (const e of entries) {
    if (!isChange(e) || !e.target_id) continue;
    const list = changes.get(e.target_id);
    if (list) list.push(e);
    else changes.set(e.target_id, [e]);
  }
  return entries.filter((e) => !isChange(e)).map((m) => fold(m, changes.get(m.message_id)));
}

/** The newest text message among the entries, folded (a change always comes after
 * the message it changes). */
export function lastShown(entries: Message[]): Shown | undefined {
  for (let i = entries.length - 1; i >= 0; i--) {
    const m = entries[i];
    if (!isChange(m)) return fold(m, entries.slice(i + 1).filter((e) => e.target_id === m.message_id));
  }
  return undefined;
}

/** Whether the viewer may edit a message: their own, not deleted. */
export function canEdit(m: Shown, meId: string | undefined): boolean {
  return !!meId && m.sender_id === meId && !m.deleted;
}

/** Whether the viewer may delete a message: their own, or any in a group they own. */
export function canDelete(m: Shown, c: Pick<Conversation, 'kind' | 'owner_id'>, meId: string | undefined): boolean {
  return !!meId && !m.deleted && (m.sender_id === meId || (c.kind === 'group' && c.owner_id === meId));
}

/** Who reacted with an emoji, the viewer first: "You, bob and cyd reacted with 👍". */
export function reactedBy(r: Reaction, users: Record<string, User>, meId: string | undefined): string {
  const names = r.users.filter((id) => id !== meId).map((id) => userName(users, id));
  if (meId && r.users.includes(meId)) names.unshift('You');
  const list = names.length > 1 ? `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}` : names[0];
  return `${list} reacted with ${r.emoji}`;
}
