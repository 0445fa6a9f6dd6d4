// The review page: the answer form (answer_form.js) driven from the keyboard, drafts kept in
// the browser, lease timer and heartbeats (which also measure active time), submit / skip /
// release.
'use strict';
(function () {
  const root = document.getElementById('review');
  if (!root) return;
  const form = document.getElementById('answer-form');
  const project = root.dataset.project;
  const aid = root.dataset.assignment;
  const token = root.dataset.token;
  const leaseSeconds = Number(root.dataset.leaseSeconds);
  const heartbeatSeconds = Number(root.dataset.heartbeatSeconds);
  const idleSeconds = Number(root.dataset.idleSeconds);
  const reviewUrl = '/p/' + project + '/review';
  const draftKey = 'assay-draft-' + aid;
  const answers = window.Assay.answerForm(form, {
    onChange: () => { saveDraft(); markActivity(); },
    flash: (text) => flash(text),
  });
  let busy = false;

  // The next task is taken by a POST (a GET of the page never takes a lease).
  const nextTask = () => window.Assay.postTo(reviewUrl);

  // ---------- drafts: nothing typed is lost to a reload, a crash or an expired session ----------
  function saveDraft() {
    try { localStorage.setItem(draftKey, JSON.stringify(answers.collect())); } catch (_) { /* storage full or off */ }
  }
  function restoreDraft() {
    let draft = null;
    try { draft = JSON.parse(localStorage.getItem(draftKey) || 'null'); } catch (_) { draft = null; }
    answers.fill(draft);
  }
  function dropDraft() { try { localStorage.removeItem(draftKey); } catch (_) { /* ignore */ } }

  function overlayOpen() {
    return !document.getElementById('help').hidden || !document.getElementById('end-dialog').hidden;
  }

  document.addEventListener('keydown', (e) => {
    markActivity();
    const help = document.getElementById('help');
    const dialog = document.getElementById('end-dialog');
    if (overlayOpen()) {
      if (e.key === 'Escape' || (e.key === '?' && !help.hidden)) { e.preventDefault(); closeOverlays(); }
      else if (e.key === 'Enter' && !dialog.hidden) { e.preventDefault(); confirmEnd(); }
      return;
    }
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') { e.preventDefault(); submit(); return; }
    const t = e.target;
    const typing = t.matches && t.matches('textarea, input:not([type=radio]):not([type=checkbox])');
    if (!typing && !e.ctrlKey && !e.metaKey && !e.altKey) {
      if (e.key === '?') { e.preventDefault(); help.hidden = false; return; }
      if (e.shiftKey && e.key === 'I') { e.preventDefault(); toggleInstructions(); return; }
      if (e.shiftKey && e.key === 'S') { e.preventDefault(); openEnd('skip'); return; }
      if (e.shiftKey && e.key === 'R') { e.preventDefault(); openEnd('release'); return; }
    }
    answers.handleKey(e);
  });

  // ---------- instructions, help, notices ----------
  function toggleInstructions() {
    const box = document.getElementById('instructions');
    if (box) box.hidden = !box.hidden;
  }
  function closeOverlays() {
    document.getElementById('help').hidden = true;
    document.getElementById('end-dialog').hidden = true;
    const active = answers.active();
    if (active) answers.focusField(active, false);
  }
  function flash(text) {
    const n = document.getElementById('notice');
    n.textContent = text;
    n.hidden = false;
  }
  const on = (id, ev, fn) => { const el = document.getElementById(id); if (el) el.addEventListener(ev, fn); };
  on('btn-instructions', 'click', toggleInstructions);
  on('btn-help', 'click', () => { document.getElementById('help').hidden = false; });
  on('help', 'click', (e) => { if (e.target.id === 'help') closeOverlays(); });

  // ---------- lease timer, heartbeats and active time ----------
  const skew = Number(root.dataset.serverNow || Date.now()) - Date.now();
  let expiresAt = Number(root.dataset.expiresAt);
  let lastActivity = Date.now();
  let activeMs = 0;
  let lastTick = Date.now();
  let serverActive = 0;
  let expired = false;

  function markActivity() { lastActivity = Date.now(); }
  ['mousemove', 'mousedown', 'scroll', 'touchstart'].forEach((ev) =>
    document.addEventListener(ev, markActivity, { passive: true }));

  const inUse = () => document.visibilityState === 'visible' && Date.now() - lastActivity < idleSeconds * 1000;
  const clock = (s) => Math.floor(s / 60) + ':' + String(Math.floor(s % 60)).padStart(2, '0');

  function tick() {
    const now = Date.now();
    if (inUse()) activeMs += now - lastTick;
    lastTick = now;
    const left = Math.max(0, (expiresAt - (now + skew)) / 1000);
    const timer = document.getElementById('lease-timer');
    timer.textContent = clock(left);
    timer.parentElement.classList.toggle('low', left < Math.min(60, leaseSeconds / 4));
    document.getElementById('active-time').textContent = clock(Math.max(serverActive, activeMs / 1000));
    if (left === 0 && !expired) {
      expired = true;
      flash('Your lease on this task ran out. You can still submit while the task needs answers; otherwise open the next task.');
    }
  }

  async function heartbeat() {
    if (!inUse() || busy) return;
    const res = await window.Assay.api('POST', '/api/v1/assignments/' + aid + '/heartbeat', { token });
    if (res.ok && res.data) {
      expiresAt = res.data.expires_at;
      serverActive = res.data.active_seconds;
      expired = false;
    } else if (res.status === 409) {
      expired = true;
      flash((res.data && res.data.message) || 'This lease has ended.');
    }
  }
  setInterval(tick, 1000);
  setInterval(heartbeat, heartbeatSeconds * 1000);
  document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') { markActivity(); heartbeat(); } });

  // ---------- submit, skip, release ----------
  async function submit() {
    if (busy) return;
    busy = true;
    const button = document.getElementById('btn-submit');
    button.disabled = true;
    window.Assay.clearErrors(form);
    try {
      const res = await window.Assay.api('POST', '/api/v1/assignments/' + aid + '/submit', { token, answer: answers.collect() });
      if (res.ok) {
        dropDraft();
        nextTask();
        return;
      }
      if (res.status === 401) return; // sent to login; the draft is kept
      const first = window.Assay.showErrors(form, res);
      const f = first && (first.classList.contains('field') ? first : first.querySelector && first.querySelector('.field'));
      if (f) answers.focusField(f);
      else if (first) first.scrollIntoView({ block: 'nearest' });
    } catch (err) {
      window.Assay.showErrors(form, { status: 0, data: { message: 'Could not reach the server; your answer is kept here. Try again.' } });
    } finally {
      busy = false;
      button.disabled = false;
    }
  }

  let ending = null;
  function openEnd(kind) {
    ending = kind;
    document.getElementById('end-title').textContent = kind === 'skip' ? 'Skip this task' : 'Release this task';
    document.getElementById('end-explain').textContent = kind === 'skip'
      ? 'You will not be given this task again.'
      : 'The task goes back to the queue; you or someone else may get it later.';
    document.getElementById('end-dialog').hidden = false;
    document.getElementById('end-reason').focus();
  }
  async function confirmEnd() {
    if (!ending || busy) return;
    busy = true;
    const reason = document.getElementById('end-reason').value;
    const res = await window.Assay.api('POST', '/api/v1/assignments/' + aid + '/' + ending, { token, reason: reason || null });
    busy = false;
    if (res.ok || res.status === 409) {
      dropDraft();
      nextTask();
    } else if (res.status !== 401) {
      closeOverlays();
      window.Assay.showErrors(form, res);
    }
  }
  form.addEventListener('submit', (e) => { e.preventDefault(); submit(); });
  on('btn-skip', 'click', () => openEnd('skip'));
  on('btn-release', 'click', () => openEnd('release'));
  on('end-confirm', 'click', confirmEnd);
  on('end-cancel', 'click', closeOverlays);

  // ---------- start ----------
  restoreDraft();
  tick();
  answers.focusFirst();
})();
