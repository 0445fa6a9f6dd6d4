// The QA page: y accepts, n rejects (with a reason), e fixes (the rubric's form, pre-filled
// with the answer, with a diff against the original); once every answer has its verdict they
// go to the server together. Adjudication: 1-9 starts the final answer's form from that
// answer, w writes in it, Ctrl+Enter sends it. The forms are answer_form.js's.
'use strict';
(function () {
  const root = document.getElementById('qa');
  if (!root) return;
  const project = root.dataset.project;
  const aid = root.dataset.assignment;
  const token = root.dataset.token;
  const adjudicate = root.dataset.kind === 'adjudicate';
  const cards = Array.from(document.querySelectorAll('.qa-submission'));
  const decided = new Map(); // submission id -> verdict object
  let busy = false;

  function flash(message) {
    const n = document.getElementById('notice');
    n.textContent = message;
    n.hidden = false;
  }

  const nextItem = () => window.Assay.postTo('/p/' + project + '/qa');
  const originalOf = (card) => JSON.parse(card.querySelector('.qa-original').value);

  function showError(res) {
    const box = document.getElementById(adjudicate ? 'final-error' : 'form-error');
    const data = res.data || {};
    const lines = (data.errors || []).map((e) => e.field + ': ' + e.message);
    box.textContent = [data.message || 'The server refused this.'].concat(lines).join('\n');
    box.hidden = false;
  }

  async function send(body) {
    if (busy) return;
    busy = true;
    body.token = token;
    const res = await window.Assay.api('POST', '/api/v1/qa/' + aid + '/verdict', body);
    busy = false;
    if (res.ok) {
      nextItem();
    } else if (res.status !== 401) {
      showError(res);
      if (!adjudicate) startOver(body.verdicts || [], res);
    }
  }

  // After a refused batch every answer is pending again; a fix the rubric refused reopens with
  // the reviewer's edits kept and each error beside its field.
  function startOver(verdicts, res) {
    decided.clear();
    cards.forEach((c) => setState(c, 'pending'));
    const errors = (res.data && res.data.errors) || [];
    for (const [i, card] of cards.entries()) {
      const prefix = 'verdicts[' + i + '].answer.';
      const own = errors.filter((e) => e.field && e.field.startsWith(prefix))
        .map((e) => ({ field: e.field.slice(prefix.length), message: e.message }));
      if (!verdicts[i] || verdicts[i].verdict !== 'fix' || !own.length) continue;
      const fix = forms.get(card);
      card.querySelector('.qa-fix').hidden = false;
      editing = card;
      focusCard(card);
      const first = window.Assay.showErrors(fix.form, { status: res.status, data: { errors: own } });
      const field = first && first.closest('.field');
      if (field) fix.focusField(field); else fix.focusFirst();
      return;
    }
    focusCard(current());
  }

  // Heartbeats keep the lease while the page is open.
  setInterval(async () => {
    const res = await window.Assay.api('POST', '/api/v1/qa/' + aid + '/heartbeat', { token });
    if (res.status === 409) flash((res.data && res.data.message) || 'This QA lease has ended.');
  }, 30000);

  const typing = (e) => e.target && (e.target.tagName === 'TEXTAREA' || e.target.tagName === 'INPUT');

  if (adjudicate) {
    const finalForm = document.getElementById('final-form');
    const final = window.Assay.answerForm(finalForm, { flash });
    let inFinal = false; // keys go to the final answer's form
    finalForm.addEventListener('focusin', () => { inFinal = true; });
    const sendFinal = () => send({ final: final.collect() });
    document.getElementById('btn-final').addEventListener('click', sendFinal);
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        sendFinal();
        return;
      }
      if (inFinal) {
        if (final.handleKey(e)) return;
        if (e.key === 'Escape') { e.preventDefault(); inFinal = false; document.activeElement.blur(); }
        return;
      }
      if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      if (/^[1-9]$/.test(e.key)) {
        const card = cards[Number(e.key) - 1];
        if (!card) return;
        e.preventDefault();
        final.clear();
        final.fill(originalOf(card));
        cards.forEach((c) => c.classList.toggle('current', c === card));
        inFinal = true;
        final.focusFirst();
      } else if (e.key === 'w') {
        e.preventDefault();
        final.clear();
        inFinal = true;
        final.focusFirst();
      }
    });
    return;
  }

  // ---------- QA: one verdict per answer, in order ----------
  let editing = null; // the card whose fix form is open
  function current() {
    return cards.find((c) => !decided.has(c.dataset.submission));
  }
  function focusCard(card) {
    cards.forEach((c) => c.classList.toggle('current', c === card));
    if (card) card.scrollIntoView({ block: 'nearest' });
  }
  function setState(card, state) {
    const s = card.querySelector('.qa-state');
    s.dataset.state = state;
    s.textContent = state === 'pending' ? '' : state;
    card.querySelector('.qa-reject').hidden = true;
    card.querySelector('.qa-fix').hidden = true;
    if (editing === card) editing = null;
  }
  function decide(card, verdict) {
    decided.set(card.dataset.submission, verdict);
    setState(card, verdict.verdict);
    const next = current();
    if (next) {
      focusCard(next);
    } else {
      document.activeElement && document.activeElement.blur();
      send({ verdicts: cards.map((c) => decided.get(c.dataset.submission)) });
    }
  }

  // A line diff (longest common subsequence) of the original and the fixed answer.
  function diff(a, b) {
    const x = a.split('\n'), y = b.split('\n');
    const n = x.length, m = y.length;
    const l = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
    for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) {
      l[i][j] = x[i] === y[j] ? l[i + 1][j + 1] + 1 : Math.max(l[i + 1][j], l[i][j + 1]);
    }
    const out = [];
    let i = 0, j = 0;
    while (i < n && j < m) {
      if (x[i] === y[j]) { i++; j++; }
      else if (l[i + 1][j] >= l[i][j + 1]) out.push('- ' + x[i++]);
      else out.push('+ ' + y[j++]);
    }
    while (i < n) out.push('- ' + x[i++]);
    while (j < m) out.push('+ ' + y[j++]);
    return out.length ? out.join('\n') : '(no change yet)';
  }

  // JSON with sorted keys, one value per line, so the diff shows changes of content only.
  function canon(value) {
    const sort = (v) => Array.isArray(v) ? v.map(sort)
      : (v && typeof v === 'object') ? Object.keys(v).sort().reduce((o, k) => { o[k] = sort(v[k]); return o; }, {})
        : v;
    return JSON.stringify(sort(value), null, 2);
  }

  const forms = new Map(); // card -> its fix form
  cards.forEach((card) => {
    const id = Number(card.dataset.submission);
    const reason = card.querySelector('.qa-reason');
    const shown = card.querySelector('.qa-diff');
    const original = canon(originalOf(card));
    const fix = window.Assay.answerForm(card.querySelector('.qa-fix-form'), {
      flash,
      onChange: () => { shown.textContent = diff(original, canon(fix.collect())); },
    });
    forms.set(card, fix);
    reason.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') { e.preventDefault(); setState(card, 'pending'); focusCard(card); }
      if (e.key === 'Enter' && !e.shiftKey) {
        e.preventDefault();
        if (!reason.value.trim()) { flash('A rejection needs a reason.'); return; }
        decide(card, { submission: id, verdict: 'reject', reason: reason.value.trim() });
      }
    });
  });

  function openFix(card) {
    const fix = forms.get(card);
    card.querySelector('.qa-fix').hidden = false;
    fix.clear();
    fix.fill(originalOf(card));
    card.querySelector('.qa-diff').textContent = diff(canon(originalOf(card)), canon(fix.collect()));
    editing = card;
    fix.focusFirst();
  }

  document.addEventListener('keydown', (e) => {
    if (editing) {
      const card = editing;
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        const answer = forms.get(card).collect();
        decide(card, { submission: Number(card.dataset.submission), verdict: 'fix', answer });
        return;
      }
      if (forms.get(card).handleKey(e)) return;
      if (e.key === 'Escape') { e.preventDefault(); setState(card, 'pending'); focusCard(card); }
      return;
    }
    if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
    const card = current();
    if (!card || busy) return;
    if (e.key === 'y') {
      e.preventDefault();
      decide(card, { submission: Number(card.dataset.submission), verdict: 'accept' });
    } else if (e.key === 'n') {
      e.preventDefault();
      card.querySelector('.qa-reject').hidden = false;
      card.querySelector('.qa-reason').focus();
    } else if (e.key === 'e') {
      e.preventDefault();
      openFix(card);
    }
  });
  focusCard(current());
})();
