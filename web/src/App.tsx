import { useEffect, useMemo, useState } from 'preact/hooks';
import { auth } from './api';
import { mentionsLabel } from './mentions';
import { navigate, type Route, useRoute } from './router';
import { AuthScreen } from './screens/Auth';
import { Chats } from './screens/Chats';
import { Jobs } from './screens/Jobs';
import { NewConversation } from './screens/NewConversation';
import { Observer } from './screens/Observer';
import { Scripts } from './screens/Scripts';
import { Settings } from './screens/Settings';
import { ChatSession, SessionContext, useChat } from './session';
import type { Session } from './types';
import type { Status } from './ws';

const STORAGE_KEY = 'chorus.session';

function loadSession(): Session | null {
  try {
    const s = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? 'null') as Session | null;
    return s && typeof s.token === 'string' && s.user?.id ? s : null;
  } catch {
    return null;
  }
}

export function App() {
  const route = useRoute();
  const [saved, setSaved] = useState<Session | null>(loadSession);
  const [notice, setNotice] = useState<string | null>(null);

  const signOut = (why: string | null) => {
    localStorage.removeItem(STORAGE_KEY);
    auth.token = null;
    setSaved(null);
    setNotice(why);
    navigate({ name: 'login' }, true);
  };

  const session = useMemo(() => {
    if (!saved) return null;
    auth.token = saved.token;
    auth.onUnauthorized = () => signOut('Your session has expired. Sign in again.');
    return new ChatSession(saved.token, saved.user, auth.onUnauthorized);
  }, [saved?.token]);

  useEffect(() => {
    if (!session) return;
    session.start();
    return () => session.stop();
  }, [session]);

  const signedIn = !!session;
  const onAuthScreen = route.name === 'login' || route.name === 'signup';
  useEffect(() => {
    if (!signedIn && !onAuthScreen) navigate({ name: 'login' }, true);
    if (signedIn && onAuthScreen) navigate({ name: 'chats' }, true);
  }, [signedIn, onAuthScreen]);

  if (!session || !saved) {
    const mode = route.name === 'signup' ? 'register' : 'login';
    return (
      <AuthScreen
        key={mode}
        mode={mode}
        notice={notice}
        onSignedIn={(s) => {
          localStorage.setItem(STORAGE_KEY, JSON.stringify(s));
          setNotice(null);
          setSaved(s);
          navigate({ name: 'chats' }, true);
        }}
      />
    );
  }

  return (
    <SessionContext.Provider value={session}>
      <Shell route={route} username={saved.user.username} onSignOut={() => signOut(null)} />
    </SessionContext.Provider>
  );
}

const NAV: { route: Route; label: string; match: Route['name'][] }[] = [
  { route: { name: 'chats' }, label: 'Chats', match: ['chats', 'conversation', 'new'] },
  { route: { name: 'scripts' }, label: 'Scripts', match: ['scripts', 'script'] },
  { route: { name: 'jobs' }, label: 'Jobs', match: ['jobs', 'job'] },
  { route: { name: 'observer' }, label: 'Observer', match: ['observer'] },
  { route: { name: 'settings' }, label: 'Settings', match: ['settings'] },
];

function Shell({ route, username, onSignOut }: { route: Route; username: string; onSignOut: () => void }) {
  const state = useChat();
  const unread = Object.values(state.conversations).reduce((n, c) => n + (c.unread > 0 ? 1 : 0), 0);
  const mentions = Object.values(state.conversations).reduce((n, c) => n + c.mentions_unread, 0);
  useEffect(() => {
    document.title = unread ? `(${unread}) chorus` : 'chorus';
  }, [unread]);

  return (
    <div class="shell">
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById('main')?.focus(); }}>
        Skip to content
      </a>
      <header class="topbar">
        <span class="brand" aria-hidden="true">chorus</span>
        <nav aria-label="Main">
          <ul>
            {NAV.map((n) => (
              <li key={n.label}>
                <a href={`#/${n.route.name === 'chats' ? '' : n.route.name}`} aria-current={n.match.includes(route.name) ? 'page' : undefined}>
                  {n.label}
                  {n.label === 'Chats' && unread > 0 && <span class="badge" aria-label={`${unread} unread conversations`}>{unread}</span>}
                  {n.label === 'Chats' && mentions > 0 && <span class="badge mention" aria-label={mentionsLabel(mentions)}>@{mentions}</span>}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <ConnectionPill status={state.status} retryInMs={state.retryInMs} />
        <div class="account">
          <span class="me" title="Signed in as">{username}</span>
          <button type="button" class="link" onClick={onSignOut}>Sign out</button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        <Screen route={route} />
      </main>
    </div>
  );
}

function Screen({ route }: { route: Route }) {
  switch (route.name) {
    case 'chats':
      return <Chats conversationId={null} />;
    case 'conversation':
      return <Chats conversationId={route.id} messageId={route.message_id ?? null} />;
    case 'new':
      return <NewConversation />;
    case 'settings':
      return <Settings />;
    case 'scripts':
      return <Scripts scriptId={null} />;
    case 'script':
      return <Scripts scriptId={route.id} />;
    case 'jobs':
      return <Jobs jobId={null} />;
    case 'job':
      return <Jobs jobId={route.id} />;
    case 'observer':
      return <Observer />;
    default:
      return (
        <section class="page">
          <h1>Not found</h1>
          <p>
            There is no screen here. <a href="#/">Back to chats</a>.
          </p>
        </section>
      );
  }
}

const STATUS_TEXT: Record<Status, string> = {
  connecting: 'Connecting…',
  online: 'Online',
  reconnecting: 'Reconnecting…',
  stopped: 'Offline',
};

/** Always the same size, so a change of state never moves the layout. */
function ConnectionPill({ status, retryInMs }: { status: Status; retryInMs?: number }) {
  const [, tick] = useState(0);
  const [since] = useState(() => ({ at: Date.now(), retry: retryInMs }));
  if (since.retry !== retryInMs) {
    since.at = Date.now();
    since.retry = retryInMs;
  }
  useEffect(() => {
    if (status !== 'reconnecting') return;
    const t = setInterval(() => tick((n) => n + 1), 1000);
    return () => clearInterval(t);
  }, [status]);
  let text = STATUS_TEXT[status];
  if (status === 'reconnecting' && retryInMs !== undefined) {
    const left = Math.ceil((since.at + retryInMs - Date.now()) / 1000);
    if (left > 0) text = `Reconnecting in ${left} s…`;
  }
  return (
    <span class={`pill pill-${status}`} role="status" aria-live="polite" data-status={status}>
      <span class="dot" aria-hidden="true" />
      {text}
    </span>
  );
}
