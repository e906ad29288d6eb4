// Search (protocol v1.1): `GET /search?q=…` finds the text messages of the caller's
// conversations whose current body (after edits) has every word of the query, as word
// prefixes, whatever the case or accents; newest first. The list shows the results in
// place of the conversations, each opening its conversation at the message (as a
// reply's quote does, loading older pages until it is held). Pure functions, so the
// tests need no browser.

/** The longest query the server takes, in UTF-8 bytes. */
export const MAX_QUERY_BYTES = 256;
/** Results asked for (the server's limit is 100). */
export const RESULTS = 50;
/** How long typing pauses before the search goes out. */
export const SEARCH_DELAY_MS = 250;

/** Why a query cannot be sent, or null: it is searched for once trimmed, and an empty
 * one is no search (the list shows the conversations). */
export function queryProblem(query: string): string | null {
  if (new TextEncoder().encode(query.trim()).length > MAX_QUERY_BYTES) return `Search for at most ${MAX_QUERY_BYTES} bytes of text.`;
  return null;
}

/** What the list says of the results: "No messages found", "1 message", "12 messages"
 * ("50 most recent messages" when there may be more). */
export function resultsText(n: number, max = RESULTS): string {
  if (n === 0) return 'No messages found';
  if (n >= max) return `${n} most recent messages`;
  return `${n} ${n === 1 ? 'message' : 'messages'}`;
}
