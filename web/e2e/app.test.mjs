// End-to-end: the app as `chorus serve` serves it, in a real headless Chromium.
// One server and one browser for the whole file; the tests run in order and build on
// each other (ada and bob sign up, then chat, then lose the connection, …).
//
// Run: npm run e2e (after `cargo build -p chorus`); see harness.mjs for the knobs.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { deflateSync } from 'node:zlib';
import { ChorusServer, launch, openUser, screenshot, signInWith } from './harness.mjs';

const T = { timeout: 120_000 };
const server = new ChorusServer();
let browser;
/** ada and bob, each in their own browser context. */
let A;
let B;
const users = {};
let direct; // conversation id of ada ↔ bob

const pill = (page) => page.locator('.pill');
const messageBodies = (page) => page.locator('.message-list li.msg:not(.pending) .body');

async function waitForText(locator, text, timeout = 10_000) {
  await locator.filter({ hasText: text }).first().waitFor({ timeout });
}

/** The message (not pending) whose body has `text`. */
const msgIn = (page, text) => page.locator('.message-list li.msg:not(.pending)').filter({ has: page.locator('p.body', { hasText: text }) });
const write = async (page, text) => {
  await page.getByLabel('Message', { exact: true }).fill(text);
  await page.keyboard.press('Enter');
  await waitForText(messageBodies(page), text);
};
/** Whether the message `selector` finds is highlighted, focused and on screen
 * (inside the message list and inside the window). Runs in the page. */
const shownAndHighlighted = ({ selector }) => {
  const el = document.querySelector(selector);
  if (!el) return false;
  const r = el.getBoundingClientRect();
  const list = el.closest('.messages').getBoundingClientRect();
  const inView = r.height > 0 && r.top >= list.top && r.bottom <= list.bottom && r.top >= 0 && r.bottom <= window.innerHeight;
  return inView && el.classList.contains('highlight') && el.dataset.highlighted === 'true' && document.activeElement === el;
};

