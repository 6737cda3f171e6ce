// The browser sign-in flow in a real headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core; no downloaded browser build).
//
//   node tests/e2e/signin.mjs <base-url> [screenshot-dir]
//
// The gateway at <base-url> must route /app (auth = "required") to an
// upstream whose /page shows "Signed in as <X-Auth-User>", with
// access_ttl = ACCESS_TTL_MS (default 2 s), non-Secure cookies, and the user
// E2E_USER / E2E_PASSWORD (default alice / alice-pw). With CLOCK_URL (the
// Rust test's clock server), the gateway's clock is moved past the access
// TTL instead of waiting it out. With E2E_ABSOLUTE_RD (a front proxy in
// forward-auth mode), rd is expected as the absolute URL of the page;
// E2E_PAGE (default /app/page) and E2E_AUTH_PREFIX (default none) name the
// protected page and where the sign-in pages are. With E2E_TOTP_SECRET (base32),
// the user has a second factor: the code step is checked, its codes
// computed here at the gateway's time (CLOCK_URL's /now, else this clock).
// Exits 0 when every step passed; otherwise prints the failed step and exits 1.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, shots] = process.argv.slice(2);
if (!base) {
  console.error('usage: node signin.mjs <base-url> [screenshot-dir]');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const username = process.env.E2E_USER ?? 'alice';
const password = process.env.E2E_PASSWORD ?? 'alice-pw';
const accessTtlMs = Number(process.env.ACCESS_TTL_MS ?? 2000);
const clockUrl = process.env.CLOCK_URL;
// Behind a front proxy asking /verify/redirect, rd is the original
// absolute URL rather than a path.
const rdFor = (path) => (process.env.E2E_ABSOLUTE_RD ? `${base}${path}` : path);
// The protected page, and where authgate's own pages are ([auth] path_prefix).
const pagePath = process.env.E2E_PAGE ?? '/app/page';
const authPrefix = process.env.E2E_AUTH_PREFIX ?? '';
const totpSecret = process.env.E2E_TOTP_SECRET;

function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of text.replace(/=+$/, '').toUpperCase()) {
    bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  }
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}

/** RFC 6238: HMAC-SHA1, 6 digits, of time step `step`. */
function totp(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const h = createHmac('sha1', base32Decode(secret)).update(counter).digest();
  const o = h[h.length - 1] & 0x0f;
  const bin = ((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
  return String(bin % 1_000_000).padStart(6, '0');
}

/** The gateway's current time step (30 s). */
async function gatewayStep() {
  const now = clockUrl ? Number(await (await fetch(`${clockUrl}/now`)).text()) : Date.now();
  return Math.floor(now / 30_000);
}

// Lets the access token expire: the gateway's clock moves when the test
// runs one that can be moved, else real time passes.
async function pastAccessTtl(page) {
  const ms = accessTtlMs + 1500;
  if (clockUrl) {
    const moved = await fetch(`${clockUrl}/advance?ms=${ms}`, { method: 'POST' });
    assert.equal(moved.status, 204, 'the gateway clock moved');
  } else {
    await page.waitForTimeout(ms);
  }
}

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

async function step(name, body) {
  process.stdout.write(`- ${name} ... `);
  try {
    await body();
  } catch (error) {
    console.log('FAILED');
    error.message = `step "${name}": ${error.message}`;
    throw error;
  }
  console.log('ok');
}

/** The session cookies the browser holds for the gateway, by name. */
async function sessionCookies(context) {
  const all = await context.cookies(base);
  return Object.fromEntries(
    all.filter((c) => c.name === 'access_token' || c.name === 'refresh_token').map((c) => [c.name, c]),
  );
}

function assertOnSignIn(page, rd) {
  const url = new URL(page.url());
  assert.equal(url.pathname, `${authPrefix}/login`, `expected the sign-in page, at ${page.url()}`);
  assert.equal(url.searchParams.get('rd'), rd, 'rd names the page asked for');
}

async function screenshot(page, name) {
  if (!shots) return;
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: join(shots, name) });
}

