import { describe, expect, it } from 'vitest';
import { ApiError, seg } from '../src/api';
import {
  authErrorMessage,
  changeErrorMessage,
  compileErrorPosition,
  conversationTitle,
  formatMicros,
  formatMillis,
  formatTime,
  offsetOf,
  sendErrorMessage,
  typingText,
  uuid,
  validateCredentials,
  waitText,
} from '../src/format';
import { parseRoute, href, isId } from '../src/router';

const ID = '0191d3a2-7b1c-7c3e-9a4b-5f6e7d8c9b0a';

const utc = { locale: 'en-GB', timeZone: 'UTC' };

describe('formatTime', () => {
  const now = new Date('2025-03-14T18:00:00Z');
  it('shows the time today, the day this year, the year before', () => {
    expect(formatTime('2025-03-14T09:26:53.589Z', now, utc)).toBe('09:26');
    expect(formatTime('2025-01-02T09:26:53Z', now, utc)).toBe('2 Jan');
    expect(formatTime('2024-12-31T09:26:53Z', now, utc)).toBe('31 Dec 2024');
    expect(formatTime('not a time', now, utc)).toBe('');
  });
});

describe('durations', () => {
  it('formats microseconds and milliseconds for people', () => {
    expect(formatMicros(87)).toBe('87 µs');
    expect(formatMicros(1234)).toBe('1.23 ms');
    expect(formatMicros(2_500_000)).toBe('2.50 s');
    expect(formatMillis(850)).toBe('850 ms');
    expect(formatMillis(1234)).toBe('1.23 s');
    expect(formatMillis(61_500)).toBe('1 min 1.5 s');
  });
});

describe('names', () => {
  const users = { a: { id: 'a', username: 'ada' }, b: { id: 'b', username: 'bob' } };
  const base = { id: 'c', members: ['a', 'b'], owner_id: null, created_at: '', last_seq: 0, unread: 0 };
  it('a direct conversation is named after the other member, a group by its title', () => {
    expect(conversationTitle({ ...base, kind: 'direct', title: null }, 'a', users)).toBe('bob');
    expect(conversationTitle({ ...base, kind: 'group', title: 'Team' }, 'a', users)).toBe('Team');
    expect(conversationTitle({ ...base, kind: 'direct', title: null, members: ['a', '0191f0a2-7c4d'] }, 'a', users)).toBe(
      'user 0191f0a2',
    );
  });
  it('says who is typing', () => {
    expect(typingText([])).toBe('');
    expect(typingText(['bob'])).toBe('bob is typing…');
    expect(typingText(['bob', 'cy'])).toBe('bob and cy are typing…');
    expect(typingText(['a', 'b', 'c'])).toBe('3 people are typing…');
  });
});

describe('auth errors', () => {
  it('checks the protocol rules before asking', () => {
    expect(validateCredentials('register', 'ab', 'long enough')).toMatch(/3 to 32/);
    expect(validateCredentials('register', 'ada lovelace', 'long enough')).toMatch(/3 to 32/);
    expect(validateCredentials('register', 'ada', 'short')).toMatch(/at least 8/);
    expect(validateCredentials('register', 'ada', 'correct horse')).toBeNull();
    expect(validateCredentials('login', 'ab', 'x')).toBeNull();
    expect(validateCredentials('login', '', 'x')).toMatch(/username/);
  });
  it('maps error codes to sentences', () => {
    expect(authErrorMessage('login', new ApiError(401, 'unauthorized', 'invalid username or password'))).toBe(
      'Wrong username or password.',
    );
    expect(authErrorMessage('register', new ApiError(409, 'conflict', 'taken'))).toMatch(/taken/);
    expect(authErrorMessage('register', new ApiError(0, 'network', 'x'))).toMatch(/Cannot reach/);
    expect(authErrorMessage('register', new ApiError(400, 'bad_request', 'username must be …'))).toMatch(/username must be/);
    expect(sendErrorMessage('too_large', '')).toMatch(/16 KiB/);
    expect(authErrorMessage('register', new ApiError(403, 'registration_closed', 'x'))).toMatch(/does not take new accounts/);
    expect(
      authErrorMessage('register', new ApiError(429, 'rate_limited', 'x', { retry_after_ms: 1_200_000 })),
    ).toBe('Too many new accounts from your network. Try again in 20 minutes.');
    expect(authErrorMessage('login', new ApiError(429, 'rate_limited', 'x'))).toBe(
      'Too many failed sign-ins. Wait a while and try again.',
    );
  });
  it('says why an edit, delete or reaction was refused', () => {
    expect(changeErrorMessage('edit', 'forbidden', 'only the sender may edit')).toBe('Not edited: you may not change this message.');
    expect(changeErrorMessage('delete', 'not_found', 'x')).toBe('Not deleted: the message no longer exists.');
    expect(changeErrorMessage('edit', 'too_large', 'x')).toBe('Not edited: messages are at most 16 KiB.');
    expect(changeErrorMessage('reaction', 'bad_request', 'emoji must not contain white space')).toBe(
      'Reaction not saved (bad_request): emoji must not contain white space',
    );
  });
  it('says waits in whole seconds, minutes or hours, rounded up', () => {
    expect(waitText(1)).toBe('1 second');
    expect(waitText(4_000)).toBe('4 seconds');
    expect(waitText(60_000)).toBe('60 seconds');
    expect(waitText(60_001)).toBe('2 minutes');
    expect(waitText(299_500)).toBe('5 minutes');
    expect(waitText(3_600_001)).toBe('2 hours');
  });
});

