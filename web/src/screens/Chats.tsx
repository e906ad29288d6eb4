import type { RefObject } from 'preact';
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from 'preact/hooks';
import { api, ApiError, type Upload, uploadAttachment } from '../api';
import { canDelete, canEdit, DELETED, EMOJI, foldAll, lastShown, type Reaction, reactedBy, type Shown } from '../changes';
import { AttachmentList, ImageViewer } from '../components';
import {
  canSend,
  type ComposerAction,
  composerReducer,
  type ComposerState,
  emptyComposer,
  MAX_ATTACHMENTS,
  percent,
  readyAttachments,
  uploading,
  uploadName,
  uploadStatus,
} from '../composer';
import {
  attachmentSummary,
  changeErrorMessage,
  conversationTitle,
  formatFull,
  formatSize,
  formatTime,
  sendErrorMessage,
  typingText,
  uploadErrorMessage,
  userName,
  uuid,
} from '../format';
import { insertMention, mentionAt, mentionsLabel, type MentionToken, segments, suggestions } from '../mentions';
import { findOriginal, quoteView, type QuoteView, type ReplyBar, replyBar, seekOlder, snippet } from '../replies';
import { href, navigate } from '../router';
import { queryProblem, RESULTS, resultsText, SEARCH_DELAY_MS } from '../search';
import { useChat, useSession } from '../session';
import { type ChatState, type ConversationState, type OutgoingChange, sortedConversations, typingIn } from '../store';
import type { Attachment, Message, User } from '../types';

const MAX_BODY_BYTES = 16_384;
/** How long the original of a quote stays highlighted after a jump to it. */
const HIGHLIGHT_MS = 2_500;

/** `messageId`: open the conversation at that message (a search result). */
export function Chats({ conversationId, messageId = null }: { conversationId: string | null; messageId?: string | null }) {
  return (
    <div class={`chats ${conversationId ? 'has-open' : ''}`}>
      <ConversationList activeId={conversationId} />
      {conversationId ? (
        <ConversationView key={conversationId} id={conversationId} messageId={messageId} />
      ) : (
        <section class="pane empty-pane" aria-label="No conversation open">
          <p>Pick a conversation, or start a new one.</p>
          <a class="button primary" href="#/new">
            New conversation
          </a>
        </section>
      )}
    </div>
  );
}

/** Whether the other member of a direct conversation is online; for a group, how many
 * members are. */
function presence(state: ChatState, c: ConversationState): { online: boolean; count: number } {
  const others = c.members.filter((m) => m !== state.me?.id);
  const count = others.filter((m) => state.online[m]).length;
  return { online: count > 0, count };
}

/** The messages matching `query` as it is typed (after a pause), with what the list
 * says of them; null when there is no query. While the next answer is awaited, the
 * last results stay. */
function useMessageSearch(query: string): { results: Message[]; status: string } | null {
  const q = query.trim();
  const problem = queryProblem(q);
  const [answer, setAnswer] = useState<{ q: string; results: Message[]; error?: string } | null>(null);
  useEffect(() => {
    if (!q || problem) return;
    let live = true;
    const t = setTimeout(() => {
      api.search(q, undefined, RESULTS).then(
        (results) => live && setAnswer({ q, results }),
        (e: Error) => live && setAnswer({ q, results: [], error: `Cannot search: ${e.message}` }),
      );
    }, SEARCH_DELAY_MS);
    return () => {
      live = false;
      clearTimeout(t);
    };
  }, [q]);
  if (!q) return null;
  if (problem) return { results: [], status: problem };
  if (answer?.q !== q) return { results: answer?.results ?? [], status: 'Searching…' };
  return { results: answer.results, status: answer.error ?? resultsText(answer.results.length) };
}

