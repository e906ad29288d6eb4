// Formatting for people: times, names, error messages, durations.

import { ApiError } from './api';
import type { Attachment, Conversation, User } from './types';

/** A random UUID v4. `crypto.randomUUID` exists only in secure contexts (https or
 * localhost); a chorus served over plain http on a LAN address is neither. */
export function uuid(): string {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export interface FormatOptions {
  locale?: string;
  timeZone?: string;
}

function sameDay(a: Date, b: Date, timeZone?: string): boolean {
  const f = new Intl.DateTimeFormat('en-CA', { timeZone, year: 'numeric', month: '2-digit', day: '2-digit' });
  return f.format(a) === f.format(b);
}

/** "09:26" today, "14 Mar" this year, "14 Mar 2024" before. */
export function formatTime(iso: string, now: Date = new Date(), o: FormatOptions = {}): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  if (sameDay(d, now, o.timeZone)) {
    return new Intl.DateTimeFormat(o.locale, { hour: '2-digit', minute: '2-digit', timeZone: o.timeZone }).format(d);
  }
  const thisYear =
    new Intl.DateTimeFormat('en', { year: 'numeric', timeZone: o.timeZone }).format(d) ===
    new Intl.DateTimeFormat('en', { year: 'numeric', timeZone: o.timeZone }).format(now);
  return new Intl.DateTimeFormat(o.locale, {
    day: 'numeric',
    month: 'short',
    year: thisYear ? undefined : 'numeric',
    timeZone: o.timeZone,
  }).format(d);
}

/** Full date and time, for a tooltip. */
export function formatFull(iso: string, o: FormatOptions = {}): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return new Intl.DateTimeFormat(o.locale, { dateStyle: 'medium', timeStyle: 'medium', timeZone: o.timeZone }).format(d);
}

/** 1234 µs → "1.23 ms"; 87 µs → "87 µs"; 2_500_000 µs → "2.50 s". */
export function formatMicros(us: number): string {
  if (!Number.isFinite(us)) return '–';
  if (us < 1000) return `${Math.round(us)} µs`;
  if (us < 1_000_000) return `${(us / 1000).toFixed(2)} ms`;
  return `${(us / 1_000_000).toFixed(2)} s`;
}

/** 850 → "850 ms"; 61_500 → "1 min 1.5 s". */
export function formatMillis(ms: number): string {
  if (!Number.isFinite(ms)) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  const min = Math.floor(ms / 60_000);
  return `${min} min ${((ms % 60_000) / 1000).toFixed(1)} s`;
}

/** A user's name, or a short id while the name is not known (the API has no
 * lookup by id: names come from searches and the user list). */
export function userName(users: Record<string, User>, id: string): string {
  return users[id]?.username ?? `user ${id.slice(0, 8)}`;
}

/** The name of a conversation as the viewer sees it. */
export function conversationTitle(c: Conversation, meId: string | undefined, users: Record<string, User>): string {
  if (c.kind === 'group') return c.title ?? 'Group';
  const other = c.members.find((m) => m !== meId) ?? meId ?? '';
  return userName(users, other);
}

