import { render } from 'preact';
import { act } from 'preact/test-utils';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { auth } from '../src/api';
import { Chats } from '../src/screens/Chats';
import { type ChatSession, SessionContext } from '../src/session';
import { type Action, type ChatState, type ConversationState, initialState, reducer } from '../src/store';
import type { Attachment, Message, ServerFrame, User } from '../src/types';
import { attachment, FakeXhr } from './fakes';

// happy-dom has no `ondragenter`, `ondrop`… on elements, so Preact would listen for
// "DragEnter" rather than "dragenter" there; browsers have them.
for (const name of ['ondragenter', 'ondragover', 'ondragleave', 'ondrop']) {
  if (!(name in HTMLElement.prototype))
    Object.defineProperty(HTMLElement.prototype, name, { value: null, writable: true, configurable: true });
}

const ME = { id: 'u-ada', username: 'ada' };
const BOB = { id: 'u-bob', username: 'bob' };
const C = 'c-1';

const png = attachment(1, { name: 'cat.png', content_type: 'image/png', size: 2048 });
const txt = attachment(2, { name: 'notes.txt', content_type: 'text/plain', size: 1536 });

function msg(seq: number, body: string, attachments: Attachment[]): Message {
  return {
    message_id: `m-${seq}`,
    client_msg_id: `k-${seq}`,
    conversation_id: C,
    seq,
    sender_id: BOB.id,
    body,
    sent_at: '2025-03-14T09:26:53Z',
    origin: 'user',
    attachments,
  };
}

/** What ConversationView needs of a session, over the real reducer; `sent` records
 * `send` calls (and `replyTos` their reply_to). `older`: the pages `loadOlder` gives,
 * newest first. `others`: more conversations, by id, with their messages. */