function ConversationList({ activeId }: { activeId: string | null }) {
  const state = useChat();
  const list = sortedConversations(state);
  const ref = useRef<HTMLUListElement>(null);
  const [query, setQuery] = useState('');
  const search = useMessageSearch(query);

  // Up and down arrows move between the conversations (or the results); Tab leaves
  // the list. Down from the search box goes to the first.
  const onKeyDown = (e: KeyboardEvent) => {
    if (e.key !== 'ArrowDown' && e.key !== 'ArrowUp' && e.key !== 'Home' && e.key !== 'End') return;
    const links = [...(ref.current?.querySelectorAll<HTMLAnchorElement>('a') ?? [])];
    if (!links.length) return;
    const i = links.indexOf(document.activeElement as HTMLAnchorElement);
    let next = i;
    if (e.key === 'ArrowDown') next = Math.min(links.length - 1, i + 1);
    if (e.key === 'ArrowUp') next = Math.max(0, i - 1);
    if (e.key === 'Home') next = 0;
    if (e.key === 'End') next = links.length - 1;
    links[next]?.focus();
    e.preventDefault();
  };

  return (
    <section class="pane list-pane" aria-labelledby="chats-heading">
      <div class="pane-head">
        <h1 id="chats-heading">Chats</h1>
        <a class="button" href="#/new">
          New
        </a>
      </div>
      <form role="search" class="search" onSubmit={(e) => e.preventDefault()}>
        <label class="visually-hidden" for="search-input">
          Search messages
        </label>
        <input
          id="search-input"
          type="search"
          placeholder="Search messages"
          autocomplete="off"
          value={query}
          onInput={(e) => setQuery(e.currentTarget.value)}
          onKeyDown={(e) => {
            if (e.key === 'Escape' && query) {
              e.preventDefault();
              setQuery('');
            } else if (e.key === 'ArrowDown') {
              e.preventDefault();
              ref.current?.querySelector('a')?.focus();
            }
          }}
        />
      </form>
      {search ? (
        <>
          <p class="muted small search-status" role="status" data-testid="search-status">
            {search.status}
          </p>
          {search.results.length > 0 && (
            <ul class="conv-list" ref={ref} onKeyDown={onKeyDown} aria-label="Search results">
              {search.results.map((m) => {
                const c = state.conversations[m.conversation_id];
                const where = c ? conversationTitle(c, state.me?.id, state.users) : 'Another conversation';
                // Who wrote it, as the list's previews say it: "You", or the sender in a
                // group (a direct conversation is named after the other member already).
                const mine = m.sender_id === state.me?.id;
                const who = mine ? 'You' : c?.kind === 'direct' ? null : userName(state.users, m.sender_id);
                const text = snippet(m);
                return (
                  <li key={m.message_id}>
                    <a
                      class="result"
                      href={href({ name: 'conversation', id: m.conversation_id, message_id: m.message_id })}
                      aria-label={`${who ? `${who} in ` : ''}${where}, ${formatTime(m.sent_at)}: ${text}`}
                      data-message-id={m.message_id}
                    >
                      <span class="result-head">
                        <span class="result-where">{where}</span>
                        <time dateTime={m.sent_at}>{formatTime(m.sent_at)}</time>
                      </span>
                      <span class="result-text">
                        {who && <span class="result-sender">{who}: </span>}
                        {text}
                      </span>
                    </a>
                  </li>
                );
              })}
            </ul>
          )}
        </>
      ) : list.length === 0 ? (
        <p class="muted pad">No conversations yet.</p>
      ) : (
        <ul class="conv-list" ref={ref} onKeyDown={onKeyDown} aria-label="Conversations">
          {list.map((c) => {
            const title = conversationTitle(c, state.me?.id, state.users);
            const p = presence(state, c);
            const last = lastShown(state.messages[c.id] ?? []);
            const label = [
              title,
              c.kind === 'group' ? `group, ${p.count} online` : p.online ? 'online' : 'offline',
              c.unread ? `${c.unread} unread` : '',
              c.mentions_unread ? mentionsLabel(c.mentions_unread) : '',
            ]
              .filter(Boolean)
              .join(', ');
            return (
              <li key={c.id}>
                <a
                  class="conv"
                  href={`#/c/${c.id}`}
                  aria-current={c.id === activeId ? 'page' : undefined}
                  aria-label={label}
                  data-conversation={c.id}
                >
                  <span class={`presence ${p.online ? 'on' : 'off'}`} aria-hidden="true" />
                  <span class="conv-main">
                    <span class="conv-title">{title}</span>
                    <span class="conv-preview">
                      {last
                        ? `${last.sender_id === state.me?.id ? 'You: ' : ''}${last.deleted ? DELETED : last.body || attachmentSummary(last.attachments)}`
                        : c.kind === 'group'
                          ? `${c.members.length} members`
                          : 'Direct message'}
                    </span>
                  </span>
                  <span class="conv-side">
                    {last && <span class="conv-time">{formatTime(last.sent_at)}</span>}
                    <span class="badges">
                      {c.mentions_unread > 0 && (
                        <span class="badge mention" data-mentions={c.mentions_unread} aria-label={mentionsLabel(c.mentions_unread)} title={mentionsLabel(c.mentions_unread)}>
                          @{c.mentions_unread > 99 ? '99+' : c.mentions_unread}
                        </span>
                      )}
                      {c.unread > 0 && (
                        <span class="badge unread" data-unread={c.unread}>
                          {c.unread > 99 ? '99+' : c.unread}
                        </span>
                      )}
                    </span>
                  </span>
                </a>
              </li>
            );
          })}
        </ul>
      )}
    </section>
  );
}

