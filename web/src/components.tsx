import type { ComponentChildren } from 'preact';

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
