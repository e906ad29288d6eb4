// What the end-to-end suite stands on: a `chorus serve` it starts and stops itself
// (free port, temporary data directory), Debian's Chromium driven by playwright-core
// (npm cannot download browsers here), REST helpers, and a watch on every page's
// console.
//
// Environment:
//   CHORUS_BIN   the binary (default: ../target/debug/chorus, built by the caller)
//   CHROMIUM     the browser (default: /usr/bin/chromium)
//   SCREENSHOTS  where screenshots go (default: ../docs/screenshots)
//   E2E_HEADED=1 show the browser

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(here, '../..');
export const BIN = process.env.CHORUS_BIN ?? join(repo, 'target/debug/chorus');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const SCREENSHOTS = process.env.SCREENSHOTS ?? join(repo, 'docs/screenshots');

export async function freePort() {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  srv.close();
  await once(srv, 'close');
  return port;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** One `chorus serve`; `start` and `stop` may be called again (same port, same data). */
export class ChorusServer {
  constructor() {
    this.dataDir = mkdtempSync(join(tmpdir(), 'chorus-e2e-'));
    this.logDir = join(repo, 'target/e2e-logs');
    mkdirSync(this.logDir, { recursive: true });
    this.port = 0;
    this.proc = null;
    this.starts = 0;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    if (!this.port) this.port = await freePort();
    this.starts += 1;
    const log = createWriteStream(join(this.logDir, `chorus-${this.starts}.log`));
    const proc = spawn(BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir], {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    proc.stdout.pipe(log);
    proc.stderr.pipe(log);
    this.proc = proc;
    const exited = once(proc, 'exit').then(([code]) => {
      throw new Error(`chorus serve exited with ${code}; see ${this.logDir}`);
    });
    const ready = (async () => {
      for (let i = 0; i < 300; i++) {
        try {
          const r = await fetch(`${this.url}/readyz`);
          if (r.ok) return;
        } catch {
          // not listening yet
        }
        await sleep(100);
      }
      throw new Error('chorus serve did not become ready in 30 s');
    })();
    await Promise.race([ready, exited]);
    exited.catch(() => {});
  }

  /** SIGTERM (the server drains and closes sockets with 1001), SIGKILL after 10 s. */
  async stop() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    this.proc = null;
    const done = once(proc, 'exit');
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
    await done;
    clearTimeout(timer);
  }

  async dispose() {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** A REST call as `token` (or none); resolves to {status, body}. */
  async api(method, path, token, body) {
    const headers = {};
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const r = await fetch(`${this.url}/api/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : undefined };
  }

  async register(username, password = 'correct horse battery') {
    const r = await this.api('POST', '/auth/register', null, { username, password });
    if (r.status !== 201) throw new Error(`register ${username}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }
}

export async function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: !process.env.E2E_HEADED,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ].filter((a) => a !== '--headless' || !process.env.E2E_HEADED),
  });
}

/** Messages the browser itself logs for network failures: expected while the server
 * is stopped, and for the wrong password (401), taken username (409) and script that
 * does not compile (400) the tests try on purpose. Anything else on the console is a
 * bug. 404 is still let through from when screens probed for endpoints a server might
 * lack; no scenario is known to need it any more. */
const NETWORK_NOISE = [
  /Failed to load resource: the server responded with a status of (400|401|404|409)/,
  /Failed to load resource: net::ERR_/,
  /WebSocket connection to .* failed/,
];

/** A browser context with one page, watching the console. */
export async function openUser(browser, server, { viewport = { width: 1200, height: 800 }, allowNetworkErrors = true } = {}) {
  const context = await browser.newContext({ baseURL: server.url, viewport, reducedMotion: 'reduce' });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => {
    if (m.type() !== 'error' && m.type() !== 'warning') return;
    const text = m.text();
    if (allowNetworkErrors && NETWORK_NOISE.some((re) => re.test(text))) return;
    problems.push(`${m.type()}: ${text}`);
  });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  return { context, page, problems };
}

/** Sign a page in with a token made over REST (faster than the form). */
export async function signInWith(page, session) {
  await page.goto('/');
  await page.evaluate((s) => localStorage.setItem('chorus.session', JSON.stringify(s)), session);
  await page.goto('/#/');
  await page.reload();
  await page.waitForSelector('.pill[data-status="online"]');
}

export async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`) });
}

