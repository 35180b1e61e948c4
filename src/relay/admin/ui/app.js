// The console: every view is drawn from the JSON API (/api/…), which is the one place the relay's state is read
// and changed; this script only shows it. No framework, no build step: it is embedded in the binary as written.
'use strict';

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const dryRun = document.querySelector('meta[name="dry-run"]').content === 'true';
const withLogin = document.querySelector('meta[name="login"]').content === 'true';
const view = document.getElementById('view');
let timers = [];

async function api(method, path, body) {
  const init = { method, headers: { 'x-csrf-token': csrf }, credentials: 'same-origin' };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401 && withLogin) {
    location.href = '/ui/login';
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  return { status: response.status, ok: response.ok, data };
}

// el('div', {class: 'x', id: 'y', onclick: f}, child, 'text', …)
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    // State that lives in properties, not attributes; everything else is an attribute.
    else if (['value', 'checked', 'selected', 'disabled', 'hidden', 'open', 'required', 'spellcheck'].includes(key)) node[key] = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function json(value) { return JSON.stringify(value, null, 2); }
function when(ms) { return ms ? new Date(ms).toLocaleString() : '—'; }
function problem(answer) {
  const data = answer.data || {};
  return (data.message || (typeof data === 'string' ? data : 'HTTP ' + answer.status));
}
function every(ms, fn) { timers.push(setInterval(fn, ms)); }

// Routing: #/integrations, #/integrations/new, #/integrations/NAME, #/mapping/NAME, #/events, #/dead-letters,
// #/quality.
async function route() {
  timers.forEach(clearInterval);
  timers = [];
  const parts = (location.hash || '#/integrations').slice(2).split('/').map(decodeURIComponent);
  for (const link of document.querySelectorAll('[data-nav]')) {
    link.classList.toggle('current', link.dataset.nav === (parts[0] === 'mapping' ? 'integrations' : parts[0]));
  }
  try {
    if (parts[0] === 'integrations' && parts[1] === 'new') await addIntegration();
    else if (parts[0] === 'integrations' && parts[1]) await integrationSettings(parts[1]);
    else if (parts[0] === 'mapping' && parts[1]) await mappingEditor(parts[1]);
    else if (parts[0] === 'events') await eventDebugger();
    else if (parts[0] === 'dead-letters') await deadLetters();
    else if (parts[0] === 'quality') await matchQuality();
    else await integrations();
  } catch (error) {
    view.replaceChildren(el('p', { class: 'error', text: 'The console cannot reach the relay: ' + error }));
  }
}

// ---------------------------------------------------------------- integrations

function modeBadge(p) {
  if (p.disabled) return el('span', { class: 'badge off', text: 'Disabled' });
  if (p.validate_only) return el('span', { class: 'badge validate', text: 'Validate Only' });
  return el('span', { class: 'badge live', text: 'Live' });
}

function keyText(key) {
  return key.set ? 'set' + (key.last4 ? ' · ends in ' + key.last4 : '') : 'not set';
}

async function integrations() {
  const answer = await api('GET', '/api/integrations');
  if (!answer.ok) throw problem(answer);
  const rows = answer.data.integrations.map((p) => el('tr', { 'data-integration': p.name },
    el('td', { 'data-label': 'Name' }, el('strong', { text: p.name }), ' ', el('span', { class: 'hint', text: p.origin === 'file' ? '(relay.yaml)' : '(console)' })),
    el('td', { 'data-label': 'Pixel' }, el('code', { text: p.pixel_id })),
    el('td', { 'data-label': 'Mode' }, modeBadge(p), p.paused ? el('span', { class: 'badge paused', title: p.paused_why || '', text: 'Paused' }) : ''),
    el('td', { 'data-label': 'Consent' }, p.consent_category),
    el('td', { 'data-label': 'API key', class: 'api-key' }, keyText(p.api_key)),
    el('td', { 'data-label': 'Queued' }, String(p.queue_depth ?? '?')),
    el('td', { 'data-label': 'Dead letters' }, p.dead_letters ? el('a', { href: '#/dead-letters', text: String(p.dead_letters) }) : '0'),
    el('td', { 'data-label': 'Last delivery' }, p.last_delivery
      ? [el('span', { class: p.last_delivery.status >= 200 && p.last_delivery.status < 300 ? 'ok' : 'error', text: p.last_delivery.status ? 'HTTP ' + p.last_delivery.status : 'no answer' }), ' ', el('span', { class: 'hint', text: when(p.last_delivery.at_ms) })]
      : '—', p.paused_why ? el('div', { class: 'error', text: p.paused_why }) : ''),
    el('td', { class: 'actions' },
      el('a', { class: 'button', href: '#/integrations/' + encodeURIComponent(p.name), text: 'Settings' }),
      el('a', { class: 'button', href: '#/mapping/' + encodeURIComponent(p.name), text: 'Field mappings' })),
  ));
  view.replaceChildren(
    el('div', { class: 'row' }, el('h1', { text: 'Integrations' }),
      el('a', { class: 'button primary', id: 'add-integration', href: '#/integrations/new', text: 'Add integration' })),
    el('div', { class: 'table-wrap' }, el('table', { class: 'stack', id: 'integrations' },
      el('thead', {}, el('tr', {}, ...['Name', 'Pixel', 'Mode', 'Consent', 'API key', 'Queued', 'Dead letters', 'Last delivery', ''].map((h) => el('th', { text: h })))),
      el('tbody', {}, rows))),
  );
}

