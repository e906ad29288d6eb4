// Stand-ins, in the browser, for the endpoints of features the server does not have
// yet (auto-reply, scripts, jobs, observer), answering as /work/shared/protocol.md
// and docs/protocol.md describe them. They let the suite drive those screens now;
// each is installed only while the real server answers 404 for it, so once a feature
// lands the real tests cover it and its stand-in is no longer used.

const json = (route, status, body) =>
  route.fulfill({ status, contentType: 'application/json', body: body === undefined ? '' : JSON.stringify(body) });
const notFound = (route, what) => json(route, 404, { error: { code: 'not_found', message: `${what} does not exist` } });

/** Braces and parentheses that do not balance: a compile error at the end. */
function compile(source) {
  let depth = 0;
  for (const ch of source) {
    if (ch === '{' || ch === '(') depth++;
    if (ch === '}' || ch === ')') depth--;
  }
  if (depth === 0) return null;
  const lines = source.split('\n');
  return { line: lines.length, column: lines[lines.length - 1].length + 1, message: "SyntaxError: expected '}'" };
}

const handlers = {
  'settings/auto-reply': (state) => async (route) => {
    const req = route.request();
    if (req.method() === 'PUT') state.autoReply = { ...state.autoReply, ...req.postDataJSON() };
    return json(route, 200, state.autoReply);
  },

  scripts: (state) => async (route) => {
    const req = route.request();
    const path = new URL(req.url()).pathname.replace('/api/v1/scripts', '');
    const [, id, action] = path.split('/');
    if (!id) {
      if (req.method() === 'GET') return json(route, 200, { scripts: [...state.scripts.values()] });
      const body = req.postDataJSON();
      const err = compile(body.source);
      if (err) return json(route, 400, { error: { code: 'bad_request', ...err } });
      const script = { id: crypto.randomUUID(), ...body };
      state.scripts.set(script.id, script);
      return json(route, 201, script);
    }
    const script = state.scripts.get(id);
    if (!script) return notFound(route, `script ${id}`);
    if (action === 'test') {
      const { message } = req.postDataJSON();
      return json(route, 200, {
        actions: [{ reply: message.body === 'ping' ? 'pong' : message.body }],
        logs: [`got ${message.body}`],
        elapsed_us: 412,
      });
    }
    if (req.method() === 'PUT') {
      const body = req.postDataJSON();
      const err = compile(body.source);
      if (err) return json(route, 400, { error: { code: 'bad_request', ...err } });
      Object.assign(script, body);
    }
    if (req.method() === 'DELETE') {
      state.scripts.delete(id);
      return json(route, 204);
    }
    return json(route, 200, script);
  },

  jobs: (state) => async (route) => {
    const req = route.request();
    const path = new URL(req.url()).pathname.replace('/api/v1/jobs', '');
    const [, id, action] = path.split('/');
    if (!id) {
      if (req.method() === 'GET') return json(route, 200, { jobs: [...state.jobs.values()].map((j) => j.job) });
      const job = { id: crypto.randomUUID(), status: 'queued', submitted_at: new Date().toISOString(), started_at: null, finished_at: null };
      state.jobs.set(job.id, { job, input: req.postDataJSON().input, polls: 0 });
      return json(route, 202, { job_id: job.id });
    }
    const entry = state.jobs.get(id);
    if (!entry) return notFound(route, `job ${id}`);
    // Queued, then running, then done, one step per look.
    const { job } = entry;
    entry.polls += 1;
    if (entry.polls === 1) job.status = 'running';
    if (entry.polls === 2) job.started_at = new Date().toISOString();
    if (entry.polls >= 3 && job.status === 'running') {
      job.status = 'succeeded';
      job.finished_at = new Date().toISOString();
    }
    if (action === 'result') {
      if (job.status !== 'succeeded') return json(route, 409, { error: { code: 'conflict', message: 'job not finished' } });
      return json(route, 200, { status: 'succeeded', output: { greeting: `hello ${entry.input?.name}` }, error: null, elapsed_ms: 37, queued_ms: 4 });
    }
    return json(route, 200, job);
  },

  observer: (state) => async (route) => {
    if (route.request().method() === 'PUT') return json(route, 403, { error: { code: 'forbidden', message: 'administrators only' } });
    state.tick += 1;
    const t = state.tick;
    const arrival = 40 + 25 * Math.sin(t / 3);
    const workers = arrival > 55 ? 4 : arrival > 35 ? 3 : 2;
    return json(route, 200, {
      arrival_rate: arrival,
      service_rate: Math.min(arrival, workers * 16),
      mean_response_ms: 60 + 30 * Math.sin(t / 3 + 1),
      p95_response_ms: 140 + 60 * Math.sin(t / 3 + 1),
      queue_depth: Math.max(0, Math.round(arrival - workers * 14)),
      workers,
      last_decision: { at: new Date(0).toISOString(), workers, reason: 'p95 above target' },
    });
  },
};

/** Install stand-ins on `context` for every feature `server` answers 404 for; returns
 * the names of the features stood in for. */
export async function standIns(context, server, token) {
  const state = { autoReply: { enabled: false, text: '' }, scripts: new Map(), jobs: new Map(), tick: 0 };
  const probes = {
    'settings/auto-reply': '/settings/auto-reply',
    scripts: '/scripts',
    jobs: '/jobs',
    observer: '/observer',
  };
  const installed = [];
  for (const [name, probe] of Object.entries(probes)) {
    const r = await server.api('GET', probe, token);
    if (r.status !== 404) continue;
    await context.route(new RegExp(`/api/v1/${name}(/.*)?(\\?.*)?$`), handlers[name](state));
    installed.push(name);
  }
  return installed;
}
