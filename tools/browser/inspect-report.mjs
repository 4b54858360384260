// Loads a tripflow report page from a file in headless Chromium (Debian's, through
// playwright-core) and prints what a reader would see, as JSON, for the Rust test
// (hosts/cli/tests/report.rs) to check against the KPI CSV:
//
//   node inspect-report.mjs REPORT.html [SCREENSHOT.png]
//
// Every request the page makes is recorded (a self-contained page makes none but its own
// file); the page is also laid out at phone width and printed to PDF.
import { chromium } from 'playwright-core';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const [page_path, screenshot] = process.argv.slice(2);
if (!page_path) {
  console.error('usage: node inspect-report.mjs REPORT.html [SCREENSHOT.png]');
  process.exit(2);
}
const url = pathToFileURL(resolve(page_path)).href;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 800 } });
  const requests = [];
  context.on('request', (r) => requests.push(r.url()));
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  await page.goto(url, { waitUntil: 'load' });

  const seen = await page.evaluate(() => {
    const text = (el) => (el ? el.textContent.trim() : null);
    const cells = (tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent.trim());
    const marks = (sel) => [...document.querySelectorAll(sel)].map((e) => [e.dataset.date, e.dataset.value]);
    const box = (sel) => {
      const e = document.querySelector(sel);
      if (!e) return null;
      const r = e.getBoundingClientRect();
      return { width: r.width, height: r.height };
    };
    return {
      title: document.title,
      header: [...document.querySelectorAll('#kpi-table thead th')].map((th) => th.textContent.trim()),
      rows: [...document.querySelectorAll('#kpi-table tr.day')].map(cells),
      gap_rows: [...document.querySelectorAll('#kpi-table tr.gap')].map((tr) => cells(tr)[0]),
      summary: Object.fromEntries([...document.querySelectorAll('#summary .v')].map((e) => [e.id, e.textContent.trim()])),
      trips_bars: marks('#chart-trips rect.bar'),
      total_bars: marks('#chart-total rect.bar'),
      average_dots: marks('#chart-average circle.avg-dot'),
      bands: [...document.querySelectorAll('#chart-average rect.band')].map((e) => [e.dataset.date, e.dataset.min, e.dataset.max]),
      gap_marks: {
        trips: marks('#chart-trips rect.gap').map((m) => m[0]),
        total: marks('#chart-total rect.gap').map((m) => m[0]),
        average: marks('#chart-average rect.gap').map((m) => m[0]),
      },
      accounting: Object.fromEntries([...document.querySelectorAll('#accounting-table td[id]')].map((e) => [e.id, e.textContent.trim()])),
      rejects: [...document.querySelectorAll('#accounting details.reject')].map((d) => ({
        reason: d.dataset.reason,
        summary: text(d.querySelector('summary')),
        examples: d.querySelectorAll('pre').length,
      })),
      provenance: [...document.querySelectorAll('#provenance tr')].map(cells),
      scripts: document.querySelectorAll('script').length,
      chart_boxes: ['#chart-trips', '#chart-total', '#chart-average'].map(box),
    };
  });

  // A phone: the page must not be wider than the screen (wide tables scroll in their box).
  await page.setViewportSize({ width: 390, height: 844 });
  const phone = await page.evaluate(() => ({
    width: 390,
    page_width: document.documentElement.scrollWidth,
    chart_width: document.querySelector('#chart-trips')?.getBoundingClientRect().width ?? null,
  }));
  await page.setViewportSize({ width: 1000, height: 800 });

  let shot = null;
  if (screenshot) {
    const png = await page.screenshot({ path: screenshot, fullPage: true });
    shot = { path: screenshot, bytes: png.length, width: png.readUInt32BE(16), height: png.readUInt32BE(20) };
  }
  await page.emulateMedia({ media: 'print' });
  const pdf = await page.pdf({ format: 'A4', printBackground: true });

  console.log(JSON.stringify({
    url, requests, errors, ...seen, phone, screenshot: shot,
    pdf: { bytes: pdf.length, pages: (pdf.toString('latin1').match(/\/Type\s*\/Page[^s]/g) || []).length },
  }));
} finally {
  await browser.close();
}
