// The chat state and its reducer: pure functions from (state, action) to state, so the
// tests can replay frames without a browser. Messages are kept per conversation by
// seq, never by arrival order (§5.4: a `sync` may replay older messages after live ones),
// edits, deletes and reactions among them (changes.ts folds them when showing).

import { fold, foldAll, isChange, type Shown } from './changes';
import type { Attachment, Conversation, Message, ServerFrame, User } from './types';
import type { Status } from './ws';

/** How long a `typing` frame shows the indicator (the protocol has no "stopped"). */
export const TYPING_MS = 5_000;

export interface ConversationState extends Omit<Conversation, 'read_seq'> {
  /** The caller's read marker: the server's `read_seq` when loaded, then moved by
   * `read`. */
  my_read: number;
  /** sent_at of the newest message seen, for ordering the list. */
  last_at: string;
  /** Messages after the read marker that mention the viewer: the server's count when
   * loaded, then kept here (the server pushes no new count): up by a live message
   * mentioning the viewer, up or down by a live edit adding or removing the mention (or
   * a delete) of a message held after the marker, down as the marker moves; never more
   * than `unread`. */
  mentions_unread: number;
}

export interface OutgoingMessage {
  client_msg_id: string;
  conversation_id: string;
  body: string;
  /** Uploads it carries (shown while it is pending). */
  attachments?: Attachment[];
  /** The message_id it answers. */
  reply_to?: string;
  /** Set when the server refused it for good. */
  error?: { code: string; message: string };
}

/** An edit, delete or reaction sent and not stored yet (its entry has not come). */
export interface OutgoingChange {
  client_msg_id: string;
  conversation_id: string;
  /** The message it changes. */
  target_id: string;
  kind: 'edit' | 'delete' | 'reaction';
  /** Set when the server refused it for good. */
  error?: { code: string; message: string };
}

export interface ChatState {
  me: User | null;
  conversations: Record<string, ConversationState>;
  /** Conversation id → messages ascending by seq, no duplicates. */
  messages: Record<string, Message[]>;
  /** Conversations whose latest page was fetched (others hold only live messages). */
  loaded: Record<string, boolean>;
  /** Conversation id → other members' read markers (known from `read` frames). */
  readBy: Record<string, Record<string, number>>;
  online: Record<string, boolean>;
  /** Conversation id → user id → when the indicator expires (ms since epoch). */
  typing: Record<string, Record<string, number>>;
  users: Record<string, User>;
  outgoing: OutgoingMessage[];
  changes: OutgoingChange[];
  /** Conversation id → the message_id the composer is replying to there (one reply
   * being written per conversation; another conversation's is not carried over). */
  replying: Record<string, string>;
  status: Status;
  retryInMs?: number;
}

export const initialState: ChatState = {
  me: null,
  conversations: {},
  messages: {},
  loaded: {},
  readBy: {},
  online: {},
  typing: {},
  users: {},
  outgoing: [],
  changes: [],
  replying: {},
  status: 'stopped',
};

export type Action =
  | { type: 'reset' }
  | { type: 'me'; user: User }
  | { type: 'users'; users: User[] }
  | { type: 'conversations'; list: Conversation[] }
  | { type: 'conversation'; conversation: Conversation }
  | { type: 'page'; conversation_id: string; messages: Message[]; latest: boolean }
  | { type: 'frame'; frame: ServerFrame; now: number }
  | { type: 'status'; status: Status; retryInMs?: number }
  | { type: 'outgoing'; message: OutgoingMessage }
  | { type: 'change'; change: OutgoingChange }
  /** Start replying to a held message of the conversation, or stop (`message_id` null). */
  | { type: 'reply'; conversation_id: string; message_id: string | null }
  /** A send or a change refused for good; `dismiss` forgets it. */
  | { type: 'send-failed'; client_msg_id: string; code: string; message: string }
  | { type: 'dismiss'; client_msg_id: string }
  | { type: 'read-local'; conversation_id: string; seq: number }
  | { type: 'expire-typing'; now: number };

/** Merge two ascending message lists into one, unique by seq (the first copy wins:
 * a message is identical wherever it appears). */
export function mergeMessages(a: Message[], b: Message[]): Message[] {
  if (b.length === 0) return a;
  if (a.length === 0) return dedupe([...b].sort((x, y) => x.seq - y.seq));
  // Common cases first: appending newer, prepending older.
  if (b[0].seq > a[a.length - 1].seq) return a.concat(dedupe(b));
  const bySeq = new Map<number, Message>();
  for (const m of a) bySeq.set(m.seq, m);
  for (const m of b) if (!bySeq.has(m.seq)) bySeq.set(m.seq, m);
  return [...bySeq.values()].sort((x, y) => x.seq - y.seq);
}