/** A valid RGB PNG of a colour gradient, made here (no image files in the repo). */
function makePng(width, height) {
  const crc32 = (buf) => {
    let crc = ~0;
    for (const byte of buf) {
      crc ^= byte;
      for (let k = 0; k < 8; k++) crc = (crc >>> 1) ^ (0xedb88320 & -(crc & 1));
    }
    return ~crc >>> 0;
  };
  const chunk = (type, data) => {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([head, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const row = width * 3 + 1; // each row starts with filter type 0
  const raw = Buffer.alloc(row * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = y * row + 1 + x * 3;
      raw[i] = Math.round((255 * x) / (width - 1));
      raw[i + 1] = Math.round((255 * y) / (height - 1));
      raw[i + 2] = 160;
    }
  }
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([signature, chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

/** Wait until the composer's uploads have finished, and fail with what the chips say
 * unless all `n` are stored. */
async function uploadsDone(page, n) {
  await page.waitForFunction(
    (n) => {
      const chips = [...document.querySelectorAll('.upload-list li')];
      return chips.length === n && chips.every((li) => li.dataset.status !== 'uploading');
    },
    n,
    { timeout: 30_000 },
  );
  const chips = await page.locator('.upload-list li').evaluateAll((els) => els.map((li) => `${li.dataset.status}: ${li.textContent}`));
  assert.ok(chips.every((c) => c.startsWith('done:')), `uploads failed: ${chips.join(' | ')}`);
}

const sha256 = (data) => createHash('sha256').update(data).digest('hex');

before(async () => {
  await server.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server.dispose();
});

describe('chorus web app', () => {
  it('is served from the binary with the right headers', T, async () => {
    const index = await fetch(`${server.url}/`);
    assert.equal(index.status, 200);
    assert.match(index.headers.get('content-type'), /^text\/html/);
    assert.equal(index.headers.get('cache-control'), 'no-cache');
    const html = await index.text();
    const js = html.match(/src="(\/assets\/[^"]+\.js)"/)[1];
    const css = html.match(/href="(\/assets\/[^"]+\.css)"/)[1];
    const script = await fetch(server.url + js);
    assert.equal(script.status, 200);
    assert.match(script.headers.get('content-type'), /^text\/javascript/);
    const etag = script.headers.get('etag');
    assert.ok(etag);
    const again = await fetch(server.url + js, { headers: { 'if-none-match': etag } });
    assert.equal(again.status, 304);
    assert.match((await fetch(server.url + css)).headers.get('content-type'), /^text\/css/);
    assert.equal((await fetch(`${server.url}/assets/nope.js`)).status, 404);
  });

  it('signs up, with clear errors, and signs in', T, async () => {
    A = await openUser(browser, server);
    const { page } = A;
    await page.goto('/');
    await page.waitForURL(/#\/login$/);
    await screenshot(page, 'sign-in');

    await page.getByRole('link', { name: 'Create an account' }).click();
    await page.getByLabel('Username').fill('ada');
    await page.getByLabel('Password').fill('short');
    await page.getByRole('button', { name: 'Create account' }).click();
    await waitForText(page.getByRole('alert'), 'at least 8 characters');

    await page.getByLabel('Password').fill('correct horse');
    await page.getByRole('button', { name: 'Create account' }).click();
    await page.waitForSelector('.pill[data-status="online"]');
    users.ada = await page.evaluate(() => JSON.parse(localStorage.getItem('chorus.session')));

    // bob tries ada's name first, then signs up as himself.
    B = await openUser(browser, server);
    await B.page.goto('/#/signup');
    await B.page.getByLabel('Username').fill('ada');
    await B.page.getByLabel('Password').fill('battery staple');
    await B.page.getByRole('button', { name: 'Create account' }).click();
    await waitForText(B.page.getByRole('alert'), 'username is taken');
    await screenshot(B.page, 'sign-up-error');
    await B.page.getByLabel('Username').fill('bob');
    await B.page.getByRole('button', { name: 'Create account' }).click();
    await B.page.waitForSelector('.pill[data-status="online"]');
    users.bob = await B.page.evaluate(() => JSON.parse(localStorage.getItem('chorus.session')));

    // Signing out and in again, with a wrong password first.
    await B.page.getByRole('button', { name: 'Sign out' }).click();
    await B.page.getByLabel('Username').fill('bob');
    await B.page.getByLabel('Password').fill('wrong password');
    await B.page.getByRole('button', { name: 'Sign in' }).click();
    await waitForText(B.page.getByRole('alert'), 'Wrong username or password.');
    await B.page.getByLabel('Password').fill('battery staple');
    await B.page.getByRole('button', { name: 'Sign in' }).click();
    await B.page.waitForSelector('.pill[data-status="online"]');
  });

  it('two users chat live, with typing, presence, unread counts and read markers', T, async () => {
    const a = A.page;
    const b = B.page;
    await a.getByRole('link', { name: 'New', exact: true }).click();
    await a.getByLabel('Find a person').fill('bo');
    await screenshot(a, 'new-conversation');
    await a.getByRole('button', { name: /^bob/ }).click();
    await a.waitForURL(/#\/c\//);
    direct = a.url().split('/c/')[1];

    await a.getByLabel('Message', { exact: true }).fill('hello bob');
    await a.keyboard.press('Enter');
    await waitForText(messageBodies(a), 'hello bob');

    // bob learns of the conversation from the message, with an unread count and
    // ada's presence dot.
    const item = b.locator(`a.conv[data-conversation="${direct}"]`);
    await item.waitFor();
    await item.locator('.badge.unread[data-unread="1"]').waitFor();
    await item.locator('.presence.on').waitFor();
    await screenshot(b, 'chats');

    await item.click();
    await waitForText(messageBodies(b), 'hello bob');
    await item.locator('.badge.unread').waitFor({ state: 'detached' });

    // bob types: ada sees it; bob answers: ada sees it live, and that bob read hers.
    await b.getByLabel('Message', { exact: true }).pressSequentially('hi a', { delay: 20 });
    await waitForText(a.getByTestId('typing'), 'bob is typing');
    await b.getByLabel('Message', { exact: true }).fill('hi ada, all good?');
    await b.keyboard.press('Enter');
    await waitForText(messageBodies(a), 'hi ada, all good?');
    await a.getByTestId('seen').filter({ hasText: 'Seen by bob' }).waitFor();
    await screenshot(a, 'conversation');
  });

  it('a reload keeps the history, and scrolling back loads older pages', T, async () => {
    // 120 more messages from ada over REST: more than two pages.
    for (let i = 1; i <= 120; i++) {
      const r = await server.api('POST', `/conversations/${direct}/messages`, users.ada.token, {
        client_msg_id: `bulk-${i}`,
        body: `bulk message ${i}`,
      });
      assert.equal(r.status, 202);
    }
    const b = B.page;
    await waitForText(messageBodies(b), 'bulk message 120');
    await b.reload();
    await b.waitForSelector('.pill[data-status="online"]');
    await waitForText(messageBodies(b), 'bulk message 120');
    // Only the latest page is loaded; the first message is not there yet.
    assert.equal(await messageBodies(b).filter({ hasText: /^hello bob$/ }).count(), 0);
    const list = b.locator('.messages');
    const firstSeq = () => b.locator('.message-list li.msg[data-seq]').first().getAttribute('data-seq').then(Number);
    const top = await firstSeq();
    assert.ok(top > 1);
    // Scrolling to the top loads the page before it…
    await list.evaluate((el) => (el.scrollTop = 0));
    await b.waitForFunction((t) => Number(document.querySelector('.message-list li.msg[data-seq]')?.dataset.seq) < t, top);
    // …and so does the button, for keyboards. Away from the top no page loads by
    // itself (a load started by the scroll could otherwise remove the button under the
    // click): once none is in flight, only the button loads them.
    await list.evaluate((el) => (el.scrollTop = el.scrollHeight));
    await b.locator('.history-edge').getByText(/^(Load older messages|Start of the conversation)$/).waitFor();
    while ((await b.getByRole('button', { name: 'Load older messages' }).count()) > 0) {
      const before = await firstSeq();
      await b.getByRole('button', { name: 'Load older messages' }).click();
      await b.waitForFunction((t) => Number(document.querySelector('.message-list li.msg[data-seq]')?.dataset.seq) < t, before);
    }
    await b.getByText('Start of the conversation').waitFor();
    await waitForText(messageBodies(b), 'hello bob');
    const seqs = await b.locator('.message-list li.msg[data-seq]').evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
    assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), 'every seq once, in order');
    assert.equal(seqs.length, 122);
  });

  it('new messages do not move what the reader is looking at', T, async () => {
    const b = B.page;
    const list = b.locator('.messages');
    await list.evaluate((el) => (el.scrollTop = 200));
    await b.waitForTimeout(300);
    const before = await list.evaluate((el) => el.scrollTop);
    await server.api('POST', `/conversations/${direct}/messages`, users.ada.token, { client_msg_id: 'still-1', body: 'do not jump' });
    await waitForText(messageBodies(b), 'do not jump');
    await b.getByRole('button', { name: 'New messages ↓' }).waitFor();
    assert.equal(await list.evaluate((el) => el.scrollTop), before);
    await b.getByRole('button', { name: 'New messages ↓' }).click();
    // At the bottom, the next message keeps it there.
    await server.api('POST', `/conversations/${direct}/messages`, users.ada.token, { client_msg_id: 'still-2', body: 'stay down' });
    await waitForText(messageBodies(b), 'stay down');
    await b.waitForTimeout(200);
    assert.ok(await list.evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight < 5));
  });

  it('a server restart shows the reconnecting state, then the missed messages', T, async () => {
    const a = A.page;
    const b = B.page;
    await a.goto(`/#/c/${direct}`);
    await b.goto(`/#/c/${direct}`);
    await server.stop();
    await pill(a).filter({ hasText: 'Reconnecting' }).waitFor();
    await pill(b).filter({ hasText: 'Reconnecting' }).waitFor();
    await screenshot(b, 'reconnecting');

    // bob loses his network too; he writes anyway (the message waits), ada comes
    // back first and writes while bob cannot hear.
    await B.context.setOffline(true);
    await b.getByLabel('Message', { exact: true }).fill('written offline');
    await b.keyboard.press('Enter');
    await b.locator('li.msg.pending').filter({ hasText: 'written offline' }).waitFor();
    await server.start();
    await a.waitForSelector('.pill[data-status="online"]', { timeout: 30_000 });
    await a.getByLabel('Message', { exact: true }).fill('sent while you were away');
    await a.keyboard.press('Enter');
    await waitForText(messageBodies(a), 'sent while you were away');
    await b.waitForTimeout(1_000);
    assert.equal(await messageBodies(b).filter({ hasText: 'sent while you were away' }).count(), 0);
    assert.equal(await b.locator('.pill').getAttribute('data-status'), 'reconnecting');

    await B.context.setOffline(false);
    await b.waitForSelector('.pill[data-status="online"]', { timeout: 30_000 });
    await waitForText(messageBodies(b), 'sent while you were away');
    // bob's unconfirmed send went out after the resync, once.
    await waitForText(messageBodies(a), 'written offline');
    await b.locator('li.msg.pending').waitFor({ state: 'detached' });
    assert.equal(await messageBodies(a).filter({ hasText: /^written offline$/ }).count(), 1);
  });

  it('makes a group with user search', T, async () => {
    const cy = await server.register('cyd');
    const a = A.page;
    await a.goto('/#/new');
    await a.getByText('Group', { exact: true }).click();
    await a.getByLabel('Group title').fill('Team');
    await a.getByLabel('Add people').fill('');
    await a.getByRole('checkbox', { name: 'bob' }).check();
    await a.getByRole('checkbox', { name: 'cyd' }).check();
    await screenshot(a, 'new-group');
    await a.getByRole('button', { name: /Create group/ }).click();
    await a.waitForURL(/#\/c\//);
    await a.getByRole('heading', { name: 'Team' }).waitFor();
    await a.getByLabel('Message', { exact: true }).fill('welcome to the team');
    await a.keyboard.press('Enter');
    // bob was not told of the group: he learns of it from the first message.
    await B.page.goto('/#/');
    await B.page.locator('a.conv').filter({ hasText: 'Team' }).waitFor();
    const r = await server.api('GET', '/conversations', cy.token);
    assert.ok(r.body.conversations.some((c) => c.title === 'Team'));
  });

  it('sends attachments: a picture by the button, a file dropped, a picture pasted; the other side previews, views and downloads them', T, async () => {
    const csp = (await fetch(`${server.url}/`)).headers.get('content-security-policy');
    assert.match(csp, /img-src 'self' data: blob:;/, 'blob: images are allowed (thumbnails are shown from blob URLs)');

    const a = A.page;
    const b = B.page;
    await a.goto(`/#/c/${direct}`);
    await b.goto(`/#/c/${direct}`);
    // Larger than a thumbnail (at most 320x320), so the full-size view is told apart.
    const png = makePng(480, 360);
    const notes = 'notes from ada\nline two: ünïcödé\n';
    const notesBytes = Buffer.from(notes, 'utf8');

    // The picture by the attach button (the browser's file chooser).
    const [chooser] = await Promise.all([a.waitForEvent('filechooser'), a.getByRole('button', { name: 'Attach files' }).click()]);
    assert.equal(chooser.isMultiple(), true);
    await chooser.setFiles({ name: 'gradient.png', mimeType: 'image/png', buffer: png });
    // The text file dropped on the conversation.
    const dt = await a.evaluateHandle(
      (bytes) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], 'notes.txt', { type: 'text/plain' }));
        return dt;
      },
      [...notesBytes],
    );
    await a.dispatchEvent('section.conv-pane', 'dragenter', { dataTransfer: dt });
    await a.locator('.drop-hint').waitFor();
    await a.dispatchEvent('section.conv-pane', 'drop', { dataTransfer: dt });
    await a.locator('.drop-hint').waitFor({ state: 'detached' });
    const chips = a.getByRole('list', { name: 'Attachments to send' }).locator('li');
    await uploadsDone(a, 2);
    assert.deepEqual(await chips.locator('.file-name').allTextContents(), ['gradient.png', 'notes.txt']);
    assert.equal(await chips.nth(1).locator('.file-size').textContent(), `${notesBytes.length} B`);
    await a.getByLabel('Message', { exact: true }).fill('a picture and some notes');
    await screenshot(a, 'attachments-composer');
    await a.getByRole('button', { name: 'Send' }).click();
    await waitForText(messageBodies(a), 'a picture and some notes');
    assert.equal(await chips.count(), 0);

    // What the server stored.
    const stored = await server.api('GET', `/conversations/${direct}/messages?limit=1`, users.bob.token);
    assert.equal(stored.status, 200);
    const [sent] = stored.body.messages;
    assert.equal(sent.body, 'a picture and some notes');
    assert.deepEqual(
      sent.attachments.map(({ name, content_type, size, sha256: hash }) => ({ name, content_type, size, sha256: hash })),
      [
        { name: 'gradient.png', content_type: 'image/png', size: png.length, sha256: sha256(png) },
        { name: 'notes.txt', content_type: 'text/plain', size: notesBytes.length, sha256: sha256(notesBytes) },
      ],
    );

    // bob sees the picture from its thumbnail (loaded, not a broken image) and the file
    // as a chip with its name and size.
    const msg = b.locator('.message-list li.msg:not(.pending)').filter({ hasText: 'a picture and some notes' });
    await msg.waitFor();
    const thumb = msg.getByRole('button', { name: /^Open image gradient\.png, \d+(\.\d)? KiB$/ });
    await thumb.waitFor();
    const img = msg.locator('.thumb img');
    await img.waitFor();
    await b.waitForFunction((el) => el.complete && el.naturalWidth > 0, await img.elementHandle());
    const thumbWidth = await img.evaluate((el) => el.naturalWidth);
    assert.ok(thumbWidth > 0 && thumbWidth <= 320, `thumbnail ${thumbWidth} px wide`);
    assert.match(await img.getAttribute('src'), /^blob:/);
    const chip = msg.getByRole('button', { name: `Download notes.txt, ${notesBytes.length} B` });
    await chip.waitFor();
    assert.equal(await chip.locator('.file-name').textContent(), 'notes.txt');
    assert.equal(await chip.locator('.file-size').textContent(), `${notesBytes.length} B`);
    await screenshot(b, 'attachments');

    // The full-size view: the image itself, fetched with the token; Escape closes it,
    // and so does the close button.
    const [full] = await Promise.all([
      b.waitForResponse((r) => /\/api\/v1\/attachments\/[0-9a-f-]+$/.test(r.url())),
      thumb.click(),
    ]);
    assert.equal(full.status(), 200);
    assert.equal(full.headers()['content-length'], String(png.length));
    const dialog = b.getByRole('dialog', { name: 'Image gradient.png' });
    await dialog.waitFor();
    await b.waitForFunction(() => {
      const el = document.querySelector('.viewer-img');
      return el?.complete && el.naturalWidth === 480 && el.naturalHeight === 360;
    });
    await screenshot(b, 'attachment-viewer');
    await b.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });
    await thumb.click();
    await dialog.getByRole('button', { name: 'Close' }).click();
    await dialog.waitFor({ state: 'detached' });

    // The chip downloads the same bytes, under the file's name.
    const [download] = await Promise.all([b.waitForEvent('download'), chip.click()]);
    assert.equal(download.suggestedFilename(), 'notes.txt');
    assert.deepEqual(await readFile(await download.path()), notesBytes);

    // A picture pasted, sent with no text: bob's message shows only the picture, and the
    // conversation list says what it is.
    await a.getByLabel('Message', { exact: true }).focus();
    await a.evaluate((bytes) => {
      const dt = new DataTransfer();
      dt.items.add(new File([new Uint8Array(bytes)], 'pasted.png', { type: 'image/png' }));
      document.activeElement.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
    }, [...makePng(32, 32)]);
    await uploadsDone(a, 1);
    await a.getByRole('button', { name: 'Send' }).click();
    const only = b.locator('.message-list li.msg:not(.pending)').last();
    await only.getByRole('button', { name: /^Open image pasted\.png, / }).waitFor();
    assert.equal(await only.locator('.body').count(), 0);
    await b.waitForFunction(() => {
      const imgs = document.querySelectorAll('.message-list li.msg:last-child .thumb img');
      return imgs.length === 1 && imgs[0].complete && imgs[0].naturalWidth === 32;
    });
    await b.goto('/#/');
    await waitForText(b.locator(`a.conv[data-conversation="${direct}"] .conv-preview`), 'Attachment: pasted.png');
  });

  it('replies: the Reply button by keyboard and mouse, the quote, and a jump to the original (loading older pages)', T, async () => {
    const a = A.page;
    const b = B.page;
    await a.goto(`/#/c/${direct}`);
    await b.goto(`/#/c/${direct}`);

    // ada asks, then 20 more messages push the question off screen, then two more.
    await write(a, 'Which day works for the review?');
    for (let i = 1; i <= 20; i++) {
      const r = await server.api('POST', `/conversations/${direct}/messages`, users.ada.token, { client_msg_id: `agenda-${i}`, body: `agenda item ${i}` });
      assert.equal(r.status, 202);
    }
    await write(a, 'Thursday or Friday are free');
    await write(a, 'Or early next week');
    await msgIn(b, 'Or early next week').waitFor();

    // bob, by keyboard: the Reply button is hidden until focused, Enter starts a reply,
    // Escape in the composer cancels it, Space starts it again.
    await b.mouse.move(0, 0);
    const question = msgIn(b, 'Which day works for the review?');
    const replyButton = question.getByRole('button', { name: 'Reply' });
    const opacity = () => replyButton.evaluate((el) => getComputedStyle(el.closest('.msg-actions')).opacity);
    assert.equal(await opacity(), '0');
    await replyButton.focus();
    assert.equal(await opacity(), '1');
    await b.keyboard.press('Enter');
    const bar = b.getByTestId('reply-bar');
    await waitForText(bar, 'Replying to ada: Which day works for the review?');
    assert.equal(await b.evaluate(() => document.activeElement?.id), 'composer-input');
    await b.keyboard.press('Escape');
    await bar.waitFor({ state: 'detached' });
    await replyButton.focus();
    await b.keyboard.press('Space');
    await waitForText(bar, 'Replying to ada: Which day works for the review?');
    await b.keyboard.type('Thursday works for me');
    await b.keyboard.press('Enter');
    await bar.waitFor({ state: 'detached' });
    const answer = msgIn(b, 'Thursday works for me');
    await waitForText(answer.locator('.quote'), 'Which day works for the review?');
    assert.equal(await answer.locator('.quote .quote-sender').textContent(), 'ada');

    // bob, by mouse: hovering shows the button; × cancels.
    const late = msgIn(b, 'Or early next week');
    await late.hover();
    await late.getByRole('button', { name: 'Reply' }).click();
    await waitForText(bar, 'Replying to ada: Or early next week');
    // The bar takes room from the list: a reader at the bottom stays there.
    await b.waitForFunction(() => {
      const el = document.querySelector('.messages');
      return el.scrollHeight - el.scrollTop - el.clientHeight < 5;
    });
    await screenshot(b, 'replies');
    await bar.getByRole('button', { name: 'Cancel reply' }).click();
    await bar.waitFor({ state: 'detached' });
    // …and a reply to the very first message, sent with the button.
    const first = b.locator('.message-list li.msg[data-seq="1"]');
    await first.scrollIntoViewIfNeeded();
    await first.hover();
    await first.getByRole('button', { name: 'Reply' }).click();
    await waitForText(bar, 'Replying to ada: hello bob');
    await b.getByLabel('Message', { exact: true }).fill('sorry, only saw this now: hi!');
    await b.getByRole('button', { name: 'Send' }).click();
    await bar.waitFor({ state: 'detached' });
    await msgIn(b, 'sorry, only saw this now').waitFor();

    // ada sees the quote on bob's reply; the original is off screen until she chooses
    // the quote (by keyboard), then it is scrolled to, focused and highlighted a while.
    const answerA = msgIn(a, 'Thursday works for me');
    const quote = answerA.locator('.quote');
    await waitForText(quote, 'Which day works for the review?');
    assert.equal(await quote.locator('.quote-sender').textContent(), 'You');
    const originalA = msgIn(a, 'Which day works for the review?');
    const questionSeq = await originalA.getAttribute('data-seq');
    const offScreen = await originalA.evaluate((el) => {
      const r = el.getBoundingClientRect();
      const list = el.closest('.messages').getBoundingClientRect();
      return r.bottom <= list.top || r.top >= list.bottom;
    });
    assert.equal(offScreen, true, 'the original is off screen before the jump');
    await quote.focus();
    await a.keyboard.press('Enter');
    await a.waitForFunction(shownAndHighlighted, { selector: `.message-list li.msg[data-seq="${questionSeq}"]` });
    await a.waitForFunction(() => !document.querySelector('.message-list li.msg.highlight'), null, { timeout: 5_000 });

    // After a reload only the latest page is held: the quote of the first message says
    // it is not loaded; a click loads older pages until it comes.
    await a.reload();
    await a.waitForSelector('.pill[data-status="online"]');
    const lateA = msgIn(a, 'sorry, only saw this now');
    const lateQuote = lateA.locator('.quote');
    await waitForText(lateQuote, 'Original message not loaded');
    assert.equal(await a.locator('.message-list li.msg[data-seq="1"]').count(), 0);
    await lateQuote.click();
    await a.waitForFunction(shownAndHighlighted, { selector: '.message-list li.msg[data-seq="1"]' }, { timeout: 30_000 });
    await waitForText(lateQuote, 'hello bob');
    assert.equal(await lateQuote.locator('.quote-sender').textContent(), 'You');

    // What the server stored, and the replies it lists.
    const page = await server.api('GET', `/conversations/${direct}/messages?limit=40`, users.bob.token);
    assert.equal(page.status, 200);
    const stored = (body) => page.body.messages.find((m) => m.body === body);
    const q = stored('Which day works for the review?');
    const ans = stored('Thursday works for me');
    assert.equal(ans.reply_to, q.message_id);
    assert.equal(q.reply_to, null);
    assert.equal(stored('Or early next week').reply_to, null);
    const oldest = await server.api('GET', `/conversations/${direct}/messages?after_seq=0&limit=1`, users.bob.token);
    assert.equal(oldest.body.messages[0].body, 'hello bob');
    assert.equal(stored('sorry, only saw this now: hi!').reply_to, oldest.body.messages[0].message_id);
    const replies = await server.api('GET', `/conversations/${direct}/messages?reply_to=${q.message_id}`, users.ada.token);
    assert.equal(replies.status, 200);
    assert.deepEqual(
      replies.body.messages.map((m) => [m.message_id, m.body, m.reply_to]),
      [[ans.message_id, 'Thursday works for me', q.message_id]],
    );
    const none = await server.api('GET', `/conversations/${direct}/messages?reply_to=${stored('Or early next week').message_id}`, users.ada.token);
    assert.deepEqual(none.body, { messages: [] });
    // A reply to a message of another conversation is refused.
    const team = (await server.api('GET', '/conversations', users.ada.token)).body.conversations.find((c) => c.title === 'Team');
    const elsewhere = (await server.api('GET', `/conversations/${team.id}/messages?limit=1`, users.ada.token)).body.messages[0];
    const refused = await server.api('POST', `/conversations/${direct}/messages`, users.ada.token, {
      client_msg_id: 'reply-elsewhere',
      body: 'wrong place',
      reply_to: elsewhere.message_id,
    });
    assert.equal(refused.status, 404);
    assert.equal(refused.body.error.code, 'not_found');
  });

  it('mentions: @ offers the members, the keyboard picks one, the mentioned member sees it highlighted and a badge until he reads it', T, async () => {
    const a = A.page;
    const b = B.page;
    const team = (await server.api('GET', '/conversations', users.ada.token)).body.conversations.find((c) => c.title === 'Team');
    assert.equal(team.members.length, 3);
    const mentionsOf = async (user) =>
      (await server.api('GET', '/conversations', user.token)).body.conversations.find((c) => c.id === team.id).mentions_unread;
    assert.equal(await mentionsOf(users.bob), 0);
    // bob is in another conversation; ada opens the group.
    await b.goto(`/#/c/${direct}`);
    await a.goto(`/#/c/${team.id}`);
    await a.getByRole('heading', { name: 'Team' }).waitFor();

    // ada types "@bo": the list offers bob (members only, never herself); the arrows
    // keep to it, Enter puts "@bob " in the text and sends nothing.
    const input = a.getByLabel('Message', { exact: true });
    await input.focus();
    await input.pressSequentially('@bo', { delay: 20 });
    const listbox = a.getByRole('listbox', { name: 'Members to mention' });
    await listbox.waitFor();
    assert.deepEqual(await listbox.getByRole('option').allTextContents(), ['@bob']);
    const bobOption = `mention-${users.bob.user.id}`;
    assert.equal(await input.getAttribute('aria-activedescendant'), bobOption);
    assert.equal(await input.getAttribute('aria-controls'), 'mention-list');
    assert.equal(await listbox.getByRole('option', { name: '@bob' }).getAttribute('aria-selected'), 'true');
    await a.keyboard.press('ArrowDown');
    assert.equal(await input.getAttribute('aria-activedescendant'), bobOption);
    const sentBefore = await messageBodies(a).count();
    await a.keyboard.press('Enter');
    await listbox.waitFor({ state: 'detached' });
    assert.equal(await input.inputValue(), '@bob ');
    assert.equal(await input.getAttribute('aria-activedescendant'), null);
    assert.equal(await messageBodies(a).count(), sentBefore);
    await a.keyboard.type('see this');
    await a.keyboard.press('Enter');
    await waitForText(messageBodies(a), '@bob see this');
    const mine = a.locator('.message-list li.msg:not(.pending) .body', { hasText: '@bob see this' });
    await mine.locator('.mention[data-user]').waitFor();
    assert.deepEqual(await mine.locator('.mention').allTextContents(), ['@bob']);
    assert.equal(await mine.locator('.mention.me').count(), 0);

    // bob, elsewhere: a badge of one mention on the group, and on Chats in the top bar.
    const item = b.locator(`a.conv[data-conversation="${team.id}"]`);
    const badge = item.locator('.badge.mention');
    await badge.waitFor();
    assert.equal(await badge.getAttribute('data-mentions'), '1');
    assert.equal(await badge.getAttribute('aria-label'), '1 mention');
    assert.equal(await badge.textContent(), '@1');
    assert.match(await item.getAttribute('aria-label'), /, 1 mention$/);
    assert.equal(await b.locator('.topbar .badge.mention').getAttribute('aria-label'), '1 mention');
    assert.equal(await mentionsOf(users.bob), 1);
    assert.equal(await mentionsOf(users.ada), 0);

    // bob opens the group: his name is highlighted as his; the badges go.
    await item.click();
    const seen = b.locator('.message-list li.msg:not(.pending) .body', { hasText: '@bob see this' });
    await seen.waitFor();
    assert.deepEqual(await seen.locator('.mention.me').allTextContents(), ['@bob']);
    assert.equal(await seen.locator('.mention.me').getAttribute('data-user'), users.bob.user.id);
    await badge.waitFor({ state: 'detached' });
    await b.locator('.topbar .badge.mention').waitFor({ state: 'detached' });

    // The server stored who is mentioned, and counts nothing left once bob has read.
    const page = await server.api('GET', `/conversations/${team.id}/messages?limit=5`, users.bob.token);
    assert.equal(page.status, 200);
    const stored = page.body.messages.find((m) => m.body === '@bob see this');
    assert.deepEqual(stored.mentions, [users.bob.user.id]);
    assert.ok(page.body.messages.filter((m) => m !== stored).every((m) => Array.isArray(m.mentions)));
    for (let i = 0; i < 50 && (await mentionsOf(users.bob)) !== 0; i++) await b.waitForTimeout(100);
    assert.equal(await mentionsOf(users.bob), 0);

    // Members only, each once, a name at the end of a sentence too; an address and a
    // stranger stay text. bob, reading, gets no badge for it.
    const cyd = (await server.api('GET', '/users?query=cyd', users.ada.token)).body.users.find((u) => u.username === 'cyd');
    const body = 'thanks @bob. and @cyd, cc @nobody, bob@example.com and @bob again';
    const r = await server.api('POST', `/conversations/${team.id}/messages`, users.ada.token, { client_msg_id: 'mentions-1', body });
    assert.equal(r.status, 202);
    const last = b.locator('.message-list li.msg:not(.pending) .body', { hasText: 'thanks @bob.' });
    await last.waitFor();
    assert.deepEqual(await last.locator('.mention').allTextContents(), ['@bob', '@cyd', '@bob']);
    assert.equal(await last.locator('.mention.me').count(), 2);
    assert.equal(await last.textContent(), body);
    const again = await server.api('GET', `/conversations/${team.id}/messages?limit=1`, users.bob.token);
    assert.deepEqual(again.body.messages[0].mentions, [users.bob.user.id, cyd.id]);
    await b.waitForTimeout(300);
    assert.equal(await badge.count(), 0);

    // ada, with the mentions highlighted on her side too, starts another: Escape closes
    // the list and leaves the text.
    await a.locator('.message-list .body', { hasText: 'thanks @bob.' }).locator('.mention').nth(1).waitFor();
    await input.pressSequentially('@c', { delay: 20 });
    assert.deepEqual(await listbox.getByRole('option').allTextContents(), ['@cyd']);
    await screenshot(a, 'mentions');
    await a.keyboard.press('Escape');
    await listbox.waitFor({ state: 'detached' });
    assert.equal(await input.inputValue(), '@c');
    await input.fill('');
  });

  it('edits in place: only the sender may, by keyboard, and both users see the new body marked "edited"', T, async () => {
    const a = A.page;
    const b = B.page;
    await a.goto(`/#/c/${direct}`);
    await b.goto(`/#/c/${direct}`);
    await write(a, 'See you at 10 in room 4');
    const original = msgIn(b, 'See you at 10 in room 4');
    await original.waitFor();
    const id = await original.getAttribute('data-message-id');
    // bob may reply and react to ada's message, not edit or delete it.
    assert.deepEqual(await original.locator('.msg-actions button').evaluateAll((els) => els.map((el) => el.getAttribute('aria-label'))), ['Reply', 'React']);

    // ada, by keyboard: Edit opens the body in a text box with the focus in it; Enter
    // saves; the focus goes back to Edit.
    const mine = a.locator(`.message-list li.msg[data-message-id="${id}"]`);
    const editButton = mine.getByRole('button', { name: 'Edit' });
    await editButton.focus();
    await a.keyboard.press('Enter');
    const box = mine.getByRole('textbox', { name: 'Edit message' });
    assert.equal(await box.inputValue(), 'See you at 10 in room 4');
    assert.equal(await box.evaluate((el) => document.activeElement === el), true);
    await box.fill('See you at 11 in room 4');
    await screenshot(a, 'message-edit');
    await a.keyboard.press('Enter');
    await box.waitFor({ state: 'detached' });
    assert.equal(await editButton.evaluate((el) => document.activeElement === el), true);

    for (const page of [a, b]) {
      const shown = page.locator(`.message-list li.msg[data-message-id="${id}"]`);
      await waitForText(shown.locator('.body'), 'See you at 11 in room 4');
      assert.equal(await shown.locator('.edited').textContent(), 'edited');
      // The edit changed the message; it is no message of its own.
      assert.equal(await messageBodies(page).filter({ hasText: 'in room 4' }).count(), 1);
    }

    // What the server stored: an entry of kind edit naming the message, the message
    // itself marked edited.
    const page = await server.api('GET', `/conversations/${direct}/messages?limit=5`, users.bob.token);
    assert.equal(page.status, 200);
    const entry = page.body.messages.find((m) => m.kind === 'edit' && m.target_id === id);
    assert.ok(entry, `an edit entry in ${JSON.stringify(page.body.messages.map((m) => [m.seq, m.kind, m.target_id]))}`);
    assert.equal(entry.body, 'See you at 11 in room 4');
    assert.equal(entry.sender_id, users.ada.user.id);
    const text = page.body.messages.find((m) => m.message_id === id);
    assert.equal(text.kind, 'text');
    assert.ok(text.edited_at, 'edited_at is set on the message');
  });

  it('deletes with a confirmation: Cancel keeps it, Delete shows "Message deleted" for both users; a group owner may delete anyone’s message', T, async () => {
    const a = A.page;
    const b = B.page;
    await write(a, 'oops, this was for someone else');
    const mine = msgIn(a, 'oops, this was for someone else');
    const id = await mine.getAttribute('data-message-id');
    await msgIn(b, 'oops, this was for someone else').waitFor();

    await mine.hover();
    await mine.getByRole('button', { name: 'Delete' }).click();
    const confirm = mine.getByRole('group', { name: 'Delete this message for everyone?' });
    await confirm.waitFor();
    assert.equal(await confirm.getByRole('button', { name: 'Cancel' }).evaluate((el) => document.activeElement === el), true);
    await screenshot(a, 'message-delete');
    await a.keyboard.press('Enter'); // Cancel has the focus: nothing is deleted
    await confirm.waitFor({ state: 'detached' });
    await mine.getByRole('button', { name: 'Delete' }).click();
    await confirm.getByRole('button', { name: 'Delete' }).click();

    for (const page of [a, b]) {
      const gone = page.locator(`.message-list li.msg[data-message-id="${id}"]`);
      await waitForText(gone.locator('.body.deleted'), 'Message deleted');
      assert.equal(await gone.locator('.msg-actions button').count(), 0);
      assert.equal(await messageBodies(page).filter({ hasText: 'oops, this was for someone else' }).count(), 0);
    }
    const stored = (await server.api('GET', `/conversations/${direct}/messages?limit=5`, users.bob.token)).body.messages;
    assert.ok(stored.some((m) => m.kind === 'delete' && m.target_id === id), 'a delete entry names the message');
    const text = stored.find((m) => m.message_id === id);
    assert.equal(text.deleted, true);
    assert.equal(text.body, '');

    // In the group ada owns she may delete bob's message (not edit it); bob may not
    // delete hers.
    const team = (await server.api('GET', '/conversations', users.ada.token)).body.conversations.find((c) => c.title === 'Team');
    const r = await server.api('POST', `/conversations/${team.id}/messages`, users.bob.token, { client_msg_id: 'team-bob-1', body: 'bob in the team' });
    assert.equal(r.status, 202);
    await a.goto(`/#/c/${team.id}`);
    await b.goto(`/#/c/${team.id}`);
    const bobs = msgIn(a, 'bob in the team');
    await bobs.waitFor();
    assert.deepEqual(await bobs.locator('.msg-actions button').evaluateAll((els) => els.map((el) => el.getAttribute('aria-label'))), ['Reply', 'React', 'Delete']);
    const adas = msgIn(b, 'welcome to the team');
    await adas.waitFor();
    assert.deepEqual(await adas.locator('.msg-actions button').evaluateAll((els) => els.map((el) => el.getAttribute('aria-label'))), ['Reply', 'React']);
    await bobs.hover();
    await bobs.getByRole('button', { name: 'Delete' }).click();
    await bobs.getByRole('group', { name: 'Delete this message for everyone?' }).getByRole('button', { name: 'Delete' }).click();
    await waitForText(b.locator('.message-list .body.deleted'), 'Message deleted');
  });

  it('reactions: a picker by mouse and keyboard, counts and names, and choosing your own takes it back', T, async () => {
    const a = A.page;
    const b = B.page;
    await a.goto(`/#/c/${direct}`);
    await b.goto(`/#/c/${direct}`);
    await write(a, 'We shipped the release!');
    const id = await msgIn(a, 'We shipped the release!').getAttribute('data-message-id');
    const entries = (page) => page.locator('.message-list li.msg').count();
    const before = [await entries(a), await entries(b)];
    const msgOf = (page) => page.locator(`.message-list li.msg[data-message-id="${id}"]`);
    const chip = (page, emoji) => msgOf(page).locator(`.reactions button[data-emoji="${emoji}"]`);
    /** Wait until the chip of `emoji` says `count` (0: gone), then its title. */
    const chipSays = async (page, emoji, count) => {
      await page.waitForFunction(
        ({ id, emoji, count }) => {
          const el = document.querySelector(`li.msg[data-message-id="${id}"] .reactions button[data-emoji="${emoji}"]`);
          return count === 0 ? !el : el?.dataset.count === String(count);
        },
        { id, emoji, count },
      );
      return count ? chip(page, emoji).getAttribute('title') : null;
    };

    // bob, by mouse: React, then 👍.
    await msgOf(b).hover();
    await msgOf(b).getByRole('button', { name: 'React', exact: true }).click();
    await msgOf(b).getByRole('group', { name: 'Pick a reaction' }).getByRole('button', { name: 'React with thumbs up' }).click();
    assert.equal(await chipSays(b, '👍', 1), 'You reacted with 👍');
    assert.equal(await chipSays(a, '👍', 1), 'bob reacted with 👍');
    assert.equal(await chip(b, '👍').getAttribute('aria-pressed'), 'true');
    assert.equal(await chip(a, '👍').getAttribute('aria-pressed'), 'false');

    // ada adds hers with the chip, then 🎉 by keyboard: Enter on React, the arrows, Enter.
    await chip(a, '👍').click();
    assert.equal(await chipSays(a, '👍', 2), 'You and bob reacted with 👍');
    assert.equal(await chipSays(b, '👍', 2), 'You and ada reacted with 👍');
    const reactButton = msgOf(a).getByRole('button', { name: 'React', exact: true });
    await reactButton.focus();
    await a.keyboard.press('Enter');
    const picker = msgOf(a).getByRole('group', { name: 'Pick a reaction' });
    await picker.waitFor();
    assert.equal(await picker.getByRole('button', { name: 'React with thumbs up' }).getAttribute('aria-pressed'), 'true');
    await screenshot(a, 'reactions');
    await a.keyboard.press('ArrowRight');
    await a.keyboard.press('ArrowRight');
    await a.keyboard.press('ArrowRight');
    assert.equal(await a.evaluate(() => document.activeElement?.getAttribute('aria-label')), 'React with party');
    await a.keyboard.press('Enter');
    await picker.waitFor({ state: 'detached' });
    assert.equal(await reactButton.evaluate((el) => document.activeElement === el), true);
    assert.equal(await chipSays(b, '🎉', 1), 'ada reacted with 🎉');
    await chipSays(a, '🎉', 1);
    // Escape closes the picker without reacting.
    await a.keyboard.press('Enter');
    await picker.waitFor();
    await a.keyboard.press('Escape');
    await picker.waitFor({ state: 'detached' });

    // bob takes his 👍 back with his chip.
    await chip(b, '👍').click();
    assert.equal(await chipSays(a, '👍', 1), 'You reacted with 👍');
    assert.equal(await chipSays(b, '👍', 1), 'ada reacted with 👍');
    assert.equal(await chip(b, '👍').getAttribute('aria-pressed'), 'false');
    // ada takes hers back too: the chip goes.
    await chip(a, '👍').click();
    await chipSays(a, '👍', 0);
    await chipSays(b, '👍', 0);
    // Reactions are no messages of their own.
    assert.deepEqual([await entries(a), await entries(b)], before);

    // The server kept the set: one 🎉 from ada.
    const stored = (await server.api('GET', `/conversations/${direct}/messages?limit=10`, users.bob.token)).body.messages;
    const reactions = stored.filter((m) => m.kind === 'reaction' && m.target_id === id);
    assert.deepEqual(
      reactions.map((m) => [m.sender_id === users.ada.user.id ? 'ada' : 'bob', m.emoji, m.remove]),
      [
        ['bob', '👍', false],
        ['ada', '👍', false],
        ['ada', '🎉', false],
        ['bob', '👍', true],
        ['ada', '👍', true],
      ],
    );
  });

  it('search finds a message by its current words; a result opens the conversation scrolled to it and highlighted, loading older pages', T, async () => {
    const b = B.page;
    // Only the lists are held after a reload: the message found is pages back.
    await b.goto('/#/');
    await b.reload();
    await b.waitForSelector('.pill[data-status="online"]');
    const box = b.getByRole('searchbox', { name: 'Search messages' });
    const status = b.getByTestId('search-status');
    const results = b.getByRole('list', { name: 'Search results' }).getByRole('link');

    // The edited body is found by its new words only.
    await box.fill('see you 11');
    await waitForText(status, /^1 message$/);
    assert.equal(await results.locator('.result-text').textContent(), 'See you at 11 in room 4');
    await box.fill('see you 10 room');
    await waitForText(status, 'No messages found');
    // Any case, word prefixes.
    await box.fill('BULK mess 42');
    await waitForText(status, /^1 message$/);
    const result = results.first();
    // Named as the list names it: the direct conversation after ada.
    assert.equal(await result.locator('.result-where').textContent(), 'ada');
    assert.equal(await result.locator('.result-text').textContent(), 'bulk message 42');
    await screenshot(b, 'search');
    const id = await result.getAttribute('data-message-id');
    const seq = (await server.api('GET', `/search?q=${encodeURIComponent('bulk message 42')}`, users.bob.token)).body.results[0].seq;

    // By keyboard: Down from the box to the result, Enter.
    await box.focus();
    await b.keyboard.press('ArrowDown');
    await b.keyboard.press('Enter');
    await b.waitForFunction(shownAndHighlighted, { selector: `.message-list li.msg[data-message-id="${id}"]` }, { timeout: 30_000 });
    assert.equal(await b.locator(`.message-list li.msg[data-message-id="${id}"]`).getAttribute('data-seq'), String(seq));
    // The address is the conversation's again (so the same result can be chosen again),
    // and the results stay beside it.
    await b.waitForURL(new RegExp(`#/c/${direct}$`));
    assert.equal(await results.count(), 1);
    await b.waitForFunction(() => !document.querySelector('.message-list li.msg.highlight'), null, { timeout: 5_000 });
    await result.click();
    await b.waitForFunction(shownAndHighlighted, { selector: `.message-list li.msg[data-message-id="${id}"]` });

    // Escape in the box clears the search: the conversations are back.
    await box.focus();
    await b.keyboard.press('Escape');
    await b.locator('a.conv').first().waitFor();
    assert.equal(await status.count(), 0);

    // The server refuses an empty query.
    const empty = await server.api('GET', '/search?q=', users.bob.token);
    assert.equal(empty.status, 400);
    assert.equal(empty.body.error.code, 'bad_request');
  });

  it('is usable with the keyboard and labelled', T, async () => {
    const b = B.page;
    await b.goto('/#/');
    const links = b.locator('a.conv');
    await links.first().focus();
    await b.keyboard.press('ArrowDown');
    const focused = await b.evaluate(() => document.activeElement?.getAttribute('data-conversation'));
    assert.equal(focused, await links.nth(1).getAttribute('data-conversation'));
    await b.keyboard.press('Enter');
    await b.waitForURL(/#\/c\//);
    // Every control has a name.
    for (const route of ['#/', `#/c/${direct}`, '#/new', '#/settings', '#/scripts', '#/jobs', '#/observer']) {
      await b.goto(`/${route}`);
      await b.waitForTimeout(400);
      const unnamed = await b.evaluate(() =>
        [...document.querySelectorAll('input, textarea, select, button, a[href]')]
          .filter((el) => {
            const name = el.getAttribute('aria-label') || el.labels?.[0]?.textContent || el.textContent;
            return !name?.trim() && el.getAttribute('type') !== 'hidden';
          })
          .map((el) => el.outerHTML.slice(0, 80)),
      );
      assert.deepEqual(unnamed, [], `unnamed controls on ${route}`);
    }
  });

  it('fits a phone', T, async () => {
    const P = await openUser(browser, server, { viewport: { width: 390, height: 844 } });
    await signInWith(P.page, users.bob);
    await screenshot(P.page, 'chats-phone');
    const overflow = () => P.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok((await overflow()) <= 0, 'no sideways scrolling on the list');
    await P.page.locator(`a.conv[data-conversation="${direct}"]`).click();
    await waitForText(messageBodies(P.page), 'written offline');
    await screenshot(P.page, 'conversation-phone');
    assert.ok((await overflow()) <= 0, 'no sideways scrolling in a conversation');
    await P.page.getByRole('link', { name: 'Back to chats' }).click();
    await P.page.locator('a.conv').first().waitFor();
    assert.deepEqual(P.problems, []);
    await P.context.close();
  });

  // Automation and functions: settings, scripts, jobs and the observer.
  const features = [
    {
      title: 'auto-reply settings persist',
      run: async (page) => {
        await page.goto('/#/settings');
        await page.getByLabel('Reply automatically').check();
        await page.getByLabel('Reply text').fill('Away until Monday');
        await page.getByRole('button', { name: 'Save' }).click();
        await page.getByText('Saved.').waitFor();
        await screenshot(page, 'settings');
        await page.reload();
        await page.waitForSelector('.pill[data-status="online"]');
        await page.waitForFunction(
          () => document.querySelector('textarea[name="auto-reply-text"]')?.value === 'Away until Monday',
        );
        assert.equal(await page.getByLabel('Reply automatically').isChecked(), true);
      },
    },
    {
      title: 'the script editor shows a compile error, and a test run its actions and logs',
      run: async (page) => {
        await page.goto('/#/scripts/new');
        await page.getByLabel('Name').fill('echo bot');
        const source = page.getByLabel('Source (JavaScript)');
        await source.fill('export function onIncoming(message) {\n  return { reply: "x" \n}\n');
        await page.getByRole('button', { name: 'Save' }).click();
        await page.getByTestId('compile-error').waitFor();
        assert.match(await page.getByTestId('compile-error').innerText(), /line \d+/);
        await screenshot(page, 'script-compile-error');
        await source.fill('export function onIncoming(message, ctx) {\n  ctx.log("got", message.body);\n  return { reply: "pong" };\n}\n');
        await page.getByRole('button', { name: 'Run test' }).click();
        await page.getByTestId('test-result').waitFor();
        const result = await page.getByTestId('test-result').innerText();
        assert.match(result, /Actions \(1\)/);
        assert.match(result, /pong/);
        assert.match(result, /Logs \(1\)/);
        await screenshot(page, 'script-test-run');
        await page.goto('/#/scripts');
        await page.getByText('echo bot').waitFor();
        await screenshot(page, 'scripts');
      },
    },
    {
      title: "a job's result appears",
      run: async (page) => {
        await page.goto('/#/jobs');
        await page.getByRole('button', { name: 'Submit' }).click();
        await page.locator('a[data-job]').first().waitFor();
        await screenshot(page, 'jobs');
        await page.locator('a[data-job]').first().click();
        await page.getByTestId('job-result').waitFor({ timeout: 60_000 });
        assert.match(await page.getByTestId('job-elapsed').innerText(), /\d/);
        await screenshot(page, 'job-result');
      },
    },
    {
      title: 'the observer charts the job queue',
      run: async (page) => {
        await page.goto('/#/observer');
        await page.locator('.chart svg').first().waitFor();
        await page.waitForFunction(() => document.querySelector('.chart polyline')?.getAttribute('points')?.split(' ').length >= 6, null, { timeout: 15_000 });
        assert.equal(await page.locator('.chart polyline').count(), 6);
        await screenshot(page, 'observer');
      },
    },
  ];

  for (const f of features) {
    it(f.title, T, () => f.run(A.page));
  }

  it('logged nothing on the console but expected network failures', () => {
    assert.deepEqual(A.problems, []);
    assert.deepEqual(B.problems, []);
  });
});
