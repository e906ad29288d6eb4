// Mentions (protocol v1.1): a body names members as `@username`; the server works out
// who is mentioned (members only) and every message carries their ids in `mentions`.
// Here: the `@` token being typed at the caret and the members it may complete to (the
// composer's autocomplete), the insertion of the one chosen, and a body split into
// text and mentions for showing. Pure functions, so the tests need no browser; the
// unread mentions per conversation are kept in the chat store (store.ts).

import type { User } from './types';

/** A character of a username (`A-Z a-z 0-9 _ . -`, 3..32 of them, case-sensitive). */
const NAME_CHAR = /[A-Za-z0-9_.-]/;
/** The longest username. */
export const MAX_NAME = 32;
/** Suggestions shown at most. */
export const MAX_SUGGESTIONS = 8;

/** The `@` token the caret is in: `start` is the index of the `@`, `end` the end of
 * the name after it (the caret may be inside it), `query` the part typed before the
 * caret. */
export interface MentionToken {
  start: number;
  end: number;
  query: string;
}

const nameChar = (c: string | undefined) => c !== undefined && NAME_CHAR.test(c);

/** The `@name` being typed at `caret`: an `@` that does not follow a name character
 * (`a@b.c` is an address), then at least one name character before the caret. Null
 * when there is none (or the selection is not a caret: pass `selectionEnd` as `end`). */
export function mentionAt(text: string, caret: number, end = caret): MentionToken | null {
  if (end !== caret || caret < 2 || caret > text.length) return null;
  let at = caret;
  while (at > 0 && nameChar(text[at - 1])) at--;
  if (at === caret || text[at - 1] !== '@') return null;
  const start = at - 1;
  if (nameChar(text[start - 1])) return null;
  let stop = caret;
  while (stop < text.length && nameChar(text[stop])) stop++;
  const query = text.slice(at, caret);
  if (query.length > MAX_NAME) return null;
  return { start, end: stop, query };
}

/** The members (ids) a query may complete to: known names starting with the query,
 * whatever the case, the viewer left out; names that start with it in its own case
 * first, then by name. */
export function suggestions(
  members: string[],
  users: Record<string, User>,
  meId: string | undefined,
  query: string,
  max = MAX_SUGGESTIONS,
): User[] {
  const q = query.toLowerCase();
  return members
    .filter((id) => id !== meId)
    .flatMap((id) => (users[id] && users[id].username.toLowerCase().startsWith(q) ? [users[id]] : []))
    .sort((a, b) => {
      const ea = a.username.startsWith(query) ? 0 : 1;
      const eb = b.username.startsWith(query) ? 0 : 1;
      if (ea !== eb) return ea - eb;
      const la = a.username.toLowerCase();
      const lb = b.username.toLowerCase();
      return la < lb ? -1 : la > lb ? 1 : a.username < b.username ? -1 : 1;
    })
    .slice(0, max);
}

/** `text` with the token replaced by `@username ` (no second space when one follows
 * already), and where the caret goes: after that space. */
export function insertMention(text: string, token: MentionToken, username: string): { text: string; caret: number } {
  const after = text.slice(token.end);
  const inserted = `@${username}${/^\s/.test(after) ? '' : ' '}`;
  const before = text.slice(0, token.start) + inserted;
  return { text: before + after, caret: before.length + (inserted.endsWith(' ') ? 0 : 1) };
}

/** The `@name` tokens of a body as the server reads them: an `@` not after a name
 * character (`a@b.c` is an address), then the name characters after it. */
function tokens(body: string): { index: number; name: string }[] {
  const out: { index: number; name: string }[] = [];
  const re = /@([A-Za-z0-9_.-]+)/g;
  for (let m = re.exec(body); m; m = re.exec(body)) if (!nameChar(body[m.index - 1])) out.push({ index: m.index, name: m[1] });
  return out;
}

/** A name ending in `.`, `-` or `_` without them (the end of a sentence: "thanks @ada."). */
const trimName = (name: string) => name.replace(/[._-]+$/, '');

/** The names a body may mention, each once (a name ending in `.`, `-` or `_` also
 * without them), to look up the users a message mentions that the app does not know. */
export function mentionNames(body: string): string[] {
  const names = tokens(body).flatMap((t) => [t.name, trimName(t.name)]);
  return [...new Set(names)].filter((n) => n.length >= 3 && n.length <= MAX_NAME);
}

/** A run of a body: plain text, or a mention of `user_id`. */
export interface Segment {
  text: string;
  user_id?: string;
}

/** `body` as text and mentions: an `@name` (as the server reads them: not after a name
 * character; a name ending in `.`, `-` or `_` also without them, "thanks @ada.") is a
 * mention when `name` is the username of one of `mentions`. Other `@words`, and names
 * the app does not know, stay text. */
export function segments(body: string, mentions: string[] | undefined, users: Record<string, User>): Segment[] {
  const byName = new Map<string, string>();
  for (const id of mentions ?? []) if (users[id]) byName.set(users[id].username, id);
  if (!byName.size) return [{ text: body }];
  const out: Segment[] = [];
  let from = 0;
  for (const t of tokens(body)) {
    let name = t.name;
    let id = byName.get(name);
    if (!id) {
      name = trimName(name);
      id = byName.get(name);
    }
    if (!id) continue;
    if (t.index > from) out.push({ text: body.slice(from, t.index) });
    out.push({ text: `@${name}`, user_id: id });
    from = t.index + 1 + name.length;
  }
  if (from < body.length || !out.length) out.push({ text: body.slice(from) });
  return out;
}

/** What a badge of unread mentions says: "1 mention", "3 mentions". */
export function mentionsLabel(n: number): string {
  return `${n} ${n === 1 ? 'mention' : 'mentions'}`;
}