function consentSelect(current) {
  const known = ['marketing', 'advertising', 'analytics', 'functional'];
  const select = el('select', { id: 'consent_category', name: 'consent_category' },
    ...known.map((c) => el('option', { value: c, text: c, selected: c === current })));
  if (current && !known.includes(current)) select.append(el('option', { value: current, text: current, selected: true }));
  return select;
}

function testEventPanel(name) {
  const status = el('p', { id: 'test-status' });
  const answer = el('pre', { id: 'test-answer', hidden: true });
  const button = el('button', {
    id: 'send-test', class: 'primary', type: 'button', text: 'Send a test event',
    onclick: async () => {
      button.disabled = true;
      status.textContent = 'Sending an Order Completed with validate_only: true…';
      status.className = '';
      const result = await api('POST', '/api/integrations/' + encodeURIComponent(name) + '/test-event', {});
      button.disabled = false;
      if (result.ok) {
        const response = result.data.response;
        const good = response.status >= 200 && response.status < 300;
        status.className = good ? 'ok' : 'error';
        status.textContent = 'OpenAI answered HTTP ' + response.status + (good ? ': the event is valid.' : '.');
        answer.hidden = false;
        answer.textContent = response.body;
        answer.dataset.status = String(response.status);
      } else {
        status.className = 'error';
        status.textContent = problem(result);
        answer.hidden = true;
      }
    },
  });
  return el('div', { class: 'card', id: 'test-step' },
    el('h2', { text: 'Send a test event' }),
    el('p', { class: 'hint', text: 'An Order Completed goes through this integration\'s mapping to OpenAI with validate_only: true — OpenAI checks it and records nothing. Its answer is shown as it came.' }),
    button, status, answer);
}

async function addIntegration() {
  const message = el('p', { class: 'error', id: 'form-error' });
  const form = el('form', { id: 'add-form', class: 'form' },
    el('label', { for: 'name', text: 'Name' }), el('input', { id: 'name', name: 'name', type: 'text', required: true, placeholder: 'shop', pattern: '[A-Za-z0-9_.\\-]{1,64}' }),
    el('label', { for: 'pixel_id', text: 'Pixel ID' }), el('input', { id: 'pixel_id', name: 'pixel_id', type: 'text', required: true }),
    el('p', { class: 'hint', text: 'From ChatGPT Ads Manager › Conversions; sent as the pid parameter.' }),
    el('label', { for: 'api_key', text: 'Conversions API key' }), el('input', { id: 'api_key', name: 'api_key', type: 'password', autocomplete: 'off', required: !dryRun }),
    el('p', { class: 'hint', text: 'Write-only: the console never shows it again, only its last four characters.' }),
    el('label', { for: 'consent_category', text: 'Consent category' }), consentSelect('marketing'),
    el('p', { class: 'hint', text: 'The category that governs advertising; it sets opt_out on every event.' }),
    el('label', { class: 'inline' }, el('input', { id: 'validate_only', name: 'validate_only', type: 'checkbox', checked: true }), 'Validate Only'),
    el('p', { class: 'hint', text: 'OpenAI validates the events but does not record them. Switch it off once the test event passes.' }),
    el('details', {}, el('summary', { text: 'Advanced' }),
      el('label', { for: 'endpoint', text: 'Endpoint' }), el('input', { id: 'endpoint', name: 'endpoint', type: 'url', placeholder: 'https://bzr.openai.com' }),
      el('p', { class: 'hint', text: 'Where events are sent; leave empty for OpenAI.' })),
    message,
    el('button', { class: 'primary', type: 'submit', id: 'create', text: 'Save' }));
  const next = el('div', { id: 'next' });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    message.textContent = '';
    const body = {
      name: form.name.value.trim(),
      pixel_id: form.pixel_id.value.trim(),
      consent_category: form.consent_category.value,
      validate_only: form.validate_only.checked,
    };
    if (form.api_key.value) body.api_key = form.api_key.value;
    if (form.endpoint.value.trim()) body.endpoint = form.endpoint.value.trim();
    const result = await api('POST', '/api/integrations', body);
    if (!result.ok) {
      message.textContent = problem(result);
      return;
    }
    form.api_key.value = '';
    for (const input of form.elements) input.disabled = true;
    next.replaceChildren(
      el('p', { class: 'ok', id: 'created', text: 'Integration ' + result.data.name + ' saved' + (result.data.validate_only ? ', in Validate Only.' : '.') }),
      testEventPanel(result.data.name),
      el('p', {}, el('a', { href: '#/integrations/' + encodeURIComponent(result.data.name), text: 'Settings' }), ' · ',
        el('a', { href: '#/mapping/' + encodeURIComponent(result.data.name), text: 'Field mappings' })));
  });
  view.replaceChildren(el('h1', { text: 'Add integration: OpenAI Ads' }), el('div', { class: 'steps' }, form, next));
}

