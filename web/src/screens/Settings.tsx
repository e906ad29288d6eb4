import { useEffect, useState } from 'preact/hooks';
import { api, ApiError } from '../api';
import { Page } from '../components';
import { useChat } from '../session';

type Load = 'loading' | 'ready' | 'failed';

export function Settings() {
  const state = useChat();
  const [load, setLoad] = useState<Load>('loading');
  const [enabled, setEnabled] = useState(false);
  const [text, setText] = useState('');
  const [saved, setSaved] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    api.autoReply().then(
      (v) => {
        setEnabled(!!v.enabled);
        setText(v.text ?? '');
        setLoad('ready');
      },
      (e) => {
        setLoad('failed');
        setError(e instanceof Error ? e.message : String(e));
      },
    );
  }, []);

  const save = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setSaved(null);
    setError(null);
    try {
      const v = await api.setAutoReply({ enabled, text });
      setEnabled(!!v.enabled);
      setText(v.text ?? '');
      setSaved('Saved.');
    } catch (err) {
      setError(err instanceof ApiError ? `Not saved: ${err.message}` : 'Not saved.');
    } finally {
      setBusy(false);
    }
  };

  return (
    <Page title="Settings">
      <div class="card">
        <h2>Account</h2>
        <p>
          Signed in as <strong>{state.me?.username}</strong>.
        </p>
      </div>
      <form class="card" onSubmit={save} aria-labelledby="auto-reply-heading">
        <h2 id="auto-reply-heading">Auto-reply</h2>
        <p class="muted small">
          When on, people who message you get this reply automatically (at most once per conversation in a while).
        </p>
        {load === 'loading' && <p role="status">Loading…</p>}
        {load === 'failed' && <p class="error" role="alert">Cannot load the setting: {error}</p>}
        <label class="check">
          <input
            type="checkbox"
            name="auto-reply-enabled"
            checked={enabled}
            disabled={load !== 'ready'}
            onChange={(e) => setEnabled(e.currentTarget.checked)}
          />
          Reply automatically
        </label>
        <label>
          Reply text
          <textarea
            name="auto-reply-text"
            rows={3}
            value={text}
            disabled={load !== 'ready'}
            placeholder="I am away until Monday."
            onInput={(e) => setText(e.currentTarget.value)}
          />
        </label>
        <div class="row">
          <button type="submit" class="primary" disabled={busy || load !== 'ready'}>
            Save
          </button>
          <span role="status" class={error && load === 'ready' ? 'error' : 'ok'}>
            {load === 'ready' ? (error ?? saved ?? '') : ''}
          </span>
        </div>
      </form>
    </Page>
  );
}