function fakeSession(
  messages: Message[],
  opts: { older?: Message[][]; others?: Record<string, Message[]>; conv?: Partial<ConversationState>; users?: User[] } = {},
) {
  const others = Object.entries(opts.others ?? {});
  let state: ChatState = {
    ...initialState,
    me: ME,
    users: Object.fromEntries([ME, BOB, ...(opts.users ?? [])].map((u) => [u.id, u])),
    conversations: {
      [C]: {
        id: C,
        kind: 'direct',
        title: null,
        members: [ME.id, BOB.id],
        owner_id: null,
        created_at: '2025-03-14T09:00:00Z',
        last_seq: messages.length,
        unread: 0,
        my_read: messages.length,
        mentions_unread: 0,
        last_at: '2025-03-14T09:26:53Z',
        ...opts.conv,
      },
      ...Object.fromEntries(
        others.map(([id, list]) => [
          id,
          {
            id,
            kind: 'group' as const,
            title: `Group ${id}`,
            members: [ME.id, BOB.id],
            owner_id: ME.id,
            created_at: '2025-03-14T09:00:00Z',
            last_seq: list.length,
            unread: 0,
            my_read: list.length,
            mentions_unread: 0,
            last_at: '2025-03-14T09:00:00Z',
          },
        ]),
      ),
    },
    messages: { [C]: messages, ...Object.fromEntries(others) },
    loaded: { [C]: true, ...Object.fromEntries(others.map(([id]) => [id, true])) },
    status: 'online',
  };
  const listeners = new Set<() => void>();
  const older = [...(opts.older ?? [])];
  const sent: [string, string, Attachment[]][] = [];
  const replyTos: (string | null)[] = [];
  const loads: string[] = [];
  const changed: unknown[][] = [];
  const dispatch = (a: Action) => {
    state = reducer(state, a);
    for (const fn of listeners) fn();
  };
  const session = {
    get state() {
      return state;
    },
    subscribe: (fn: () => void) => {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
    open: async () => {},
    markRead: () => {},
    typing: () => {},
    loadOlder: async (id: string) => {
      loads.push(id);
      const page = older.shift();
      if (!page) return false;
      dispatch({ type: 'page', conversation_id: id, messages: page, latest: false });
      return page.length > 0;
    },
    dismiss: (client_msg_id: string) => dispatch({ type: 'dismiss', client_msg_id }),
    edit: (...args: unknown[]) => changed.push(['edit', ...args]),
    deleteMessage: (...args: unknown[]) => changed.push(['delete', ...args]),
    react: (...args: unknown[]) => changed.push(['react', ...args]),
    replyTo: (conversation_id: string, message_id: string | null) => dispatch({ type: 'reply', conversation_id, message_id }),
    send: (id: string, body: string, attachments: Attachment[] = [], reply_to: string | null = null) => {
      sent.push([id, body, attachments]);
      replyTos.push(reply_to);
      const message = { client_msg_id: `out-${sent.length}`, conversation_id: id, body, ...(reply_to ? { reply_to } : {}) };
      dispatch({ type: 'outgoing', message });
    },
  } as unknown as ChatSession;
  /** A frame from the server, through the real reducer. */
  const receive = (frame: ServerFrame) => act(() => dispatch({ type: 'frame', frame, now: 0 }));
  return { session, sent, replyTos, loads, changed, receive, dispatch };
}

/** Answer fetches of bytes from a table of path → [status, body]; records the calls. */
function mockFetch(routes: Record<string, [number, BodyInit | null, string?]>) {
  const calls: { path: string; authorization: string | null }[] = [];
  vi.stubGlobal('fetch', async (url: string, init: RequestInit = {}) => {
    const path = String(url).replace(/^\/api\/v1/, '');
    calls.push({ path, authorization: new Headers(init.headers).get('authorization') });
    const [status, body, type] = routes[path] ?? [404, JSON.stringify({ error: { code: 'not_found', message: 'no such attachment' } })];
    return new Response(body, { status, headers: { 'content-type': type ?? 'application/json' } });
  });
  return calls;
}

const flush = async () => {
  for (let i = 0; i < 5; i++) await act(() => new Promise((r) => setTimeout(r, 0)));
};

let root: HTMLElement;
let revoked: string[];
beforeEach(() => {
  root = document.createElement('div');
  document.body.append(root);
  auth.token = 'tok';
  revoked = [];
  const revoke = URL.revokeObjectURL.bind(URL);
  vi.spyOn(URL, 'revokeObjectURL').mockImplementation((u: string) => {
    revoked.push(u);
    revoke(u);
  });
  vi.stubGlobal('XMLHttpRequest', FakeXhr);
});
afterEach(() => {
  render(null, root);
  root.remove();
  vi.unstubAllGlobals();
  vi.restoreAllMocks();
  FakeXhr.made = [];
  auth.token = null;
});

async function show(messages: Message[], opts: Parameters<typeof fakeSession>[1] = {}) {
  const s = fakeSession(messages, opts);
  const open = async (id: string, messageId: string | null = null) => {
    await act(() =>
      render(
        <SessionContext.Provider value={s.session}>
          <Chats conversationId={id} messageId={messageId} />
        </SessionContext.Provider>,
        root,
      ),
    );
    await flush();
  };
  await open(C);
  return { ...s, open };
}

const $ = <T extends Element = HTMLElement>(sel: string) => root.querySelector<T>(sel);
const button = (name: string) =>
  [...root.querySelectorAll<HTMLButtonElement>('button')].find((b) => (b.getAttribute('aria-label') ?? b.textContent) === name);
const click = (el: Element | null | undefined) =>
  act(() => {
    (el as HTMLElement).click();
  });

describe('attachments in messages', () => {
  it('shows an image from its thumbnail, opens it full size, and closes it by Escape or the button', async () => {
    const calls = mockFetch({
      [`/attachments/${png.attachment_id}/thumbnail`]: [200, new Blob([new Uint8Array([1, 2])]), 'image/png'],
      [`/attachments/${png.attachment_id}`]: [200, new Blob([new Uint8Array([1, 2, 3])]), 'image/png'],
    });
    await show([msg(1, 'look', [png])]);
    expect($('.message-list .body')?.textContent).toBe('look');
    const thumb = $<HTMLImageElement>('.thumb img');
    expect(thumb?.getAttribute('src')).toMatch(/^blob:/);
    expect(thumb?.getAttribute('alt')).toBe('cat.png');
    expect(calls).toEqual([{ path: `/attachments/${png.attachment_id}/thumbnail`, authorization: 'Bearer tok' }]);

    button('Open image cat.png, 2 KiB')!.focus();
    await click(button('Open image cat.png, 2 KiB'));
    await flush();
    const dialog = $('[role=dialog]');
    expect(dialog?.getAttribute('aria-label')).toBe('Image cat.png');
    const full = $<HTMLImageElement>('.viewer-img')?.getAttribute('src');
    expect(full).toMatch(/^blob:/);
    expect(calls.at(-1)).toEqual({ path: `/attachments/${png.attachment_id}`, authorization: 'Bearer tok' });
    expect(document.activeElement).toBe(button('Close'));

    await act(() => {
      document.dispatchEvent(new KeyboardEvent('keydown', { key: 'Escape', bubbles: true }));
    });
    expect($('[role=dialog]')).toBeNull();
    expect(revoked).toContain(full);
    expect(document.activeElement).toBe(button('Open image cat.png, 2 KiB'));

    await click(button('Open image cat.png, 2 KiB'));
    await flush();
    await click(button('Close'));
    expect($('[role=dialog]')).toBeNull();
  });

  it('falls back to a file chip when the image has no thumbnail', async () => {
    mockFetch({});
    await show([msg(1, 'look', [png])]);
    expect($('.thumb')).toBeNull();
    const chip = button('Download cat.png, 2 KiB');
    expect(chip?.textContent).toBe('cat.png2 KiB');
  });

  it('shows only the attachments of a message without text; a file chip downloads the file by its name', async () => {
    const calls = mockFetch({ [`/attachments/${txt.attachment_id}`]: [200, 'hello notes', 'text/plain'] });
    await show([msg(1, '', [txt])]);
    expect($('.message-list .body')).toBeNull();
    const chip = button('Download notes.txt, 1.5 KiB');
    expect(chip?.querySelector('.file-name')?.textContent).toBe('notes.txt');
    expect(chip?.querySelector('.file-size')?.textContent).toBe('1.5 KiB');

    const clicked: { download: string; href: string; text: string }[] = [];
    vi.spyOn(HTMLAnchorElement.prototype, 'click').mockImplementation(function (this: HTMLAnchorElement) {
      clicked.push({ download: this.download, href: this.href, text: '' });
    });
    const created: Blob[] = [];
    const create = URL.createObjectURL.bind(URL);
    vi.spyOn(URL, 'createObjectURL').mockImplementation((b: Blob | MediaSource) => {
      created.push(b as Blob);
      return create(b as Blob);
    });
    await click(chip);
    await flush();
    expect(calls).toEqual([{ path: `/attachments/${txt.attachment_id}`, authorization: 'Bearer tok' }]);
    expect(clicked).toHaveLength(1);
    expect(clicked[0].download).toBe('notes.txt');
    expect(clicked[0].href).toMatch(/^blob:/);
    expect(await created[0].text()).toBe('hello notes');
    // The link is gone again.
    expect(document.querySelector('a[download]')).toBeNull();
  });

  it('says when a download fails', async () => {
    mockFetch({});
    await show([msg(1, '', [txt])]);
    await click(button('Download notes.txt, 1.5 KiB'));
    await flush();
    expect($('[role=alert]')?.textContent).toBe('Cannot download notes.txt: no such attachment');
  });
});

describe('the composer with attachments', () => {
  const files = (...list: File[]) => {
    const dt = new DataTransfer();
    for (const f of list) dt.items.add(f);
    return dt.files;
  };
  const choose = async (...list: File[]) => {
    const input = $<HTMLInputElement>('input[type=file]')!;
    input.files = files(...list);
    await act(() => {
      input.dispatchEvent(new Event('change', { bubbles: true }));
    });
  };
  const send = () => button('Send')!;
  const type = async (text: string) => {
    const t = $<HTMLTextAreaElement>('#composer-input')!;
    t.value = text;
    await act(() => {
      t.dispatchEvent(new Event('input', { bubbles: true }));
    });
  };
  const submit = () =>
    act(() => {
      $('form.composer')!.dispatchEvent(new Event('submit', { bubbles: true, cancelable: true }));
    });
  const chips = () => [...root.querySelectorAll('.upload-list li')];

  it('uploads chosen files at once with progress, waits for them, then sends their ids with an empty body', async () => {
    const { sent } = await show([]);
    expect(button('Attach files')).toBeTruthy();
    expect(send().disabled).toBe(true);
    const a = new File(['a'.repeat(1000)], 'a.txt', { type: 'text/plain' });
    const b = new File([new Uint8Array(3000)], 'b.png', { type: 'image/png' });
    await choose(a, b);
    expect(FakeXhr.made.map((x) => x.url)).toEqual(['/api/v1/attachments?name=a.txt', '/api/v1/attachments?name=b.png']);
    expect(FakeXhr.made.map((x) => x.headers['content-type'])).toEqual(['text/plain', 'image/png']);
    expect(chips().map((li) => li.getAttribute('data-status'))).toEqual(['uploading', 'uploading']);
    expect(chips()[0].querySelector('.file-name')?.textContent).toBe('a.txt');
    expect(chips()[1].querySelector('.file-size')?.textContent).toBe('2.9 KiB');
    expect(send().disabled).toBe(true);

    await act(() => FakeXhr.made[0].progress(500, 1000));
    expect(root.querySelector<HTMLProgressElement>('progress[aria-label="Uploading a.txt"]')?.value).toBe(50);
    expect(chips()[0].textContent).toContain('50%');

    await act(() => FakeXhr.made[0].respond(201, attachment(7, { name: 'a.txt' })));
    await flush();
    expect(chips().map((li) => li.getAttribute('data-status'))).toEqual(['done', 'uploading']);
    // Still one in flight: Send waits, Enter too.
    expect(send().disabled).toBe(true);
    await submit();
    expect(sent).toEqual([]);

    await act(() => FakeXhr.made[1].respond(201, attachment(8, { name: 'b.png' })));
    await flush();
    expect(send().disabled).toBe(false);
    await type('   ');
    await submit();
    expect(sent).toEqual([[C, '', [attachment(7, { name: 'a.txt' }), attachment(8, { name: 'b.png' })]]]);
    expect(chips()).toEqual([]);
    expect(send().disabled).toBe(true);
  });

  it("shows the server's message on a refused upload, and the remove control cancels an upload", async () => {
    const { sent } = await show([]);
    await choose(new File(['x'], 'huge.iso'), new File(['y'], 'small.txt', { type: 'text/plain' }));
    await act(() =>
      FakeXhr.made[0].respond(413, { error: { code: 'too_large', message: 'attachments are at most 25 MiB (this one is 4 GiB)' } }),
    );
    await flush();
    expect(chips()[0].getAttribute('data-status')).toBe('failed');
    expect(chips()[0].querySelector('[role=alert]')?.textContent).toBe('Too large: attachments are at most 25 MiB (this one is 4 GiB)');
    expect(FakeXhr.made[0].headers['content-type']).toBe('application/octet-stream');

    await click(button('Remove small.txt'));
    expect(FakeXhr.made[1].aborted).toBe(true);
    expect(chips()).toHaveLength(1);
    // Nothing to send: the failed one does not go.
    expect(send().disabled).toBe(true);
    await type('text, then');
    expect(send().disabled).toBe(false);
    await submit();
    expect(sent).toEqual([[C, 'text, then', []]]);

    await choose(new File(['z'], 'c.txt'));
    await click(button('Remove c.txt'));
    expect(chips()).toEqual([]);
  });

  it('takes at most ten files a message, and says so', async () => {
    await show([]);
    await choose(...Array.from({ length: 12 }, (_, i) => new File(['x'], `f${i}.txt`)));
    expect(FakeXhr.made).toHaveLength(10);
    expect(chips()).toHaveLength(10);
    expect($('.upload-notice')?.textContent).toBe('A message takes at most 10 attachments: 2 files were not added.');
  });

  it('attaches files dropped on the conversation and pasted into it', async () => {
    await show([]);
    const pane = $('section.conv-pane')!;
    const drag = (type: string, dt: { files?: File[]; types: string[] }) => {
      const ev = new Event(type, { bubbles: true, cancelable: true });
      Object.defineProperty(ev, 'dataTransfer', { value: { files: dt.files ?? [], types: dt.types, dropEffect: 'none' } });
      pane.dispatchEvent(ev);
      return ev;
    };
    await act(() => {
      drag('dragenter', { types: ['Files'] });
    });
    expect($('.drop-hint')?.textContent).toBe('Drop files to attach them');
    let over!: Event;
    await act(() => {
      over = drag('dragover', { types: ['Files'] });
    });
    expect(over.defaultPrevented).toBe(true);
    await act(() => {
      drag('dragleave', { types: ['Files'] });
    });
    expect($('.drop-hint')).toBeNull();
    // Text dragged over the page is not taken for files.
    await act(() => {
      drag('dragenter', { types: ['text/plain'] });
    });
    expect($('.drop-hint')).toBeNull();

    await act(() => {
      drag('dragenter', { types: ['Files'] });
    });
    let drop!: Event;
    await act(() => {
      drop = drag('drop', { types: ['Files'], files: [new File(['d'], 'dropped.txt')] });
    });
    expect(drop.defaultPrevented).toBe(true);
    expect($('.drop-hint')).toBeNull();
    expect(FakeXhr.made.map((x) => x.url)).toEqual(['/api/v1/attachments?name=dropped.txt']);

    const dt = new DataTransfer();
    dt.items.add(new File([new Uint8Array(4)], '', { type: 'image/png' }));
    const paste = new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true });
    await act(() => {
      $('#composer-input')!.dispatchEvent(paste);
    });
    expect(FakeXhr.made.map((x) => x.url)).toEqual(['/api/v1/attachments?name=dropped.txt', '/api/v1/attachments?name=pasted.png']);
    expect(chips().map((li) => li.querySelector('.file-name')?.textContent)).toEqual(['dropped.txt', 'pasted.png']);
  });

  it('cancels uploads still going when the conversation closes', async () => {
    await show([]);
    await choose(new File(['x'], 'a.txt'));
    await act(() => render(null, root));
    expect(FakeXhr.made[0].aborted).toBe(true);
  });
});

