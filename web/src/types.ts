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
  /** The viewer's read marker: the seq they have read up to. Servers before it leave it
   * out: read it as `last_seq - unread` (a guess, wrong when edits, deletes or reactions
   * follow the marker). */
  read_seq?: number;
  /** Text messages after the viewer's read marker, deleted ones left out (edits,
   * deletes and reactions are not counted). */
  unread: number;
  /** Text messages after the viewer's read marker whose current body (after edits)
   * mentions the viewer, deleted ones left out. Servers before mentions leave it out:
   * read it as `c.mentions_unread ?? 0`. */
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
  /** What the entry is (protocol v1.1 message changes): a message (`text`), or an
   * `edit`, `delete` or `reaction` of the text message `target_id`, which is never
   * shown on its own but changes how that one shows (changes.ts). Servers before
   * changes leave it out: read it as `m.kind ?? 'text'`. */
  kind?: 'text' | 'edit' | 'delete' | 'reaction';
  /** The message_id of the text message an edit, delete or reaction changes. */
  target_id?: string | null;
  /** A reaction's emoji. */
  emoji?: string | null;
  /** A reaction that takes the sender's reaction with `emoji` back. */
  remove?: boolean;
  /** A text message that was deleted (its body is then "" and it has no attachments). */
  deleted?: boolean;
  /** When a text message was last edited, or null. */
  edited_at?: string | null;
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
  /** `unchanged`: an edit, delete or reaction that changed nothing (a repeated
   * reaction…): no `message` follows. */
  | { type: 'accepted'; client_msg_id: string; message_id: string; unchanged?: boolean }
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
  | { type: 'ping'; nonce?: unknown }
  | ChangeFrame;

/** An edit, delete or reaction of the text message `message_id` (§5.2, v1.1): answered
 * like a `send`, and stored as an entry of the conversation that comes as a `message`.
 * `remove`: take the sender's reaction with `emoji` back. */
export type ChangeFrame =
  | { type: 'edit'; client_msg_id: string; conversation_id: string; message_id: string; body: string }
  | { type: 'delete'; client_msg_id: string; conversation_id: string; message_id: string }
  | { type: 'react'; client_msg_id: string; conversation_id: string; message_id: string; emoji: string; remove?: boolean };
