import type { ComponentChildren } from 'preact';

/** What a screen shows when its endpoint answers 404: the server does not have the
 * feature yet (docs/protocol.md, "Coming with later features"). */
export function Unavailable({ feature, endpoint }: { feature: string; endpoint: string }) {
  return (
    <div class="card unavailable" role="status" data-testid="unavailable">
      <h2>{feature} are not available on this server</h2>
      <p>
        <code>{endpoint}</code> answered <code>404 not_found</code>: this chorus does not have the feature yet. The
        screen works as soon as the server does.
      </p>
    </div>
  );
}

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