describe('replies', () => {
  const reply = (seq: number, body: string, reply_to: string | null | undefined, extra: Partial<Message> = {}): Message => ({
    ...msg(seq, body, []),
    ...(reply_to === undefined ? {} : { reply_to }),
    ...extra,
  });
  const item = (seq: number) => $(`.message-list li.msg[data-seq="${seq}"]`)!;
  const replyButton = (seq: number) => item(seq).querySelector<HTMLButtonElement>('button[aria-label="Reply"]')!;
  const input = () => $<HTMLTextAreaElement>('#composer-input')!;
  const bar = () => $('.reply-bar-text')?.textContent ?? null;
  const quoteOf = (seq: number) => item(seq).querySelector<HTMLElement>('.quote');
  const type = async (text: string) => {
    input().value = text;
    await act(() => {
      input().dispatchEvent(new Event('input', { bubbles: true }));
    });
  };
  const key = async (el: Element, k: string) => {
    const ev = new KeyboardEvent('keydown', { key: k, bubbles: true, cancelable: true });
    await act(() => {
      el.dispatchEvent(ev);
    });
    return ev;
  };

  it('a Reply button on every message starts a reply shown above the composer; × and Escape cancel it', async () => {
    await show([msg(1, 'Which day works\nfor the review?', []), msg(2, '', [txt])]);
    const buttons = [...root.querySelectorAll<HTMLButtonElement>('.message-list button[aria-label="Reply"]')];
    expect(buttons).toHaveLength(2);
    // Each names what it answers, for screen readers.
    expect(buttons[0].getAttribute('aria-describedby')).toBe('msg-1');
    expect($('#msg-1')?.textContent).toContain('Which day works');
    expect(bar()).toBeNull();

    await click(replyButton(1));
    expect(bar()).toBe('Replying to bob: Which day works for the review?');
    expect(document.activeElement).toBe(input());
    expect(input().getAttribute('aria-describedby')).toBe('reply-bar-text composer-help');
    expect($('#composer-help')?.textContent).toContain('Escape cancels the reply.');

    await click(button('Cancel reply'));
    expect(bar()).toBeNull();
    expect(document.activeElement).toBe(input());
    expect(input().getAttribute('aria-describedby')).toBe('composer-help');

    await click(replyButton(2));
    expect(bar()).toBe('Replying to bob: Attachment: notes.txt');
    expect((await key(input(), 'Escape')).defaultPrevented).toBe(true);
    expect(bar()).toBeNull();
    // With no reply, Escape is left alone.
    expect((await key(input(), 'Escape')).defaultPrevented).toBe(false);
  });

  it('sending sends the reply_to and ends the reply; the pending message shows its quote', async () => {
    const { sent, replyTos, session } = await show([msg(1, 'Which day works?', [])]);
    await click(replyButton(1));
    await type('Thursday');
    await act(() => {
      $('form.composer')!.dispatchEvent(new Event('submit', { bubbles: true, cancelable: true }));
    });
    expect(sent).toEqual([[C, 'Thursday', []]]);
    expect(replyTos).toEqual(['m-1']);
    expect(bar()).toBeNull();
    expect(session.state.replying).toEqual({});
    const pending = $('li.msg.pending')!;
    expect(pending.querySelector('.quote-sender')?.textContent).toBe('bob');
    expect(pending.querySelector('.quote-text')?.textContent).toBe('Which day works?');
    expect(pending.querySelector('.body')?.textContent).toBe('Thursday');

    // The next message is no reply.
    await type('and Friday');
    await key(input(), 'Enter');
    expect(replyTos).toEqual(['m-1', null]);
  });

  it('the reply belongs to its conversation: another one does not show it', async () => {
    const other = { ...msg(1, 'in the group', []), message_id: 'g-1', conversation_id: 'c-2' };
    const { open, session } = await show([msg(1, 'Which day works?', [])], { others: { 'c-2': [other] } });
    await click(replyButton(1));
    expect(bar()).toBe('Replying to bob: Which day works?');
    await open('c-2');
    expect($('#conv-title')?.textContent).toBe('Group c-2');
    expect(bar()).toBeNull();
    await click(replyButton(1));
    expect(bar()).toBe('Replying to bob: in the group');
    expect(session.state.replying).toEqual({ [C]: 'm-1', 'c-2': 'g-1' });
    await open(C);
    expect(bar()).toBe('Replying to bob: Which day works?');
  });

  it("shows a quote above a reply's body: the original's sender and start, an attachment's name, or that it is not loaded", async () => {
    const long = 'word '.repeat(40).trim();
    await show([
      msg(1, 'Which day works for the review?', []),
      reply(2, 'mine', null, { sender_id: ME.id }),
      reply(3, 'Thursday', 'm-1', { sender_id: ME.id }),
      reply(4, 'yours?', 'm-2'),
      msg(5, '', [txt]),
      reply(6, 'got it', 'm-5', { sender_id: ME.id }),
      reply(7, long, 'm-3'),
      reply(8, 'about something old', '0191f0a5-0000-7000-8000-0000000000ff'),
      // A server before replies sends no reply_to at all.
      reply(9, 'plain', undefined),
    ]);
    expect(quoteOf(1)).toBeNull();
    expect(quoteOf(2)).toBeNull();
    expect(quoteOf(9)).toBeNull();
    const q3 = quoteOf(3)!;
    expect(q3.tagName).toBe('BUTTON');
    expect(q3.querySelector('.quote-sender')?.textContent).toBe('bob');
    expect(q3.querySelector('.quote-text')?.textContent).toBe('Which day works for the review?');
    expect(q3.getAttribute('aria-label')).toBe('Show the original message, from bob: Which day works for the review?');
    // Above the body, inside the bubble.
    expect(q3.parentElement?.classList.contains('bubble')).toBe(true);
    expect(q3.nextElementSibling?.textContent).toBe('Thursday');
    expect(quoteOf(4)?.querySelector('.quote-sender')?.textContent).toBe('You');
    expect(quoteOf(6)?.querySelector('.quote-text')?.textContent).toBe('Attachment: notes.txt');
    expect(quoteOf(7)?.querySelector('.quote-text')?.textContent).toBe('Thursday');
    const q8 = quoteOf(8)!;
    expect(q8.getAttribute('data-state')).toBe('not-loaded');
    expect(q8.querySelector('.quote-sender')).toBeNull();
    expect(q8.querySelector('.quote-text')?.textContent).toBe('Original message not loaded');
    expect(q8.getAttribute('aria-label')).toBe('Original message not loaded: load older messages to show it');
  });

  it('choosing a quote scrolls to the original, focuses it and highlights it for a while', async () => {
    const scrolled: string[] = [];
    vi.spyOn(HTMLElement.prototype, 'scrollIntoView').mockImplementation(function (this: HTMLElement) {
      scrolled.push(this.dataset.seq ?? '?');
    });
    await show([msg(1, 'Which day works?', []), ...Array.from({ length: 5 }, (_, i) => msg(i + 2, `filler ${i}`, [])), reply(7, 'Thursday', 'm-1')]);
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      await click(quoteOf(7));
      await act(() => Promise.resolve());
      expect(scrolled).toEqual(['1']);
      expect(item(1).classList.contains('highlight')).toBe(true);
      expect(item(1).getAttribute('data-highlighted')).toBe('true');
      expect(document.activeElement).toBe(item(1));
      expect(item(7).classList.contains('highlight')).toBe(false);
      await act(() => {
        vi.advanceTimersByTime(2_499);
      });
      expect(item(1).classList.contains('highlight')).toBe(true);
      await act(() => {
        vi.advanceTimersByTime(1);
      });
      expect(item(1).classList.contains('highlight')).toBe(false);
      expect(item(1).hasAttribute('data-highlighted')).toBe(false);
    } finally {
      vi.useRealTimers();
    }
  });

  it('loads older pages until the original comes; says so when the whole history does not have it', async () => {
    const scrolled: string[] = [];
    vi.spyOn(HTMLElement.prototype, 'scrollIntoView').mockImplementation(function (this: HTMLElement) {
      scrolled.push(this.dataset.seq ?? '?');
    });
    const { loads } = await show([reply(5, 'Thursday', 'm-2'), reply(6, 'what was that?', 'm-gone')], {
      older: [
        [msg(3, 'three', []), msg(4, 'four', [])],
        [msg(1, 'one', []), msg(2, 'Which day works?', [])],
      ],
    });
    expect(quoteOf(5)?.getAttribute('data-state')).toBe('not-loaded');
    await click(quoteOf(5));
    await flush();
    expect(loads).toEqual([C, C]);
    expect(scrolled).toEqual(['2']);
    expect(item(2).classList.contains('highlight')).toBe(true);
    expect(quoteOf(5)?.querySelector('.quote-sender')?.textContent).toBe('bob');
    expect(quoteOf(5)?.querySelector('.quote-text')?.textContent).toBe('Which day works?');

    // All history is held now: one more try, then the quote says it is unavailable and
    // is no longer a button.
    await click(quoteOf(6));
    await flush();
    expect(loads).toEqual([C, C, C]);
    const q6 = quoteOf(6)!;
    expect(q6.tagName).toBe('P');
    expect(q6.textContent).toBe('Original message unavailable');
    expect(scrolled).toEqual(['2']);
  });
});

