import { afterEach, describe, expect, it, vi } from 'vitest';
import { api, auth } from '../src/api';
import { MAX_QUERY_BYTES, queryProblem, RESULTS, resultsText } from '../src/search';

describe('search', () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    auth.token = null;
  });

  it('takes a query of at most 256 bytes once trimmed', () => {
    expect(queryProblem('hello world')).toBeNull();
    expect(queryProblem(` ${'a'.repeat(MAX_QUERY_BYTES)} `)).toBeNull();
    expect(queryProblem('a'.repeat(MAX_QUERY_BYTES + 1))).toBe('Search for at most 256 bytes of text.');
    // Bytes, not characters: 86 three-byte characters are 258 bytes.
    expect(queryProblem('€'.repeat(86))).not.toBeNull();
  });

  it('says how many messages were found', () => {
    expect(resultsText(0)).toBe('No messages found');
    expect(resultsText(1)).toBe('1 message');
    expect(resultsText(12)).toBe('12 messages');
    expect(resultsText(RESULTS)).toBe(`${RESULTS} most recent messages`);
  });

  it('asks GET /search with the query, the conversation and the limit, and reads the results', async () => {
    const asked: string[] = [];
    vi.stubGlobal('fetch', async (url: string) => {
      asked.push(String(url));
      return new Response(JSON.stringify({ results: [{ message_id: 'm-1', body: 'café au lait' }] }), { status: 200 });
    });
    auth.token = 'tok';
    expect(await api.search('café & co')).toEqual([{ message_id: 'm-1', body: 'café au lait' }]);
    await api.search('x', 'c-1', 5);
    expect(asked).toEqual(['/api/v1/search?q=caf%C3%A9+%26+co', '/api/v1/search?q=x&conversation_id=c-1&limit=5']);
  });
});