async function integrationSettings(name) {
  const answer = await api('GET', '/api/integrations/' + encodeURIComponent(name));
  if (!answer.ok) throw problem(answer);
  const p = answer.data;
  const message = el('p', { id: 'form-message' });
  const form = el('form', { id: 'settings-form', class: 'form' },
    el('label', { for: 'pixel_id', text: 'Pixel ID' }), el('input', { id: 'pixel_id', type: 'text', value: p.pixel_id, required: true }),
    el('label', { for: 'api_key', text: 'Conversions API key' }),
    el('input', { id: 'api_key', type: 'password', autocomplete: 'off', placeholder: keyText(p.api_key) + ' — type a new key to replace it' }),
    el('label', { for: 'consent_category', text: 'Consent category' }), consentSelect(p.consent_category),
    el('label', { for: 'endpoint', text: 'Endpoint' }), el('input', { id: 'endpoint', type: 'url', value: p.endpoint }),
    el('label', { class: 'inline' }, el('input', { id: 'validate_only', type: 'checkbox', checked: p.validate_only }), 'Validate Only'),
    el('label', { class: 'inline' }, el('input', { id: 'disabled', type: 'checkbox', checked: p.disabled }), 'Disabled (takes no new events; what is queued waits)'),
    message,
    el('div', { class: 'row' }, el('button', { class: 'primary', type: 'submit', text: 'Save' }),
      p.origin === 'console' ? el('button', { class: 'danger', type: 'button', id: 'delete', text: 'Delete', onclick: async () => {
        if (!confirm('Delete integration ' + name + '?')) return;
        const result = await api('DELETE', '/api/integrations/' + encodeURIComponent(name));
        if (result.ok) location.hash = '#/integrations';
        else { message.className = 'error'; message.textContent = problem(result); }
      } }) : el('span', { class: 'hint', text: 'Defined in relay.yaml: remove it there.' })));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = {
      pixel_id: form.pixel_id.value.trim(),
      consent_category: form.consent_category.value,
      endpoint: form.endpoint.value.trim(),
      validate_only: form.validate_only.checked,
      disabled: form.disabled.checked,
    };
    if (form.api_key.value) body.api_key = form.api_key.value;
    const result = await api('PATCH', '/api/integrations/' + encodeURIComponent(name), body);
    form.api_key.value = '';
    if (result.ok) {
      message.className = 'ok';
      message.textContent = 'Saved; in force for the next event.';
      form.api_key.placeholder = keyText(result.data.api_key) + ' — type a new key to replace it';
    } else {
      message.className = 'error';
      message.textContent = problem(result);
    }
  });
  view.replaceChildren(
    el('h1', {}, 'Integration ', el('code', { text: name }), ' ', modeBadge(p)),
    el('p', {}, el('a', { href: '#/mapping/' + encodeURIComponent(name), text: 'Field mappings' }), ' · version ' + p.mapping.version),
    el('div', { class: 'steps' }, form, testEventPanel(name)));
}

// ---------------------------------------------------------------- mapping editor

// Byte offsets (the API's) to string indices (JavaScript's UTF-16).
function indexOfByte(text, byte) {
  let bytes = 0;
  let index = 0;
  for (const char of text) {
    if (bytes >= byte) break;
    const code = char.codePointAt(0);
    bytes += code < 0x80 ? 1 : code < 0x800 ? 2 : code < 0x10000 ? 3 : 4;
    index += char.length;
  }
  return index;
}