describe('mentions', () => {
  const CYD = { id: 'u-cyd', username: 'cyd' };
  const BOBBY = { id: 'u-bobby', username: 'Bobby' };
  const group = { kind: 'group' as const, title: 'Team', members: [ME.id, BOB.id, CYD.id, BOBBY.id] };
  const input = () => $<HTMLTextAreaElement>('#composer-input')!;
  const listbox = () => $('[role="listbox"]');
  const options = () => [...root.querySelectorAll<HTMLElement>('[role="option"]')];
  /** Type `text` with the caret at its end (or where `|` is). */
  const type = async (marked: string) => {
    const caret = marked.includes('|') ? marked.indexOf('|') : marked.length;
    input().value = marked.replace('|', '');
    input().setSelectionRange(caret, caret);
    await act(() => {
      input().dispatchEvent(new Event('input', { bubbles: true }));
    });
  };
  const key = async (k: string, init: KeyboardEventInit = {}) => {
    const ev = new KeyboardEvent('keydown', { key: k, bubbles: true, cancelable: true, ...init });
    await act(() => {
      input().dispatchEvent(ev);
    });
    return ev;
  };
  const mentioning = (seq: number, body: string, mentions: string[], extra: Partial<Message> = {}): Message => ({
    ...msg(seq, body, []),
    mentions,
    ...extra,
  });

  it('@ and letters offer the matching members (not me) as a listbox the arrows move through; Enter inserts, not sends', async () => {
    const { sent } = await show([], { conv: group, users: [CYD, BOBBY] });
    expect(input().getAttribute('aria-autocomplete')).toBe('list');
    await type('@');
    expect(listbox()).toBeNull();
    await type('hi @bo');
    expect(listbox()?.getAttribute('aria-label')).toBe('Members to mention');
    expect(options().map((o) => o.textContent)).toEqual(['@bob', '@Bobby']);
    expect(input().getAttribute('aria-controls')).toBe('mention-list');
    expect(input().getAttribute('aria-activedescendant')).toBe(`mention-${BOB.id}`);
    expect(options().map((o) => o.getAttribute('aria-selected'))).toEqual(['true', 'false']);
    expect($('[data-testid="mention-status"]')?.textContent).toContain('2 members to mention');

    expect((await key('ArrowDown')).defaultPrevented).toBe(true);
    expect(input().getAttribute('aria-activedescendant')).toBe(`mention-${BOBBY.id}`);
    expect(options().map((o) => o.getAttribute('aria-selected'))).toEqual(['false', 'true']);
    await key('ArrowDown'); // wraps round
    expect(input().getAttribute('aria-activedescendant')).toBe(`mention-${BOB.id}`);
    await key('ArrowUp');
    expect(input().getAttribute('aria-activedescendant')).toBe(`mention-${BOBBY.id}`);
    await key('ArrowUp');

    expect((await key('Enter')).defaultPrevented).toBe(true);
    expect(sent).toEqual([]);
    expect(input().value).toBe('hi @bob ');
    expect(input().selectionStart).toBe(8);
    expect(listbox()).toBeNull();
    expect(input().hasAttribute('aria-activedescendant')).toBe(false);

    // The list closed, Enter sends again; the body carries @bob for the server.
    await type('hi @bob see this');
    await key('Enter');
    expect(sent).toEqual([[C, 'hi @bob see this', []]]);
  });

  it('matches any case and inserts the exact name; Tab inserts too; only members are offered, never me', async () => {
    await show([], { conv: group, users: [CYD, BOBBY, { id: 'u-dan', username: 'dan' }] });
    await type('@BOBB');
    expect(options().map((o) => o.textContent)).toEqual(['@Bobby']);
    expect((await key('Tab')).defaultPrevented).toBe(true);
    expect(input().value).toBe('@Bobby ');
    await type('@ad');
    expect(listbox()).toBeNull();
    await type('@da'); // a user, not a member
    expect(listbox()).toBeNull();
    await type('mail x@cy'); // an address
    expect(listbox()).toBeNull();
  });

  it('replaces the whole name when the caret is inside it, keeping what follows', async () => {
    await show([], { conv: group, users: [CYD, BOBBY] });
    await type('ask @c|x now');
    expect(options().map((o) => o.textContent)).toEqual(['@cyd']);
    await key('Enter');
    expect(input().value).toBe('ask @cyd now');
    expect(input().selectionStart).toBe(9);
  });

  it('Escape closes the list (and only the list: a reply being written stays); a click on a member inserts it', async () => {
    await show([msg(1, 'Which day?', [])], { conv: group, users: [CYD, BOBBY] });
    await click($('.message-list button[aria-label="Reply"]'));
    expect($('.reply-bar-text')).not.toBeNull();
    await type('@cy');
    expect(options()).toHaveLength(1);
    expect((await key('Escape')).defaultPrevented).toBe(true);
    expect(listbox()).toBeNull();
    expect($('.reply-bar-text')).not.toBeNull();
    // Closed for this name while it is typed; Enter sends as usual then.
    await type('@cyd');
    expect(listbox()).toBeNull();
    // A new name opens it again, and the mouse chooses.
    await type('@cyd and @b');
    expect(options().map((o) => o.textContent)).toEqual(['@bob', '@Bobby']);
    const down = new MouseEvent('mousedown', { bubbles: true, cancelable: true });
    options()[1].dispatchEvent(down);
    expect(down.defaultPrevented).toBe(true); // the focus stays in the text
    await click(options()[1]);
    expect(input().value).toBe('@cyd and @Bobby ');
    expect(document.activeElement).toBe(input());
    expect(listbox()).toBeNull();
  });

  it('highlights the names of the members a message mentions, mine more strongly, as text', async () => {
    await show(
      [
        mentioning(1, '@ada and @cyd, see <b>this</b>', [ME.id, CYD.id]),
        mentioning(2, '@cyd was not mentioned here, nor bob@example.com', []),
        mentioning(3, 'thanks @Bobby.', [BOBBY.id], { sender_id: ME.id }),
      ],
      { conv: group, users: [CYD, BOBBY] },
    );
    const body = (seq: number) => $(`.message-list li.msg[data-seq="${seq}"] .body`)!;
    const marks = (seq: number) =>
      [...body(seq).querySelectorAll('.mention')].map((el) => [el.textContent, el.getAttribute('data-user'), el.classList.contains('me')]);
    expect(marks(1)).toEqual([
      ['@ada', ME.id, true],
      ['@cyd', CYD.id, false],
    ]);
    expect(body(1).textContent).toBe('@ada and @cyd, see <b>this</b>');
    expect(body(1).querySelector('b')).toBeNull();
    expect(marks(2)).toEqual([]);
    expect(body(2).textContent).toBe('@cyd was not mentioned here, nor bob@example.com');
    expect(marks(3)).toEqual([['@Bobby', BOBBY.id, false]]);
    expect(body(3).textContent).toBe('thanks @Bobby.');
  });

  it('the conversation list shows a badge of unread mentions, and says it', async () => {
    await show([], { conv: { ...group, last_seq: 3, unread: 3, my_read: 0, mentions_unread: 2 } });
    const badge = $('a.conv .badge.mention')!;
    expect(badge.textContent).toBe('@2');
    expect(badge.getAttribute('aria-label')).toBe('2 mentions');
    expect(badge.getAttribute('data-mentions')).toBe('2');
    expect($('a.conv')?.getAttribute('aria-label')).toBe('Team, group, 0 online, 3 unread, 2 mentions');
  });
});