const userDataDir = mkdtempSync(join(tmpdir(), 'authgate-e2e-'));
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: ARGS,
    viewport: { width: 720, height: 520 },
    deviceScaleFactor: 1,
    locale: 'en-US',
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(15_000);
  const cspViolations = [];
  page.on('console', (msg) => {
    if (/Content.Security.Policy/i.test(msg.text())) cspViolations.push(msg.text());
  });

  await step('a protected page sends the browser to the sign-in page', async () => {
    await page.goto(`${base}${pagePath}`);
    assertOnSignIn(page, rdFor(pagePath));
    assert.equal(await page.title(), 'Sign in');
    // Reached by their accessible names: the labels are wired to the inputs.
    await page.getByLabel('Username').waitFor();
    await page.getByLabel('Password').waitFor();
    await page.getByRole('button', { name: 'Sign in' }).waitFor();
    assert.equal(await page.locator('script').count(), 0, 'the page needs no JavaScript');
    await screenshot(page, 'signin.png');
  });

  await step('a wrong password shows the page again with the error (401)', async () => {
    await page.getByLabel('Username').fill(username);
    await page.getByLabel('Password').fill(`${password}-wrong`);
    const answer = page.waitForResponse((r) => r.request().method() === 'POST');
    await page.getByRole('button', { name: 'Sign in' }).click();
    assert.equal((await answer).status(), 401);
    await page.waitForLoadState();
    const alert = page.getByRole('alert');
    assert.match(await alert.innerText(), /Incorrect username or password/);
    assert.equal(await page.getByLabel('Username').inputValue(), username, 'the username is kept');
    assert.equal(Object.keys(await sessionCookies(context)).length, 0, 'no session cookie yet');
    await screenshot(page, 'signin-error.png');
  });

  let firstRefresh;
  async function signedIn() {
    await page.waitForURL(`${base}${pagePath}`);
    assert.equal(await page.locator('#user').innerText(), `Signed in as ${username}`);
    const cookies = await sessionCookies(context);
    assert.ok(cookies.access_token && cookies.refresh_token, 'both session cookies are set');
    assert.ok(cookies.refresh_token.httpOnly && cookies.access_token.httpOnly, 'cookies are HttpOnly');
    firstRefresh = cookies.refresh_token.value;
  }

  await step(
    totpSecret ? 'the right password asks for the code next, rd kept' : 'the right password leads back to the page, signed in',
    async () => {
      await page.getByLabel('Password').fill(password);
      await page.getByRole('button', { name: 'Sign in' }).click();
      if (!totpSecret) return signedIn();
      await page.getByLabel('One-time code').waitFor();
      assert.equal(await page.title(), 'Sign in');
      assert.equal(await page.locator('input[name="rd"]').inputValue(), rdFor(pagePath), 'rd is kept');
      assert.ok(!(await page.content()).includes(password), 'the password is not in the page');
      assert.equal(await page.locator('script').count(), 0, 'the page needs no JavaScript');
      assert.equal(Object.keys(await sessionCookies(context)).length, 0, 'no session cookie yet');
      await screenshot(page, 'signin-code.png');
    },
  );

  if (totpSecret) {
    await step('a wrong code shows the code page again with the error (401)', async () => {
      const now = await gatewayStep();
      const valid = [now - 1, now, now + 1, now + 2].map((s) => totp(totpSecret, s));
      let wrong = Number(valid[1]);
      do wrong = (wrong + 1) % 1_000_000;
      while (valid.includes(String(wrong).padStart(6, '0')));
      await page.getByLabel('One-time code').fill(String(wrong).padStart(6, '0'));
      const answer = page.waitForResponse((r) => r.request().method() === 'POST');
      await page.getByRole('button', { name: 'Verify' }).click();
      assert.equal((await answer).status(), 401);
      await page.waitForLoadState();
      assert.match(await page.getByRole('alert').innerText(), /invalid one-time code/);
      assert.equal(await page.locator('input[name="rd"]').inputValue(), rdFor(pagePath), 'rd is kept');
      assert.equal(Object.keys(await sessionCookies(context)).length, 0, 'no session cookie yet');
    });

    await step('the current code leads back to the page, signed in', async () => {
      await page.getByLabel('One-time code').fill(totp(totpSecret, await gatewayStep()));
      await page.getByRole('button', { name: 'Verify' }).click();
      await signedIn();
    });
  }

  await step('past the access TTL a reload still shows the page (silent refresh)', async () => {
    await pastAccessTtl(page);
    const response = await page.reload();
    assert.equal(response.status(), 200);
    assert.equal(page.url(), `${base}${pagePath}`);
    assert.equal(await page.locator('#user').innerText(), `Signed in as ${username}`);
    const cookies = await sessionCookies(context);
    assert.ok(cookies.access_token, 'a new access cookie was set');
    assert.ok(cookies.refresh_token, 'a refresh cookie is still held');
    assert.notEqual(cookies.refresh_token.value, firstRefresh, 'the refresh token was rotated');
  });

  await step('GET /logout shows the signed-out page and clears the cookies', async () => {
    const response = await page.goto(`${base}${authPrefix}/logout`);
    assert.equal(response.status(), 200);
    assert.equal(await page.getByRole('heading').innerText(), 'Signed out');
    assert.deepEqual(await sessionCookies(context), {}, 'the session cookies are gone');
  });

  await step('after signing out the page sends the browser to the sign-in page again', async () => {
    await page.goto(`${base}${pagePath}`);
    assertOnSignIn(page, rdFor(pagePath));
  });

  assert.deepEqual(cspViolations, [], 'the pages cause no Content-Security-Policy violation');
  console.log('browser sign-in flow: all steps passed');
} catch (error) {
  console.error(error.stack ?? String(error));
  process.exitCode = 1;
} finally {
  await context?.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