function ConversationView({ id, messageId }: { id: string; messageId: string | null }) {
  const session = useSession();
  const state = useChat();
  const c = state.conversations[id];
  // Every entry held (edits, deletes and reactions too), and the messages they show.
  const messages = state.messages[id] ?? [];
  const shown = useMemo(() => foldAll(messages), [messages]);
  const outgoing = state.outgoing.filter((o) => o.conversation_id === id);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [loadingOlder, setLoadingOlder] = useState(false);
  const [showJump, setShowJump] = useState(false);
  const [now, setNow] = useState(Date.now());
  const listRef = useRef<HTMLDivElement>(null);
  const atBottom = useRef(true);
  const lastHeight = useRef(0);
  const lastFirst = useRef(0);
  const lastCount = useRef(0);
  const uploads = useUploads();
  const [viewing, setViewing] = useState<Attachment | null>(null);
  const [dropping, setDropping] = useState(false);
  const dragDepth = useRef(0);
  const inputRef = useRef<HTMLTextAreaElement>(null);
  // Jumps to a message (a reply's original, a search result): the one being looked for
  // (older pages loading), the ones the whole history did not have, the one highlighted
  // after a jump (`n` restarts the timer when the same one is chosen again) and the one
  // to scroll to once it is rendered.
  const [seeking, setSeeking] = useState<string | null>(null);
  const [unavailable, setUnavailable] = useState<Record<string, true>>({});
  const [highlight, setHighlight] = useState<{ seq: number; n: number } | null>(null);
  const scrollTo = useRef<number | null>(null);
  const byId = useMemo(() => new Map(shown.map((m) => [m.message_id, m])), [shown]);

  useEffect(() => {
    session.open(id).catch((e: Error) => setLoadError(e.message));
  }, [id]);

  const typing = typingIn(state, id, now);
  useEffect(() => {
    if (!typing.length) return;
    const t = setTimeout(() => setNow(Date.now()), 1000);
    return () => clearTimeout(t);
  });
  useEffect(() => setNow(Date.now()), [state.typing]);

  // Keep the view still when messages arrive: stick to the bottom only if the reader
  // is there; when older pages are prepended, keep what is on screen where it was.
  useLayoutEffect(() => {
    const el = listRef.current;
    if (!el) return;
    const first = messages[0]?.seq ?? 0;
    const count = shown.length + outgoing.length;
    if (lastFirst.current && first < lastFirst.current && !atBottom.current) {
      el.scrollTop += el.scrollHeight - lastHeight.current;
    } else if (atBottom.current) {
      el.scrollTop = el.scrollHeight;
    } else if (count > lastCount.current) {
      setShowJump(true);
    }
    lastFirst.current = first;
    lastCount.current = count;
    lastHeight.current = el.scrollHeight;
    // `c`: the list is not rendered until the conversation is known, which may come
    // after its first page.
  }, [messages, outgoing.length, !!c]);

  // The list also changes size without a message coming: the composer grows (the
  // "Replying to" bar, upload chips, a longer text), the window is resized. A reader at
  // the bottom stays there.
  useEffect(() => {
    const el = listRef.current;
    if (!el || typeof ResizeObserver === 'undefined') return;
    const ro = new ResizeObserver(() => {
      if (atBottom.current) el.scrollTop = el.scrollHeight;
      lastHeight.current = el.scrollHeight;
    });
    ro.observe(el);
    const list = el.querySelector('.message-list');
    if (list) ro.observe(list);
    return () => ro.disconnect();
  }, [!!c]);

  // After a jump to a message: once it is rendered, bring it to the middle of the list
  // and give it focus (keyboard users go on from there).
  useLayoutEffect(() => {
    const seq = scrollTo.current;
    if (seq === null) return;
    const el = listRef.current?.querySelector<HTMLElement>(`li.msg[data-seq="${seq}"]`);
    if (!el) return;
    scrollTo.current = null;
    atBottom.current = false;
    el.scrollIntoView({ block: 'center' });
    el.focus({ preventScroll: true });
  });

  useEffect(() => {
    if (!highlight) return;
    const t = setTimeout(() => setHighlight(null), HIGHLIGHT_MS);
    return () => clearTimeout(t);
  }, [highlight]);

  const last = messages[messages.length - 1];
  // Read marker: move it when the newest message is on screen and the tab is visible.
  useEffect(() => {
    const mark = () => {
      if (last && atBottom.current && document.visibilityState === 'visible') session.markRead(id, last.seq);
    };
    mark();
    document.addEventListener('visibilitychange', mark);
    return () => document.removeEventListener('visibilitychange', mark);
  }, [id, last?.seq, !!c]);

  const loadOlder = async () => {
    setLoadingOlder(true);
    try {
      await session.loadOlder(id);
    } catch (e) {
      setLoadError((e as Error).message);
    } finally {
      setLoadingOlder(false);
    }
  };

  const onScroll = () => {
    const el = listRef.current;
    if (!el) return;
    atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 48;
    lastHeight.current = el.scrollHeight;
    if (atBottom.current) {
      setShowJump(false);
      if (last) session.markRead(id, last.seq);
    }
    if (el.scrollTop < 150 && (messages[0]?.seq ?? 1) > 1 && !loadingOlder) void loadOlder();
  };

  /** Show a message (the original of a quote, a search result): from the messages
   * held, or after loading older pages (the same as scrolling back) until it comes or
   * the history ends. */
  const goTo = async (message_id: string) => {
    if (seeking) return;
    const held = () => findOriginal(session.state.messages[id] ?? [], message_id);
    let found = held();
    if (!found) {
      setSeeking(message_id);
      setLoadingOlder(true);
      try {
        await seekOlder(() => !!held(), () => session.loadOlder(id));
        found = held();
        if (!found) setUnavailable((u) => ({ ...u, [message_id]: true }));
      } catch (e) {
        setLoadError((e as Error).message);
      } finally {
        setSeeking(null);
        setLoadingOlder(false);
      }
    }
    if (!found) return;
    scrollTo.current = found.seq;
    setHighlight((h) => ({ seq: found.seq, n: (h?.n ?? 0) + 1 }));
  };

  // Opened at a message: show it once the first page is in, then leave it out of the
  // address (choosing the same result again jumps again).
  const loaded = !!state.loaded[id];
  useEffect(() => {
    if (messageId && loaded) void goTo(messageId).then(() => navigate({ name: 'conversation', id }, true));
  }, [messageId, loaded]);

  const startReply = (m: Message) => {
    session.replyTo(id, m.message_id);
    inputRef.current?.focus();
  };
  const cancelReply = () => {
    session.replyTo(id, null);
    inputRef.current?.focus();
  };

  const jump = () => {
    const el = listRef.current;
    if (el) el.scrollTop = el.scrollHeight;
    atBottom.current = true;
    setShowJump(false);
    if (last) session.markRead(id, last.seq);
  };

  if (!c) {
    return (
      <section class="pane conv-pane" aria-label="Conversation">
        <p class="muted pad" role="status">
          {loadError ? `Cannot open this conversation: ${loadError}` : 'Loading…'}
        </p>
      </section>
    );
  }

  const title = conversationTitle(c, state.me?.id, state.users);
  const p = presence(state, c);
  const seenAt = seenMarkers(state, id, shown);
  const quoteOf = (reply_to: string | null | undefined): QuoteView | undefined =>
    reply_to ? quoteView(byId.get(reply_to), state.users, state.me?.id, !!unavailable[reply_to]) : undefined;
  const replyId = state.replying[id] ?? null;
  const replyOriginal = replyId ? byId.get(replyId) : undefined;

  // Files dropped anywhere on the conversation, or pasted into it, are attached.
  const hasFiles = (e: DragEvent) => [...(e.dataTransfer?.types ?? [])].includes('Files');
  const onDragEnter = (e: DragEvent) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    dragDepth.current += 1;
    setDropping(true);
  };
  const onDragOver = (e: DragEvent) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    if (e.dataTransfer) e.dataTransfer.dropEffect = 'copy';
  };
  const onDragLeave = (e: DragEvent) => {
    if (!hasFiles(e)) return;
    dragDepth.current = Math.max(0, dragDepth.current - 1);
    if (!dragDepth.current) setDropping(false);
  };
  const onDrop = (e: DragEvent) => {
    dragDepth.current = 0;
    setDropping(false);
    const files = [...(e.dataTransfer?.files ?? [])];
    if (!files.length) return;
    e.preventDefault();
    uploads.add(files);
  };
  const onPaste = (e: ClipboardEvent) => {
    const files = [...(e.clipboardData?.files ?? [])];
    if (!files.length) return;
    // A copied picture comes with no text: attach it. Text copied with a picture of
    // itself (a spreadsheet's cells) pastes as text too.
    if (!e.clipboardData?.types.includes('text/plain')) e.preventDefault();
    uploads.add(files);
  };

  return (
    <section
      class="pane conv-pane"
      aria-labelledby="conv-title"
      onDragEnter={onDragEnter}
      onDragOver={onDragOver}
      onDragLeave={onDragLeave}
      onDrop={onDrop}
      onPaste={onPaste}
    >
      <div class="pane-head conv-head">
        <a class="back" href="#/" aria-label="Back to chats">
          ‹
        </a>
        <span class={`presence ${p.online ? 'on' : 'off'}`} aria-hidden="true" />
        <div class="conv-head-text">
          <h2 id="conv-title">{title}</h2>
          <span class="muted small" data-testid="conv-presence">
            {c.kind === 'group'
              ? `${c.members.length} members, ${p.count} online`
              : p.online
                ? 'online'
                : 'offline'}
          </span>
        </div>
      </div>
      <div class="messages-wrap">
        <div class="messages" ref={listRef} onScroll={onScroll} role="log" aria-live="polite" aria-label={`Messages with ${title}`} tabIndex={0}>
          <div class="history-edge">
            {(messages[0]?.seq ?? 1) > 1 ? (
              <button type="button" class="link" onClick={loadOlder} disabled={loadingOlder}>
                {loadingOlder ? 'Loading…' : 'Load older messages'}
              </button>
            ) : state.loaded[id] ? (
              <span class="muted small">{shown.length ? 'Start of the conversation' : 'No messages yet. Say hello.'}</span>
            ) : (
              <span class="muted small">Loading…</span>
            )}
          </div>
          {loadError && <p class="error pad">{loadError}</p>}
          <ol class="message-list">
            {shown.map((m, i) => (
              <MessageItem
                key={m.seq}
                m={m}
                mine={m.sender_id === state.me?.id}
                showHead={startsGroup(shown[i - 1], m)}
                sender={userName(state.users, m.sender_id)}
                users={state.users}
                meId={state.me?.id}
                seenBy={seenAt.get(m.seq)}
                onOpen={setViewing}
                quote={m.deleted ? undefined : quoteOf(m.reply_to)}
                seeking={!!m.reply_to && seeking === m.reply_to}
                onQuote={() => m.reply_to && void goTo(m.reply_to)}
                highlighted={highlight?.seq === m.seq}
                changes={state.changes.filter((ch) => ch.target_id === m.message_id)}
                onDismiss={(client_msg_id) => session.dismiss(client_msg_id)}
                act={
                  m.deleted
                    ? null
                    : {
                        reply: () => startReply(m),
                        react: (emoji, remove) => session.react(id, m.message_id, emoji, remove),
                        edit: canEdit(m, state.me?.id) ? (body) => session.edit(id, m.message_id, body) : undefined,
                        delete: canDelete(m, c, state.me?.id) ? () => session.deleteMessage(id, m.message_id) : undefined,
                      }
                }
              />
            ))}
            {outgoing.map((o) => (
              <li key={o.client_msg_id} class={`msg mine pending ${o.error ? 'failed' : ''}`} data-pending={o.client_msg_id}>
                <div class="bubble">
                  {o.reply_to && (
                    <Quote view={quoteOf(o.reply_to)!} seeking={seeking === o.reply_to} onOpen={() => void goTo(o.reply_to!)} />
                  )}
                  {o.body && <p class="body">{o.body}</p>}
                  {o.attachments?.length ? (
                    <ul class="attachments" aria-label="Attachments">
                      {o.attachments.map((a) => (
                        <li key={a.attachment_id} class="file-chip small">
                          <span class="file-icon" aria-hidden="true" />
                          <span class="file-name">{a.name}</span>
                          <span class="file-size">{formatSize(a.size)}</span>
                        </li>
                      ))}
                    </ul>
                  ) : null}
                </div>
                <div class="meta small">
                  {o.error ? (
                    <>
                      <span class="error">{sendErrorMessage(o.error.code, o.error.message, !!o.reply_to)}</span>{' '}
                      <button type="button" class="link" onClick={() => session.dismiss(o.client_msg_id)}>
                        Dismiss
                      </button>
                    </>
                  ) : state.status === 'online' ? (
                    'Sending…'
                  ) : (
                    'Waiting for the connection…'
                  )}
                </div>
              </li>
            ))}
          </ol>
        </div>
        {showJump && (
          <button type="button" class="jump" onClick={jump}>
            New messages ↓
          </button>
        )}
      </div>
      <p class="typing small muted" aria-live="polite" data-testid="typing">
        {typingText(typing.map((u) => userName(state.users, u)))}
      </p>
      <Composer
        uploads={uploads}
        inputRef={inputRef}
        members={c.members}
        users={state.users}
        meId={state.me?.id}
        reply={replyId ? replyBar(replyOriginal, state.users, state.me?.id) : null}
        onCancelReply={cancelReply}
        onSend={(body, attachments) => {
          atBottom.current = true;
          session.send(id, body, attachments, replyId);
        }}
        onTyping={() => session.typing(id)}
      />
      {dropping && (
        <div class="drop-hint" aria-hidden="true">
          Drop files to attach them
        </div>
      )}
      {viewing && <ImageViewer a={viewing} onClose={() => setViewing(null)} />}
    </section>
  );
}

