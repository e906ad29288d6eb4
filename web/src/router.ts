// Hash routing: the server serves only `/` and `/assets/*`, and every screen lives
// after the `#`, so a reload or a shared link needs no server-side fallback.

import { useEffect, useState } from 'preact/hooks';

export type Route =
  | { name: 'login' }
  | { name: 'signup' }
  | { name: 'chats' }
  /** `message_id`: open it at that message (scrolled to and highlighted). */
  | { name: 'conversation'; id: string; message_id?: string }
  | { name: 'new' }
  | { name: 'settings' }
  | { name: 'scripts' }
  | { name: 'script'; id: string }
  | { name: 'jobs' }
  | { name: 'job'; id: string }
  | { name: 'observer' }
  | { name: 'not-found'; path: string };

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Whether `id` has the shape of a chorus id: only those reach API paths. */
export function isId(id: string): boolean {
  return UUID.test(id);
}

function decode(part: string): string | null {
  try {
    return decodeURIComponent(part);
  } catch {
    return null;
  }
}

export function parseRoute(hash: string): Route {
  const path = hash.replace(/^#/, '').replace(/\/+$/, '') || '/';
  const decoded = path.split('/').filter(Boolean).map(decode);
  if (decoded.some((part) => part === null)) return { name: 'not-found', path };
  const parts = decoded as string[];
  const [a, b] = parts;
  if (parts.length === 0) return { name: 'chats' };
  if (parts.length === 1) {
    switch (a) {
      case 'login':
        return { name: 'login' };
      case 'signup':
        return { name: 'signup' };
      case 'new':
        return { name: 'new' };
      case 'settings':
        return { name: 'settings' };
      case 'scripts':
        return { name: 'scripts' };
      case 'jobs':
        return { name: 'jobs' };
      case 'observer':
        return { name: 'observer' };
    }
  }
  // An id from the address bar goes into API paths: anything but an id's shape is
  // a page that does not exist, never a path of some other endpoint.
  if (parts.length === 2 && (isId(b) || (a === 'scripts' && b === 'new'))) {
    if (a === 'c') return { name: 'conversation', id: b };
    if (a === 'scripts') return { name: 'script', id: b };
    if (a === 'jobs') return { name: 'job', id: b };
  }
  if (parts.length === 3 && a === 'c' && isId(b) && isId(parts[2])) return { name: 'conversation', id: b, message_id: parts[2] };
  return { name: 'not-found', path };
}

export function href(route: Route): string {
  switch (route.name) {
    case 'chats':
      return '#/';
    case 'conversation':
      return `#/c/${encodeURIComponent(route.id)}${route.message_id ? `/${encodeURIComponent(route.message_id)}` : ''}`;
    case 'script':
      return `#/scripts/${encodeURIComponent(route.id)}`;
    case 'job':
      return `#/jobs/${encodeURIComponent(route.id)}`;
    case 'not-found':
      return `#${route.path}`;
    default:
      return `#/${route.name}`;
  }
}

export function navigate(route: Route, replace = false): void {
  const h = href(route);
  if (replace) history.replaceState(null, '', h);
  else location.hash = h;
  if (replace) window.dispatchEvent(new HashChangeEvent('hashchange'));
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const on = () => setRoute(parseRoute(location.hash));
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return route;
}
