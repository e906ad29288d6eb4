import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, api } from '../api';
import { type AuthMode, authErrorMessage, validateCredentials } from '../format';
import type { Registration, Session } from '../types';

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
  const [invite, setInvite] = useState('');
  const [busy, setBusy] = useState(false);
  // How this server takes sign-ups; 'open' until it says otherwise (a server without
  // GET /auth/options takes them openly).
  const [registration, setRegistration] = useState<Registration>('open');
  const userRef = useRef<HTMLInputElement>(null);
  const inviteRef = useRef<HTMLInputElement>(null);
  const register = mode === 'register';
  const byInvite = register && registration === 'invite';
  const closed = register && registration === 'closed';

  useEffect(() => {
    if (!register) return;
    let live = true;
    api
      .authOptions()
      .then((o) => live && setRegistration(o.registration))
      .catch(() => {});
    return () => {
      live = false;
    };
  }, [register]);

  const submit = async (e: Event) => {
    e.preventDefault();
    const code = invite.trim();
    const invalid =
      validateCredentials(mode, username, password) ?? (byInvite && !code ? 'Enter your invite code.' : null);
    if (invalid) {
      setError(invalid);
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const s = register
        ? await api.register(username, password, byInvite ? code : undefined)
        : await api.login(username, password);
      onSignedIn(s);
    } catch (err) {
      setBusy(false);
      // The server changed its mind since the form was shown: follow it.
      if (err instanceof ApiError && err.code === 'invalid_invite' && !byInvite) {
        setRegistration('invite');
        setError('Sign-up on this server is by invite. Enter your invite code.');
        return;
      }
      if (err instanceof ApiError && err.code === 'registration_closed') setRegistration('closed');
      setError(authErrorMessage(mode, err));
      (err instanceof ApiError && err.code === 'invalid_invite' ? inviteRef : userRef).current?.focus();
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
        {byInvite && (
          <>
            <label>
              Invite code
              <input
                ref={inviteRef}
                name="invite"
                autoComplete="off"
                autoCapitalize="none"
                spellcheck={false}
                required
                value={invite}
                onInput={(e) => setInvite(e.currentTarget.value)}
              />
            </label>
            <p class="hint">New accounts here need an invite. Ask an administrator for a code.</p>
          </>
        )}
        {closed && !error && (
          <p class="notice" role="status">
            This server does not take new accounts. Ask its administrator.
          </p>
        )}
        <p id="auth-error" class="error" role="alert">
          {error ?? ''}
        </p>
        <button type="submit" class="primary" disabled={busy || closed}>
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