/** A new sender, or more than five minutes since the previous message. */
function startsGroup(prev: Message | undefined, m: Message): boolean {
  if (!prev || prev.sender_id !== m.sender_id || prev.origin !== m.origin) return true;
  return Date.parse(m.sent_at) - Date.parse(prev.sent_at) > 5 * 60_000;
}

/** seq → names of the other members whose read marker is at that message (or past
 * it, before the next one shown: a marker may be at an edit or a reaction). Markers
 * are known from `read` frames. */
function seenMarkers(state: ChatState, id: string, messages: Message[]): Map<number, string[]> {
  const out = new Map<number, string[]>();
  for (const [user, seq] of Object.entries(state.readBy[id] ?? {})) {
    if (user === state.me?.id) continue;
    let at: number | undefined;
    for (const m of messages) if (m.seq <= seq) at = m.seq;
    if (at !== undefined) out.set(at, [...(out.get(at) ?? []), userName(state.users, user)]);
  }
  return out;
}

const ORIGIN: Record<string, string> = { script: 'script', auto_reply: 'auto-reply' };

/** The quote above a reply's body: who wrote the original and how it starts; a button
 * that shows the original. Not a button when the history has been searched in vain. */
function Quote({ view, seeking, onOpen }: { view: QuoteView; seeking: boolean; onOpen: () => void }) {
  if (view.state === 'unavailable') {
    return (
      <p class="quote missing" data-state={view.state}>
        <span class="quote-text">{view.text}</span>
      </p>
    );
  }
  const label = view.sender
    ? `Show the original message, from ${view.sender}: ${view.text}`
    : `${view.text}: load older messages to show it`;
  return (
    <button
      type="button"
      class={`quote ${view.state === 'found' ? '' : 'missing'}`}
      data-state={view.state}
      aria-label={label}
      title={view.state === 'found' ? 'Show the original message' : 'Load older messages to show the original'}
      aria-busy={seeking || undefined}
      onClick={onOpen}
    >
      {view.sender && <span class="quote-sender">{view.sender}</span>}
      <span class="quote-text">{seeking ? 'Loading older messages…' : view.text}</span>
    </button>
  );
}

