// Replies (protocol v1.1): a message may answer an earlier one of its conversation
// (`reply_to`, its message_id). Shows as a quote above the body: who wrote the
// original and the start of it; choosing the quote scrolls to the original, loading
// older pages until it is held. Pure functions, so the tests need no browser; the
// reply being written is kept per conversation in the chat store (store.ts).

import { DELETED } from './changes';
import { attachmentSummary, userName } from './format';
import type { Message, User } from './types';

/** About how many characters of the original a quote shows. */
export const SNIPPET_CHARS = 100;
/** What a quote says while its original is older than the history held. */
export const NOT_LOADED = 'Original message not loaded';
/** What it says when the whole history was searched and the original is not in it. */
export const UNAVAILABLE = 'Original message unavailable';

/** One line of a message for a quote: its text with runs of white space (newlines
 * too) made one space, cut at about `max` characters (whole characters, at a word
 * boundary when there is one near the end) with "…"; "Attachment: name" or "N
 * attachments" when it has only attachments; "Message deleted" when it is. */
export function snippet(m: Pick<Message, 'body' | 'attachments' | 'deleted'>, max = SNIPPET_CHARS): string {
  if (m.deleted) return DELETED;
  const text = m.body.replace(/\s+/g, ' ').trim();
  if (!text) return attachmentSummary(m.attachments) || 'Empty message';
  const chars = [...text]; // code points: never half of a surrogate pair
  if (chars.length <= max) return text;
  let cut = chars.slice(0, max).join('');
  const space = cut.lastIndexOf(' ');
  if (space >= cut.length - 20 && space > 0) cut = cut.slice(0, space);
  return `${cut.trimEnd()}…`;
}

/** The message answered, among the messages held of its conversation. */
export function findOriginal(messages: Message[], reply_to: string | null | undefined): Message | undefined {
  if (!reply_to) return undefined;
  // Usually recent: search from the newest.
  for (let i = messages.length - 1; i >= 0; i--) if (messages[i].message_id === reply_to) return messages[i];
  return undefined;
}

export interface QuoteView {
  /** Who wrote the original ("You" for the viewer); null when it is not held. */
  sender: string | null;
  text: string;
  /** `not-loaded`: older than the history held (choosing the quote loads more);
   * `unavailable`: the whole history was loaded and it is not there. */
  state: 'found' | 'not-loaded' | 'unavailable';
}

/** What a quote shows: the original's sender and snippet, or why it cannot. `searched`:
 * the whole history was loaded without finding it. */
export function quoteView(
  original: Message | undefined,
  users: Record<string, User>,
  meId: string | undefined,
  searched = false,
): QuoteView {
  if (!original) return searched ? { sender: null, text: UNAVAILABLE, state: 'unavailable' } : { sender: null, text: NOT_LOADED, state: 'not-loaded' };
  const sender = original.sender_id === meId ? 'You' : userName(users, original.sender_id);
  return { sender, text: snippet(original), state: 'found' };
}

export interface ReplyBar {
  /** Whose message: a name, "yourself", or "a message" when it is not held. */
  who: string;
  /** How it starts; "" when it is not held. */
  snippet: string;
  /** The whole line: "Replying to bob: how it starts". */
  label: string;
}

/** What the bar above the composer says of the reply being written. */
export function replyBar(original: Message | undefined, users: Record<string, User>, meId: string | undefined): ReplyBar {
  if (!original) return { who: 'a message', snippet: '', label: 'Replying to a message' };
  const who = original.sender_id === meId ? 'yourself' : userName(users, original.sender_id);
  const text = snippet(original);
  return { who, snippet: text, label: `Replying to ${who}: ${text}` };
}

/** Load older pages (`loadOlder` resolves false when there are none) until `has()`;
 * resolves whether it is held in the end. */
export async function seekOlder(has: () => boolean, loadOlder: () => Promise<boolean>): Promise<boolean> {
  while (!has()) {
    if (!(await loadOlder())) return has();
  }
  return true;
}
