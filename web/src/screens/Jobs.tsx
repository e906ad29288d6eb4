import { useEffect, useState } from 'preact/hooks';
import { api, ApiError } from '../api';
import { Page } from '../components';
import { formatFull, formatMillis, formatTime, pretty } from '../format';
import { navigate } from '../router';
import { useSession } from '../session';
import type { Job, JobResult } from '../types';

export const JOB_TEMPLATE = `// A job: main(input) runs in the sandbox; what it returns is the result.
export function main(input) {
  return { greeting: "hello " + input.name };
}
`;

const FINAL = new Set(['succeeded', 'failed', 'timed_out']);
/** While a job is not finished, ask again this often (the `job` frame usually comes
 * first; polling covers a session that missed it). */
const POLL_MS = 1_500;

export function isFinal(status: string): boolean {
  return FINAL.has(status);
}

export function Jobs({ jobId }: { jobId: string | null }) {
  return jobId ? <JobDetail key={jobId} id={jobId} /> : <JobList />;
}

function StatusTag({ status }: { status: string }) {
  return (
    <span class={`tag status-${status}`} data-status={status}>
      {status.replace('_', ' ')}
    </span>
  );
}

function JobList() {
  const session = useSession();
  const [jobs, setJobs] = useState<Job[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [script, setScript] = useState(JOB_TEMPLATE);
  const [input, setInput] = useState('{"name": "ada"}');
  const [submitError, setSubmitError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const refresh = () =>
    api.jobs().then(
      (list) => {
        setJobs(list);
        setError(null);
      },
      (e) => setError((e as Error).message),
    );

  useEffect(() => {
    void refresh();
  }, []);
  // Live status: `job` frames, and polling while something is unfinished.
  useEffect(
    () =>
      session.onJob((job) =>
        setJobs((list) => {
          if (!list) return list;
          const i = list.findIndex((j) => j.id === job.id);
          return i < 0 ? [job, ...list] : list.map((j) => (j.id === job.id ? { ...j, ...job } : j));
        }),
      ),
    [session],
  );
  const unfinished = jobs?.some((j) => !isFinal(j.status)) ?? false;
  useEffect(() => {
    if (!unfinished) return;
    const t = setInterval(refresh, POLL_MS);
    return () => clearInterval(t);
  }, [unfinished]);

  const submit = async (e: Event) => {
    e.preventDefault();
    setSubmitError(null);
    let parsed: unknown;
    try {
      parsed = input.trim() ? JSON.parse(input) : null;
    } catch (err) {
      setSubmitError(`The input is not JSON: ${(err as Error).message}`);
      return;
    }
    setBusy(true);
    try {
      const { job_id } = await api.submitJob(script, parsed);
      setJobs((list) => [{ id: job_id, status: 'queued', submitted_at: new Date().toISOString() }, ...(list ?? [])]);
      void refresh();
    } catch (err) {
      setSubmitError(err instanceof ApiError ? `Not submitted: ${err.message}` : 'Not submitted.');
    } finally {
      setBusy(false);
    }
  };

  const sorted = [...(jobs ?? [])].sort((a, b) => ((a.submitted_at ?? '') < (b.submitted_at ?? '') ? 1 : -1));
  return (
    <Page title="Jobs">
      <form class="card" onSubmit={submit} aria-labelledby="submit-heading">
        <h2 id="submit-heading">Submit a job</h2>
        <label>
          Script (JavaScript)
          <textarea class="code-input" rows={7} spellcheck={false} wrap="off" value={script} onInput={(e) => setScript(e.currentTarget.value)} />
        </label>
        <label>
          Input (JSON)
          <textarea class="code-input" rows={2} spellcheck={false} value={input} onInput={(e) => setInput(e.currentTarget.value)} />
        </label>
        <div class="row">
          <button type="submit" class="primary" disabled={busy}>
            Submit
          </button>
          <span class="error" role="alert">
            {submitError ?? ''}
          </span>
        </div>
      </form>
      <h2>Your jobs</h2>
      {error && (
        <p class="error" role="alert">
          Cannot load jobs: {error}
        </p>
      )}
      {jobs === null ? (
        <p role="status">Loading…</p>
      ) : sorted.length === 0 ? (
        <p class="muted">No jobs yet.</p>
      ) : (
        <ul class="rows" aria-label="Jobs">
          {sorted.map((j) => (
            <li key={j.id}>
              <a class="row-link" href={`#/jobs/${j.id}`} data-job={j.id}>
                <code>{j.id.slice(0, 8)}</code>
                <span class="muted small">{j.submitted_at ? formatTime(j.submitted_at) : ''}</span>
                <StatusTag status={j.status} />
              </a>
            </li>
          ))}
        </ul>
      )}
    </Page>
  );
}

function JobDetail({ id }: { id: string }) {
  const session = useSession();
  const [job, setJob] = useState<Job | null>(null);
  const [result, setResult] = useState<JobResult | null>(null);
  const [error, setError] = useState<string | null>(null);

  const refresh = async () => {
    try {
      const j = await api.job(id);
      setJob(j);
      if (isFinal(j.status)) setResult(await api.jobResult(id));
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) return; // not finished yet
      // Anything else, a job that does not exist or is not the caller's (404) included.
      setError((e as Error).message);
    }
  };

  useEffect(() => {
    void refresh();
  }, [id]);
  useEffect(() => session.onJob((j) => j.id === id && void refresh()), [session, id]);
  const done = result !== null || (job !== null && isFinal(job.status));
  useEffect(() => {
    if (done || error) return;
    const t = setInterval(refresh, POLL_MS);
    return () => clearInterval(t);
  }, [done, error]);

  const remove = async () => {
    if (!confirm('Delete this job and its result?')) return;
    try {
      await api.deleteJob(id);
      navigate({ name: 'jobs' });
    } catch (e) {
      setError((e as Error).message);
    }
  };

  return (
    <Page title={`Job ${id.slice(0, 8)}`} actions={<a href="#/jobs">All jobs</a>}>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {job && (
        <div class="card">
          <dl class="facts">
            <dt>Status</dt>
            <dd role="status">
              <StatusTag status={job.status} />
            </dd>
            <dt>Submitted</dt>
            <dd>{job.submitted_at ? formatFull(job.submitted_at) : '–'}</dd>
            <dt>Started</dt>
            <dd>{job.started_at ? formatFull(job.started_at) : '–'}</dd>
            <dt>Finished</dt>
            <dd>{job.finished_at ? formatFull(job.finished_at) : '–'}</dd>
          </dl>
          <button type="button" class="danger" onClick={remove}>
            Delete
          </button>
        </div>
      )}
      {result ? (
        <div class="card" data-testid="job-result">
          <h2>Result</h2>
          <dl class="facts">
            <dt>Outcome</dt>
            <dd>
              <StatusTag status={result.status} />
            </dd>
            <dt>Elapsed</dt>
            <dd data-testid="job-elapsed">{formatMillis(result.elapsed_ms)}</dd>
            <dt>Queued for</dt>
            <dd>{formatMillis(result.queued_ms)}</dd>
          </dl>
          {result.error && <pre class="error">{result.error}</pre>}
          <h3>Output</h3>
          <pre>{pretty(result.output)}</pre>
        </div>
      ) : (
        job && <p class="muted" role="status">Waiting for the result…</p>
      )}
    </Page>
  );
}
