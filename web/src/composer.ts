// The composer's attachments: a pure reducer from (state, action) to state, like the
// chat store, so the tests can play a composer without a browser. Files upload as soon
// as they are picked, dropped or pasted (screens/Chats.tsx starts the uploads); the
// message goes out with the ids of the finished ones.

import type { Attachment } from './types';

/** Attachments one message may carry (the server refuses more). */
export const MAX_ATTACHMENTS = 10;
/** Bytes of an attachment's name the server takes. */
export const MAX_NAME_BYTES = 255;

export interface PendingUpload {
  /** Local id of the upload (the server's id comes with `attachment`). */
  key: string;
  name: string;
  size: number;
  /** Bytes sent so far. */
  loaded: number;
  /** Set when the upload is stored. */
  attachment: Attachment | null;
  /** Set when the upload failed: what to tell the person. */
  error: string | null;
}

export type UploadStatus = 'uploading' | 'done' | 'failed';

export interface ComposerState {
  uploads: PendingUpload[];
  /** Said under the chips, e.g. that files over the limit were not added. */
  notice: string | null;
}

export const emptyComposer: ComposerState = { uploads: [], notice: null };

export type ComposerAction =
  | { type: 'add'; files: { key: string; name: string; size: number }[] }
  | { type: 'progress'; key: string; loaded: number }
  | { type: 'uploaded'; key: string; attachment: Attachment }
  | { type: 'failed'; key: string; error: string }
  | { type: 'remove'; key: string }
  | { type: 'sent' };

export function uploadStatus(u: PendingUpload): UploadStatus {
  return u.attachment ? 'done' : u.error ? 'failed' : 'uploading';
}

/** How many more files the message can take: failed uploads do not count. */
export function room(state: ComposerState): number {
  return Math.max(0, MAX_ATTACHMENTS - state.uploads.filter((u) => uploadStatus(u) !== 'failed').length);
}

export function composerReducer(state: ComposerState, action: ComposerAction): ComposerState {
  const update = (key: string, f: (u: PendingUpload) => PendingUpload): ComposerState => {
    const i = state.uploads.findIndex((u) => u.key === key);
    if (i < 0) return state; // removed while it was still going
    const uploads = state.uploads.slice();
    uploads[i] = f(uploads[i]);
    return { ...state, uploads };
  };
  switch (action.type) {
    case 'add': {
      if (!action.files.length) return state;
      const take = action.files.slice(0, room(state));
      const left = action.files.length - take.length;
      const notice = left
        ? `A message takes at most ${MAX_ATTACHMENTS} attachments: ${left} ${left === 1 ? 'file was' : 'files were'} not added.`
        : null;
      const added = take.map((f) => ({ ...f, loaded: 0, attachment: null, error: null }));
      return { uploads: [...state.uploads, ...added], notice };
    }
    case 'progress':
      return update(action.key, (u) => (uploadStatus(u) === 'uploading' ? { ...u, loaded: Math.min(action.loaded, u.size) } : u));
    case 'uploaded':
      return update(action.key, (u) => ({ ...u, loaded: u.size, attachment: action.attachment, error: null }));
    case 'failed':
      return update(action.key, (u) => ({ ...u, error: action.error }));
    case 'remove': {
      const uploads = state.uploads.filter((u) => u.key !== action.key);
      return uploads.length === state.uploads.length ? state : { uploads, notice: null };
    }
    case 'sent':
      return emptyComposer;
  }
}

/** Whether an upload is still going (Send waits for it). */
export function uploading(state: ComposerState): boolean {
  return state.uploads.some((u) => uploadStatus(u) === 'uploading');
}

/** The stored attachments, in the order they were added. */
export function readyAttachments(state: ComposerState): Attachment[] {
  return state.uploads.flatMap((u) => (u.attachment ? [u.attachment] : []));
}

/** Whether Send does something now: no upload in flight, and text or an attachment. */
export function canSend(state: ComposerState, body: string): boolean {
  return !uploading(state) && (body.trim() !== '' || readyAttachments(state).length > 0);
}

/** Percent of an upload sent, 0..100. */
export function percent(u: PendingUpload): number {
  if (u.attachment) return 100;
  return u.size > 0 ? Math.floor((100 * u.loaded) / u.size) : 0;
}

const EXTENSIONS: Record<string, string> = {
  'image/png': 'png',
  'image/jpeg': 'jpg',
  'image/gif': 'gif',
  'image/webp': 'webp',
  'text/plain': 'txt',
  'application/pdf': 'pdf',
};

/** A name the server takes (1..255 bytes, no `/`, `\` or control characters) for a
 * file: its own name cleaned and shortened, keeping the extension, or "pasted.png" for
 * a pasted image that has none. */
export function uploadName(name: string, type = ''): string {
  let clean = name.replace(/[/\\\u0000-\u001f\u007f-\u009f]/g, '_').trim();
  if (!clean) clean = `pasted.${EXTENSIONS[type] ?? 'bin'}`;
  const enc = new TextEncoder();
  if (enc.encode(clean).length <= MAX_NAME_BYTES) return clean;
  const dot = clean.lastIndexOf('.');
  const ext = dot > 0 && clean.length - dot <= 16 ? clean.slice(dot) : '';
  const stem = [...clean.slice(0, clean.length - ext.length)];
  while (stem.length && enc.encode(stem.join('') + ext).length > MAX_NAME_BYTES) stem.pop();
  return stem.join('') + ext;
}
