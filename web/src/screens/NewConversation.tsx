import { useEffect, useState } from 'preact/hooks';
import { api, ApiError } from '../api';
import { navigate } from '../router';
import { useChat, useSession } from '../session';
import type { User } from '../types';

type Kind = 'direct' | 'group';

/** Users whose name starts with the query, as the user types (debounced). */
function useUserSearch(query: string): { users: User[]; error: string | null; searching: boolean } {
  const session = useSession();
  const [users, setUsers] = useState<User[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [searching, setSearching] = useState(false);
  useEffect(() => {
    let live = true;
    setSearching(true);
    const t = setTimeout(() => {
      api.searchUsers(query.trim(), 20).then(
        (found) => {
          if (!live) return;
          session.rememberUsers(found);
          setUsers(found);
          setError(null);
          setSearching(false);
        },
        (e: Error) => {
          if (!live) return;
          setError(e.message);
          setSearching(false);
        },
      );
    }, 200);
    return () => {
      live = false;
      clearTimeout(t);
    };
  }, [query]);
  return { users, error, searching };
}

export function NewConversation() {
  const session = useSession();
  const state = useChat();
  const [kind, setKind] = useState<Kind>('direct');
  const [query, setQuery] = useState('');
  const [title, setTitle] = useState('');
  const [picked, setPicked] = useState<User[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const { users, error: searchError, searching } = useUserSearch(query);
  const others = users.filter((u) => u.id !== state.me?.id);

  const open = async (make: () => Promise<{ id: string }>) => {
    setBusy(true);
    setError(null);
    try {
      const c = await make();
      session.fetchConversation(c.id);
      navigate({ name: 'conversation', id: c.id });
    } catch (e) {
      setError(e instanceof ApiError ? e.message : 'Could not create the conversation.');
      setBusy(false);
    }
  };

  const toggle = (u: User) =>
    setPicked((p) => (p.some((x) => x.id === u.id) ? p.filter((x) => x.id !== u.id) : [...p, u]));

  const createGroup = (e: Event) => {
    e.preventDefault();
    if (!title.trim()) {
      setError('Give the group a title.');
      return;
    }
    void open(() => api.createGroup(title.trim(), picked.map((u) => u.id)));
  };

  return (
    <section class="page narrow" aria-labelledby="new-heading">
      <h1 id="new-heading">New conversation</h1>
      <div class="tabs" role="radiogroup" aria-label="Kind of conversation">
        {(['direct', 'group'] as Kind[]).map((k) => (
          <label key={k} class={`tab ${kind === k ? 'active' : ''}`}>
            <input type="radio" name="kind" value={k} checked={kind === k} onChange={() => setKind(k)} />
            {k === 'direct' ? 'Direct message' : 'Group'}
          </label>
        ))}
      </div>

      <form onSubmit={kind === 'group' ? createGroup : (e) => e.preventDefault()}>
        {kind === 'group' && (
          <label>
            Group title
            <input value={title} maxLength={200} required onInput={(e) => setTitle(e.currentTarget.value)} />
          </label>
        )}
        <label>
          {kind === 'direct' ? 'Find a person' : 'Add people'}
          <input
            type="search"
            value={query}
            placeholder="Start of a username"
            autoCapitalize="none"
            spellcheck={false}
            aria-controls="user-results"
            onInput={(e) => setQuery(e.currentTarget.value)}
          />
        </label>
        {kind === 'group' && picked.length > 0 && (
          <ul class="chips" aria-label="Members to add">
            {picked.map((u) => (
              <li key={u.id}>
                <button type="button" class="chip" onClick={() => toggle(u)} aria-label={`Remove ${u.username}`}>
                  {u.username} ×
                </button>
              </li>
            ))}
          </ul>
        )}
        <p class="small muted" role="status">
          {searchError ? `Search failed: ${searchError}` : searching ? 'Searching…' : others.length ? '' : 'Nobody found.'}
        </p>
        <ul id="user-results" class="user-results" aria-label="People">
          {others.map((u) => {
            const on = picked.some((x) => x.id === u.id);
            return (
              <li key={u.id}>
                {kind === 'direct' ? (
                  <button type="button" class="user-row" disabled={busy} onClick={() => open(() => api.createDirect(u.id))}>
                    <span class={`presence ${state.online[u.id] ? 'on' : 'off'}`} aria-hidden="true" />
                    {u.username}
                    <span class="muted small">Message</span>
                  </button>
                ) : (
                  <label class="user-row">
                    <input type="checkbox" checked={on} onChange={() => toggle(u)} />
                    {u.username}
                  </label>
                )}
              </li>
            );
          })}
        </ul>
        <p class="error" role="alert">
          {error ?? ''}
        </p>
        {kind === 'group' && (
          <button type="submit" class="primary" disabled={busy}>
            Create group{picked.length ? ` with ${picked.length}` : ''}
          </button>
        )}
      </form>
    </section>
  );
}