function dedupe(list: Message[]): Message[] {
  return list.filter((m, i) => i === 0 || m.seq !== list[i - 1].seq);
}

/** `record` without `key` (the same object when it has none). */
function without<T>(record: Record<string, T>, key: string): Record<string, T> {
  if (!(key in record)) return record;
  const rest = { ...record };
  delete rest[key];
  return rest;
}

function fromServer({ read_seq, ...c }: Conversation, prev?: ConversationState): ConversationState {
  const last_seq = Math.max(c.last_seq, prev?.last_seq ?? 0);
  const my_read = Math.max(read_seq ?? c.last_seq - c.unread, prev?.my_read ?? 0);
  // The server's count (messages, not changes nor deleted ones), and whatever came
  // after its answer.
  const unread = Math.max(0, Math.min(c.unread + last_seq - c.last_seq, last_seq - my_read));
  // The server's count of mentions (it knows the messages not held here); none left
  // when everything is read.
  const mentions_unread = Math.min(Math.max(0, c.mentions_unread ?? 0), unread);
  return { ...c, last_seq, my_read, unread, mentions_unread, last_at: prev?.last_at ?? c.created_at };
}

/** `c` once `entries` of it came (live or in a page): the newest seq, the time of the
 * newest message, and the messages newer than it knew counted unread (not deleted
 * ones, as the server counts). Changes are no messages: they count for neither, so a
 * reaction does not move a conversation up. */
function withEntries(c: ConversationState, entries: Message[]): ConversationState {
  let { last_seq, last_at, unread } = c;
  for (const m of entries) {
    last_seq = Math.max(last_seq, m.seq);
    if (isChange(m)) continue;
    if (m.seq > c.last_seq && !m.deleted) unread++;
    if (m.sent_at > last_at) last_at = m.sent_at;
  }
  if (last_seq === c.last_seq && last_at === c.last_at) return c;
  return { ...c, last_seq, last_at, unread };
}

/** Whether a message mentions the user `meId`. */
export function mentionsMe(m: Message, meId: string | undefined): boolean {
  return !!meId && (m.mentions ?? []).includes(meId);
}

/** `c` with the read marker moved to `my_read`: the messages after it that are not
 * deleted, and those of them whose current body mentions the viewer, counted from the
 * entries held when they cover every seq after the marker (every change of those
 * messages is then held too); else the counts so far (the server's cover entries not
 * held), at most the seqs after the marker less the entries held among them that are no
 * unread message. */
function afterRead(c: ConversationState, my_read: number, held: Message[], meId: string | undefined): ConversationState {
  const after = held.filter((m) => m.seq > my_read && m.seq <= c.last_seq);
  const messages = foldAll(after).filter((m) => !m.deleted);
  if (after.length === c.last_seq - my_read) {
    return { ...c, my_read, unread: messages.length, mentions_unread: messages.filter((m) => mentionsMe(m, meId)).length };
  }
  const unread = Math.max(0, Math.min(c.unread, c.last_seq - my_read - (after.length - messages.length)));
  return { ...c, my_read, unread, mentions_unread: Math.min(c.mentions_unread, unread) };
}

/** `c` once the entry `m`, not held before, came (`withEntries` counted it unread if
 * a message): a message after the read marker that mentions the viewer adds a mention
 * (older ones the server counted when the list was loaded). A change of a message held
 * after the marker makes the counts follow that message from how it showed to how it
 * shows now: an edit adding or removing a mention of the viewer moves
 * `mentions_unread`, a delete takes the message out of both counts. A change of a
 * message not held changes nothing here: the server's counts cover it. */
function withNew(c: ConversationState, m: Message, held: Message[], meId: string | undefined): ConversationState {
  const mentioning = (s: Message) => (!s.deleted && mentionsMe(s, meId) ? 1 : 0);
  if (!isChange(m)) return m.seq > c.my_read && mentioning(m) ? { ...c, mentions_unread: c.mentions_unread + 1 } : c;
  const target = m.target_id ? held.find((h) => h.message_id === m.target_id) : undefined;
  if (!target || target.seq <= c.my_read) return c;
  const changes = held.filter((h) => h.target_id === m.target_id);
  const before = fold(target, changes);
  const now = fold(target, [...changes, m]);
  const counted = (s: Shown) => (s.deleted ? 0 : 1);
  const unread = Math.max(0, c.unread + counted(now) - counted(before));
  const mentions_unread = Math.min(unread, Math.max(0, c.mentions_unread + mentioning(now) - mentioning(before)));
  return unread === c.unread && mentions_unread === c.mentions_unread ? c : { ...c, unread, mentions_unread };
}

