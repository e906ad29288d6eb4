import { useEffect, useState } from 'preact/hooks';
import { api, ApiError } from '../api';
import { Page } from '../components';
import { pretty } from '../format';
import type { ObserverStats } from '../types';

const POLL_MS = 1_000;
/** Two minutes of samples at one a second. */
const KEEP = 120;

export interface Sample extends ObserverStats {
  at: number;
}

/** Append a sample, keeping the last `keep`. */
export function pushSample(list: Sample[], s: Sample, keep = KEEP): Sample[] {
  const next = list.length >= keep ? list.slice(list.length - keep + 1) : list.slice();
  next.push(s);
  return next;
}

export function Observer() {
  const [samples, setSamples] = useState<Sample[]>([]);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let live = true;
    const poll = () =>
      api.observer().then(
        (s) => {
          if (!live) return;
          setSamples((list) => pushSample(list, { ...s, at: Date.now() }));
          setError(null);
        },
        (e) => {
          if (live) setError((e as Error).message);
        },
      );
    void poll();
    const t = setInterval(poll, POLL_MS);
    return () => {
      live = false;
      clearInterval(t);
    };
  }, []);

  const last = samples[samples.length - 1];
  return (
    <Page title="Observer">
      <p class="muted">The job queue as the observer sees it, sampled every second; it scales workers toward the target response time.</p>
      {error && (
        <p class="error" role="alert">
          Cannot read the observer: {error}
        </p>
      )}
      {!last ? (
        <p role="status">Loading…</p>
      ) : (
        <>
          <dl class="stats">
            <Stat label="Arrival rate" value={`${fmt(last.arrival_rate)} /s`} />
            <Stat label="Service rate" value={`${fmt(last.service_rate)} /s`} />
            <Stat label="Mean response" value={`${fmt(last.mean_response_ms)} ms`} />
            <Stat label="p95 response" value={`${fmt(last.p95_response_ms)} ms`} />
            <Stat label="Queue depth" value={fmt(last.queue_depth)} />
            <Stat label="Workers" value={fmt(last.workers)} />
          </dl>
          <div class="charts">
            <Chart
              title="Arrival and service rate"
              unit="/s"
              samples={samples}
              series={[
                { label: 'arrivals', key: 'arrival_rate', cls: 's1' },
                { label: 'served', key: 'service_rate', cls: 's2' },
              ]}
            />
            <Chart
              title="Response time"
              unit="ms"
              samples={samples}
              series={[
                { label: 'mean', key: 'mean_response_ms', cls: 's1' },
                { label: 'p95', key: 'p95_response_ms', cls: 's3' },
              ]}
            />
            <Chart
              title="Workers and queue"
              unit=""
              samples={samples}
              series={[
                { label: 'workers', key: 'workers', cls: 's2' },
                { label: 'queued', key: 'queue_depth', cls: 's3' },
              ]}
            />
          </div>
          <div class="card">
            <h2>Last decision</h2>
            <pre>{last.last_decision == null ? 'none yet' : pretty(last.last_decision)}</pre>
          </div>
        </>
      )}
      <ObserverConfigForm />
    </Page>
  );
}

function fmt(n: number | undefined): string {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '–';
  return Number.isInteger(n) ? String(n) : n.toFixed(n < 10 ? 2 : 1);
}

function Stat({ label, value }: { label: string; value: string }) {
  return (
    <div class="stat">
      <dt>{label}</dt>
      <dd>{value}</dd>
    </div>
  );
}

type Key = 'arrival_rate' | 'service_rate' | 'mean_response_ms' | 'p95_response_ms' | 'queue_depth' | 'workers';

/** A small line chart in SVG: fixed size, so updates never move the layout. */
export function Chart({
  title,
  unit,
  samples,
  series,
}: {
  title: string;
  unit: string;
  samples: Sample[];
  series: { label: string; key: Key; cls: string }[];
}) {
  const W = 300;
  const H = 100;
  const max = Math.max(1, ...samples.flatMap((s) => series.map((x) => Number(s[x.key]) || 0)));
  // Newest at the right edge, one step per sample; the steps shrink as samples come
  // in until the window holds KEEP of them.
  const slots = Math.min(KEEP, Math.max(samples.length, 10));
  const x = (i: number) => W - (samples.length - 1 - i) * (W / (slots - 1));
  const y = (v: number) => H - (Math.max(0, v) / max) * (H - 4) - 2;
  const last = samples[samples.length - 1];
  const summary = series.map((s) => `${s.label} ${fmt(last ? Number(last[s.key]) : undefined)}${unit ? ' ' + unit : ''}`).join(', ');
  return (
    <figure class="chart card">
      <figcaption>
        <strong>{title}</strong>
        <span class="legend">
          {series.map((s) => (
            <span key={s.key} class={`key ${s.cls}`}>
              {s.label}
            </span>
          ))}
        </span>
      </figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} preserveAspectRatio="none" role="img" aria-label={`${title}: ${summary}`}>
        <line class="axis" x1="0" y1={H - 1} x2={W} y2={H - 1} />
        {series.map((s) => (
          <polyline
            key={s.key}
            class={`line ${s.cls}`}
            fill="none"
            vector-effect="non-scaling-stroke"
            points={samples.map((p, i) => `${x(i).toFixed(1)},${y(Number(p[s.key]) || 0).toFixed(1)}`).join(' ')}
          />
        ))}
      </svg>
      <span class="small muted">
        max {fmt(max)}
        {unit ? ` ${unit}` : ''} · last 2 min
      </span>
    </figure>
  );
}

function ObserverConfigForm() {
  const [min, setMin] = useState('1');
  const [max, setMax] = useState('4');
  const [target, setTarget] = useState('500');
  const [status, setStatus] = useState<string | null>(null);

  const submit = async (e: Event) => {
    e.preventDefault();
    setStatus(null);
    try {
      await api.setObserverConfig({ min_workers: Number(min), max_workers: Number(max), target_response_ms: Number(target) });
      setStatus('Saved.');
    } catch (err) {
      if (err instanceof ApiError && err.status === 403) setStatus('Only administrators can change this.');
      else setStatus(`Not saved: ${(err as Error).message}`);
    }
  };

  return (
    <details class="card">
      <summary>Scaling settings (administrators)</summary>
      <form onSubmit={submit} class="grid3">
        <label>
          Min workers
          <input type="number" min={0} value={min} onInput={(e) => setMin(e.currentTarget.value)} />
        </label>
        <label>
          Max workers
          <input type="number" min={1} value={max} onInput={(e) => setMax(e.currentTarget.value)} />
        </label>
        <label>
          Target response (ms)
          <input type="number" min={1} value={target} onInput={(e) => setTarget(e.currentTarget.value)} />
        </label>
        <div class="row">
          <button type="submit">Save</button>
          <span role="status">{status ?? ''}</span>
        </div>
      </form>
    </details>
  );
}