/** What the viewer may do with a message: `edit` and `delete` only where allowed. */
interface MessageActs {
  reply: () => void;
  react: (emoji: string, remove: boolean) => void;
  edit?: (body: string) => void;
  delete?: () => void;
}

function MessageItem({
  m,
  mine,
  showHead,
  sender,
  users,
  meId,
  seenBy,
  onOpen,
  quote,
  seeking,
  onQuote,
  highlighted,
  changes,
  onDismiss,
  act,
}: {
  m: Shown;
  mine: boolean;
  showHead: boolean;
  sender: string;
  users: Record<string, User>;
  meId: string | undefined;
  seenBy?: string[];
  onOpen: (a: Attachment) => void;
  quote?: QuoteView;
  seeking: boolean;
  onQuote: () => void;
  highlighted: boolean;
  /** The viewer's edits, deletes and reactions of it not stored yet, or refused. */
  changes: OutgoingChange[];
  onDismiss: (client_msg_id: string) => void;
  /** Null for a deleted message: nothing more can be done with it. */
  act: MessageActs | null;
}) {
  const attachments = m.attachments ?? [];
  const itemRef = useRef<HTMLLIElement>(null);
  // At most one open at a time: the body being edited, the delete being confirmed, the
  // reaction picker. Closing gives the focus back to the button that opened it.
  const [open, setOpen] = useState<'edit' | 'delete' | 'react' | null>(null);
  const buttons = { edit: useRef<HTMLButtonElement>(null), delete: useRef<HTMLButtonElement>(null), react: useRef<HTMLButtonElement>(null) };
  const close = (refocus: boolean) => {
    if (refocus && open) buttons[open].current?.focus();
    setOpen(null);
  };
  const reacted = (emoji: string) => !!meId && !!m.reactions.find((r) => r.emoji === emoji)?.users.includes(meId);
  const pending = changes.find((ch) => !ch.error && ch.kind !== 'reaction');
  const describedBy = `msg-${m.seq}`;
  return (
    <li
      ref={itemRef}
      class={`msg ${mine ? 'mine' : 'theirs'} ${showHead ? 'head' : ''} ${highlighted ? 'highlight' : ''}`}
      data-seq={m.seq}
      data-message-id={m.message_id}
      data-highlighted={highlighted ? 'true' : undefined}
      tabIndex={-1}
    >
      {showHead && (
        <div class="meta small">
          <span class="sender">{mine ? 'You' : sender}</span>
          {ORIGIN[m.origin] && <span class="tag">{ORIGIN[m.origin]}</span>}
          <time dateTime={m.sent_at} title={formatFull(m.sent_at)}>
            {formatTime(m.sent_at)}
          </time>
        </div>
      )}
      <div class="msg-row">
        {/* One element whatever it shows: the action buttons beside it are never moved
            (a moved button would lose the focus given back to it). */}
        <div class={`bubble ${attachments.length ? 'with-attachments' : ''} ${open === 'edit' ? 'editing' : ''}`} id={describedBy}>
          {open === 'edit' && act?.edit ? (
            <EditForm
              m={m}
              onSave={(body) => {
                act.edit?.(body);
                close(true);
              }}
              onCancel={() => close(true)}
            />
          ) : (
            <>
              {quote && <Quote view={quote} seeking={seeking} onOpen={onQuote} />}
              {m.deleted ? (
                <p class="body deleted">{DELETED}</p>
              ) : (
                (m.body || m.edited_at || !attachments.length) && <Body m={m} users={users} meId={meId} />
              )}
              <AttachmentList list={attachments} onOpen={onOpen} />
            </>
          )}
        </div>
        {act && (
          <div class="msg-actions">
            <button type="button" class="msg-action" aria-label="Reply" title="Reply" aria-describedby={describedBy} onClick={act.reply}>
              <span aria-hidden="true">↩</span>
            </button>
            <button
              type="button"
              ref={buttons.react}
              class="msg-action"
              aria-label="React"
              title="React"
              aria-describedby={describedBy}
              aria-expanded={open === 'react'}
              onClick={() => setOpen(open === 'react' ? null : 'react')}
            >
              <span aria-hidden="true">☺</span>
            </button>
            {act.edit && (
              <button type="button" ref={buttons.edit} class="msg-action" aria-label="Edit" title="Edit" aria-describedby={describedBy} onClick={() => setOpen('edit')}>
                <span aria-hidden="true">✎</span>
              </button>
            )}
            {act.delete && (
              <button type="button" ref={buttons.delete} class="msg-action" aria-label="Delete" title="Delete" aria-describedby={describedBy} onClick={() => setOpen('delete')}>
                <span aria-hidden="true">✕</span>
              </button>
            )}
          </div>
        )}
      </div>
      {open === 'react' && act && (
        <ReactionPicker
          reacted={reacted}
          onPick={(emoji) => {
            act.react(emoji, reacted(emoji));
            close(true);
          }}
          onClose={close}
        />
      )}
      {open === 'delete' && act?.delete && (
        <ConfirmDelete
          id={`confirm-${m.seq}`}
          onConfirm={() => {
            act.delete?.();
            setOpen(null);
            itemRef.current?.focus();
          }}
          onCancel={() => close(true)}
        />
      )}
      {m.reactions.length > 0 && act && <Reactions list={m.reactions} users={users} meId={meId} onToggle={act.react} />}
      {pending && <div class="small muted change-status">{pending.kind === 'edit' ? 'Saving…' : 'Deleting…'}</div>}
      {changes.map(
        (ch) =>
          ch.error && (
            <p key={ch.client_msg_id} class="small change-status" role="alert">
              <span class="error">{changeErrorMessage(ch.kind, ch.error.code, ch.error.message)}</span>{' '}
              <button type="button" class="link" onClick={() => onDismiss(ch.client_msg_id)}>
                Dismiss
              </button>
            </p>
          ),
      )}
      {seenBy && (
        <div class="seen small muted" data-testid="seen">
          Seen by {seenBy.join(', ')}
        </div>
      )}
    </li>
  );
}