/** `changes` without the one sent as `client_msg_id` in conversation `id` (the same
 * list when it has none). */
function withoutChange(changes: OutgoingChange[], client_msg_id: string, id?: string): OutgoingChange[] {
  const rest = changes.filter((o) => !(o.client_msg_id === client_msg_id && (id === undefined || o.conversation_id === id)));
  return rest.length === changes.length ? changes : rest;
}

export function reducer(state: ChatState, action: Action): ChatState {
  switch (action.type) {
    case 'reset':
      return initialState;
    case 'me':
      return { ...state, me: action.user, users: { ...state.users, [action.user.id]: action.user } };
    case 'users': {
      const users = { ...state.users };
      for (const u of action.users) users[u.id] = u;
      return { ...state, users };
    }
    case 'conversations': {
      const conversations: Record<string, ConversationState> = {};
      for (const c of action.list) conversations[c.id] = fromServer(c, state.conversations[c.id]);
      // Keep ones learned live that the list did not have yet.
      for (const [id, c] of Object.entries(state.conversations)) if (!conversations[id]) conversations[id] = c;
      return { ...state, conversations };
    }
    case 'conversation': {
      const c = action.conversation;
      return { ...state, conversations: { ...state.conversations, [c.id]: fromServer(c, state.conversations[c.id]) } };
    }
    case 'page': {
      const id = action.conversation_id;
      const held = state.messages[id] ?? [];
      let messages: Message[];
      if (action.latest && !state.loaded[id]) {
        // Live messages held before the first page may leave a gap below the page:
        // keep only those newer than it.
        const top = action.messages.length ? action.messages[action.messages.length - 1].seq : 0;
        messages = mergeMessages(
          [...action.messages].sort((x, y) => x.seq - y.seq),
          held.filter((m) => m.seq > top),
        );
      } else {
        messages = mergeMessages(held, action.messages);
      }
      let conversations = state.conversations;
      const c = conversations[id];
      if (c) conversations = { ...conversations, [id]: withEntries(c, action.messages) };
      return {
        ...state,
        conversations,
        messages: { ...state.messages, [id]: messages },
        loaded: action.latest ? { ...state.loaded, [id]: true } : state.loaded,
      };
    }
    case 'frame':
      return onFrame(state, action.frame, action.now);
    case 'status':
      // Disconnected, presence is unknown: show nobody online until the next `synced`.
      return {
        ...state,
        status: action.status,
        retryInMs: action.retryInMs,
        online: action.status === 'online' ? state.online : {},
        typing: action.status === 'online' ? state.typing : {},
      };
    case 'outgoing': {
      // Sending ends the reply being written in that conversation (it went with it).
      const cid = action.message.conversation_id;
      return { ...state, outgoing: [...state.outgoing, action.message], replying: without(state.replying, cid) };
    }
    case 'change':
      return { ...state, changes: [...state.changes, action.change] };
    case 'reply': {
      const cid = action.conversation_id;
      if (action.message_id === null) {
        return cid in state.replying ? { ...state, replying: without(state.replying, cid) } : state;
      }
      // Only a message of that conversation, and one held (it is what the bar shows).
      const held = state.messages[cid] ?? [];
      if (!held.some((m) => m.message_id === action.message_id)) return state;
      if (state.replying[cid] === action.message_id) return state;
      return { ...state, replying: { ...state.replying, [cid]: action.message_id } };
    }
    case 'send-failed': {
      const error = { code: action.code, message: action.message };
      const mark = <T extends { client_msg_id: string }>(o: T): T => (o.client_msg_id === action.client_msg_id ? { ...o, error } : o);
      return { ...state, outgoing: state.outgoing.map(mark), changes: state.changes.map(mark) };
    }
    case 'dismiss':
      return {
        ...state,
        outgoing: state.outgoing.filter((o) => o.client_msg_id !== action.client_msg_id),
        changes: withoutChange(state.changes, action.client_msg_id),
      };
    case 'read-local': {
      const c = state.conversations[action.conversation_id];
      if (!c || action.seq <= c.my_read) return state;
      const next = afterRead(c, Math.min(action.seq, c.last_seq), state.messages[c.id] ?? [], state.me?.id);
      return { ...state, conversations: { ...state.conversations, [c.id]: next } };
    }
    case 'expire-typing': {
      let changed = false;
      const typing: ChatState['typing'] = {};
      for (const [cid, users] of Object.entries(state.typing)) {
        const keep: Record<string, number> = {};
        for (const [uid, until] of Object.entries(users)) {
          if (until > action.now) keep[uid] = until;
          else changed = true;
        }
        if (Object.keys(keep).length) typing[cid] = keep;
      }
      return changed ? { ...state, typing } : state;
    }
  }
}