/** "ada is typing…", "ada and bob are typing…", "3 people are typing…". */
export function typingText(names: string[]): string {
  if (names.length === 0) return '';
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names.length} people are typing…`;
}

export type AuthMode = 'login' | 'register';

const USERNAME = /^[A-Za-z0-9_.-]{3,32}$/;

/** Checks the form before asking the server (the same rules, §1 Limits). */
export function validateCredentials(mode: AuthMode, username: string, password: string): string | null {
  if (!username) return 'Enter a username.';
  if (!password) return 'Enter a password.';
  if (mode === 'register') {
    if (!USERNAME.test(username)) return 'Usernames are 3 to 32 letters, digits, “_”, “.” or “-”.';
    const bytes = new TextEncoder().encode(password).length;
    if (bytes < 8) return 'Passwords are at least 8 characters.';
    if (bytes > 1024) return 'Passwords are at most 1024 bytes.';
  }
  return null;
}

/** A wait for people: 4_000 → "4 seconds", 300_000 → "5 minutes", rounded up. */
export function waitText(ms: number): string {
  const unit = (n: number, name: string) => `${n} ${name}${n === 1 ? '' : 's'}`;
  if (ms <= 60_000) return unit(Math.max(1, Math.ceil(ms / 1000)), 'second');
  if (ms <= 3_600_000) return unit(Math.ceil(ms / 60_000), 'minute');
  return unit(Math.ceil(ms / 3_600_000), 'hour');
}

/** What to tell a person when signing in or up failed, from the error code. */
export function authErrorMessage(mode: AuthMode, e: unknown): string {
  if (!(e instanceof ApiError)) return 'Something went wrong. Try again.';
  switch (e.code) {
    case 'unauthorized':
      return 'Wrong username or password.';
    case 'conflict':
      return 'That username is taken. Pick another one.';
    case 'bad_request':
      return mode === 'register'
        ? `The server refused these details: ${e.message}.`
        : 'Enter your username and password.';
    case 'rate_limited': {
      const ms = e.details.retry_after_ms;
      const wait = typeof ms === 'number' ? ` Try again in ${waitText(ms)}.` : ' Wait a while and try again.';
      return mode === 'register' ? `Too many new accounts from your network.${wait}` : `Too many failed sign-ins.${wait}`;
    }
    case 'registration_closed':
      return 'This server does not take new accounts. Ask its administrator.';
    case 'invalid_invite':
      return 'That invite code is unknown, used or expired. Ask for a new one.';
    case 'unavailable':
      return 'The server is busy or restarting. Try again in a moment.';
    case 'network':
      return 'Cannot reach the chorus server. Check your connection.';
    default:
      return `The server answered with an error (${e.code}). Try again.`;
  }
}

/** What to tell a person about a refused send, from the error code. `reply`: the send
 * answered a message, which `not_found` may also be about. */
export function sendErrorMessage(code: string, message: string, reply = false): string {
  switch (code) {
    case 'too_large':
      return 'Too long: messages are at most 16 KiB.';
    case 'forbidden':
      return 'You are no longer a member of this conversation.';
    case 'not_found':
      return reply ? 'Not sent: the message it replies to, or this conversation, no longer exists.' : 'This conversation no longer exists.';
    case 'blocked':
      return `Blocked by your outgoing script: ${message}`;
    case 'bad_request':
      return `Not sent: ${message}`;
    default:
      return `Not sent (${code}): ${message}`;
  }
}

/** What to tell a person about a refused edit, delete or reaction, from the code. */
export function changeErrorMessage(kind: 'edit' | 'delete' | 'reaction', code: string, message: string): string {
  const what = { edit: 'Not edited', delete: 'Not deleted', reaction: 'Reaction not saved' }[kind];
  switch (code) {
    case 'too_large':
      return `${what}: messages are at most 16 KiB.`;
    case 'not_found':
      return `${what}: the message no longer exists.`;
    case 'forbidden':
      return `${what}: you may not change this message.`;
    default:
      return `${what} (${code}): ${message}`;
  }
}

/** A file size for people, in the binary units the rest of the app and the protocol
 * use: 0 → "0 B", 1536 → "1.5 KiB", 26_214_400 → "25 MiB". One decimal below 10. */
export function formatSize(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return '–';
  if (bytes < 1024) return `${Math.round(bytes)} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  // Round first, so 1023.96 KiB does not show as "1024 KiB" and 9.96 as "10.0".
  let text = v < 10 ? v.toFixed(1) : String(Math.round(v));
  if (Number(text) >= 1024 && i < units.length - 1) {
    i++;
    text = '1';
  }
  return `${text.replace(/\.0$/, '')} ${units[i]}`;
}

/** What to tell a person about an upload that failed, with the server's message
 * (for `too_large` it says which limit: the size of one file or the user's quota). */
export function uploadErrorMessage(e: unknown): string {
  if (!(e instanceof ApiError)) return 'Upload failed. Try again.';
  switch (e.code) {
    case 'too_large':
      return `Too large: ${e.message}`;
    case 'bad_request':
      return `Refused: ${e.message}`;
    case 'network':
      return 'Upload failed: cannot reach the chorus server.';
    case 'aborted':
      return 'Upload cancelled.';
    case 'rate_limited': {
      const ms = e.details.retry_after_ms;
      return typeof ms === 'number' ? `Too many uploads. Try again in ${waitText(ms)}.` : 'Too many uploads. Wait a while.';
    }
    default:
      return `Upload failed (${e.code}): ${e.message}`;
  }
}

/** A message's attachments in one line, for the conversation list: "Attachment:
 * cat.png", "3 attachments"; "" when none. */
export function attachmentSummary(list: Attachment[] | undefined): string {
  if (!list?.length) return '';
  return list.length === 1 ? `Attachment: ${list[0].name}` : `${list.length} attachments`;
}

/** Pretty JSON for actions, logs and job output. */
export function pretty(v: unknown): string {
  if (typeof v === 'string') return v;
  try {
    return JSON.stringify(v, null, 2) ?? String(v);
  } catch {
    return String(v);
  }
}

/** Where a compile error is, from the error object of a 400 (`line` and `column`,
 * 1-based, at the top level or under `location`/`position`/`details`). */
export function compileErrorPosition(err: Record<string, unknown>): { line: number; column?: number } | null {
  const candidates = [err, err.location, err.position, err.details];
  for (const c of candidates) {
    if (!c || typeof c !== 'object') continue;
    const o = c as Record<string, unknown>;
    const line = Number(o.line);
    if (Number.isInteger(line) && line >= 1) {
      const column = Number(o.column ?? o.col);
      return Number.isInteger(column) && column >= 1 ? { line, column } : { line };
    }
  }
  return null;
}

/** The offset in `text` of a 1-based line and column (clamped to the text). */
export function offsetOf(text: string, line: number, column = 1): number {
  let offset = 0;
  for (let l = 1; l < line; l++) {
    const nl = text.indexOf('\n', offset);
    if (nl < 0) return text.length;
    offset = nl + 1;
  }
  const end = text.indexOf('\n', offset);
  const lineEnd = end < 0 ? text.length : end;
  return Math.min(offset + column - 1, lineEnd);
}

