import { render } from 'preact';
import { act } from 'preact/test-utils';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { auth } from '../src/api';
import { AuthScreen } from '../src/screens/Auth';
import { Jobs } from '../src/screens/Jobs';
import { Chart, pushSample, type Sample } from '../src/screens/Observer';
import { Scripts } from '../src/screens/Scripts';
import { type ChatSession, SessionContext } from '../src/session';

/** Answer fetches from a table of `METHOD path` → [status, body]. */
function mockFetch(routes: Record<string, [number, unknown]>) {
  const calls: { method: string; path: string; body?: unknown }[] = [];
  vi.stubGlobal('fetch', async (url: string, init: RequestInit = {}) => {
    const method = init.method ?? 'GET';
    const path = String(url).replace(/^\/api\/v1/, '').split('?')[0];
    calls.push({ method, path, body: init.body ? JSON.parse(String(init.body)) : undefined });
    const [status, body] = routes[`${method} ${path}`] ?? [404, { error: { code: 'not_found', message: 'no such endpoint' } }];
    return new Response(body === undefined ? null : JSON.stringify(body), { status });
  });
  return calls;
}

const flush = async () => {
  for (let i = 0; i < 5; i++) await act(() => new Promise((r) => setTimeout(r, 0)));
};

let root: HTMLElement;
beforeEach(() => {
  root = document.createElement('div');
  document.body.append(root);
  auth.token = null;
});
afterEach(() => {
  render(null, root);
  root.remove();
  vi.unstubAllGlobals();
});

function fill(label: string, value: string) {
  const input = [...root.querySelectorAll('label')].find((l) => l.textContent?.startsWith(label))?.querySelector('input');
  if (!input) throw new Error(`no field ${label}`);
  input.value = value;
  input.dispatchEvent(new Event('input', { bubbles: true }));
}

async function submit() {
  await act(() => {
    root.querySelector('form')!.dispatchEvent(new Event('submit', { bubbles: true, cancelable: true }));
  });
  await flush();
}

describe('AuthScreen', () => {
  it('shows a wrong password as such, from the 401', async () => {
    const calls = mockFetch({ 'POST /auth/login': [401, { error: { code: 'unauthorized', message: 'invalid username or password' } }] });
    const signedIn = vi.fn();
    await act(() => render(<AuthScreen mode="login" notice={null} onSignedIn={signedIn} />, root));
    await act(() => {
      fill('Username', 'ada');
      fill('Password', 'nope nope');
    });
    await submit();
    expect(calls).toEqual([{ method: 'POST', path: '/auth/login', body: { username: 'ada', password: 'nope nope' } }]);
    expect(root.querySelector('[role=alert]')?.textContent).toBe('Wrong username or password.');
    expect(signedIn).not.toHaveBeenCalled();
  });

  it('says a taken username is taken, from the 409', async () => {
    mockFetch({ 'POST /auth/register': [409, { error: { code: 'conflict', message: 'username taken' } }] });
    await act(() => render(<AuthScreen mode="register" notice={null} onSignedIn={() => {}} />, root));
    await act(() => {
      fill('Username', 'ada');
      fill('Password', 'correct horse');
    });
    await submit();
    expect(root.querySelector('[role=alert]')?.textContent).toMatch(/username is taken/);
  });

  it('refuses a short password without asking the server', async () => {
    const calls = mockFetch({});
    await act(() => render(<AuthScreen mode="register" notice={null} onSignedIn={() => {}} />, root));
    await act(() => {
      fill('Username', 'ada');
      fill('Password', 'short');
    });
    await submit();
    // The sign-up form reads how the server takes sign-ups; nothing was sent.
    expect(calls.filter((c) => c.method !== 'GET')).toEqual([]);
    expect(root.querySelector('[role=alert]')?.textContent).toMatch(/at least 8/);
  });

  it('says how long to wait when sign-ins are throttled', async () => {
    mockFetch({
      'POST /auth/login': [
        429,
        { error: { code: 'rate_limited', message: 'too many failed sign-ins; retry in 299500 ms', retry_after_ms: 299500 } },
      ],
    });
    await act(() => render(<AuthScreen mode="login" notice={null} onSignedIn={() => {}} />, root));
    await act(() => {
      fill('Username', 'ada');
      fill('Password', 'correct horse');
    });
    await submit();
    expect(root.querySelector('[role=alert]')?.textContent).toBe('Too many failed sign-ins. Try again in 5 minutes.');
    expect(root.querySelector<HTMLButtonElement>('button[type=submit]')?.disabled).toBe(false);
  });

  it('asks for an invite code when the server takes sign-ups by invite, and sends it', async () => {
    const session = { token: 't', user: { id: 'u', username: 'ada' } };
    const calls = mockFetch({
      'GET /auth/options': [200, { registration: 'invite' }],
      'POST /auth/register': [201, session],
    });
    const signedIn = vi.fn();
    await act(() => render(<AuthScreen mode="register" notice={null} onSignedIn={signedIn} />, root));
    await flush();
    await act(() => {
      fill('Username', 'ada');
      fill('Password', 'correct horse');
    });
    await submit();
    expect(root.querySelector('[role=alert]')?.textContent).toBe('Enter your invite code.');
    await act(() => fill('Invite code', ' 0123abcd '));
    await submit();
    expect(calls.at(-1)).toEqual({
      method: 'POST',
      path: '/auth/register',
      body: { username: 'ada', password: 'correct horse', invite: '0123abcd' },
    });
    expect(signedIn).toHaveBeenCalledWith(session);
  });

  it('says a used invite code is used', async () => {
    mockFetch({
      'GET /auth/options': [200, { registration: 'invite' }],
      'POST /auth/register': [403, { error: { code: 'invalid_invite', message: 'the invite code is unknown, used or expired' } }],
    });
    await act(() => render(<AuthScreen mode="register" notice={null} onSignedIn={() => {}} />, root));
    await flush();
    await act(() => {
      fill('Username', 'ada');
      fill('Password', 'correct horse');
      fill('Invite code', 'used-code');
    });
    await submit();
    expect(root.querySelector('[role=alert]')?.textContent).toMatch(/unknown, used or expired/);
  });

  it('shows the invite field when the server asks for a code it had not announced', async () => {
    mockFetch({
      'POST /auth/register': [403, { error: { code: 'invalid_invite', message: 'an invite code is required' } }],
    });
    await act(() => render(<AuthScreen mode="register" notice={null} onSignedIn={() => {}} />, root));
    await flush();
    expect(root.querySelector('input[name=invite]')).toBeNull();
    await act(() => {
      fill('Username', 'ada');
      fill('Password', 'correct horse');
    });
    await submit();
    expect(root.querySelector('input[name=invite]')).not.toBeNull();
    expect(root.querySelector('[role=alert]')?.textContent).toMatch(/by invite/);
  });

  it('says a closed server takes no new accounts, and offers no button to try', async () => {
    mockFetch({ 'GET /auth/options': [200, { registration: 'closed' }] });
    await act(() => render(<AuthScreen mode="register" notice={null} onSignedIn={() => {}} />, root));
    await flush();
    expect(root.querySelector('[role=status]')?.textContent).toMatch(/does not take new accounts/);
    expect(root.querySelector<HTMLButtonElement>('button[type=submit]')?.disabled).toBe(true);
  });

  it('hands the session over on success', async () => {
    const session = { token: 't', user: { id: 'u', username: 'ada' } };
    mockFetch({ 'POST /auth/register': [201, session] });
    const signedIn = vi.fn();
    await act(() => render(<AuthScreen mode="register" notice={null} onSignedIn={signedIn} />, root));
    await act(() => {
      fill('Username', 'ada');
      fill('Password', 'correct horse');
    });
    await submit();
    expect(signedIn).toHaveBeenCalledWith(session);
  });
});

