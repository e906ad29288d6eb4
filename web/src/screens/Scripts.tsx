import { useEffect, useRef, useState } from 'preact/hooks';
import { api, ApiError } from '../api';
import { Page } from '../components';
import { compileErrorPosition, formatMicros, offsetOf, pretty } from '../format';
import { navigate } from '../router';
import type { Hook, Script, ScriptInput, ScriptTestResult } from '../types';

export const TEMPLATE = `// Runs for every message you receive (hook "incoming"); onOutgoing(message, ctx)
// runs for the ones you send. Return {reply: "text"}, {drop: "why"}, a list of
// actions, or nothing to let the message through. ctx.log(...) shows in test runs.
export function onIncoming(message, ctx) {
  if (message.body.trim() === "ping") {
    ctx.log("answering", message.sender);
    return { reply: "pong" };
  }
}
`;

export function Scripts({ scriptId }: { scriptId: string | null }) {
  if (scriptId) return <ScriptEditor key={scriptId} id={scriptId === 'new' ? null : scriptId} />;
  return <ScriptList />;
}

function ScriptList() {
  const [scripts, setScripts] = useState<Script[] | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    api.scripts().then(setScripts, (e) => setError((e as Error).message));
  }, []);

  return (
    <Page
      title="Scripts"
      actions={
        <a class="button primary" href="#/scripts/new">
          New script
        </a>
      }
    >
      <p class="muted">Scripts act on your messages: incoming ones (bots, auto-replies, filters) and outgoing ones (rewrites, checks).</p>
      {error ? (
        <p class="error" role="alert">
          Cannot load scripts: {error}
        </p>
      ) : scripts === null ? (
        <p role="status">Loading…</p>
      ) : scripts.length === 0 ? (
        <p class="card">No scripts yet.</p>
      ) : (
        <ul class="rows" aria-label="Your scripts">
          {scripts.map((s) => (
            <li key={s.id}>
              <a class="row-link" href={`#/scripts/${s.id}`}>
                <strong>{s.name}</strong>
                <span class="muted small">{(s.hooks ?? []).join(', ') || 'no hooks'}</span>
                <span class={`tag ${s.enabled ? 'ok' : ''}`}>{s.enabled ? 'enabled' : 'disabled'}</span>
              </a>
            </li>
          ))}
        </ul>
      )}
    </Page>
  );
}

interface CompileError {
  message: string;
  line?: number;
  column?: number;
}

function ScriptEditor({ id }: { id: string | null }) {
  const [script, setScript] = useState<ScriptInput>({ name: '', source: TEMPLATE, hooks: ['incoming'], enabled: true });
  const [savedId, setSavedId] = useState<string | null>(id);
  const [compile, setCompile] = useState<CompileError | null>(null);
  const [status, setStatus] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const editor = useRef<HTMLTextAreaElement>(null);

  useEffect(() => {
    if (!id) return;
    api.script(id).then(
      (s) => setScript({ name: s.name, source: s.source ?? '', hooks: s.hooks ?? [], enabled: !!s.enabled }),
      // A script that does not exist or is not the caller's is a 404 like any other error.
      (e) => setStatus(`Cannot load this script: ${(e as Error).message}`),
    );
  }, [id]);

  const set = (patch: Partial<ScriptInput>) => setScript((s) => ({ ...s, ...patch }));
  const toggleHook = (h: Hook) =>
    set({ hooks: script.hooks.includes(h) ? script.hooks.filter((x) => x !== h) : [...script.hooks, h] });

  const goToError = () => {
    const ta = editor.current;
    if (!ta || !compile?.line) return;
    const at = offsetOf(script.source, compile.line, compile.column ?? 1);
    ta.focus();
    ta.setSelectionRange(at, at);
  };

  /** Save; resolves to the id, or null when the server refused it. */
  const save = async (): Promise<string | null> => {
    if (!script.name.trim()) {
      setStatus('Give the script a name.');
      return null;
    }
    setBusy(true);
    setStatus(null);
    setCompile(null);
    try {
      const s = savedId ? await api.updateScript(savedId, script) : await api.createScript(script);
      setStatus('Saved.');
      if (!savedId) {
        setSavedId(s.id);
        history.replaceState(null, '', `#/scripts/${s.id}`);
      }
      return s.id;
    } catch (e) {
      if (e instanceof ApiError && e.code === 'bad_request') {
        const pos = compileErrorPosition(e.details);
        setCompile({ message: e.message, line: pos?.line, column: pos?.column });
        setStatus('Not saved: the script does not compile.');
      } else {
        setStatus(`Not saved: ${(e as Error).message}`);
      }
      return null;
    } finally {
      setBusy(false);
    }
  };

  const remove = async () => {
    if (!savedId || !confirm(`Delete the script “${script.name}”?`)) return;
    try {
      await api.deleteScript(savedId);
      navigate({ name: 'scripts' });
    } catch (e) {
      setStatus(`Not deleted: ${(e as Error).message}`);
    }
  };

  return (
    <Page title={savedId ? script.name || 'Script' : 'New script'} actions={<a href="#/scripts">All scripts</a>}>
      <form
        class="card editor-form"
        onSubmit={(e) => {
          e.preventDefault();
          void save();
        }}
        onKeyDown={(e) => {
          if ((e.ctrlKey || e.metaKey) && e.key === 's') {
            e.preventDefault();
            void save();
          }
        }}
      >
        <div class="grid2">
          <label>
            Name
            <input value={script.name} required maxLength={200} onInput={(e) => set({ name: e.currentTarget.value })} />
          </label>
          <fieldset class="inline">
            <legend>Runs on</legend>
            {(['incoming', 'outgoing'] as Hook[]).map((h) => (
              <label key={h} class="check">
                <input type="checkbox" checked={script.hooks.includes(h)} onChange={() => toggleHook(h)} />
                {h === 'incoming' ? 'Incoming messages' : 'Outgoing messages'}
              </label>
            ))}
            <label class="check">
              <input type="checkbox" checked={script.enabled} onChange={(e) => set({ enabled: e.currentTarget.checked })} />
              Enabled
            </label>
          </fieldset>
        </div>
        <CodeEditor
          label="Source (JavaScript)"
          value={script.source}
          onInput={(source) => set({ source })}
          errorLine={compile?.line}
          textareaRef={editor}
          describedBy={compile ? 'compile-error' : undefined}
        />
        {compile && (
          <div id="compile-error" class="compile-error" role="alert" data-testid="compile-error">
            <strong>Compile error</strong>
            {compile.line && (
              <button type="button" class="link" onClick={goToError}>
                line {compile.line}
                {compile.column ? `, column ${compile.column}` : ''}
              </button>
            )}
            <pre>{compile.message}</pre>
          </div>
        )}
        <div class="row">
          <button type="submit" class="primary" disabled={busy}>
            Save
          </button>
          {savedId && (
            <button type="button" class="danger" onClick={remove}>
              Delete
            </button>
          )}
          <span class="small" role="status">
            {status ?? 'Ctrl+S saves.'}
          </span>
        </div>
      </form>
      <TestRun save={save} hooks={script.hooks} />
    </Page>
  );
}

