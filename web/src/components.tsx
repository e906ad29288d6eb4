import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { api } from './api';
import { formatSize } from './format';
import type { Attachment } from './types';

export function Page({ title, children, actions }: { title: string; children: ComponentChildren; actions?: ComponentChildren }) {
  return (
    <section class="page" aria-labelledby="page-heading">
      <div class="page-head">
        <h1 id="page-heading">{title}</h1>
        {actions}
      </div>
      {children}
    </section>
  );
}

// Attachments. `<img src>` and links cannot carry the token, so the bytes are fetched
// with it and shown through blob URLs (the CSP allows `img-src blob:`), each revoked
// when what shows it goes away.

/** Content types shown as a picture (from the thumbnail endpoint); others are a file. */
const IMAGE_TYPES = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);

export function isPreviewable(a: Attachment): boolean {
  return IMAGE_TYPES.has(a.content_type.split(';')[0].trim().toLowerCase());
}

/** A blob URL of what `load` fetches, revoked on unmount; `error` when it failed. */
function useBlobUrl(load: () => Promise<Blob>, key: string): { url: string | null; error: Error | null } {
  const [state, setState] = useState<{ url: string | null; error: Error | null }>({ url: null, error: null });
  useEffect(() => {
    let url: string | null = null;
    let live = true;
    setState({ url: null, error: null });
    load().then(
      (blob) => {
        if (!live) return;
        url = URL.createObjectURL(blob);
        setState({ url, error: null });
      },
      (error: Error) => live && setState({ url: null, error }),
    );
    return () => {
      live = false;
      if (url) URL.revokeObjectURL(url);
    };
  }, [key]);
  return state;
}

/** Save an attachment as a file: fetch it with the token, then click a link to a blob
 * URL named after it. */
export async function downloadAttachment(a: Attachment): Promise<void> {
  const blob = await api.attachment(a.attachment_id);
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = a.name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  // The download reads the URL after the click returns: revoke it a little later.
  setTimeout(() => URL.revokeObjectURL(url), 30_000);
}

/** A file: its name and size; a click downloads it. */
export function FileChip({ a }: { a: Attachment }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const size = formatSize(a.size);
  const download = async () => {
    setBusy(true);
    setError(null);
    try {
      await downloadAttachment(a);
    } catch (e) {
      setError(`Cannot download ${a.name}: ${(e as Error).message}`);
    } finally {
      setBusy(false);
    }
  };
  return (
    <span class="file">
      <button
        type="button"
        class="file-chip"
        aria-label={`Download ${a.name}, ${size}`}
        title={`Download ${a.name}`}
        data-attachment={a.attachment_id}
        aria-busy={busy || undefined}
        onClick={download}
      >
        <span class="file-icon" aria-hidden="true" />
        <span class="file-name">{a.name}</span>
        <span class="file-size">{size}</span>
      </button>
      {error && (
        <span class="error small" role="alert">
          {error}
        </span>
      )}
    </span>
  );
}

/** An image's thumbnail; a click opens it full size. A file chip instead when there is
 * no thumbnail (404) or it does not load. */
export function ImagePreview({ a, onOpen }: { a: Attachment; onOpen: (a: Attachment) => void }) {
  const { url, error } = useBlobUrl(() => api.thumbnail(a.attachment_id), a.attachment_id);
  const [broken, setBroken] = useState(false);
  if (error || broken) return <FileChip a={a} />;
  return (
    <button
      type="button"
      class="thumb"
      aria-label={`Open image ${a.name}, ${formatSize(a.size)}`}
      data-attachment={a.attachment_id}
      onClick={() => onOpen(a)}
    >
      {url ? <img src={url} alt={a.name} onError={() => setBroken(true)} /> : <span class="thumb-wait small muted">Loading…</span>}
    </button>
  );
}

/** A message's attachments: pictures first-class, other files as chips. */
export function AttachmentList({ list, onOpen }: { list: Attachment[]; onOpen: (a: Attachment) => void }) {
  if (!list.length) return null;
  return (
    <ul class="attachments" aria-label="Attachments">
      {list.map((a) => (
        <li key={a.attachment_id}>{isPreviewable(a) ? <ImagePreview a={a} onOpen={onOpen} /> : <FileChip a={a} />}</li>
      ))}
    </ul>
  );
}

/** An image full size over the page: Escape, the close button or a click beside the
 * picture closes it, and focus goes back to what opened it. */
export function ImageViewer({ a, onClose }: { a: Attachment; onClose: () => void }) {
  const { url, error } = useBlobUrl(() => api.attachment(a.attachment_id), a.attachment_id);
  const ref = useRef<HTMLDivElement>(null);
  const closeRef = useRef<HTMLButtonElement>(null);
  const [saveError, setSaveError] = useState<string | null>(null);

  useEffect(() => {
    const opener = document.activeElement as HTMLElement | null;
    closeRef.current?.focus();
    const onKey = (e: KeyboardEvent) => {
      if (e.key === 'Escape') {
        e.preventDefault();
        onClose();
      } else if (e.key === 'Tab') {
        // Keep focus inside the dialog.
        const items = [...(ref.current?.querySelectorAll<HTMLElement>('button') ?? [])];
        if (!items.length) return;
        const i = items.indexOf(document.activeElement as HTMLElement);
        const next = e.shiftKey ? (i <= 0 ? items.length - 1 : i - 1) : i < 0 || i === items.length - 1 ? 0 : i + 1;
        items[next].focus();
        e.preventDefault();
      }
    };
    document.addEventListener('keydown', onKey);
    return () => {
      document.removeEventListener('keydown', onKey);
      opener?.focus?.();
    };
  }, []);

  return (
    <div
      class="viewer"
      ref={ref}
      role="dialog"
      aria-modal="true"
      aria-label={`Image ${a.name}`}
      onClick={(e) => {
        if (e.target === e.currentTarget || (e.target as HTMLElement).classList.contains('viewer-stage')) onClose();
      }}
    >
      <div class="viewer-bar">
        <span class="viewer-name">{a.name}</span>
        <span class="small">{formatSize(a.size)}</span>
        <button
          type="button"
          onClick={() => downloadAttachment(a).catch((e: Error) => setSaveError(`Cannot download: ${e.message}`))}
        >
          Download
        </button>
        <button type="button" ref={closeRef} class="viewer-close" aria-label="Close" onClick={onClose}>
          ×
        </button>
      </div>
      {saveError && (
        <p class="error viewer-note" role="alert">
          {saveError}
        </p>
      )}
      <div class="viewer-stage">
        {url ? (
          <img class="viewer-img" src={url} alt={a.name} />
        ) : error ? (
          <p class="error viewer-note" role="alert">
            Cannot load the image: {error.message}
          </p>
        ) : (
          <p class="viewer-note" role="status">
            Loading…
          </p>
        )}
      </div>
    </div>
  );
}
