import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError, auth, uploadAttachment } from '../src/api';
import { isPreviewable } from '../src/components';
import {
  canSend,
  type ComposerAction,
  composerReducer,
  type ComposerState,
  emptyComposer,
  MAX_ATTACHMENTS,
  percent,
  readyAttachments,
  room,
  uploading,
  uploadName,
  uploadStatus,
} from '../src/composer';
import { attachmentSummary, formatSize, uploadErrorMessage } from '../src/format';
import { attachment, FakeXhr } from './fakes';

afterEach(() => {
  FakeXhr.made = [];
  auth.token = null;
  auth.onUnauthorized = () => {};
});

describe('formatSize', () => {
  it('says bytes under a KiB, one decimal under 10 units, whole numbers above', () => {
    expect(formatSize(0)).toBe('0 B');
    expect(formatSize(1)).toBe('1 B');
    expect(formatSize(1023)).toBe('1023 B');
    expect(formatSize(1024)).toBe('1 KiB');
    expect(formatSize(1536)).toBe('1.5 KiB');
    expect(formatSize(10 * 1024)).toBe('10 KiB');
    expect(formatSize(123_456)).toBe('121 KiB');
    expect(formatSize(25 * 1024 * 1024)).toBe('25 MiB');
    expect(formatSize(1.25 * 1024 ** 3)).toBe('1.3 GiB');
  });

  it('never shows 1024 of a unit, nor nonsense for bad input', () => {
    expect(formatSize(1024 * 1024 - 1)).toBe('1 MiB');
    expect(formatSize(10 * 1024 - 1)).toBe('10 KiB');
    expect(formatSize(-1)).toBe('–');
    expect(formatSize(Number.NaN)).toBe('–');
  });
});

describe('upload messages', () => {
  it("keeps the server's message, which says which limit was hit", () => {
    const quota = new ApiError(413, 'too_large', 'over your quota of 100 MiB');
    expect(uploadErrorMessage(quota)).toBe('Too large: over your quota of 100 MiB');
    expect(uploadErrorMessage(new ApiError(413, 'too_large', 'over the 25 MiB limit'))).toBe('Too large: over the 25 MiB limit');
    expect(uploadErrorMessage(new ApiError(400, 'bad_request', 'name contains /'))).toBe('Refused: name contains /');
    expect(uploadErrorMessage(new ApiError(0, 'network', 'x'))).toMatch(/cannot reach/);
    expect(uploadErrorMessage(new ApiError(429, 'rate_limited', 'slow', { retry_after_ms: 4000 }))).toBe(
      'Too many uploads. Try again in 4 seconds.',
    );
    expect(uploadErrorMessage(new ApiError(500, 'internal', 'boom'))).toBe('Upload failed (internal): boom');
    expect(uploadErrorMessage(new Error('?'))).toBe('Upload failed. Try again.');
  });

  it('sums up attachments for the conversation list', () => {
    expect(attachmentSummary(undefined)).toBe('');
    expect(attachmentSummary([])).toBe('');
    expect(attachmentSummary([attachment(1)])).toBe('Attachment: file-1.txt');
    expect(attachmentSummary([attachment(1), attachment(2)])).toBe('2 attachments');
  });
});

describe('uploadName', () => {
  it('keeps ordinary names, and names a pasted file without one by its type', () => {
    expect(uploadName('cat.png', 'image/png')).toBe('cat.png');
    expect(uploadName('', 'image/png')).toBe('pasted.png');
    expect(uploadName('  ', 'application/x-unknown')).toBe('pasted.bin');
  });

  it('replaces what the server refuses: slashes, backslashes, control characters', () => {
    expect(uploadName('a/b\\c\u0000d\te\u007f.txt')).toBe('a_b_c_d_e_.txt');
  });

  it('shortens a name over 255 bytes, keeping its extension and whole characters', () => {
    const long = `${'é'.repeat(200)}.jpeg`;
    const name = uploadName(long);
    expect(new TextEncoder().encode(name).length).toBeLessThanOrEqual(255);
    expect(name.endsWith('.jpeg')).toBe(true);
    expect(name.startsWith('éé')).toBe(true);
    expect(name).not.toContain('\ufffd');
  });
});