function onFrame(state: ChatState, frame: ServerFrame, now: number): ChatState {
  switch (frame.type) {
    case 'ready':
      return { ...state, me: frame.user, users: { ...state.users, [frame.user.id]: frame.user } };
    case 'accepted': {
      // A change that changed nothing: no entry will come.
      const changes = frame.unchanged ? withoutChange(state.changes, frame.client_msg_id) : state.changes;
      return changes === state.changes ? state : { ...state, changes };
    }
    case 'message': {
      const m = frame.message;
      const id = m.conversation_id;
      const held = state.messages[id] ?? [];
      const messages = { ...state.messages, [id]: mergeMessages(held, [m]) };
      let conversations = state.conversations;
      const c = conversations[id];
      if (c) {
        let next = withEntries(c, [m]);
        // Counted once: a `sync` may replay an entry held already.
        if (!held.some((h) => h.seq === m.seq)) next = withNew(next, m, held, state.me?.id);
        conversations = { ...conversations, [id]: next };
      }
      let outgoing = state.outgoing;
      let changes = state.changes;
      if (state.me && m.sender_id === state.me.id) {
        outgoing = outgoing.filter((o) => !(o.client_msg_id === m.client_msg_id && o.conversation_id === id));
        changes = withoutChange(changes, m.client_msg_id, id);
      }
      let typing = state.typing;
      if (typing[id]?.[m.sender_id]) {
        const rest = { ...typing[id] };
        delete rest[m.sender_id];
        typing = { ...typing, [id]: rest };
      }
      return { ...state, messages, conversations, outgoing, changes, typing };
    }
    case 'synced': {
      const conversations = { ...state.conversations };
      // Entries the session did not get: taken for messages until they come.
      for (const [id, seq] of Object.entries(frame.last_seq)) {
        const c = conversations[id];
        if (c && seq > c.last_seq) conversations[id] = { ...c, last_seq: seq, unread: c.unread + seq - c.last_seq };
      }
      const online: Record<string, boolean> = {};
      for (const u of frame.online ?? []) online[u] = true;
      return { ...state, conversations, online };
    }
    case 'presence':
      return { ...state, online: { ...state.online, [frame.user_id]: frame.online } };
    case 'typing': {
      if (frame.user_id === state.me?.id) return state;
      const cur = state.typing[frame.conversation_id] ?? {};
      return {
        ...state,
        typing: { ...state.typing, [frame.conversation_id]: { ...cur, [frame.user_id]: now + TYPING_MS } },
      };
    }
    case 'read': {
      const id = frame.conversation_id;
      if (frame.user_id === state.me?.id) return reducer(state, { type: 'read-local', conversation_id: id, seq: frame.seq });
      const cur = state.readBy[id] ?? {};
      if ((cur[frame.user_id] ?? 0) >= frame.seq) return state;
      return { ...state, readBy: { ...state.readBy, [id]: { ...cur, [frame.user_id]: frame.seq } } };
    }
    default:
      return state;
  }
}

/** What the next `sync` names: for a conversation whose messages are loaded, the
 * highest seq held (the server replays everything after it); for one only listed, the
 * last seq known, so nothing old is replayed but whatever was missed arrives. */
export function sinceFor(state: ChatState): Record<string, number> {
  const since: Record<string, number> = {};
  for (const [id, c] of Object.entries(state.conversations)) {
    const held = state.messages[id];
    const top = held && held.length ? held[held.length - 1].seq : 0;
    since[id] = state.loaded[id] ? top : Math.max(top, c.last_seq);
  }
  return since;
}

/** Conversations newest activity first. */
export function sortedConversations(state: ChatState): ConversationState[] {
  return Object.values(state.conversations).sort((a, b) =>
    a.last_at === b.last_at ? a.id.localeCompare(b.id) : a.last_at < b.last_at ? 1 : -1,
  );
}

/** Conversation ids a frame names that the state does not know (to fetch). */
export function unknownConversations(state: ChatState, frame: ServerFrame): string[] {
  if (frame.type === 'message')
    return state.conversations[frame.message.conversation_id] ? [] : [frame.message.conversation_id];
  if (frame.type === 'synced') return Object.keys(frame.last_seq).filter((id) => !state.conversations[id]);
  return [];
}

/** Who is typing in a conversation now, by user id. */
export function typingIn(state: ChatState, conversation_id: string, now: number): string[] {
  return Object.entries(state.typing[conversation_id] ?? {})
    .filter(([, until]) => until > now)
    .map(([u]) => u)
    .sort();
}
