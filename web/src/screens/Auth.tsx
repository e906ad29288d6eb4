import { useRef, useState } from 'preact/hooks';
import { api } from '../api';
import { type AuthMode, authErrorMessage, validateCredentials } from '../format';
import type { Session } from '../types';

export function AuthScreen({
  mode,
  notice,
  onSignedIn,
}: {
  mode: AuthMode;
  notice: string | null;
  onSignedIn: (s: Session) => void;
}) {
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const userRef = useRef<HTMLInputElement>(null);
  const register = mode === 'register';

  const submit = async (e: Event) => {
    e.preventDefault();
    const invalid = validateCredentials(mode, username, password);
    if (invalid) {
      setError(invalid);
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const s = register ? await api.register(username, password) : await api.login(username, password);
      onSignedIn(s);
    } catch (err) {
      setError(authErrorMessage(mode, err));
      setBusy(false);
      userRef.current?.focus();
    }
  };

  return (
    <main class="auth" id="main">
      <form class="card auth-card" onSubmit={submit} noValidate aria-describedby={error ? 'auth-error' : undefined}>
        <h1>
          <span class="brand">chorus</span>
          <span class="sub">{register ? 'Create an account' : 'Sign in'}</span>
        </h1>
        {notice && !error && (
          <p class="notice" role="status">
            {notice}
          </p>
        )}
        <label>
          Username
          <input
            ref={userRef}
            name="username"
            autoComplete="username"
            autoCapitalize="none"
            spellcheck={false}
            required
            autoFocus
            value={username}
            onInput={(e) => setUsername(e.currentTarget.value)}
          />
        </label>
        {register && <p class="hint">3 to 32 letters, digits, “_”, “.” or “-”. Case matters.</p>}
        <label>
          Password
          <input
            name="password"
            type="password"
            autoComplete={register ? 'new-password' : 'current-password'}
            required
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </label>
        {register && <p class="hint">At least 8 characters.</p>}
        <p id="auth-error" class="error" role="alert">
          {error ?? ''}
        </p>
        <button type="submit" class="primary" disabled={busy}>
          {busy ? (register ? 'Creating…' : 'Signing in…') : register ? 'Create account' : 'Sign in'}
        </button>
        <p class="switch">
          {register ? (
            <>
              Have an account? <a href="#/login">Sign in</a>
            </>
          ) : (
            <>
              New here? <a href="#/signup">Create an account</a>
            </>
          )}
        </p>
      </form>
    </main>
  );
}
