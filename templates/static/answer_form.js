// Answer forms built from a rubric's criteria (the `criterion` partial): reading and filling
// answers, the widgets of each kind (scales, options, ranking, spans, rewrite diff, text
// counters) and their keys. The review page uses one; the QA page one per fix and one for an
// adjudication's final answer. Each form is its own <form>, so radio groups never mix.
'use strict';
(function () {
  window.Assay = window.Assay || {};

  // hooks: onChange(field) after any change, flash(message) for hints.
  window.Assay.answerForm = function (form, hooks) {
    const onChange = (hooks && hooks.onChange) || (() => {});
    const flash = (hooks && hooks.flash) || (() => {});
    const fields = Array.from(form.querySelectorAll('.field'));
    const topLevel = Array.from(form.children).filter((el) => el.classList.contains('criterion'));
    let active = null;

    const cp = (s) => Array.from(s).length; // code points, as the server counts
    const checked = (f, name) => f.querySelector('input[name="' + CSS.escape(name) + '"]:checked');

    function read(f) {
      const name = f.dataset.field;
      const kind = f.dataset.kind;
      switch (kind) {
        case 'likert': { const c = checked(f, name); return c ? parseInt(c.value, 10) : undefined; }
        case 'choice': { const c = checked(f, name); return c ? c.value : undefined; }
        case 'boolean': { const c = checked(f, name); return c ? c.value === 'true' : undefined; }
        case 'multi': return Array.from(f.querySelectorAll('input[type=checkbox]:checked')).map((i) => i.value);
        case 'pairwise': {
          const pick = checked(f, name + '.pick');
          if (!pick) return undefined;
          const out = { pick: pick.value };
          const strength = checked(f, name + '.strength');
          if (strength && pick.value !== 'tie') out.strength = parseInt(strength.value, 10);
          return out;
        }
        case 'number': {
          const v = f.querySelector('input').value;
          return v === '' ? undefined : Number(v);
        }
        case 'text': { const v = f.querySelector('textarea').value; return v === '' ? undefined : v; }
        case 'rewrite': return f.querySelector('textarea').value;
        case 'ranking': return f._order && f._order.length ? f._order.slice() : undefined;
        case 'spans': return (f._spans || []).map((s) => ({ start: s.start, end: s.end, label: s.label }));
        default: return undefined;
      }
    }

    function write(f, v) {
      if (v === undefined || v === null) return;
      const name = f.dataset.field;
      const setRadio = (n, value) => {
        const el = f.querySelector('input[name="' + CSS.escape(n) + '"][value="' + CSS.escape(String(value)) + '"]');
        if (el) el.checked = true;
      };
      switch (f.dataset.kind) {
        case 'likert': case 'choice': case 'boolean': setRadio(name, v); break;
        case 'multi': f.querySelectorAll('input[type=checkbox]').forEach((i) => { i.checked = v.includes(i.value); }); break;
        case 'pairwise': setRadio(name + '.pick', v.pick); if (v.strength) setRadio(name + '.strength', v.strength); break;
        case 'number': f.querySelector('input').value = v; break;
        case 'text': case 'rewrite': f.querySelector('textarea').value = v; break;
        case 'ranking': f._order = v.slice(); renderRanking(f); break;
        case 'spans': f._spans = v.slice(); renderSpans(f); break;
        default: break;
      }
      refresh(f);
    }

    function collect() {
      const answer = {};
      for (const c of topLevel) {
        const id = c.dataset.id;
        if (c.classList.contains('container')) {
          answer[id] = Array.from(c.querySelectorAll('.field')).map((f) => {
            const v = read(f);
            return v === undefined ? null : v;
          });
        } else {
          const v = read(c);
          if (v !== undefined) answer[id] = v;
        }
      }
      return answer;
    }

    // Empties every field.
    function clear() {
      form.reset();
      for (const f of fields) {
        if (f.dataset.kind === 'ranking') { f._order = []; renderRanking(f); }
        if (f.dataset.kind === 'spans') { f._spans = []; f._pending = null; renderSpans(f); }
        refresh(f);
      }
    }

    // Fills the form with an answer (a draft, or the answer a reviewer fixes).
    function fill(answer) {
      if (!answer || typeof answer !== 'object') return;
      for (const c of topLevel) {
        const v = answer[c.dataset.id];
        if (c.classList.contains('container')) {
          const items = Array.from(c.querySelectorAll('.field'));
          (v || []).forEach((iv, i) => { if (items[i]) write(items[i], iv); });
        } else {
          write(c, v);
        }
      }
    }

    // ---------- per-kind widgets ----------
    function refresh(f) {
      if (f.dataset.kind === 'text') {
        const ta = f.querySelector('textarea');
        const n = cp(ta.value);
        const counter = f.querySelector('.counter');
        counter.querySelector('.count').textContent = n;
        const min = Number(ta.dataset.min || 0);
        const max = ta.dataset.max ? Number(ta.dataset.max) : Infinity;
        counter.classList.toggle('bad', n > 0 && (n < min || n > max));
      } else if (f.dataset.kind === 'rewrite') {
        scheduleDiff(f);
      }
    }

    function renderRanking(f) {
      const order = f._order || [];
      const out = f.querySelector('.rank-order');
      const labels = order.map((id) => {
        const b = f.querySelector('.rank-item[data-id="' + CSS.escape(id) + '"]');
        return b ? b.dataset.key : id;
      });
      out.textContent = order.length ? labels.join(' › ') : 'press the numbers in order';
      out.classList.toggle('muted', !order.length);
      f.querySelectorAll('.rank-item').forEach((b) => b.classList.toggle('ranked', order.includes(b.dataset.id)));
    }

    function rank(f, button) {
      f._order = f._order || [];
      if (!f._order.includes(button.dataset.id)) f._order.push(button.dataset.id);
      renderRanking(f);
      changed(f);
      return f._order.length === f.querySelectorAll('.rank-item').length;
    }

    // Span marking: the target is plain text; offsets are code points, end exclusive.
    function spanText(f) {
      if (f._text === undefined) f._text = f.querySelector('.span-target').textContent;
      return f._text;
    }

    function renderSpans(f) {
      const text = spanText(f);
      const chars = Array.from(text);
      const target = f.querySelector('.span-target');
      const marks = (f._spans || []).map((s) => ({ ...s })).sort((a, b) => a.start - b.start);
      if (f._pending) marks.push({ ...f._pending, pending: true });
      marks.sort((a, b) => a.start - b.start || (a.pending ? 1 : -1));
      target.textContent = '';
      let at = 0;
      for (const m of marks) {
        if (m.start < at) continue;
        target.appendChild(document.createTextNode(chars.slice(at, m.start).join('')));
        const mark = document.createElement('mark');
        mark.textContent = chars.slice(m.start, m.end).join('');
        if (m.pending) mark.className = 'pending';
        else mark.dataset.label = m.label;
        target.appendChild(mark);
        at = m.end;
      }
      target.appendChild(document.createTextNode(chars.slice(at).join('')));
      const list = f.querySelector('.span-list');
      list.textContent = '';
      (f._spans || []).forEach((s, i) => {
        const li = document.createElement('li');
        li.textContent = s.label + ': “' + chars.slice(s.start, s.end).join('') + '” ';
        const rm = document.createElement('button');
        rm.type = 'button';
        rm.className = 'link';
        rm.textContent = 'remove';
        rm.addEventListener('click', () => { f._spans.splice(i, 1); renderSpans(f); changed(f); });
        li.appendChild(rm);
        list.appendChild(li);
      });
    }

    // The browser selection inside the target, as code-point offsets.
    function selectionIn(f) {
      const target = f.querySelector('.span-target');
      const sel = window.getSelection();
      if (!sel || sel.rangeCount === 0 || sel.isCollapsed) return null;
      const range = sel.getRangeAt(0);
      if (!target.contains(range.startContainer) || !target.contains(range.endContainer)) return null;
      const before = document.createRange();
      before.selectNodeContents(target);
      before.setEnd(range.startContainer, range.startOffset);
      const start = cp(before.toString());
      const end = start + cp(range.toString());
      return end > start ? { start, end } : null;
    }

    function findInSpans(f, query, from) {
      const text = spanText(f).toLowerCase();
      const q = query.toLowerCase();
      if (!q) return null;
      let at = text.indexOf(q, from);
      if (at < 0) at = text.indexOf(q);
      if (at < 0) return null;
      const start = cp(text.slice(0, at));
      return { start, end: start + cp(q), at };
    }

    function markSpan(f, label) {
      const range = selectionIn(f) || f._pending;
      if (!range) {
        flash('Select text in the box (or press / to find it), then choose a label.');
        return false;
      }
      f._spans = f._spans || [];
      f._spans.push({ start: range.start, end: range.end, label });
      f._pending = null;
      const sel = window.getSelection();
      if (sel) sel.removeAllRanges();
      renderSpans(f);
      changed(f);
      return true;
    }

    let diffTimer = null;
    function scheduleDiff(f) {
      clearTimeout(diffTimer);
      diffTimer = setTimeout(() => renderDiff(f), 120);
    }

    // Word diff by longest common subsequence (bounded; long texts fall back to a summary).
    function renderDiff(f) {
      const before = f.querySelector('.rewrite-source').textContent;
      const after = f.querySelector('textarea').value;
      const out = f.querySelector('.rewrite-diff');
      out.textContent = '';
      if (before === after) {
        const s = document.createElement('span');
        s.className = 'muted';
        s.textContent = 'No changes yet.';
        out.appendChild(s);
        return;
      }
      const a = before.split(/(\s+)/);
      const b = after.split(/(\s+)/);
      if (a.length * b.length > 4000000) {
        out.textContent = 'Changed (' + cp(before) + ' → ' + cp(after) + ' characters); too long to show word by word.';
        return;
      }
      const n = a.length, m = b.length;
      const dp = new Uint32Array((n + 1) * (m + 1));
      for (let i = n - 1; i >= 0; i--) {
        for (let j = m - 1; j >= 0; j--) {
          dp[i * (m + 1) + j] = a[i] === b[j] ? dp[(i + 1) * (m + 1) + j + 1] + 1
            : Math.max(dp[(i + 1) * (m + 1) + j], dp[i * (m + 1) + j + 1]);
        }
      }
      const push = (tag, text) => {
        if (!text) return;
        const last = out.lastChild;
        const name = tag || '#text';
        if (last && last.nodeName.toLowerCase() === name.toLowerCase()) { last.textContent += text; return; }
        const node = tag ? document.createElement(tag) : document.createTextNode('');
        node.textContent = text;
        out.appendChild(node);
      };
      let i = 0, j = 0;
      while (i < n && j < m) {
        if (a[i] === b[j]) { push(null, a[i]); i++; j++; }
        else if (dp[(i + 1) * (m + 1) + j] >= dp[i * (m + 1) + j + 1]) { push('del', a[i]); i++; }
        else { push('ins', b[j]); j++; }
      }
      while (i < n) push('del', a[i++]);
      while (j < m) push('ins', b[j++]);
    }

    // ---------- focus and keyboard ----------
    const textLike = (f) => ['text', 'rewrite', 'number'].includes(f.dataset.kind);

    function focusField(f, enter) {
      if (!f) return;
      if (active) active.classList.remove('active');
      active = f;
      f.classList.add('active');
      f.scrollIntoView({ block: 'nearest' });
      if (textLike(f) && enter !== false) {
        const input = f.querySelector('textarea, input');
        input.focus({ preventScroll: true });
        // Start writing at the end of what is there (a rewrite starts from the original text).
        if (input.tagName === 'TEXTAREA' && !f._placed) {
          f._placed = true;
          input.setSelectionRange(input.value.length, input.value.length);
        }
      } else {
        f.focus({ preventScroll: true });
      }
    }

    function move(step) {
      const i = active ? fields.indexOf(active) : -1;
      const next = fields[Math.min(fields.length - 1, Math.max(0, i + step))];
      focusField(next);
    }

    function complete(f) {
      const v = read(f);
      if (f.dataset.kind === 'pairwise') {
        return v && (v.pick === 'tie' || v.strength !== undefined || !f.querySelector('.strength'));
      }
      return v !== undefined;
    }

    function changed(f) {
      const holder = f.closest('.criterion');
      const slot = holder && holder.querySelector(':scope > .field-error');
      if (slot) { slot.hidden = true; slot.textContent = ''; }
      if (holder) holder.classList.remove('invalid');
      refresh(f);
      onChange(f);
    }

    // A key for the active question. Returns true when it was used.
    function fieldKey(f, e) {
      const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
      const kind = f.dataset.kind;
      if (kind === 'spans') {
        if (key === '/') { f.querySelector('.span-search').focus(); return true; }
        if (key === 'Backspace' && f._spans && f._spans.length) { f._spans.pop(); renderSpans(f); changed(f); return true; }
        const b = f.querySelector('.span-label[data-key="' + CSS.escape(key) + '"]');
        if (b) { markSpan(f, b.dataset.label); return true; }
        return false;
      }
      if (kind === 'ranking') {
        if (key === 'Backspace' && f._order && f._order.length) { f._order.pop(); renderRanking(f); changed(f); return true; }
        const b = f.querySelector('.rank-item[data-key="' + CSS.escape(key) + '"]');
        if (b) { if (rank(f, b)) move(1); return true; }
        return false;
      }
      if (textLike(f) && key === 'Enter') { focusField(f, true); return true; }
      const input = f.querySelector('input[data-key="' + CSS.escape(key) + '"]');
      if (!input) return false;
      if (input.type === 'checkbox') input.checked = !input.checked;
      else input.checked = true;
      changed(f);
      if (input.type === 'radio' && complete(f)) move(1);
      return true;
    }

    // A key pressed on the page while this form is in use. True when the key was the form's
    // (used, or typed into one of its fields): the page then leaves it alone.
    function handleKey(e) {
      const t = e.target;
      const typing = t.matches && t.matches('textarea, input:not([type=radio]):not([type=checkbox])');
      if (e.key === 'Tab' && (form.contains(t) || t === document.body)) {
        e.preventDefault();
        move(e.shiftKey ? -1 : 1);
        return true;
      }
      if (typing) {
        if (!form.contains(t)) return false;
        if (t.classList.contains('span-search')) {
          const f = t.closest('.field');
          if (e.key === 'ArrowDown' || e.key === 'Enter') {
            e.preventDefault();
            const hit = findInSpans(f, t.value, e.key === 'ArrowDown' && f._hit !== undefined ? f._hit + 1 : 0);
            f._pending = hit ? { start: hit.start, end: hit.end } : null;
            f._hit = hit ? hit.at : undefined;
            renderSpans(f);
            if (e.key === 'Enter') focusField(f, false);
          } else if (e.key === 'Escape') {
            e.preventDefault();
            focusField(f, false);
          }
          return true;
        }
        if (e.key === 'Escape') { e.preventDefault(); t.blur(); focusField(t.closest('.field'), false); }
        return true;
      }
      if (e.ctrlKey || e.metaKey || e.altKey) return false;
      if (e.key === 'ArrowDown') { e.preventDefault(); move(1); return true; }
      if (e.key === 'ArrowUp') { e.preventDefault(); move(-1); return true; }
      if (!active) focusField(fields[0], false);
      if (active && fieldKey(active, e)) { e.preventDefault(); return true; }
      const jump = fields.find((f) => f.dataset.key === e.key.toLowerCase());
      if (jump) { e.preventDefault(); focusField(jump); return true; }
      if (e.key === 'Enter' && active) { e.preventDefault(); move(1); return true; }
      return false;
    }

    // Mouse and touch work too.
    form.addEventListener('change', (e) => { const f = e.target.closest('.field'); if (f) changed(f); });
    form.addEventListener('input', (e) => {
      const f = e.target.closest('.field');
      if (!f) return;
      if (e.target.classList.contains('span-search')) {
        const hit = findInSpans(f, e.target.value, 0);
        f._pending = hit ? { start: hit.start, end: hit.end } : null;
        f._hit = hit ? hit.at : undefined;
        renderSpans(f);
        return;
      }
      changed(f);
    });
    form.addEventListener('click', (e) => {
      const f = e.target.closest('.field');
      if (!f) return;
      if (f !== active) focusField(f, false);
      const label = e.target.closest('.span-label');
      if (label) markSpan(f, label.dataset.label);
      const item = e.target.closest('.rank-item');
      if (item) rank(f, item);
      if (e.target.closest('.rank-reset')) { f._order = []; renderRanking(f); changed(f); }
    });
    form.addEventListener('mouseup', (e) => {
      const f = e.target.closest('.field');
      if (f && f.dataset.kind === 'spans') {
        const r = selectionIn(f);
        if (r) f._pending = r;
      }
    });
    form.addEventListener('focusin', (e) => {
      const f = e.target.closest('.field');
      if (f && f !== active) { if (active) active.classList.remove('active'); active = f; f.classList.add('active'); }
    });

    fields.filter((f) => f.dataset.kind === 'spans').forEach((f) => { spanText(f); f._spans = []; });
    fields.forEach(refresh);

    return {
      form,
      fields,
      collect,
      clear,
      fill,
      focusField,
      focusFirst: () => focusField(fields[0], false),
      handleKey,
      active: () => active,
    };
  };
})();