/** A textarea with line numbers; the line of a compile error is marked. Tab keeps
 * its usual meaning (moving focus), so the editor never traps the keyboard. */
function CodeEditor({
  label,
  value,
  onInput,
  errorLine,
  textareaRef,
  describedBy,
}: {
  label: string;
  value: string;
  onInput: (v: string) => void;
  errorLine?: number;
  textareaRef?: { current: HTMLTextAreaElement | null };
  describedBy?: string;
}) {
  const gutter = useRef<HTMLDivElement>(null);
  const lines = value.split('\n').length;
  return (
    <label class="code-label">
      {label}
      <div class="code">
        <div class="gutter" ref={gutter} aria-hidden="true">
          {Array.from({ length: lines }, (_, i) => (
            <div key={i} class={i + 1 === errorLine ? 'err' : ''}>
              {i + 1}
            </div>
          ))}
        </div>
        <textarea
          ref={textareaRef}
          class="code-input"
          spellcheck={false}
          autoCapitalize="none"
          wrap="off"
          rows={Math.min(24, Math.max(8, lines + 1))}
          value={value}
          aria-invalid={errorLine ? true : undefined}
          aria-describedby={describedBy}
          onInput={(e) => onInput(e.currentTarget.value)}
          onScroll={(e) => {
            if (gutter.current) gutter.current.scrollTop = e.currentTarget.scrollTop;
          }}
        />
      </div>
    </label>
  );
}

function TestRun({ save, hooks }: { save: () => Promise<string | null>; hooks: Hook[] }) {
  const [hook, setHook] = useState<Hook>(hooks[0] ?? 'incoming');
  const [body, setBody] = useState('ping');
  const [result, setResult] = useState<ScriptTestResult | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const run = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setResult(null);
    try {
      const id = await save();
      if (!id) {
        setError('Save the script before testing it.');
        return;
      }
      setResult(await api.testScript(id, hook, { body }));
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="card" onSubmit={run} aria-labelledby="test-heading">
      <h2 id="test-heading">Test run</h2>
      <p class="muted small">Saves the script, then runs it on a message you make up. Nothing is sent.</p>
      <div class="grid2">
        <label>
          Hook
          <select value={hook} onChange={(e) => setHook(e.currentTarget.value as Hook)}>
            <option value="incoming">incoming</option>
            <option value="outgoing">outgoing</option>
          </select>
        </label>
        <label>
          Message body
          <input value={body} onInput={(e) => setBody(e.currentTarget.value)} />
        </label>
      </div>
      <div class="row">
        <button type="submit" disabled={busy}>
          {busy ? 'Running…' : 'Run test'}
        </button>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {result && (
        <div class="test-result" data-testid="test-result" role="status">
          <p>
            Ran in <strong>{formatMicros(result.elapsed_us)}</strong>.
          </p>
          {result.error && (
            <p class="error" data-testid="test-error">
              {result.error.code}: {result.error.message}
            </p>
          )}
          <h3>Actions ({result.actions?.length ?? 0})</h3>
          {result.actions?.length ? <pre>{result.actions.map((a) => pretty(a)).join('\n')}</pre> : <p class="muted small">None.</p>}
          <h3>Logs ({result.logs?.length ?? 0})</h3>
          {result.logs?.length ? <pre>{result.logs.map((l) => pretty(l)).join('\n')}</pre> : <p class="muted small">None.</p>}
        </div>
      )}
    </form>
  );
}