describe('Observer chart', () => {
  const sample = (n: number): Sample => ({
    at: n,
    arrival_rate: n,
    service_rate: n / 2,
    mean_response_ms: 10,
    p95_response_ms: 20,
    queue_depth: 0,
    workers: 2,
    last_decision: null,
  });

  it('keeps the last samples only', () => {
    let list: Sample[] = [];
    for (let i = 0; i < 10; i++) list = pushSample(list, sample(i), 4);
    expect(list.map((s) => s.at)).toEqual([6, 7, 8, 9]);
  });

  it('draws one line per series and describes the latest values', async () => {
    const samples = [sample(1), sample(2), sample(4)];
    await act(() =>
      render(
        <Chart
          title="Rates"
          unit="/s"
          samples={samples}
          series={[
            { label: 'arrivals', key: 'arrival_rate', cls: 's1' },
            { label: 'served', key: 'service_rate', cls: 's2' },
          ]}
        />,
        root,
      ),
    );
    expect(root.querySelectorAll('polyline')).toHaveLength(2);
    expect(root.querySelector('svg')?.getAttribute('aria-label')).toBe('Rates: arrivals 4 /s, served 2 /s');
    const points = root.querySelector('polyline')!.getAttribute('points')!.split(' ');
    expect(points).toHaveLength(3);
    expect(points.at(-1)).toBe('300.0,2.0');
  });
});

describe('an id that does not exist', () => {
  const id = '0191f0a5-0000-7000-8000-000000000001';

  it("shows the server's message for a job that is not there", async () => {
    const calls = mockFetch({
      [`GET /jobs/${id}`]: [404, { error: { code: 'not_found', message: `job ${id} does not exist` } }],
    });
    // The screen only subscribes to `job` frames.
    const session = { onJob: () => () => {} } as unknown as ChatSession;
    await act(() =>
      render(
        <SessionContext.Provider value={session}>
          <Jobs jobId={id} />
        </SessionContext.Provider>,
        root,
      ),
    );
    await flush();
    expect(root.querySelector('[role=alert]')?.textContent).toBe(`job ${id} does not exist`);
    expect(calls).toEqual([{ method: 'GET', path: `/jobs/${id}`, body: undefined }]);
  });

  it("shows the server's message for a script that is not there", async () => {
    const calls = mockFetch({
      [`GET /scripts/${id}`]: [404, { error: { code: 'not_found', message: `script ${id} does not exist` } }],
    });
    await act(() => render(<Scripts scriptId={id} />, root));
    await flush();
    expect(root.querySelector('.row [role=status]')?.textContent).toBe(`Cannot load this script: script ${id} does not exist`);
    expect(calls).toEqual([{ method: 'GET', path: `/scripts/${id}`, body: undefined }]);
  });
});
