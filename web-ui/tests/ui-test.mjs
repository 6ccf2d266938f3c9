// The browser test of the wprobe web UI: a real chromium (headless),
// driven by playwright-core, against a real `wprobe serve`.
//
// A plain node script, run by tests/web_ui.rs, which starts the service and
// the fixtures. It takes from the environment:
//   WPROBE_UI_URL       the URL the service printed, with `#token=…`
//   WPROBE_FIXTURE      a program to spawn through the UI (the `spin` fixture,
//                       which calls `work` in a loop)
//   WPROBE_PLUGIN       a plugin to upload (latency.c.wasm)
//   WPROBE_ATTACH_PID   optional: a running process to attach to and detach
//   WPROBE_SCREENSHOTS  optional: where to write <view>.png (1280x800)
//   CHROMIUM            optional: the browser (default /usr/bin/chromium)
// It exits non-zero with a message naming the step that failed.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) fail(`set ${name}`);
  return v;
};

function fail(msg) {
  console.error(`ui-test: FAILED: ${msg}`);
  process.exit(1);
}

const URL_WITH_TOKEN = env('WPROBE_UI_URL');
const FIXTURE = env('WPROBE_FIXTURE');
const PLUGIN = env('WPROBE_PLUGIN');
const ATTACH_PID = process.env.WPROBE_ATTACH_PID || '';
const SHOTS = process.env.WPROBE_SCREENSHOTS || '';
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');

let step = 'start';
const pageErrors = [];