describe('isPreviewable', () => {
  it('shows PNG, JPEG, GIF and WebP as pictures, other types as files', () => {
    for (const t of ['image/png', 'image/jpeg', 'image/gif', 'image/webp', 'IMAGE/PNG', 'image/png; charset=binary'])
      expect(isPreviewable(attachment(1, { content_type: t }))).toBe(true);
    for (const t of ['image/svg+xml', 'image/tiff', 'text/plain', 'application/octet-stream'])
      expect(isPreviewable(attachment(1, { content_type: t }))).toBe(false);
  });
});

describe('uploadAttachment', () => {
  const make = () => {
    const xhr = new FakeXhr();
    return { xhr, create: () => xhr };
  };

  it('posts the bytes with the name in the query, the token and the type, and reports progress', async () => {
    auth.token = 'tok';
    const { xhr, create } = make();
    const file = new File(['hello world'], 'notes.txt', { type: 'text/plain' });
    const progress: [number, number][] = [];
    const up = uploadAttachment(file, 'my notes & más.txt', (l, t) => progress.push([l, t]), create);
    expect(xhr.method).toBe('POST');
    expect(xhr.url).toBe('/api/v1/attachments?name=my+notes+%26+m%C3%A1s.txt');
    expect(xhr.headers).toEqual({ authorization: 'Bearer tok', 'content-type': 'text/plain' });
    expect(xhr.body).toBe(file);
    xhr.progress(5, 11);
    xhr.progress(7, 0, false); // no total known: the file's size is
    const stored = attachment(1, { name: 'my notes & más.txt', size: 11 });
    xhr.respond(201, stored);
    await expect(up.promise).resolves.toEqual(stored);
    expect(progress).toEqual([
      [5, 11],
      [7, 11],
      [11, 11],
    ]);
  });

  it('sends application/octet-stream for a file of unknown type', () => {
    const { xhr, create } = make();
    uploadAttachment(new Blob([new Uint8Array([1, 2, 3])]), 'blob.bin', undefined, create);
    expect(xhr.headers['content-type']).toBe('application/octet-stream');
    expect(xhr.headers.authorization).toBeUndefined();
  });

  it("rejects with the protocol's error: code, message and extra fields", async () => {
    const { xhr, create } = make();
    const up = uploadAttachment(new Blob(['x']), 'big.iso', undefined, create);
    xhr.respond(413, { error: { code: 'too_large', message: 'attachments are at most 25 MiB', limit: 26214400 } });
    const e = await up.promise.catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ApiError);
    expect(e).toMatchObject({ status: 413, code: 'too_large', message: 'attachments are at most 25 MiB' });
    expect((e as ApiError).details.limit).toBe(26214400);
  });

  it('makes an error of an answer that is not the error format', async () => {
    const { xhr, create } = make();
    const up = uploadAttachment(new Blob(['x']), 'a', undefined, create);
    xhr.respond(502, '<html>bad gateway</html>', 'Bad Gateway');
    await expect(up.promise).rejects.toMatchObject({ status: 502, code: 'http_502', message: 'Bad Gateway' });
  });

  it('signs the app out on a 401, as every other call does', async () => {
    auth.token = 'old';
    const gone = vi.fn();
    auth.onUnauthorized = gone;
    const { xhr, create } = make();
    const up = uploadAttachment(new Blob(['x']), 'a', undefined, create);
    xhr.respond(401, { error: { code: 'unauthorized', message: 'token expired' } });
    await expect(up.promise).rejects.toMatchObject({ code: 'unauthorized' });
    expect(gone).toHaveBeenCalledOnce();
  });

  it('rejects with "network" when the request fails, and "aborted" when cancelled', async () => {
    const a = make();
    const up1 = uploadAttachment(new Blob(['x']), 'a', undefined, a.create);
    a.xhr.fail();
    await expect(up1.promise).rejects.toMatchObject({ status: 0, code: 'network' });
    const b = make();
    const up2 = uploadAttachment(new Blob(['x']), 'a', undefined, b.create);
    up2.abort();
    expect(b.xhr.aborted).toBe(true);
    await expect(up2.promise).rejects.toMatchObject({ status: 0, code: 'aborted' });
  });
});

