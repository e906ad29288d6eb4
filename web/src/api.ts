// The REST half of the protocol (docs/protocol.md §3): one `request` that speaks the
// error format, and one small function per endpoint the app uses.

import type {
  Attachment,
  AuthOptions,
  AutoReply,
  Conversation,
  Job,
  JobResult,
  Message,
  ObserverConfig,
  ObserverStats,
  Script,
  ScriptInput,
  ScriptTestResult,
  Session,
  User,
} from './types';

/** An answer that was not 2xx, or no answer at all (`status` 0, `code` "network"). */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  /** Every field of the error object, for extensions (`retry_after_ms`, `line`, …). */
  readonly details: Record<string, unknown>;

  constructor(status: number, code: string, message: string, details: Record<string, unknown> = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** Set by the app: the current token, and what to do when the server says 401. */
export const auth: { token: string | null; onUnauthorized: () => void } = {
  token: null,
  onUnauthorized: () => {},
};

const PREFIX = '/api/v1';

/** A list endpoint's items whether it answers `[…]` or `{key: […]}`. */
export function listOf<T>(body: unknown, key: string): T[] {
  if (Array.isArray(body)) return body as T[];
  const v = body && typeof body === 'object' ? (body as Record<string, unknown>)[key] : undefined;
  return Array.isArray(v) ? (v as T[]) : [];
}

/** A request to `/api/v1{path}`; resolves to the parsed body (undefined for 204). */
export async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  if (auth.token) headers.authorization = `Bearer ${auth.token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(PREFIX + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, 'network', 'cannot reach the server');
  }
  if (res.status === 204) return undefined as T;
  const parsed = parseJson(await res.text());
  if (!res.ok) throw failure(res.status, res.statusText, parsed, path);
  return parsed as T;
}

function parseJson(text: string): unknown {
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** The ApiError for a non-2xx answer whose body parsed to `parsed` (the protocol's
 * error object, or anything else); tells the app when the session is gone. */
function failure(status: number, statusText: string, parsed: unknown, path: string): ApiError {
  const err = (parsed as { error?: Record<string, unknown> } | undefined)?.error;
  const code = typeof err?.code === 'string' ? err.code : `http_${status}`;
  const message = typeof err?.message === 'string' ? err.message : statusText || `HTTP ${status}`;
  // Login itself answers 401 for a wrong password: that is not an expired session.
  if (status === 401 && auth.token && !path.startsWith('/auth/')) auth.onUnauthorized();
  return new ApiError(status, code, message, err && typeof err === 'object' ? err : {});
}

/** A GET of `/api/v1{path}` whose answer is bytes (an attachment, a thumbnail): `<img>`
 * and links cannot carry the token, so the app fetches them and shows a blob URL. */
export async function requestBlob(path: string): Promise<Blob> {
  const headers: Record<string, string> = {};
  if (auth.token) headers.authorization = `Bearer ${auth.token}`;
  let res: Response;
  try {
    res = await fetch(PREFIX + path, { headers });
  } catch {
    throw new ApiError(0, 'network', 'cannot reach the server');
  }
  if (!res.ok) throw failure(res.status, res.statusText, parseJson(await res.text()), path);
  return res.blob();
}

/** The part of XMLHttpRequest an upload uses (the tests hand in a fake). fetch cannot
 * report upload progress; XMLHttpRequest's `upload.onprogress` can. */
export interface XhrLike {
  open(method: string, url: string): void;
  setRequestHeader(name: string, value: string): void;
  send(body: Blob): void;
  abort(): void;
  readonly status: number;
  readonly statusText: string;
  readonly responseText: string;
  readonly upload: { onprogress: ((ev: { loaded: number; total: number; lengthComputable: boolean }) => void) | null };
  onload: (() => void) | null;
  onerror: (() => void) | null;
  onabort: (() => void) | null;
}

export interface Upload {
  /** The stored attachment; rejects with an ApiError (`code` "aborted" after `abort`). */
  promise: Promise<Attachment>;
  abort(): void;
}

/** `POST /attachments?name=…` with the file's bytes as the body and its type as the
 * Content-Type; `onProgress` hears bytes sent so far out of the total. */
export function uploadAttachment(
  file: Blob,
  name: string,
  onProgress?: (loaded: number, total: number) => void,
  createXhr: () => XhrLike = () => new XMLHttpRequest() as unknown as XhrLike,
): Upload {
  const path = `/attachments${q({ name })}`;
  const xhr = createXhr();
  const promise = new Promise<Attachment>((resolve, reject) => {
    xhr.open('POST', PREFIX + path);
    if (auth.token) xhr.setRequestHeader('authorization', `Bearer ${auth.token}`);
    xhr.setRequestHeader('content-type', file.type || 'application/octet-stream');
    xhr.upload.onprogress = (ev) => onProgress?.(ev.loaded, ev.lengthComputable ? ev.total : file.size);
    xhr.onload = () => {
      const parsed = parseJson(xhr.responseText);
      if (xhr.status >= 200 && xhr.status < 300 && parsed && typeof parsed === 'object') {
        onProgress?.(file.size, file.size);
        resolve(parsed as Attachment);
      } else {
        reject(failure(xhr.status, xhr.statusText, parsed, path));
      }
    };
    xhr.onerror = () => reject(new ApiError(0, 'network', 'cannot reach the server'));
    xhr.onabort = () => reject(new ApiError(0, 'aborted', 'the upload was cancelled'));
    xhr.send(file);
  });
  return { promise, abort: () => xhr.abort() };
}

const q = (params: Record<string, string | number | undefined>) => {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined) s.set(k, String(v));
  const text = s.toString();
  return text ? `?${text}` : '';
};

/** One path segment: an id can never reach another endpoint (`../`, `?`, `#`). */
export const seg = (id: string): string => encodeURIComponent(id);

export const api = {
  register: (username: string, password: string, invite?: string) =>
    request<Session>('POST', '/auth/register', invite === undefined ? { username, password } : { username, password, invite }),
  authOptions: () => request<AuthOptions>('GET', '/auth/options'),
  login: (username: string, password: string) =>
    request<Session>('POST', '/auth/login', { username, password }),
  me: () => request<User>('GET', '/me'),
  searchUsers: (query: string, limit = 20) =>
    request<{ users: User[] }>('GET', `/users${q({ query, limit })}`).then((r) => r.users),

  conversations: () =>
    request<{ conversations: Conversation[] }>('GET', '/conversations').then((r) => r.conversations),
  conversation: (id: string) => request<Conversation>('GET', `/conversations/${seg(id)}`),
  createDirect: (userId: string) =>
    request<Conversation>('POST', '/conversations', { kind: 'direct', members: [userId] }),
  createGroup: (title: string, members: string[]) =>
    request<Conversation>('POST', '/conversations', { kind: 'group', title, members }),
  /** A page of history; with `reply_to`, only the messages answering that one (oldest
   * first). */
  messages: (id: string, page: { before_seq?: number; after_seq?: number; limit?: number; reply_to?: string }) =>
    request<{ messages: Message[] }>('GET', `/conversations/${seg(id)}/messages${q(page)}`).then((r) => r.messages),
  postMessage: (id: string, client_msg_id: string, body: string, attachments: string[] = [], reply_to: string | null = null) => {
    const msg: { client_msg_id: string; body: string; attachments?: string[]; reply_to?: string } = { client_msg_id, body };
    if (attachments.length) msg.attachments = attachments;
    if (reply_to) msg.reply_to = reply_to;
    return request<{ message_id: string }>('POST', `/conversations/${seg(id)}/messages`, msg);
  },
  /** Text messages of the caller's conversations (or of one) whose current body has
   * every word of `text` (word prefixes, any case or accents), newest first. */
  search: (text: string, conversation_id?: string, limit?: number) =>
    request<{ results: Message[] }>('GET', `/search${q({ q: text, conversation_id, limit })}`).then((r) => r.results),

  /** An attachment's bytes (`GET /attachments/{id}`). */
  attachment: (id: string) => requestBlob(`/attachments/${seg(id)}`),
  /** A small preview of an image attachment; 404 for anything else. */
  thumbnail: (id: string) => requestBlob(`/attachments/${seg(id)}/thumbnail`),

  autoReply: () => request<AutoReply>('GET', '/settings/auto-reply'),
  setAutoReply: (v: AutoReply) => request<AutoReply>('PUT', '/settings/auto-reply', v),

  scripts: () => request<unknown>('GET', '/scripts').then((r) => listOf<Script>(r, 'scripts')),
  script: (id: string) => request<Script>('GET', `/scripts/${seg(id)}`),
  createScript: (s: ScriptInput) => request<Script>('POST', '/scripts', s),
  updateScript: (id: string, s: ScriptInput) => request<Script>('PUT', `/scripts/${seg(id)}`, s),
  deleteScript: (id: string) => request<void>('DELETE', `/scripts/${seg(id)}`),
  testScript: (id: string, hook: string, message: { body: string }) =>
    request<ScriptTestResult>('POST', `/scripts/${seg(id)}/test`, { hook, message }),

  jobs: () => request<unknown>('GET', '/jobs').then((r) => listOf<Job>(r, 'jobs')),
  job: (id: string) => request<Job>('GET', `/jobs/${seg(id)}`),
  jobResult: (id: string) => request<JobResult>('GET', `/jobs/${seg(id)}/result`),
  submitJob: (script: string, input: unknown) =>
    request<{ job_id: string }>('POST', '/jobs', { source: { script }, input }),
  deleteJob: (id: string) => request<void>('DELETE', `/jobs/${seg(id)}`),

  observer: () => request<ObserverStats>('GET', '/observer'),
  setObserverConfig: (c: ObserverConfig) => request<unknown>('PUT', '/observer/config', c),
};