async function shot(page, view) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${view}.png`) });
}

/** Polls `fn` until it returns truthy (or throws the last failure). */
async function until(what, fn, ms = 20000) {
  const end = Date.now() + ms;
  let last = null;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

/** A view's panel, so that its labels do not collide with another view's. */
const panel = (page, name) => page.getByRole('tabpanel', { name });

async function tab(page, name) {
  step = `open the ${name} view`;
  await page.getByRole('tab', { name }).click();
  const selected = await page.getByRole('tab', { name }).getAttribute('aria-selected');
  if (selected !== 'true') throw new Error(`tab ${name} is not selected`);
}

async function run(page) {
  step = 'load the page from the URL the service printed';
  await page.goto(URL_WITH_TOKEN);
  await page.getByRole('tablist', { name: 'Views' }).waitFor();
  await until('the token to leave the URL', async () => !page.url().includes('token='));

  // ---- Targets: keyboard through the tabs, then spawn the fixture.
  step = 'move between tabs with the arrow keys';
  await page.getByRole('tab', { name: 'Targets' }).focus();
  await page.keyboard.press('ArrowRight');
  if ((await page.getByRole('tab', { name: 'Symbols' }).getAttribute('aria-selected')) !== 'true') {
    throw new Error('ArrowRight on the Targets tab did not select Symbols');
  }
  await page.keyboard.press('ArrowLeft');
  await tab(page, 'Targets');

  step = 'spawn the fixture';
  await page.getByLabel('Command line').fill(`${FIXTURE} 100000000 1`);
  await page.getByRole('button', { name: 'Spawn', exact: true }).click();
  const targets = page.getByRole('table', { name: 'Targets' });
  const spawned = targets.getByRole('row').filter({ hasText: basename(FIXTURE) });
  await spawned.filter({ hasText: 'running' }).waitFor();
  const targetId = (await spawned.getByRole('cell').first().textContent()).trim();
  const pid = (await spawned.getByRole('cell').nth(1).textContent()).trim();
  step = 'offer Kill for the spawned target only';
  await page.getByRole('button', { name: `Kill target ${targetId}` }).waitFor();

  if (ATTACH_PID) {
    step = 'find a process by pid and attach to it';
    await page.getByLabel('Search processes').fill(ATTACH_PID);
    await page.getByRole('button', { name: `Attach to pid ${ATTACH_PID}` }).click();
    await targets.getByRole('row').filter({ hasText: ATTACH_PID }).filter({ hasText: 'attached' }).waitFor();
  }
  await shot(page, 'targets');

  // ---- Plugins: upload through the file picker.
  await tab(page, 'Plugins');
  step = 'upload the plugin through the file picker';
  await page.getByLabel('Plugin file').setInputFiles(PLUGIN);
  const name = page.getByLabel(/^Name/);
  if ((await name.inputValue()) !== 'latency') throw new Error(`the name field says ${await name.inputValue()}, not latency`);
  await page.getByRole('button', { name: 'Upload', exact: true }).click();
  await page.getByRole('table', { name: 'Plugins' }).getByRole('button', { name: 'Details of plugin latency' }).waitFor();

  // ---- Symbols: find `work`, read its instructions, add a return probe.
  await tab(page, 'Symbols');
  step = 'search the target\'s functions';
  const symbols = panel(page, 'Symbols');
  await symbols.getByLabel('Target', { exact: true }).selectOption(targetId);
  await symbols.getByLabel('Search functions').fill('work');
  await page.getByRole('table', { name: 'Functions' }).getByRole('button', { name: 'work', exact: true }).click();
  step = 'show the instructions of work';
  const instructions = page.getByRole('table', { name: 'Instructions' });
  await instructions.getByRole('row').filter({ hasText: '+0x0' }).filter({ hasText: 'yes (' }).waitFor();
  step = 'create a return probe with the latency plugin from the symbol view';
  await symbols.getByLabel('Plugin', { exact: true }).selectOption({ label: 'latency (v1)' });
  await page.getByLabel(/also report the entry/).check();
  await page.getByRole('button', { name: 'Return probe' }).click();
  await page.getByRole('status').filter({ hasText: /Probe \d+ created/ }).waitFor();
  await shot(page, 'symbols');

  // ---- Probes: the hit count rises; a bad spec is refused, visibly.
  await tab(page, 'Probes');
  step = 'see the probe armed';
  const probes = page.getByRole('table', { name: 'Probes' });
  const row = probes.getByRole('row').filter({ hasText: `uretprobe:` }).filter({ hasText: ':work entry' });
  await row.filter({ hasText: 'armed' }).waitFor();
  const probeId = (await row.getByRole('cell').nth(1).textContent()).trim();
  const hits = async () => Number((await row.getByRole('cell').nth(5).textContent()).trim());
  step = 'watch the hit count rise';
  const first = await until('a first hit', hits);
  await until(`hits to rise above ${first}`, async () => (await hits()) > first);

  step = 'check a spec typed by hand (dry run as you type)';
  await panel(page, 'Probes').getByLabel('Target', { exact: true }).selectOption(targetId);
  const spec = page.getByLabel('Spec', { exact: true });
  await spec.fill('uprobe:libc:mallc');
  const check = page.getByRole('status', { name: 'Spec check' });
  await check.filter({ hasText: /refused: .*did you mean `malloc`/ }).waitFor();
  step = 'see the API error of a bad spec';
  await page.getByRole('button', { name: 'Create probe' }).click();
  await page.getByRole('alert').filter({ hasText: 'no symbol `mallc`' }).waitFor();
  await page.getByRole('button', { name: 'Dismiss error' }).click();
  await spec.fill(`uprobe:${FIXTURE}:work`);
  await check.filter({ hasText: 'would go to 1 place' }).waitFor();
  await shot(page, 'probes');
  await spec.fill('');

  // ---- Aggregations: the latency histogram renders and updates.
  await tab(page, 'Aggregations');
  step = 'see the latency histogram';
  const hist = page.getByRole('img', { name: /^latency_ns: \d+ values/ });
  await hist.waitFor();
  const count = async () => Number((await hist.getAttribute('aria-label')).match(/: (\d+) values/)[1]);
  const c0 = await count();
  await until('the histogram to update', async () => (await count()) > c0);
  await page.getByText(/overhead .*\/call/).first().waitFor();
  await shot(page, 'aggregations');

  // ---- Live events: rows stream in; one opens to its registers.
  await tab(page, 'Events');
  step = 'see live events';
  const events = page.getByRole('table', { name: 'Events' });
  await until('event rows', async () => (await events.getByRole('row').count()) > 5);
  step = 'filter events by thread';
  await page.getByLabel('Thread (tid)').fill(pid);
  await page.getByLabel('Thread (tid)').fill('');
  step = 'pause and open an event';
  await page.getByRole('button', { name: 'Pause' }).click();
  const open = events.getByRole('button', { name: /^Event \d+ details$/ }).first();
  const label = await open.getAttribute('aria-label');
  await open.focus();
  await page.keyboard.press('Enter');
  const detail = page.getByRole('region', { name: label.replace(' details', '') });
  await detail.getByRole('table', { name: 'Registers' }).getByText('rip', { exact: true }).waitFor();
  await detail.getByRole('table', { name: 'Arguments' }).waitFor();
  await shot(page, 'events');
  step = 'close the event with Escape';
  await page.keyboard.press('Escape');
  await detail.waitFor({ state: 'hidden' });
  await page.getByRole('button', { name: 'Resume' }).click();

  // ---- The plugin's detail: attachments, log; JSON checked in the browser.
  await tab(page, 'Plugins');
  step = 'open the plugin detail';
  await page.getByRole('button', { name: 'Details of plugin latency' }).click();
  const pd = page.getByRole('region', { name: /Plugin latency/ });
  await pd.getByRole('table', { name: 'Attachments' }).getByRole('row').filter({ hasText: `#${probeId}` }).waitFor();
  await until('the plugin to be active', async () => (await pd.getByText(/State: active/).count()) > 0);
  step = 'refuse invalid JSON configuration before sending it';
  await pd.getByLabel('Configuration (JSON)').fill('{"bad": ');
  await pd.getByText(/invalid JSON/).waitFor();
  if (!(await pd.getByRole('button', { name: 'Attach', exact: true }).isDisabled())) {
    throw new Error('Attach stays enabled with invalid JSON');
  }
  await pd.getByLabel('Configuration (JSON)').fill('{}');
  await shot(page, 'plugins');
  await page.keyboard.press('Escape');

  // ---- The view survives a reload (state in the URL, token in the session).
  await tab(page, 'Probes');
  step = 'reload the probes view';
  await page.getByLabel('Show target').selectOption(targetId);
  await until('the URL to carry the view', async () => page.url().includes('view=probes') && page.url().includes(`target=${targetId}`));
  await page.reload();
  if ((await page.getByRole('tab', { name: 'Probes' }).getAttribute('aria-selected')) !== 'true') {
    throw new Error(`after a reload of ${page.url()} the Probes view is not shown`);
  }
  if (page.url().includes('token=')) throw new Error('the token came back into the URL');
  await row.filter({ hasText: 'armed' }).waitFor();

  // ---- Disable, then delete through the selection.
  step = 'disable the probe';
  await page.getByRole('button', { name: `Disable probe ${probeId}` }).click();
  await row.filter({ hasText: 'disabled' }).waitFor();
  step = 'delete the probe through the selection';
  await page.getByRole('checkbox', { name: `Select probe ${probeId}` }).check();
  await page.getByRole('button', { name: 'Delete selected' }).click();
  await row.waitFor({ state: 'detached' });

  if (ATTACH_PID) {
    await tab(page, 'Targets');
    step = 'detach from the attached process';
    const attached = page.getByRole('table', { name: 'Targets' }).getByRole('row').filter({ hasText: 'attached' });
    const id = (await attached.getByRole('cell').first().textContent()).trim();
    if ((await page.getByRole('button', { name: `Kill target ${id}` }).count()) !== 0) {
      throw new Error(`an attached target (${id}) offers Kill`);
    }
    await page.getByRole('button', { name: `Detach target ${id}` }).click();
    await attached.waitFor({ state: 'detached' });
  }
  if (pageErrors.length) throw new Error(`errors in the page: ${pageErrors.join('; ')}`);
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] }).catch((e) =>
  fail(`cannot start ${CHROMIUM}: ${e.message}`));
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(20000);
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await run(page);
  console.log('ui-test: ok');
} catch (e) {
  // The page as it was, outside the committed screenshots.
  const failShot = join(tmpdir(), 'wprobe-ui-test-failure.png');
  const pages = browser.contexts().flatMap((c) => c.pages());
  if (pages[0]) await pages[0].screenshot({ path: failShot }).then(() => console.error(`ui-test: the page is in ${failShot}`), () => {});
  await browser.close();
  fail(`${step}: ${e.message.split('\n').slice(0, 6).join('\n')}`);
}
await browser.close();
