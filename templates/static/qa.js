// The QA page: y accepts, n rejects (with a reason), e fixes (JSON, with a diff against the
// original); once every answer has its verdict they go to the server together. Adjudication:
// 1-9 copies an answer into the final answer, w writes one, Ctrl+Enter sends it.
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
      if (!adjudicate) {
        decided.clear();
        cards.forEach((c) => setState(c, 'pending'));
        focusCard(current());
      }
    }
  }

  // Heartbeats keep the lease while the page is open.
  setInterval(async () => {
    const res = await window.Assay.api('POST', '/api/v1/qa/' + aid + '/heartbeat', { token });
    if (res.status === 409) flash((res.data && res.data.message) || 'This QA lease has ended.');
  }, 30000);

  const typing = (e) => e.target && (e.target.tagName === 'TEXTAREA' || e.target.tagName === 'INPUT');

  if (adjudicate) {
    const final = document.getElementById('final');
    document.getElementById('btn-final').addEventListener('click', sendFinal);
    function sendFinal() {
      let answer;
      try {
        answer = JSON.parse(final.value);
      } catch (err) {
        showError({ data: { message: 'The final answer is not valid JSON: ' + err.message } });
        return;
      }
      send({ final: answer });
    }
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        sendFinal();
        return;
      }
      if (typing(e)) return;
      if (/^[1-9]$/.test(e.key)) {
        const card = cards[Number(e.key) - 1];
        if (!card) return;
        e.preventDefault();
        final.value = card.querySelector('.qa-original').value;
        cards.forEach((c) => c.classList.toggle('current', c === card));
      } else if (e.key === 'w') {
        e.preventDefault();
        final.focus();
      }
    });
    return;
  }

  // ---------- QA: one verdict per answer, in order ----------
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

  // A line diff (longest common subsequence) of the original and the fixed JSON.
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

  // JSON as the server prints it (keys sorted, two-space indent), so the diff shows changes
  // of content, not of layout; text that is not JSON yet is compared as typed.
  function canon(text) {
    const sort = (v) => Array.isArray(v) ? v.map(sort)
      : (v && typeof v === 'object') ? Object.keys(v).sort().reduce((o, k) => { o[k] = sort(v[k]); return o; }, {})
        : v;
    try { return JSON.stringify(sort(JSON.parse(text)), null, 2); } catch (err) { return text; }
  }

  cards.forEach((card) => {
    const id = Number(card.dataset.submission);
    const reason = card.querySelector('.qa-reason');
    const fixed = card.querySelector('.qa-fixed');
    const original = card.querySelector('.qa-original').value;
    const shown = card.querySelector('.qa-diff');
    const cancel = () => { setState(card, 'pending'); focusCard(card); };
    reason.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') { e.preventDefault(); cancel(); }
      if (e.key === 'Enter' && !e.shiftKey) {
        e.preventDefault();
        if (!reason.value.trim()) { flash('A rejection needs a reason.'); return; }
        decide(card, { submission: id, verdict: 'reject', reason: reason.value.trim() });
      }
    });
    fixed.addEventListener('input', () => { shown.textContent = diff(canon(original), canon(fixed.value)); });
    fixed.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') { e.preventDefault(); cancel(); }
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        let answer;
        try {
          answer = JSON.parse(fixed.value);
        } catch (err) {
          flash('The fixed answer is not valid JSON: ' + err.message);
          return;
        }
        decide(card, { submission: id, verdict: 'fix', answer });
      }
    });
  });

  document.addEventListener('keydown', (e) => {
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
      card.querySelector('.qa-fix').hidden = false;
      const fixed = card.querySelector('.qa-fixed');
      const original = card.querySelector('.qa-original').value;
      card.querySelector('.qa-diff').textContent = diff(canon(original), canon(fixed.value));
      fixed.focus();
    }
  });
  focusCard(current());
})();
