// Fakes shared by the attachment tests (not a test file itself).

import type { XhrLike } from '../src/api';
import type { Attachment } from '../src/types';

/** An XMLHttpRequest the test answers by hand. */
export class FakeXhr implements XhrLike {
  static made: FakeXhr[] = [];
  method = '';
  url = '';
  headers: Record<string, string> = {};
  body: Blob | null = null;
  status = 0;
  statusText = '';
  responseText = '';
  aborted = false;
  upload: XhrLike['upload'] = { onprogress: null };
  onload: (() => void) | null = null;
  onerror: (() => void) | null = null;
  onabort: (() => void) | null = null;
  constructor() {
    FakeXhr.made.push(this);
  }
  open(method: string, url: string) {
    this.method = method;
    this.url = url;
  }
  setRequestHeader(name: string, value: string) {
    this.headers[name.toLowerCase()] = value;
  }
  send(body: Blob) {
    this.body = body;
  }
  abort() {
    this.aborted = true;
    this.onabort?.();
  }
  progress(loaded: number, total: number, lengthComputable = true) {
    this.upload.onprogress?.({ loaded, total, lengthComputable });
  }
  respond(status: number, body: unknown, statusText = '') {
    this.status = status;
    this.statusText = statusText;
    this.responseText = typeof body === 'string' ? body : JSON.stringify(body);
    this.onload?.();
  }
  fail() {
    this.onerror?.();
  }
}

export function attachment(n: number, extra: Partial<Attachment> = {}): Attachment {
  return {
    attachment_id: `0191f0a5-0000-7000-8000-${String(n).padStart(12, '0')}`,
    name: `file-${n}.txt`,
    content_type: 'text/plain',
    size: 100 * n,
    sha256: 'ab'.repeat(32),
    ...extra,
  };
}
