import { render } from 'preact';
import { act } from 'preact/test-utils';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { auth } from '../src/api';
import { Chats } from '../src/screens/Chats';
import { type ChatSession, SessionContext } from '../src/session';
import { type ChatState, initialState } from '../src/store';
import type { Attachment, Message } from '../src/types';
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

/** What ConversationView needs of a session; `sent` records `send` calls. */
function fakeSession(messages: Message[]) {
  const state: ChatState = {
    ...initialState,
    me: ME,
    users: { [ME.id]: ME, [BOB.id]: BOB },
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
        last_at: '2025-03-14T09:26:53Z',
      },
    },
    messages: { [C]: messages },
    loaded: { [C]: true },
    status: 'online',
  };
  const sent: [string, string, Attachment[]][] = [];
  const session = {
    state,
    subscribe: () => () => {},
    open: async () => {},
    markRead: () => {},
    typing: () => {},
    loadOlder: async () => false,
    dismiss: () => {},
    send: (id: string, body: string, attachments: Attachment[] = []) => sent.push([id, body, attachments]),
  } as unknown as ChatSession;
  return { session, sent };
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

async function show(messages: Message[]) {
  const s = fakeSession(messages);
  await act(() =>
    render(
      <SessionContext.Provider value={s.session}>
        <Chats conversationId={C} />
      </SessionContext.Provider>,
      root,
    ),
  );
  await flush();
  return s;
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