function escapeHtml(text) {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

async function mappingEditor(name) {
  const base = '/api/integrations/' + encodeURIComponent(name) + '/mapping';
  const [mapping, vocabulary, recent] = await Promise.all([
    api('GET', base),
    api('GET', '/api/vocabulary?pixel=' + encodeURIComponent(name)),
    api('GET', '/api/events?limit=50&pixel=' + encodeURIComponent(name)),
  ]);
  if (!mapping.ok) throw problem(mapping);
  const words = vocabulary.ok ? vocabulary.data : { functions: [], sources: [], targets: [], params: [], event_types: [] };
  const source = el('textarea', { id: 'source', spellcheck: false, autocomplete: 'off', 'aria-label': 'Mapping source' });
  source.value = mapping.data.source;
  const backdrop = el('pre', { class: 'backdrop', 'aria-hidden': 'true' });
  const completions = el('ul', { id: 'completions', hidden: true, role: 'listbox' });
  const editor = el('div', { class: 'editor' }, backdrop, source, completions);
  const status = el('p', { id: 'check-status' });
  const diagnostics = el('ul', { id: 'diagnostics' });
  const saveStatus = el('p', { id: 'save-status' });
  const versions = el('ul', { class: 'versions', id: 'versions' });
  const recentSelect = el('select', { id: 'recent' }, el('option', { value: '', text: 'a sample Order Completed' }),
    ...(recent.ok ? recent.data.events : []).map((e) => el('option', {
      value: String(e.seq),
      text: (e.input.event || e.input.type || 'event') + ' · ' + (e.message_id || '') + ' · ' + when(e.received_ms),
    })));
  const pasted = el('textarea', { id: 'paste', class: 'wide', rows: 4, placeholder: 'or paste a Signal event (JSON)' });
  const previewOutcome = el('p', { id: 'preview-outcome' });
  const preview = el('pre', { id: 'preview' });
  const provenance = el('div', { id: 'provenance' });
  let checked = null;

  function drawVersions(list) {
    versions.replaceChildren(...list.map((v) => el('li', { 'data-version': String(v.version) },
      'v' + v.version + ' — ' + v.note + (v.saved_ms ? ', ' + when(v.saved_ms) : '') + ' ',
      v.active ? el('strong', { text: '(in force)' }) : el('button', { type: 'button', class: 'rollback', 'data-version': String(v.version), text: 'Roll back to this', onclick: async () => {
        const result = await api('POST', base + '/rollback', { version: v.version });
        saveStatus.className = result.ok ? 'ok' : 'error';
        saveStatus.textContent = result.ok ? 'Version ' + v.version + ' is in force.' : problem(result);
        if (result.ok) await reload();
      } }))));
  }

  async function reload() {
    const fresh = await api('GET', base);
    if (fresh.ok) {
      source.value = fresh.data.source;
      drawVersions(fresh.data.versions);
      title.textContent = 'Field mappings — ' + name + ' (version ' + fresh.data.version + ')';
      await check();
    }
  }

  function highlight(list) {
    const text = source.value;
    const spans = list.map((d) => ({ from: indexOfByte(text, d.start), to: indexOfByte(text, Math.max(d.end, d.start + 1)), severity: d.severity }))
      .sort((a, b) => a.from - b.from);
    let html = '';
    let at = 0;
    for (const span of spans) {
      if (span.from < at) continue;
      html += escapeHtml(text.slice(at, span.from));
      html += '<mark class="' + span.severity + '">' + escapeHtml(text.slice(span.from, Math.min(span.to, text.length)) || ' ') + '</mark>';
      at = Math.min(span.to, text.length);
    }
    html += escapeHtml(text.slice(at)) + '\n';
    backdrop.innerHTML = html;
    backdrop.scrollTop = source.scrollTop;
    backdrop.scrollLeft = source.scrollLeft;
  }

  async function check() {
    const draft = source.value;
    const result = await api('POST', base + '/check', { source: draft });
    if (draft !== source.value) return; // typed meanwhile: the next check draws
    if (!result.ok) { status.className = 'error'; status.textContent = problem(result); return; }
    checked = result.data;
    const list = result.data.diagnostics;
    status.className = result.data.errors ? 'error' : result.data.warnings ? 'warn' : 'ok';
    status.dataset.errors = String(result.data.errors);
    status.textContent = result.data.errors || result.data.warnings
      ? result.data.errors + ' error(s), ' + result.data.warnings + ' warning(s)'
      : 'No problems: the draft compiles.';
    if (!result.data.errors && result.data.warnings) status.textContent += ' — it compiles; warnings do not stop a save.';
    diagnostics.replaceChildren(...list.map((d) => {
      const spanned = draft.slice(indexOfByte(draft, d.start), indexOfByte(draft, d.end));
      return el('li', { class: 'diagnostic', 'data-severity': d.severity, 'data-code': d.code, 'data-line': String(d.line), 'data-start': String(d.start), 'data-end': String(d.end) },
        el('strong', { text: d.severity + '[' + d.code + ']' }), ' line ' + d.line + ':' + d.column + ' — ' + d.message + ' ',
        spanned ? el('code', { class: 'spanned', text: spanned }) : '',
        d.label ? el('span', { class: 'label', text: ' ' + d.label }) : '',
        d.help ? el('span', { class: 'help', text: 'help: ' + d.help }) : '');
    }));
    highlight(list);
    if (!result.data.errors) await runPreview();
  }

  async function runPreview() {
    const body = { source: source.value };
    if (pasted.value.trim()) {
      try { body.event = JSON.parse(pasted.value); } catch (error) { previewOutcome.className = 'error'; previewOutcome.textContent = 'The pasted event is not JSON: ' + error.message; return; }
    } else if (recentSelect.value) {
      body.recent = Number(recentSelect.value);
    }
    const result = await api('POST', base + '/preview', body);
    if (!result.ok) { previewOutcome.className = 'error'; previewOutcome.textContent = problem(result); preview.textContent = ''; return; }
    const explanation = result.data.explanation;
    const outcome = explanation.outcome;
    previewOutcome.className = outcome.outcome === 'mapped' ? 'ok' : 'warn';
    previewOutcome.textContent = outcome.outcome + (outcome.event_type ? ': ' + outcome.event_type : '') + (outcome.message ? ' — ' + outcome.message : '');
    preview.textContent = outcome.event ? json(outcome.event) : '';
    provenance.replaceChildren(
      el('details', {}, el('summary', { text: 'Where each field came from (' + explanation.fields.length + ')' }),
        el('table', {}, ...explanation.fields.map((f) => el('tr', {}, el('td', {}, el('code', { text: f.field })), el('td', { text: f.origin.from === 'rule' ? f.origin.rule : f.origin.from }))))),
      el('details', {}, el('summary', { text: 'Rules that set nothing (' + (explanation.silent || []).length + ')' }),
        el('ul', { class: 'silent' }, ...(explanation.silent || []).map((s) => el('li', {}, el('code', { text: s.target }), ' — ' + s.why + ' (' + s.rule + ')')))));
  }

  // Completion: what the word before the cursor is, read from its line, as `engine lsp` reads it.
  let offered = [];
  let selected = 0;
  function wordBefore() {
    const upto = source.value.slice(0, source.selectionStart);
    const line = upto.slice(upto.lastIndexOf('\n') + 1);
    const code = line.replace(/#.*$/, '');
    const word = (code.match(/[$A-Za-z0-9_.\[\]*]*$/) || [''])[0];
    return { line, code, word, before: code.slice(0, code.length - word.length) };
  }
  function candidates() {
    const { code, word, before } = wordBefore();
    if (!word || (code.split('"').length - 1) % 2 === 1) return [];
    const lower = word.toLowerCase();
    let pool;
    if (word.startsWith('$')) pool = words.params.map((p) => ({ label: '$' + p, detail: 'parameter' }));
    else if (/\|\s*$/.test(before)) pool = words.functions.map((f) => ({ label: f.name, detail: f.signature }));
    else if (/->\s*$/.test(before) || /^\s*remember\s+(.*,\s*)?$/.test(before)) pool = words.targets.map((t) => ({ label: t.path, detail: t.type }));
    else pool = words.sources.map((s) => ({ label: s.path, detail: s.type + (s.personal ? ' · personal data' : '') }))
      .concat(words.functions.map((f) => ({ label: f.name, detail: f.signature })));
    return pool.filter((c) => c.label.toLowerCase().startsWith(lower) && c.label !== word).slice(0, 12);
  }
  function closeCompletions() { completions.hidden = true; offered = []; }
  function showCompletions() {
    offered = candidates();
    if (!offered.length) { closeCompletions(); return; }
    selected = 0;
    completions.replaceChildren(...offered.map((c, i) => el('li', { class: i === 0 ? 'selected' : '', role: 'option', 'data-label': c.label, onmousedown: (event) => { event.preventDefault(); accept(i); } },
      el('span', { text: c.label }), el('small', { text: c.detail || '' }))));
    const { line } = wordBefore();
    const lineNumber = source.value.slice(0, source.selectionStart).split('\n').length;
    const style = getComputedStyle(source);
    const lineHeight = parseFloat(style.lineHeight) || 19.5;
    const charWidth = measureChar(style);
    completions.style.top = (8 + lineNumber * lineHeight - source.scrollTop) + 'px';
    completions.style.left = Math.max(0, Math.min(8 + line.length * charWidth - source.scrollLeft, editor.clientWidth - 280)) + 'px';
    completions.hidden = false;
  }
  function accept(index) {
    const choice = offered[index];
    if (!choice) return;
    const { word } = wordBefore();
    const at = source.selectionStart;
    source.setRangeText(choice.label, at - word.length, at, 'end');
    closeCompletions();
    source.dispatchEvent(new Event('input'));
    source.focus();
  }
  source.addEventListener('keydown', (event) => {
    if (completions.hidden) return;
    if (event.key === 'ArrowDown' || event.key === 'ArrowUp') {
      event.preventDefault();
      selected = (selected + (event.key === 'ArrowDown' ? 1 : offered.length - 1)) % offered.length;
      [...completions.children].forEach((li, i) => li.classList.toggle('selected', i === selected));
    } else if (event.key === 'Enter' || event.key === 'Tab') {
      event.preventDefault();
      accept(selected);
    } else if (event.key === 'Escape') {
      closeCompletions();
    }
  });

  let pending = null;
  source.addEventListener('input', (event) => {
    highlight([]);
    if (event.isTrusted) showCompletions();
    saveStatus.textContent = '';
    clearTimeout(pending);
    pending = setTimeout(check, 250);
  });
  source.addEventListener('scroll', () => { backdrop.scrollTop = source.scrollTop; backdrop.scrollLeft = source.scrollLeft; closeCompletions(); });
  source.addEventListener('blur', () => setTimeout(closeCompletions, 150));
  recentSelect.addEventListener('change', () => { pasted.value = ''; runPreview(); });
  pasted.addEventListener('input', () => { clearTimeout(pending); pending = setTimeout(runPreview, 400); });

  const save = el('button', { class: 'primary', type: 'button', id: 'save', text: 'Save and apply', onclick: async () => {
    save.disabled = true;
    const result = await api('PUT', base, { source: source.value });
    save.disabled = false;
    if (result.ok) {
      saveStatus.className = 'ok';
      saveStatus.textContent = 'Saved as version ' + result.data.version + '; it maps the next event.';
      await reload();
    } else {
      saveStatus.className = 'error';
      saveStatus.textContent = problem(result);
    }
  } });
  const title = el('h1', { text: 'Field mappings — ' + name + ' (version ' + mapping.data.version + ')' });
  view.replaceChildren(
    title,
    el('div', { class: 'mapping' },
      el('section', {}, editor, status, diagnostics, el('div', { class: 'row' }, save, saveStatus),
        el('h2', { text: 'Versions' }), versions),
      el('section', {}, el('h2', { text: 'Preview' }),
        el('label', { for: 'recent', text: 'Event' }), recentSelect, pasted,
        previewOutcome, preview, provenance)));
  drawVersions(mapping.data.versions);
  await check();
}

const charWidths = {};
function measureChar(style) {
  const font = style.font || '13px monospace';
  if (!charWidths[font]) {
    // Styles set through the DOM, not a style attribute, which the page's Content-Security-Policy refuses.
    const probe = el('span', { text: 'x'.repeat(100) });
    Object.assign(probe.style, { position: 'absolute', visibility: 'hidden', whiteSpace: 'pre', font });
    document.body.append(probe);
    charWidths[font] = probe.getBoundingClientRect().width / 100 || 7.8;
    probe.remove();
  }
  return charWidths[font];
}

// ---------------------------------------------------------------- event debugger

function eventEntry(e, open) {
  const outcome = e.explanation.outcome || {};
  const dry = e.state === 'dry_run';
  const details = el('details', { class: 'event', open, 'data-seq': String(e.seq), 'data-pixel': e.pixel, 'data-state': e.state, 'data-message-id': e.message_id || '', 'data-event-id': e.event_id || '' },
    el('summary', {},
      el('span', { text: when(e.received_ms) }),
      el('strong', { text: e.input.event || e.input.type || '(no type)' }),
      el('span', { class: 'state ' + e.state, text: dry ? 'dry run — not sent' : e.state === 'validated' ? 'validated — Validate Only, not recorded' : e.state.replace('_', ' ') }),
      e.reason ? el('span', { class: 'hint', text: e.reason }) : '',
      el('span', { class: 'hint' }, 'pixel ', el('code', { text: e.pixel })),
      el('span', { class: 'hint' }, 'message ', el('code', { class: 'message-id', text: e.message_id || '—' })),
      e.event_id ? el('span', { class: 'hint' }, 'event ', el('code', { text: e.event_id })) : ''),
    outcome.message ? el('p', { class: 'why', text: outcome.message }) : '',
    outcome.event ? [el('h3', { text: 'Mapped payload' }), el('pre', { class: 'payload', text: json(outcome.event) })] : '',
    el('details', {}, el('summary', { text: 'Input (personal data masked)' }), el('pre', { class: 'input', text: json(e.input) })),
    el('details', {}, el('summary', { text: 'Where each field came from (' + (e.explanation.fields || []).length + ')' }),
      el('table', {}, ...(e.explanation.fields || []).map((f) => el('tr', {}, el('td', {}, el('code', { text: f.field })), el('td', { text: typeof f.value === 'string' ? f.value : JSON.stringify(f.value) }), el('td', { class: 'hint', text: f.origin.from === 'rule' ? f.origin.rule : f.origin.from }))))),
    el('details', { class: 'silent-rules' }, el('summary', { text: 'Why fields are missing: rules that set nothing (' + (e.explanation.silent || []).length + ')' }),
      el('ul', { class: 'silent' }, ...(e.explanation.silent || []).map((s) => el('li', {}, el('code', { text: s.target }), ' — ' + s.why + ' ', el('span', { class: 'hint', text: s.rule }))))),
    ...e.attempts.map((a) => el('div', { class: 'attempt', 'data-status': a.dry_run ? 'dry-run' : String(a.status ?? 'none') },
      el('strong', { text: a.dry_run ? 'Dry run: not sent to OpenAI' : 'Sent — ' + (a.status ? 'HTTP ' + a.status : 'no answer') }),
      ' batch of ' + a.batch_size + ', ' + when(a.at_ms), el('pre', { text: a.response }))));
  details.addEventListener('toggle', () => { if (details.open) openEvents.add(e.seq); else openEvents.delete(e.seq); });
  return details;
}

const openEvents = new Set();

async function eventDebugger() {
  const search = el('input', { type: 'search', id: 'search', placeholder: 'message id, order id, anonymous id…', 'aria-label': 'Search' });
  const outcome = el('select', { id: 'outcome', 'aria-label': 'Outcome' }, ...['', 'mapped', 'dropped', 'rejected', 'queued', 'delivered', 'validated', 'dead_lettered', 'dry_run'].map((o) => el('option', { value: o, text: o ? o.replace('_', ' ') : 'any outcome' })));
  const kind = el('input', { type: 'text', id: 'event-type', placeholder: 'event type', 'aria-label': 'Event type', list: 'event-types' });
  const kinds = el('datalist', { id: 'event-types' });
  const count = el('p', { id: 'event-count', class: 'hint' });
  const list = el('div', { id: 'events' });
  let shown = '';
  async function refresh() {
    const query = new URLSearchParams({ limit: '100' });
    if (search.value.trim()) query.set('q', search.value.trim());
    if (outcome.value) query.set('outcome', outcome.value);
    if (kind.value.trim()) query.set('type', kind.value.trim());
    const result = await api('GET', '/api/events?' + query);
    if (!result.ok) { count.textContent = problem(result); return; }
    const text = JSON.stringify(result.data.events);
    if (text === shown) return; // nothing new: what is open stays open, where it is
    shown = text;
    const names = new Set(result.data.events.flatMap((e) => [e.input.event, e.explanation.outcome && e.explanation.outcome.event_type]).filter(Boolean));
    for (const name of names) if (![...kinds.children].some((o) => o.value === name)) kinds.append(el('option', { value: name }));
    count.textContent = result.data.events.length + ' event(s) shown; the debugger keeps the latest ' + result.data.capacity + '.';
    list.replaceChildren(...result.data.events.map((e) => eventEntry(e, openEvents.has(e.seq))));
  }
  for (const input of [search, outcome, kind]) input.addEventListener('input', () => { shown = ''; refresh(); });
  view.replaceChildren(el('h1', { text: 'Event debugger' }),
    el('div', { class: 'filters' }, search, outcome, kind, kinds), count, list);
  await refresh();
  every(2000, refresh);
}

// ---------------------------------------------------------------- dead letters

async function deadLetters() {
  const answer = await api('GET', '/api/dead-letters');
  if (!answer.ok) throw problem(answer);
  const message = el('p', { id: 'dlq-message' });
  async function act(kind, body) {
    const result = await api('POST', '/api/dead-letters/' + kind, body);
    if (result.ok) {
      await deadLetters();
      const fresh = document.getElementById('dlq-message');
      fresh.className = 'ok';
      fresh.textContent = kind === 'replay' ? result.data.replayed + ' event(s) put back in their queue.' : result.data.purged + ' event(s) deleted.';
    } else {
      message.className = 'error';
      message.textContent = problem(result);
    }
  }
  const rows = answer.data.dead_letters.map((d) => el('tr', { 'data-seq': String(d.seq), 'data-pixel': d.pixel, 'data-id': d.id },
    el('td', { 'data-label': 'Pixel' }, d.pixel),
    el('td', { 'data-label': 'Event' }, el('code', { text: d.id }), ' ', d.event_type),
    el('td', { 'data-label': 'Why' }, el('strong', { text: d.reason }), el('div', { class: 'hint', text: d.detail })),
    el('td', { 'data-label': 'When' }, when(d.dead_ms)),
    el('td', { class: 'actions' },
      el('button', { type: 'button', class: 'replay', text: 'Replay', onclick: () => act('replay', { pixel: d.pixel, seqs: [d.seq] }) }),
      el('button', { type: 'button', class: 'danger purge', text: 'Purge', onclick: () => confirm('Delete this event for good?') && act('purge', { pixel: d.pixel, seqs: [d.seq] }) }),
      el('details', {}, el('summary', { text: 'payload' }), el('pre', { text: json(d.event) })))));
  view.replaceChildren(
    el('h1', { text: 'Dead letters' }),
    el('p', { class: 'hint', text: 'Events OpenAI refused or that grew too old to send. Replay puts them back in their queue once the cause is fixed (a mapping, a key); purge deletes them.' }),
    message,
    answer.data.count ? el('div', { class: 'row' },
      el('button', { type: 'button', id: 'replay-all', text: 'Replay all', onclick: () => act('replay', {}) }),
      el('button', { type: 'button', class: 'danger', id: 'purge-all', text: 'Purge all', onclick: () => confirm('Delete every dead letter for good?') && act('purge', {}) })) : el('p', { id: 'no-dead-letters', text: 'No dead letters.' }),
    el('div', { class: 'table-wrap' }, el('table', { class: 'stack', id: 'dead-letters' }, el('tbody', {}, rows))));
}

// ---------------------------------------------------------------- match quality

async function matchQuality() {
  const windowSelect = el('select', { id: 'window', 'aria-label': 'Window' }, ...[['hour', 'last hour'], ['day', 'last day'], ['week', 'last week']].map(([v, t]) => el('option', { value: v, text: t, selected: v === 'day' })));
  const body = el('div', { id: 'quality' });
  async function refresh() {
    const result = await api('GET', '/api/quality?window=' + windowSelect.value);
    if (!result.ok) { body.replaceChildren(el('p', { class: 'error', text: problem(result) })); return; }
    body.replaceChildren(...result.data.pixels.map(({ pixel, report }) => {
      const signals = [...new Set(report.types.flatMap((t) => Object.keys(t.signals)))];
      return el('section', { class: 'card', 'data-pixel': pixel },
        el('h2', {}, 'Pixel ', el('code', { text: pixel })),
        el('p', {}, el('span', { class: 'score', 'data-score': String(report.score), text: report.score.toFixed(1) + ' / 10' }),
          ' over ' + report.mapped + ' delivered event(s) of ' + report.events + ' seen'),
        report.types.length ? el('div', { class: 'table-wrap' }, el('table', { class: 'quality-types' },
          el('thead', {}, el('tr', {}, el('th', { text: 'Event type' }), el('th', { text: 'Events' }), el('th', { text: 'Score' }),
            ...signals.map((s) => el('th', { text: s })), el('th', { text: 'Opted out' }), el('th', { text: 'Age p50 / p99' }))),
          el('tbody', {}, ...report.types.map((t) => el('tr', { 'data-event-type': t.event_type },
            el('td', {}, el('code', { text: t.event_type })), el('td', { text: String(t.events) }), el('td', { text: t.score.toFixed(1) }),
            ...signals.map((s) => el('td', { 'data-signal': s, 'data-share': String(t.signals[s] ?? ''), text: t.signals[s] === undefined ? '—' : Math.round(t.signals[s] * 100) + ' %' })),
            el('td', { text: Math.round(t.opted_out * 100) + ' %' }),
            el('td', { text: t.age_p50_ms === null ? '—' : Math.round(t.age_p50_ms / 1000) + ' s / ' + Math.round(t.age_p99_ms / 1000) + ' s' })))))) : el('p', { text: 'No events delivered in this window yet.' }),
        Object.keys(report.dropped).length || Object.keys(report.rejected).length
          ? el('p', { class: 'hint reasons', text: [['Dropped', report.dropped], ['Refused', report.rejected]]
            .filter(([, counts]) => Object.keys(counts).length)
            .map(([label, counts]) => label + ': ' + Object.entries(counts).map(([reason, n]) => reason.replace(/_/g, ' ') + ' ' + n).join(', '))
            .join(' · ') }) : '',
        el('ul', { class: 'advice' }, ...report.types.flatMap((t) => t.advice).map((a) => el('li', { text: a }))));
    }));
  }
  windowSelect.addEventListener('change', refresh);
  view.replaceChildren(el('h1', { text: 'Match quality' }),
    el('p', { class: 'hint', text: 'How well the events OpenAI took are equipped to be matched to ad clicks: the click id (oppref) and the user fields. The score weighs oppref and email 3, phone 1.5, external id 1, IP and User-Agent 0.75 each, times the share not opted out.' }),
    el('div', { class: 'filters' }, windowSelect), body);
  await refresh();
  every(10000, refresh);
}

// ---------------------------------------------------------------- start

document.getElementById('dry-run-banner').hidden = !dryRun;
document.getElementById('logout').hidden = !withLogin;
window.addEventListener('hashchange', route);
route();
