// Headless Chromium (Debian's /usr/bin/chromium) driven by playwright-core, for tests that look at pages as a
// user's browser draws them.
//
//   node tests/browser/browser.js plots URL SCREENSHOT
//       Opens URL, prints JSON {title, requests: [non-file/data URLs requested], plots: [{name, width, height,
//       paths: [{w, h}]}]}: every <svg data-plot> with the drawn size of each of its <path> elements.
//   node tests/browser/browser.js extra-links BASE_URL USERNAME PASSWORD TASK_PAGE_PATH SCREENSHOT_DIR NAME...
//       Logs in to the Airflow UI, opens the task page, and for each extra-link NAME clicks its button, follows
//       the page it opens (same tab for a same-origin link, as the UI does) and prints JSON
//       {links: [{name, href, url, status, title, text}]}; screenshots of the task page and of each opened page
//       go to SCREENSHOT_DIR.
'use strict';

const { chromium } = require('playwright-core');

const LAUNCH = {
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update'],
};

async function plots(url, screenshot) {
  const browser = await chromium.launch(LAUNCH);
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    const requests = [];
    page.on('request', (r) => {
      if (!/^(file|data|about):/.test(r.url())) requests.push(r.url());
    });
    await page.goto(url, { waitUntil: 'load' });
    const result = await page.evaluate(() => ({
      title: document.title,
      plots: Array.from(document.querySelectorAll('svg[data-plot]')).map((svg) => {
        const box = svg.getBoundingClientRect();
        return {
          name: svg.getAttribute('data-plot'),
          width: box.width,
          height: box.height,
          paths: Array.from(svg.querySelectorAll('path')).map((p) => {
            const b = p.getBBox();
            return { w: b.width, h: b.height, cls: p.getAttribute('class') };
          }),
        };
      }),
    }));
    await page.screenshot({ path: screenshot, fullPage: true });
    result.requests = requests;
    process.stdout.write(JSON.stringify(result));
  } finally {
    await browser.close();
  }
}

async function extraLinks(baseUrl, username, password, taskPath, shotDir, names) {
  const browser = await chromium.launch(LAUNCH);
  try {
    const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const page = await context.newPage();
    await page.goto(`${baseUrl}/`, { waitUntil: 'domcontentloaded' });
    await page.waitForSelector('input[name="username"]', { timeout: 30000 });
    await page.fill('input[name="username"]', username);
    await page.fill('input[name="password"]', password);
    await page.click('button[type="submit"]');
    await page.waitForURL((u) => !u.pathname.includes('/login'), { timeout: 30000 });
    await page.goto(`${baseUrl}${taskPath}`, { waitUntil: 'domcontentloaded' });
    const links = [];
    for (const name of names) {
      const button = page.getByRole('link', { name, exact: true }).first();
      await button.waitFor({ timeout: 30000 });
      await page.screenshot({ path: `${shotDir}/task-page.png`, fullPage: true });
      const href = await button.getAttribute('href');
      const opensTab = (await button.getAttribute('target')) === '_blank';
      let target = page;
      if (opensTab) {
        [target] = await Promise.all([context.waitForEvent('page'), button.click()]);
      } else {
        await Promise.all([page.waitForURL((u) => u.href !== `${baseUrl}${taskPath}`), button.click()]);
      }
      await target.waitForLoadState('load');
      // The same URL again with the browser's cookies: the HTTP status the user's click got.
      const response = (await context.request.get(target.url(), { maxRedirects: 0 })).status();
      const slug = name.toLowerCase().replace(/[^a-z0-9]+/g, '-');
      await target.screenshot({ path: `${shotDir}/${slug}.png`, fullPage: true });
      links.push({
        name,
        href,
        url: target.url(),
        status: response,
        title: await target.title(),
        text: (await target.evaluate(() => document.body.innerText)).slice(0, 100000),
      });
      if (target !== page) await target.close();
      else await page.goto(`${baseUrl}${taskPath}`, { waitUntil: 'domcontentloaded' });
    }
    process.stdout.write(JSON.stringify({ links }));
  } finally {
    await browser.close();
  }
}

(async () => {
  const [mode, ...rest] = process.argv.slice(2);
  if (mode === 'plots') await plots(rest[0], rest[1]);
  else if (mode === 'extra-links') await extraLinks(rest[0], rest[1], rest[2], rest[3], rest[4], rest.slice(5));
  else throw new Error(`unknown mode ${mode}: use plots or extra-links`);
})().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
