// Shapes of docs/protocol.md §4, and of the automation, jobs and observer endpoints of
// §3. Fields the app does not use are left out; unknown fields are ignored, as the
// protocol asks.

export interface User {
  id: string;
  username: string;
}

export interface Session {
  token: string;
  user: User;
}

/** Who may sign up: anyone, no one, or whoever has an administrator's invite code. */
export type Registration = 'open' | 'closed' | 'invite';

/** `GET /auth/options`. */
export interface AuthOptions {
  registration: Registration;
}

export interface Conversation {
  id: string;
  kind: 'direct' | 'group';
  title: string | null;
  members: string[];
  owner_id: string | null;
  created_at: string;
  last_seq: number;
  unread: number;
  /** Messages after the viewer's read marker that mention the viewer. Servers before
   * mentions leave it out: read it as `c.mentions_unread ?? 0`. */
  mentions_unread?: number;
}

/** A file uploaded with `POST /attachments`, as messages carry it. */
export interface Attachment {
  attachment_id: string;
  name: string;
  content_type: string;
  size: number;
  sha256: string;
}

export interface Message {
  message_id: string;
  client_msg_id: string;
  conversation_id: string;
  seq: number;
  sender_id: string;
  body: string;
  sent_at: string;
  origin: 'user' | 'script' | 'auto_reply' | string;
  /** Always sent by servers that have attachments (`[]` when none); older ones leave it
   * out, so read it as `m.attachments ?? []`. */
  attachments?: Attachment[];
  /** The message_id of the earlier message of the same conversation this one answers,
   * or null. Servers before replies leave it out: read it as `m.reply_to ?? null`. */
  reply_to?: string | null;
  /** The ids of the members named as `@username` in the body, in order, each once
   * (computed by the server). Servers before mentions leave it out: read it as
   * `m.mentions ?? []`. */
  mentions?: string[];
}

export interface AutoReply {
  enabled: boolean;
  text: string;
}

export type Hook = 'incoming' | 'outgoing';

export interface ScriptInput {
  name: string;
  source: string;
  hooks: Hook[];
  enabled: boolean;
}

export interface Script extends ScriptInput {
  id: string;
}

export interface ScriptTestResult {
  actions: unknown[];
  logs: unknown[];
  elapsed_us: number;
  /** Set when the script threw, hit a limit or returned something that is not an action. */
  error?: { code: string; message: string } | null;
}

export type JobStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'timed_out';

export interface Job {
  id: string;
  status: JobStatus | string;
  submitted_at?: string;
  started_at?: string | null;
  finished_at?: string | null;
}

export interface JobResult {
  status: JobStatus | string;
  output: unknown;
  error: string | null;
  elapsed_ms: number;
  queued_ms: number;
}

export interface ObserverStats {
  arrival_rate: number;
  service_rate: number;
  mean_response_ms: number;
  p95_response_ms: number;
  queue_depth: number;
  workers: number;
  last_decision: unknown;
}

export interface ObserverConfig {
  min_workers: number;
  max_workers: number;
  target_response_ms: number;
}

/** Frames the server sends (§5.3) that the app handles; it ignores the others. */
export type ServerFrame =
  | { type: 'ready'; session_id: string; user: User }
  | { type: 'accepted'; client_msg_id: string; message_id: string }
  | { type: 'message'; message: Message }
  | { type: 'synced'; last_seq: Record<string, number>; online?: string[] }
  | { type: 'presence'; user_id: string; online: boolean }
  | { type: 'typing'; conversation_id: string; user_id: string }
  | { type: 'read'; conversation_id: string; user_id: string; seq: number }
  | { type: 'pong'; nonce: unknown }
  | { type: 'error'; code: string; message: string; client_msg_id?: string; retry_after_ms?: number }
  | { type: 'job'; job: Job };

/** Frames the client sends (§5.2). */
export type ClientFrame =
  | { type: 'send'; client_msg_id: string; conversation_id: string; body: string; attachments?: string[]; reply_to?: string }
  | { type: 'sync'; since: Record<string, number> }
  | { type: 'typing'; conversation_id: string }
  | { type: 'read'; conversation_id: string; seq: number }
  | { type: 'ping'; nonce?: unknown };