describe('compile errors', () => {
  it('finds line and column wherever the server puts them', () => {
    expect(compileErrorPosition({ code: 'bad_request', message: 'x', line: 3, column: 7 })).toEqual({ line: 3, column: 7 });
    expect(compileErrorPosition({ location: { line: 2 } })).toEqual({ line: 2 });
    expect(compileErrorPosition({ details: { line: '4', col: 1 } })).toEqual({ line: 4, column: 1 });
    expect(compileErrorPosition({ message: 'no position' })).toBeNull();
  });
  it('turns line and column into an offset', () => {
    const text = 'ab\ncdef\ng';
    expect(offsetOf(text, 1, 1)).toBe(0);
    expect(offsetOf(text, 2, 3)).toBe(5);
    expect(offsetOf(text, 2, 99)).toBe(7);
    expect(offsetOf(text, 9, 1)).toBe(text.length);
  });
});

describe('uuid', () => {
  it('makes v4 UUIDs', () => {
    const a = uuid();
    expect(a).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(uuid()).not.toBe(a);
  });
});

describe('routes', () => {
  it('parses and prints hash routes', () => {
    expect(parseRoute('')).toEqual({ name: 'chats' });
    expect(parseRoute('#/')).toEqual({ name: 'chats' });
    expect(parseRoute(`#/c/${ID}`)).toEqual({ name: 'conversation', id: ID });
    expect(parseRoute('#/scripts/new')).toEqual({ name: 'script', id: 'new' });
    expect(parseRoute(`#/jobs/${ID}/`)).toEqual({ name: 'job', id: ID });
    expect(parseRoute('#/settings')).toEqual({ name: 'settings' });
    expect(parseRoute('#/nope/x/y')).toEqual({ name: 'not-found', path: '/nope/x/y' });
    // A conversation opened at a message (a search result).
    expect(parseRoute(`#/c/${ID}/${ID}`)).toEqual({ name: 'conversation', id: ID, message_id: ID });
    expect(parseRoute(`#/c/${ID}/abc`).name).toBe('not-found');
    expect(parseRoute(`#/jobs/${ID}/${ID}`).name).toBe('not-found');
    for (const r of [{ name: 'conversation', id: ID }, { name: 'conversation', id: ID, message_id: ID }, { name: 'observer' }, { name: 'chats' }] as const) {
      expect(parseRoute(href(r))).toEqual(r);
    }
  });

  it('takes only ids from the address bar, so none can reach another endpoint', () => {
    // "Delete" on this job page would have removed a member of a group.
    const traversal = `#/jobs/..%2Fconversations%2F${ID}%2Fmembers%2F${ID}`;
    expect(parseRoute(traversal)).toEqual({ name: 'not-found', path: traversal.slice(1) });
    for (const hash of ['#/c/abc', '#/jobs/j1', '#/scripts/..', '#/c/%E0%A4%A', `#/c/${ID}%3Fx`]) {
      expect(parseRoute(hash).name, hash).toBe('not-found');
    }
    expect(isId(ID)).toBe(true);
    expect(isId(`${ID}/..`)).toBe(false);
  });

  it('encodes ids as one path segment', () => {
    expect(seg('../conversations/x')).toBe('..%2Fconversations%2Fx');
    expect(seg(ID)).toBe(ID);
  });
});