describe('message changes', () => {
  const mine = (seq: number, body: string, extra: Partial<Message> = {}): Message => ({ ...msg(seq, body, []), sender_id: ME.id, ...extra });
  const change = (seq: number, target: number, extra: Partial<Message>): Message => ({
    ...msg(seq, '', []),
    message_id: `e-${seq}`,
    client_msg_id: `ek-${seq}`,
    target_id: `m-${target}`,
    ...extra,
  });
  const item = (seq: number) => $(`.message-list li.msg[data-seq="${seq}"]`)!;
  const actions = (seq: number) => [...item(seq).querySelectorAll('.msg-actions button')].map((b) => b.getAttribute('aria-label'));
  const within = (seq: number, name: string) =>
    [...item(seq).querySelectorAll<HTMLButtonElement>('button')].find((b) => (b.getAttribute('aria-label') ?? b.textContent) === name);
  const key = async (el: Element, k: string, init: KeyboardEventInit = {}) => {
    const ev = new KeyboardEvent('keydown', { key: k, bubbles: true, cancelable: true, ...init });
    await act(() => {
      el.dispatchEvent(ev);
    });
    return ev;
  };

  it('offers Edit and Delete on my messages only; a group owner may delete anyone’s; a deleted message offers nothing', async () => {
    const { open } = await show([msg(1, 'from bob', []), mine(2, 'from me'), mine(3, '', { deleted: true })], {
      others: { 'c-2': [{ ...msg(1, 'bob in my group', []), conversation_id: 'c-2', message_id: 'g-1' }] },
    });
    expect(actions(1)).toEqual(['Reply', 'React']);
    expect(actions(2)).toEqual(['Reply', 'React', 'Edit', 'Delete']);
    expect(actions(3)).toEqual([]);
    expect(item(3).querySelector('.body')?.textContent).toBe('Message deleted');
    // In c-2, a group I own (see fakeSession), bob's message may be deleted, not edited.
    await open('c-2');
    expect(actions(1)).toEqual(['Reply', 'React', 'Delete']);
  });

  it('edits in place: the body in a text box, Escape leaves it, Enter saves; "edited" once the edit comes', async () => {
    const { changed, receive } = await show([mine(1, 'see you at 10')]);
    await click(within(1, 'Edit'));
    const box = item(1).querySelector<HTMLTextAreaElement>('textarea[aria-label="Edit message"]')!;
    expect(box.value).toBe('see you at 10');
    expect(document.activeElement).toBe(box);
    expect(box.selectionStart).toBe(13);
    expect((await key(box, 'Escape')).defaultPrevented).toBe(true);
    expect(item(1).querySelector('textarea')).toBeNull();
    expect(document.activeElement).toBe(within(1, 'Edit'));
    expect(changed).toEqual([]);

    await click(within(1, 'Edit'));
    const again = item(1).querySelector<HTMLTextAreaElement>('textarea')!;
    again.value = '   ';
    await act(() => {
      again.dispatchEvent(new Event('input', { bubbles: true }));
    });
    await key(again, 'Enter');
    expect(item(1).querySelector('[aria-invalid="true"]')).not.toBeNull();
    expect(item(1).textContent).toContain('A message needs text: delete it instead.');
    again.value = 'see you at 11';
    await act(() => {
      again.dispatchEvent(new Event('input', { bubbles: true }));
    });
    await key(again, 'Enter');
    expect(changed).toEqual([['edit', C, 'm-1', 'see you at 11']]);
    expect(item(1).querySelector('textarea')).toBeNull();
    expect(document.activeElement).toBe(within(1, 'Edit'));

    await receive({ type: 'message', message: change(2, 1, { kind: 'edit', body: 'see you at 11', sender_id: ME.id, sent_at: '2025-03-14T09:30:00Z' }) });
    expect(item(1).querySelector('.body')?.textContent).toBe('see you at 11 edited');
    expect(item(1).querySelector('.body .edited')?.textContent).toBe('edited');
    expect(item(1).querySelector('.edited')?.getAttribute('title')).toMatch(/^Edited /);
    // The edit is no message of its own.
    expect(root.querySelectorAll('.message-list li.msg')).toHaveLength(1);
  });

  it('deletes after asking, the focus on Cancel; "Message deleted" once the delete comes', async () => {
    const { changed, receive } = await show([mine(1, 'oops, wrong chat'), msg(2, 'after', [])]);
    await click(within(1, 'Delete'));
    const confirm = item(1).querySelector('.confirm')!;
    expect(confirm.textContent).toContain('Delete this message for everyone?');
    expect(document.activeElement).toBe(within(1, 'Cancel'));
    await key(document.activeElement!, 'Escape');
    expect(item(1).querySelector('.confirm')).toBeNull();
    expect(document.activeElement).toBe(within(1, 'Delete'));

    await click(within(1, 'Delete'));
    await click(item(1).querySelector('.confirm button.danger'));
    expect(changed).toEqual([['delete', C, 'm-1']]);
    expect(item(1).querySelector('.confirm')).toBeNull();
    expect(document.activeElement).toBe(item(1));

    await receive({ type: 'message', message: change(3, 1, { kind: 'delete', sender_id: ME.id }) });
    expect(item(1).querySelector('.body')?.textContent).toBe('Message deleted');
    expect(item(1).querySelector('.body.deleted')).not.toBeNull();
    expect(actions(1)).toEqual([]);
    // The conversation list previews the newest message.
    expect($('.conv-preview')?.textContent).toBe('after');
  });

  it('reacts from a picker of emoji; shows counts and who reacted; choosing my own reaction takes it back', async () => {
    const { changed, receive } = await show([msg(1, 'we shipped it', [])]);
    const reactButton = within(1, 'React')!;
    await click(reactButton);
    expect(reactButton.getAttribute('aria-expanded')).toBe('true');
    const picker = item(1).querySelector('[role="group"][aria-label="Pick a reaction"]')!;
    const emoji = [...picker.querySelectorAll('button')];
    expect(emoji.map((b) => b.getAttribute('aria-label'))).toEqual([
      'React with thumbs up',
      'React with heart',
      'React with laughing',
      'React with party',
      'React with surprised',
      'React with sad',
    ]);
    expect(document.activeElement).toBe(emoji[0]);
    await key(emoji[0], 'ArrowRight');
    expect(document.activeElement).toBe(emoji[1]);
    await key(emoji[1], 'ArrowLeft');
    await key(emoji[0], 'ArrowLeft');
    expect(document.activeElement).toBe(emoji[5]);
    await key(emoji[5], 'Escape');
    expect(item(1).querySelector('.picker')).toBeNull();
    expect(document.activeElement).toBe(reactButton);

    await click(reactButton);
    await click(item(1).querySelector('[aria-label="React with party"]'));
    expect(changed).toEqual([['react', C, 'm-1', '🎉', false]]);
    expect(item(1).querySelector('.picker')).toBeNull();

    await receive({ type: 'message', message: change(2, 1, { kind: 'reaction', emoji: '🎉', sender_id: BOB.id }) });
    await receive({ type: 'message', message: change(3, 1, { kind: 'reaction', emoji: '🎉', sender_id: ME.id }) });
    await receive({ type: 'message', message: change(4, 1, { kind: 'reaction', emoji: '👍', sender_id: BOB.id }) });
    const chips = () => [...item(1).querySelectorAll<HTMLButtonElement>('.reactions button')];
    expect(chips().map((b) => [b.textContent, b.getAttribute('aria-pressed'), b.title])).toEqual([
      ['🎉2', 'true', 'You and bob reacted with 🎉'],
      ['👍1', 'false', 'bob reacted with 👍'],
    ]);
    expect(chips()[0].getAttribute('aria-label')).toBe('You and bob reacted with 🎉');
    // My own: taken back; another's: mine added.
    await click(chips()[0]);
    await click(chips()[1]);
    expect(changed.slice(1)).toEqual([
      ['react', C, 'm-1', '🎉', true],
      ['react', C, 'm-1', '👍', false],
    ]);
    // The picker marks what I reacted with, and picking it again takes it back.
    await click(reactButton);
    expect(item(1).querySelector('[aria-label="React with party"]')?.getAttribute('aria-pressed')).toBe('true');
    await click(item(1).querySelector('[aria-label="React with party"]'));
    expect(changed.at(-1)).toEqual(['react', C, 'm-1', '🎉', true]);
    expect(root.querySelectorAll('.message-list li.msg')).toHaveLength(1);
  });

  it('says when a change of mine is being saved, and why it was refused', async () => {
    const { dispatch } = await show([mine(1, 'hi')]);
    await act(() => dispatch({ type: 'change', change: { client_msg_id: 'x-1', conversation_id: C, target_id: 'm-1', kind: 'edit' } }));
    expect(item(1).querySelector('.change-status')?.textContent).toBe('Saving…');
    await act(() => dispatch({ type: 'send-failed', client_msg_id: 'x-1', code: 'forbidden', message: 'no' }));
    const alert = item(1).querySelector('[role="alert"]')!;
    expect(alert.textContent).toContain('Not edited: you may not change this message.');
    await click(within(1, 'Dismiss'));
    expect(item(1).querySelector('.change-status')).toBeNull();
  });

  it('opened at a message: loads older pages until it is held, scrolls to it and highlights it', async () => {
    const scrolled: string[] = [];
    vi.spyOn(HTMLElement.prototype, 'scrollIntoView').mockImplementation(function (this: HTMLElement) {
      scrolled.push(this.dataset.seq ?? '?');
    });
    const { open, loads } = await show([msg(5, 'five', []), msg(6, 'six', [])], {
      older: [[msg(3, 'three', []), msg(4, 'four', [])], [msg(1, 'one', []), msg(2, 'two', [])]],
    });
    await open(C, 'm-2');
    await flush();
    expect(loads).toEqual([C, C]);
    expect(scrolled).toEqual(['2']);
    expect(item(2).classList.contains('highlight')).toBe(true);
    expect(document.activeElement).toBe(item(2));
  });
});

