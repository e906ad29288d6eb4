// The REST half of the protocol (docs/protocol.md §3): one `request` that speaks the
// error format, and one small function per endpoint the app uses.

import type {
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
  const text = await res.text();
  let parsed: unknown = undefined;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
  }
  if (!res.ok) {
    const err = (parsed as { error?: Record<string, unknown> } | undefined)?.error;
    const code = typeof err?.code === 'string' ? err.code : `http_${res.status}`;
    const message = typeof err?.message === 'string' ? err.message : res.statusText || `HTTP ${res.status}`;
    const e = new ApiError(res.status, code, message, err ?? {});
    // Login itself answers 401 for a wrong password: that is not an expired session.
    if (res.status === 401 && auth.token && !path.startsWith('/auth/')) auth.onUnauthorized();
    throw e;
  }
  return parsed as T;
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
  messages: (id: string, page: { before_seq?: number; after_seq?: number; limit?: number }) =>
    request<{ messages: Message[] }>('GET', `/conversations/${seg(id)}/messages${q(page)}`).then((r) => r.messages),
  postMessage: (id: string, client_msg_id: string, body: string) =>
    request<{ message_id: string }>('POST', `/conversations/${seg(id)}/messages`, { client_msg_id, body }),

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