describe('the composer state', () => {
  const run = (actions: ComposerAction[], start: ComposerState = emptyComposer) => actions.reduce(composerReducer, start);
  const file = (n: number, size = 1000) => ({ key: `k${n}`, name: `f${n}.txt`, size });
  const add = (...ns: number[]): ComposerAction => ({ type: 'add', files: ns.map((n) => file(n)) });

  it('adds files as uploading, follows their progress, and holds them once stored', () => {
    let s = run([add(1, 2)]);
    expect(s.uploads.map(uploadStatus)).toEqual(['uploading', 'uploading']);
    expect(uploading(s)).toBe(true);
    s = run([{ type: 'progress', key: 'k1', loaded: 250 }], s);
    expect(percent(s.uploads[0])).toBe(25);
    s = run([{ type: 'progress', key: 'k1', loaded: 5000 }], s);
    expect(s.uploads[0].loaded).toBe(1000);
    s = run([{ type: 'uploaded', key: 'k1', attachment: attachment(1) }], s);
    expect(uploadStatus(s.uploads[0])).toBe('done');
    expect(percent(s.uploads[0])).toBe(100);
    expect(uploading(s)).toBe(true);
    s = run([{ type: 'uploaded', key: 'k2', attachment: attachment(2) }], s);
    expect(uploading(s)).toBe(false);
    expect(readyAttachments(s).map((a) => a.name)).toEqual(['file-1.txt', 'file-2.txt']);
  });

  it('can send text alone, attachments alone, both; nothing while an upload is in flight', () => {
    expect(canSend(emptyComposer, '')).toBe(false);
    expect(canSend(emptyComposer, '   ')).toBe(false);
    expect(canSend(emptyComposer, 'hi')).toBe(true);
    const going = run([add(1)]);
    expect(canSend(going, 'hi')).toBe(false);
    const done = run([{ type: 'uploaded', key: 'k1', attachment: attachment(1) }], going);
    expect(canSend(done, '')).toBe(true);
    expect(canSend(done, 'hi')).toBe(true);
    const failed = run([add(1), { type: 'failed', key: 'k1', error: 'Too large' }]);
    expect(canSend(failed, '')).toBe(false);
    expect(canSend(failed, 'hi')).toBe(true);
  });

  it(`takes at most ${MAX_ATTACHMENTS} attachments and says how many were left out`, () => {
    let s = run([add(1, 2, 3, 4, 5, 6, 7, 8)]);
    expect(s.notice).toBeNull();
    expect(room(s)).toBe(2);
    s = run([add(9, 10, 11, 12)], s);
    expect(s.uploads.map((u) => u.key)).toEqual(['k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'k7', 'k8', 'k9', 'k10']);
    expect(s.notice).toBe('A message takes at most 10 attachments: 2 files were not added.');
    s = run([add(13)], s);
    expect(s.uploads).toHaveLength(10);
    expect(s.notice).toMatch(/1 file was not added/);
    // Removing one makes room, and clears the notice.
    s = run([{ type: 'remove', key: 'k3' }], s);
    expect(s.notice).toBeNull();
    expect(room(s)).toBe(1);
  });

  it('does not count failed uploads against the limit', () => {
    let s = run([add(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), { type: 'failed', key: 'k1', error: 'Too large: x' }]);
    expect(room(s)).toBe(1);
    s = run([add(11)], s);
    expect(s.notice).toBeNull();
    expect(s.uploads.find((u) => u.key === 'k1')?.error).toBe('Too large: x');
  });

  it('ignores news of an upload that was removed, and clears everything once sent', () => {
    const s = run([add(1, 2), { type: 'remove', key: 'k1' }]);
    expect(run([{ type: 'progress', key: 'k1', loaded: 10 }], s)).toBe(s);
    expect(run([{ type: 'uploaded', key: 'k1', attachment: attachment(1) }], s)).toBe(s);
    expect(run([{ type: 'remove', key: 'nope' }], s)).toBe(s);
    expect(run([{ type: 'sent' }], s)).toEqual(emptyComposer);
  });

  it('keeps progress of a failed upload where it stopped', () => {
    const s = run([add(1), { type: 'progress', key: 'k1', loaded: 400 }, { type: 'failed', key: 'k1', error: 'x' }]);
    expect(run([{ type: 'progress', key: 'k1', loaded: 900 }], s).uploads[0].loaded).toBe(400);
  });
});