describe('search', () => {
  const input = () => $<HTMLInputElement>('input[type="search"]')!;
  const type = async (text: string) => {
    input().value = text;
    await act(() => {
      input().dispatchEvent(new Event('input', { bubbles: true }));
    });
  };
  const settle = () => act(() => new Promise((r) => setTimeout(r, 300)));

  it('shows the messages found in place of the conversations, each opening its conversation at the message', async () => {
    const found = { ...msg(7, 'the review is on Thursday', []), message_id: '0191f0a5-2222-7000-8000-000000000007' };
    const asked: string[] = [];
    vi.stubGlobal('fetch', async (url: string) => {
      asked.push(String(url));
      return new Response(JSON.stringify({ results: [found, { ...found, message_id: 'm-x', sender_id: ME.id, body: 'thursday?' }] }), { status: 200 });
    });
    await show([msg(1, 'hi', [])]);
    expect(input().labels?.[0]?.textContent).toBe('Search messages');
    expect($('a.conv')).not.toBeNull();
    await type('  thurs ');
    expect($('[data-testid="search-status"]')?.textContent).toBe('Searching…');
    await settle();
    expect(asked).toEqual(['/api/v1/search?q=thurs&limit=50']);
    expect($('[data-testid="search-status"]')?.textContent).toBe('2 messages');
    expect($('a.conv')).toBeNull();
    const results = [...root.querySelectorAll<HTMLAnchorElement>('[aria-label="Search results"] a')];
    // Named as the list names them: the direct conversation after bob, "You" for mine.
    expect(results.map((a) => [a.querySelector('.result-where')?.textContent, a.querySelector('.result-text')?.textContent])).toEqual([
      ['bob', 'the review is on Thursday'],
      ['bob', 'You: thursday?'],
    ]);
    expect(results[1].getAttribute('aria-label')).toMatch(/^You in bob, .*: thursday\?$/);
    expect(results[0].getAttribute('href')).toBe(`#/c/${C}/${found.message_id}`);
    // Down from the box goes to the first result; Escape in the box clears it.
    await act(() => {
      input().dispatchEvent(new KeyboardEvent('keydown', { key: 'ArrowDown', bubbles: true, cancelable: true }));
    });
    expect(document.activeElement).toBe(results[0]);
    await act(() => {
      input().dispatchEvent(new KeyboardEvent('keydown', { key: 'Escape', bubbles: true, cancelable: true }));
    });
    expect(input().value).toBe('');
    expect($('a.conv')).not.toBeNull();
    expect($('[data-testid="search-status"]')).toBeNull();
  });

  it('says when nothing is found, when the query is too long, and when the server refuses', async () => {
    let answer: [number, unknown] = [200, { results: [] }];
    vi.stubGlobal('fetch', async () => new Response(JSON.stringify(answer[1]), { status: answer[0] }));
    await show([]);
    await type('zebra');
    await settle();
    expect($('[data-testid="search-status"]')?.textContent).toBe('No messages found');
    await type('x'.repeat(300));
    expect($('[data-testid="search-status"]')?.textContent).toBe('Search for at most 256 bytes of text.');
    answer = [503, { error: { code: 'unavailable', message: 'search is warming up' } }];
    await type('zebras');
    await settle();
    expect($('[data-testid="search-status"]')?.textContent).toBe('Cannot search: search is warming up');
  });
});