/** A message's body being edited in place: Enter (or Save) saves, Shift+Enter starts
 * a new line, Escape (or Cancel) leaves it as it was. */
function EditForm({ m, onSave, onCancel }: { m: Shown; onSave: (body: string) => void; onCancel: () => void }) {
  const [text, setText] = useState(m.body);
  const [error, setError] = useState<string | null>(null);
  const ref = useRef<HTMLTextAreaElement>(null);
  const help = `edit-help-${m.seq}`;
  useLayoutEffect(() => {
    const el = ref.current;
    el?.focus();
    el?.setSelectionRange(el.value.length, el.value.length);
  }, []);
  const save = (e: Event) => {
    e.preventDefault();
    // Whitespace alone is no text; only a message with attachments may have none.
    const body = text.trim() ? text : '';
    if (!body && !m.attachments?.length) setError('A message needs text: delete it instead.');
    else if (new TextEncoder().encode(body).length > MAX_BODY_BYTES) setError('Too long: messages are at most 16 KiB.');
    else if (body === m.body) onCancel();
    else onSave(body);
  };
  return (
    <form class="edit-form" onSubmit={save}>
      <textarea
        ref={ref}
        aria-label="Edit message"
        aria-describedby={help}
        aria-invalid={error ? true : undefined}
        rows={2}
        value={text}
        onInput={(e) => setText(e.currentTarget.value)}
        onKeyDown={(e) => {
          if (e.isComposing) return;
          if (e.key === 'Enter' && !e.shiftKey) save(e);
          else if (e.key === 'Escape') {
            e.preventDefault();
            onCancel();
          }
        }}
      />
      <div class="edit-buttons">
        <button type="submit" class="primary">
          Save
        </button>
        <button type="button" onClick={onCancel}>
          Cancel
        </button>
        <span id={help} class={`small ${error ? 'error' : 'muted'}`}>
          {error ?? 'Enter saves, Escape cancels.'}
        </span>
      </div>
    </form>
  );
}

/** "Delete this message?" under it, the focus on Cancel (so that a second Enter does
 * not delete); Escape cancels. */
function ConfirmDelete({ id, onConfirm, onCancel }: { id: string; onConfirm: () => void; onCancel: () => void }) {
  const cancelRef = useRef<HTMLButtonElement>(null);
  useLayoutEffect(() => cancelRef.current?.focus(), []);
  return (
    <div
      class="confirm small"
      role="group"
      aria-labelledby={id}
      onKeyDown={(e) => {
        if (e.key !== 'Escape') return;
        e.preventDefault();
        onCancel();
      }}
    >
      <span id={id}>Delete this message for everyone?</span>
      <button type="button" class="danger" onClick={onConfirm}>
        Delete
      </button>
      <button type="button" ref={cancelRef} onClick={onCancel}>
        Cancel
      </button>
    </div>
  );
}

/** The emoji to react with, under the message, the focus on the first: Tab or the
 * arrows move, Enter picks (again: takes it back), Escape closes; so does the focus
 * leaving the message. */
function ReactionPicker({
  reacted,
  onPick,
  onClose,
}: {
  reacted: (emoji: string) => boolean;
  onPick: (emoji: string) => void;
  onClose: (refocus: boolean) => void;
}) {
  const ref = useRef<HTMLDivElement>(null);
  useLayoutEffect(() => ref.current?.querySelector('button')?.focus(), []);
  const onKeyDown = (e: KeyboardEvent) => {
    const items = [...(ref.current?.querySelectorAll('button') ?? [])];
    const i = items.indexOf(document.activeElement as HTMLButtonElement);
    const to = ({ ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: items.length - 1 } as Record<string, number>)[e.key];
    if (e.key === 'Escape') {
      e.preventDefault();
      onClose(true);
    } else if (to !== undefined) {
      e.preventDefault();
      items[(to + items.length) % items.length].focus();
    }
  };
  return (
    <div
      class="picker"
      ref={ref}
      role="group"
      aria-label="Pick a reaction"
      onKeyDown={onKeyDown}
      // A click keeps the focus where it is (browsers that do not focus a clicked button
      // would otherwise move it out, closing the picker before the click lands).
      onMouseDown={(e) => e.preventDefault()}
      onFocusOut={(e) => {
        const to = e.relatedTarget as Node | null;
        if (!ref.current?.closest('li.msg')?.contains(to)) onClose(false);
      }}
    >
      {EMOJI.map(({ emoji, name }) => (
        <button
          type="button"
          key={emoji}
          class="picker-emoji"
          aria-label={`React with ${name}`}
          aria-pressed={reacted(emoji)}
          title={name}
          data-emoji={emoji}
          onClick={() => onPick(emoji)}
        >
          {emoji}
        </button>
      ))}
    </div>
  );
}

