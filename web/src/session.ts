// A signed-in session: the chat state, the WebSocket client that feeds it, and the
// REST calls that fill it in. Screens read the state with `useChat` and call methods
// here; nothing else talks to the socket.

import { createContext } from 'preact';
import { useContext, useEffect, useState } from 'preact/hooks';
import { api, ApiError } from './api';
import { isChange } from './changes';
import { uuid } from './format';
import { mentionNames } from './mentions';
import { seekOlder } from './replies';
import {
  type Action,
  type ChatState,
  initialState,
  type OutgoingChange,
  type OutgoingMessage,
  reducer,
  sinceFor,
  unknownConversations,
} from './store';
import type { Attachment, Job, Message, ServerFrame, User } from './types';
import { type ChangeRequest, ChatClient } from './ws';

/** How often `typing` goes out while the user types (§5.4: every few seconds). */
const TYPING_EVERY_MS = 3_000;
/** Messages per history page. */
export const PAGE = 50;

export class ChatSession {
  state: ChatState = initialState;
  readonly client: ChatClient;
  private readonly listeners = new Set<() => void>();
  private readonly jobListeners = new Set<(job: Job) => void>();
  private readonly lastTyping = new Map<string, number>();
  private readonly fetching = new Set<string>();
  /** Conversation id → the older page being fetched. */
  private readonly loadingOlder = new Map<string, Promise<boolean>>();
  private typingTimer: number | undefined;
  /** The first users, loading (names are looked up once they are in). */
  private usersReady: Promise<unknown> = Promise.resolve();
  /** Member ids and `@names` whose users were looked for already. */
  private readonly asked = new Set<string>();
  private readonly onOffline = () => this.client.networkLost();
  private readonly onOnline = () => this.client.networkBack();

  constructor(
    readonly token: string,
    me: User,
    onUnauthorized: () => void,
  ) {
    this.dispatch({ type: 'me', user: me });
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    this.client = new ChatClient({
      url: `${scheme}//${location.host}/api/v1/ws?token=${encodeURIComponent(token)}`,
      since: () => sinceFor(this.state),
      newId: uuid,
      onFrame: (frame) => this.onFrame(frame),
      onStatus: (status, retryInMs) => this.dispatch({ type: 'status', status, retryInMs }),
      onSendFailed: (p, code, message) =>
        this.dispatch({ type: 'send-failed', client_msg_id: p.client_msg_id, code, message }),
      checkAuth: () =>
        api.me().then(
          () => true,
          (e) => !(e instanceof ApiError && e.status === 401),
        ),
      onUnauthorized,
    });
  }

  /** Load the lists, connect, and follow the browser's online/offline events. */
  start(): void {
    window.addEventListener('offline', this.onOffline);
    window.addEventListener('online', this.onOnline);
    this.typingTimer = window.setInterval(() => this.dispatch({ type: 'expire-typing', now: Date.now() }), 1_000);
    // Names for member ids: the API has no lookup by id, so take the first users
    // (small installations: all of them) and add whoever a search turns up.
    this.usersReady = api.searchUsers('', 100).then((users) => this.dispatch({ type: 'users', users }), () => {});
    api.conversations().then(
      (list) => {
        this.dispatch({ type: 'conversations', list });
        this.client.start();
      },
      () => this.client.start(),
    );
  }

  stop(): void {
    window.removeEventListener('offline', this.onOffline);
    window.removeEventListener('online', this.onOnline);
    window.clearInterval(this.typingTimer);
    this.client.stop();
    this.listeners.clear();
  }

  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  onJob(fn: (job: Job) => void): () => void {
    this.jobListeners.add(fn);
    return () => this.jobListeners.delete(fn);
  }

  dispatch(action: Action): void {
    const next = reducer(this.state, action);
    if (next === this.state) return;
    this.state = next;
    for (const fn of this.listeners) fn();
  }

  private onFrame(frame: ServerFrame): void {
    for (const id of unknownConversations(this.state, frame)) this.fetchConversation(id);
    if (frame.type === 'job') for (const fn of this.jobListeners) fn(frame.job);
    this.dispatch({ type: 'frame', frame, now: Date.now() });
    if (frame.type === 'message' && frame.message.mentions?.length) this.learnNames(frame.message.conversation_id, [frame.message]);
  }

  /** Learn the names of a conversation's members and of the users its messages
   * mention that are not known yet (for `@` suggestions and highlighting). The API has
   * no lookup by id: the user list is read again for unknown members, and each name a
   * mentioning body gives is searched for; each once. */
  learnNames(conversation_id: string, messages: Message[] = []): void {
    void this.usersReady.then(() => {
      const users = this.state.users;
      const members = this.state.conversations[conversation_id]?.members ?? [];
      const missing = members.filter((id) => !users[id] && !this.asked.has(id));
      missing.forEach((id) => this.asked.add(id));
      const queries = missing.length ? [''] : [];
      const known = new Set(Object.values(users).map((u) => `@${u.username}`));
      for (const m of messages) {
        if (!(m.mentions ?? []).some((id) => !users[id])) continue;
        for (const name of mentionNames(m.body)) {
          if (!this.asked.has(`@${name}`) && !known.has(`@${name}`)) queries.push(name);
          this.asked.add(`@${name}`);
        }
      }
      for (const q of queries) api.searchUsers(q, q ? 5 : 100).then((found) => this.rememberUsers(found), () => {});
    });
  }