/** A message's reactions: each emoji with its count, who reacted on hover and focus;
 * choosing one reacts with it too, or takes the viewer's back. */
function Reactions({
  list,
  users,
  meId,
  onToggle,
}: {
  list: Reaction[];
  users: Record<string, User>;
  meId: string | undefined;
  onToggle: (emoji: string, remove: boolean) => void;
}) {
  return (
    <ul class="reactions" aria-label="Reactions">
      {list.map((r) => {
        const mine = !!meId && r.users.includes(meId);
        const who = reactedBy(r, users, meId);
        return (
          <li key={r.emoji}>
            <button
              type="button"
              class={`reaction${mine ? ' mine' : ''}`}
              aria-pressed={mine}
              aria-label={who}
              title={who}
              data-emoji={r.emoji}
              data-count={r.users.length}
              onClick={() => onToggle(r.emoji, mine)}
            >
              <span aria-hidden="true">{r.emoji}</span>
              <span class="reaction-count">{r.users.length}</span>
            </button>
          </li>
        );
      })}
    </ul>
  );
}

/** A message's text, its mentions highlighted (the viewer's more strongly), "edited"
 * after it when it was. Text nodes only: the body is never parsed as HTML. */
function Body({ m, users, meId }: { m: Message; users: Record<string, User>; meId: string | undefined }) {
  return (
    <p class="body">
      {segments(m.body, m.mentions, users).map((s) =>
        s.user_id ? (
          <span class={`mention${s.user_id === meId ? ' me' : ''}`} data-user={s.user_id}>
            {s.text}
          </span>
        ) : (
          s.text
        ),
      )}
      {m.edited_at && (
        <>
          {' '}
          <span class="edited" title={`Edited ${formatFull(m.edited_at)}`}>
            edited
          </span>
        </>
      )}
    </p>
  );
}

/** The composer's attachments: the state (composer.ts) and the uploads behind it, one
 * XMLHttpRequest each, all started at once; aborted when removed or when the
 * conversation closes. */
function useUploads() {
  const [state, setState] = useState<ComposerState>(emptyComposer);
  const current = useRef(state);
  const running = useRef(new Map<string, Upload>());
  const dispatch = (a: ComposerAction) => {
    current.current = composerReducer(current.current, a);
    setState(current.current);
  };
  useEffect(
    () => () => {
      for (const u of running.current.values()) u.abort();
      running.current.clear();
    },
    [],
  );

  const add = (files: File[]) => {
    if (!files.length) return;
    const entries = files.map((f) => ({ key: uuid(), name: uploadName(f.name, f.type), size: f.size }));
    dispatch({ type: 'add', files: entries });
    entries.forEach((e, i) => {
      // Over the limit: not added (the notice says so).
      if (!current.current.uploads.some((u) => u.key === e.key)) return;
      const up = uploadAttachment(files[i], e.name, (loaded) => dispatch({ type: 'progress', key: e.key, loaded }));
      running.current.set(e.key, up);
      up.promise
        .then(
          (attachment) => dispatch({ type: 'uploaded', key: e.key, attachment }),
          (err) => {
            // Removed by the person (or the conversation closed): nothing to say.
            if (err instanceof ApiError && err.code === 'aborted') return;
            dispatch({ type: 'failed', key: e.key, error: uploadErrorMessage(err) });
          },
        )
        .finally(() => running.current.delete(e.key));
    });
  };
  const remove = (key: string) => {
    running.current.get(key)?.abort();
    dispatch({ type: 'remove', key });
  };
  const clear = () => dispatch({ type: 'sent' });
  return { state, add, remove, clear };
}

type Uploads = ReturnType<typeof useUploads>;

function UploadChips({ uploads }: { uploads: Uploads }) {
  const { state } = uploads;
  if (!state.uploads.length && !state.notice) return null;
  return (
    <div class="uploads">
      {state.uploads.length > 0 && (
        <ul class="upload-list" aria-label="Attachments to send">
          {state.uploads.map((u) => {
            const status = uploadStatus(u);
            return (
              <li key={u.key} class={`upload ${status}`} data-status={status}>
                <span class="file-icon" aria-hidden="true" />
                <span class="file-name" title={u.name}>
                  {u.name}
                </span>
                <span class="file-size">{formatSize(u.size)}</span>
                {status === 'uploading' && (
                  <>
                    <progress max={100} value={percent(u)} aria-label={`Uploading ${u.name}`} />
                    <span class="small muted">{percent(u)}%</span>
                  </>
                )}
                {u.error && (
                  <span class="error small" role="alert">
                    {u.error}
                  </span>
                )}
                <button type="button" class="upload-remove" aria-label={`Remove ${u.name}`} title="Remove" onClick={() => uploads.remove(u.key)}>
                  ×
                </button>
              </li>
            );
          })}
        </ul>
      )}
      {state.notice && (
        <p class="error small upload-notice" role="alert">
          {state.notice}
        </p>
      )}
    </div>
  );
}

function Composer({
  uploads,
  inputRef: ref,
  members,
  users,
  meId,
  reply,
  onCancelReply,
  onSend,
  onTyping,
}: {
  uploads: Uploads;
  inputRef: RefObject<HTMLTextAreaElement>;
  /** The conversation's members (ids), whom `@` offers to mention. */
  members: string[];
  users: Record<string, User>;
  meId: string | undefined;
  reply: ReplyBar | null;
  onCancelReply: () => void;
  onSend: (body: string, attachments: Attachment[]) => void;
  onTyping: () => void;
}) {
  const [body, setBody] = useState('');
  const [error, setError] = useState<string | null>(null);
  const fileRef = useRef<HTMLInputElement>(null);
  const busy = uploading(uploads.state);
  const ready = canSend(uploads.state, body);
  // The `@name` at the caret, the members it may complete to, the one chosen with the
  // arrows, and the token Escape closed the list for (until another one is typed).
  const [token, setToken] = useState<MentionToken | null>(null);
  const [active, setActive] = useState(0);
  const [closed, setClosed] = useState<number | null>(null);
  const matches = token ? suggestions(members, users, meId, token.query) : [];
  const open = !!token && matches.length > 0 && closed !== token.start;
  const current = Math.min(active, matches.length - 1);

  useEffect(() => ref.current?.focus(), []);

  /** Look for an `@name` at the caret (after typing, moving the caret, clicking). */
  const follow = () => {
    const el = ref.current;
    const t = el ? mentionAt(el.value, el.selectionStart ?? 0, el.selectionEnd ?? 0) : null;
    if (t?.start !== token?.start || t?.query !== token?.query) setActive(0);
    if (t?.start !== closed) setClosed(null);
    setToken(t);
  };

  /** Put `@username ` in place of the token, the caret after it. */
  const choose = (u: User) => {
    const el = ref.current;
    if (!el || !token) return;
    const next = insertMention(el.value, token, u.username);
    el.value = next.text;
    el.focus();
    el.setSelectionRange(next.caret, next.caret);
    setBody(next.text);
    setToken(null);
    onTyping();
  };

  const submit = (e?: Event) => {
    e?.preventDefault();
    if (!ready) return;
    const attachments = readyAttachments(uploads.state);
    // With attachments the text may be empty; whitespace alone is no text.
    const text = body.trim() ? body : '';
    if (new TextEncoder().encode(text).length > MAX_BODY_BYTES) {
      setError('Too long: messages are at most 16 KiB.');
      return;
    }
    onSend(text, attachments);
    setBody('');
    setToken(null);
    setError(null);
    uploads.clear();
  };

  return (
    <form class="composer" onSubmit={submit}>
      {reply && (
        <div class="reply-bar" data-testid="reply-bar">
          <span class="reply-bar-text" id="reply-bar-text" title={reply.label}>
            Replying to <strong class="reply-who">{reply.who}</strong>
            {reply.snippet && (
              <>
                : <span class="reply-snippet">{reply.snippet}</span>
              </>
            )}
          </span>
          <button type="button" class="reply-cancel" aria-label="Cancel reply" title="Cancel reply (Escape)" onClick={onCancelReply}>
            ×
          </button>
        </div>
      )}
      <UploadChips uploads={uploads} />
      <input
        ref={fileRef}
        type="file"
        multiple
        hidden
        aria-label="Files to attach"
        tabIndex={-1}
        onChange={(e) => {
          uploads.add([...(e.currentTarget.files ?? [])]);
          // The same file may be chosen again after being removed.
          e.currentTarget.value = '';
        }}
      />
      <button
        type="button"
        class="attach"
        aria-label="Attach files"
        title={`Attach files (at most ${MAX_ATTACHMENTS} a message)`}
        onClick={() => fileRef.current?.click()}
      >
        <span class="attach-icon" aria-hidden="true">+</span>
      </button>
      {open && (
        <ul id="mention-list" class="mention-list" role="listbox" aria-label="Members to mention">
          {matches.map((u, i) => (
            <li
              key={u.id}
              id={`mention-${u.id}`}
              role="option"
              aria-selected={i === current}
              class={i === current ? 'active' : undefined}
              // Keep the focus (and the caret) in the text.
              onMouseDown={(e) => e.preventDefault()}
              onClick={() => choose(u)}
            >
              @{u.username}
            </li>
          ))}
        </ul>
      )}
      <p class="visually-hidden" role="status" data-testid="mention-status">
        {open
          ? `${matches.length} ${matches.length === 1 ? 'member' : 'members'} to mention. Up and Down choose, Enter or Tab inserts, Escape closes.`
          : ''}
      </p>
      <label class="visually-hidden" for="composer-input">
        Message
      </label>
      <textarea
        id="composer-input"
        ref={ref}
        rows={1}
        placeholder="Write a message"
        value={body}
        aria-describedby={reply ? 'reply-bar-text composer-help' : 'composer-help'}
        aria-invalid={error ? true : undefined}
        aria-autocomplete="list"
        aria-controls={open ? 'mention-list' : undefined}
        aria-activedescendant={open ? `mention-${matches[current].id}` : undefined}
        onInput={(e) => {
          setBody(e.currentTarget.value);
          if (e.currentTarget.value) onTyping();
          follow();
        }}
        onKeyUp={(e) => {
          if (['ArrowLeft', 'ArrowRight', 'Home', 'End'].includes(e.key)) follow();
        }}
        onClick={follow}
        onBlur={() => setToken(null)}
        onKeyDown={(e) => {
          if (open && token && !e.isComposing) {
            const n = matches.length;
            if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
              e.preventDefault();
              setActive((current + (e.key === 'ArrowDown' ? 1 : n - 1)) % n);
              return;
            }
            if ((e.key === 'Enter' || e.key === 'Tab') && !e.shiftKey) {
              e.preventDefault();
              choose(matches[current]);
              return;
            }
            if (e.key === 'Escape') {
              e.preventDefault();
              setClosed(token.start);
              return;
            }
          }
          if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) submit(e);
          else if (e.key === 'Escape' && reply && !e.isComposing) {
            e.preventDefault();
            onCancelReply();
          }
        }}
      />
      <button type="submit" class="primary" disabled={!ready} title={busy ? 'Waiting for the uploads to finish' : undefined}>
        Send
      </button>
      <p id="composer-help" class={`small ${error ? 'error' : 'visually-hidden'}`}>
        {error ??
          (busy
            ? 'Uploading: Send waits for the uploads to finish.'
            : `Enter sends, Shift+Enter starts a new line.${reply ? ' Escape cancels the reply.' : ''} @ and a name mentions a member. Files can be attached, dropped or pasted.`)}
      </p>
    </form>
  );
}