  fetchConversation(id: string): void {
    if (this.fetching.has(id)) return;
    this.fetching.add(id);
    api.conversation(id).then(
      (conversation) => {
        this.fetching.delete(id);
        this.dispatch({ type: 'conversation', conversation });
        // New members may be online already: ask for the current presence.
        this.client.resync();
        this.learnNames(id);
      },
      () => this.fetching.delete(id),
    );
  }

  rememberUsers(users: User[]): void {
    this.dispatch({ type: 'users', users });
  }

  /** Fetch the latest page of a conversation the first time it is opened, and older
   * ones while what is held has no message to show (only edits, deletes, reactions). */
  async open(id: string): Promise<void> {
    if (!this.state.conversations[id]) this.fetchConversation(id);
    if (this.state.loaded[id]) return this.learnNames(id);
    const messages = await api.messages(id, { limit: PAGE });
    this.dispatch({ type: 'page', conversation_id: id, messages, latest: true });
    this.learnNames(id, messages);
    await seekOlder(() => (this.state.messages[id] ?? []).some((m) => !isChange(m)), () => this.loadOlder(id));
  }

  /** Fetch the page before the oldest message held; false when there is none. Called
   * while a page is being fetched, it answers with that one (so that a caller looking
   * for an old message, replies.ts `seekOlder`, goes on to the next page). */
  loadOlder(id: string): Promise<boolean> {
    const running = this.loadingOlder.get(id);
    if (running) return running;
    const held = this.state.messages[id] ?? [];
    const first = held[0]?.seq ?? 0;
    if (first <= 1) return Promise.resolve(false);
    const page = api
      .messages(id, { before_seq: first, limit: PAGE })
      .then((messages) => {
        this.dispatch({ type: 'page', conversation_id: id, messages, latest: false });
        this.learnNames(id, messages);
        return messages.length > 0;
      })
      .finally(() => this.loadingOlder.delete(id));
    this.loadingOlder.set(id, page);
    return page;
  }

  /** Send a message; `body` may be empty when there are attachments. `reply_to`: the
   * message_id it answers (sending ends the reply being written, store.ts). */
  send(conversation_id: string, body: string, attachments: Attachment[] = [], reply_to: string | null = null): void {
    const ids = attachments.map((a) => a.attachment_id);
    const client_msg_id = this.client.send(conversation_id, body, ids, reply_to);
    const message: OutgoingMessage = { client_msg_id, conversation_id, body };
    if (attachments.length) message.attachments = attachments;
    if (reply_to) message.reply_to = reply_to;
    this.dispatch({ type: 'outgoing', message });
    this.lastTyping.delete(conversation_id);
  }

  /** Edit one of the user's messages: `body` replaces its body. */
  edit(conversation_id: string, message_id: string, body: string): void {
    this.change({ type: 'edit', conversation_id, message_id, body }, 'edit');
  }

  /** Delete a message (the user's own, or any in a group the user owns). */
  deleteMessage(conversation_id: string, message_id: string): void {
    this.change({ type: 'delete', conversation_id, message_id }, 'delete');
  }

  /** React to a message with `emoji`, or take the reaction back (`remove`). */
  react(conversation_id: string, message_id: string, emoji: string, remove: boolean): void {
    this.change({ type: 'react', conversation_id, message_id, emoji, remove }, 'reaction');
  }

  private change(request: ChangeRequest, kind: OutgoingChange['kind']): void {
    const client_msg_id = this.client.change(request);
    this.dispatch({ type: 'change', change: { client_msg_id, conversation_id: request.conversation_id, target_id: request.message_id, kind } });
  }

  /** Start replying to a message of the conversation, or stop (null). */
  replyTo(conversation_id: string, message_id: string | null): void {
    this.dispatch({ type: 'reply', conversation_id, message_id });
  }

  dismiss(client_msg_id: string): void {
    this.client.discard(client_msg_id);
    this.dispatch({ type: 'dismiss', client_msg_id });
  }

  /** Called on every keystroke; sends at most one `typing` per few seconds. */
  typing(conversation_id: string): void {
    const now = Date.now();
    if (now - (this.lastTyping.get(conversation_id) ?? 0) < TYPING_EVERY_MS) return;
    this.lastTyping.set(conversation_id, now);
    this.client.typing(conversation_id);
  }

  /** Move the read marker to `seq` if it is ahead of it. */
  markRead(conversation_id: string, seq: number): void {
    const c = this.state.conversations[conversation_id];
    if (!c || seq <= c.my_read) return;
    this.dispatch({ type: 'read-local', conversation_id, seq });
    this.client.read(conversation_id, seq);
  }
}

export const SessionContext = createContext<ChatSession | null>(null);

export function useSession(): ChatSession {
  const s = useContext(SessionContext);
  if (!s) throw new Error('no session');
  return s;
}

/** The chat state, re-rendering on every change. */
export function useChat(): ChatState {
  const session = useSession();
  const [, setTick] = useState(0);
  useEffect(() => session.subscribe(() => setTick((t) => t + 1)), [session]);
  return session.state;
}
