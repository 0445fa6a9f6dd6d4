// Assay pages: shared helpers. Calls the JSON API with the session cookie and the page's CSRF
// token; turns `form.api-form` into JSON requests and shows errors next to their fields.
'use strict';
(function () {
  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : '';
  }

  // The session ended: sign in again, then come straight back here.
  function sessionExpired() {
    location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search));
  }

  async function api(method, url, body) {
    const headers = { 'X-CSRF-Token': csrf(), 'Accept': 'application/json' };
    let payload;
    if (body instanceof Blob) {
      payload = body;
    } else if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    const res = await fetch(url, { method, headers, body: payload, credentials: 'same-origin' });
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (res.status === 401) {
      sessionExpired();
    }
    return { ok: res.ok, status: res.status, data };
  }

  function clearErrors(scope) {
    scope.querySelectorAll('.field-error, .form-error').forEach((el) => {
      if (el.id === 'login-error') return;
      el.textContent = '';
      el.hidden = true;
    });
    scope.querySelectorAll('.invalid').forEach((el) => el.classList.remove('invalid'));
  }

  // Shows an API error: field messages beside their fields, the rest in the form's `.form-error`.
  // Returns the first element that got a message.
  function showErrors(scope, res) {
    const data = res.data || {};
    const general = [];
    let first = null;
    for (const e of data.errors || []) {
      const field = e.field || (e.line ? 'line ' + e.line : '');
      const slot = field && scope.querySelector('[data-error-for="' + CSS.escape(field) + '"]');
      if (slot) {
        slot.textContent = (slot.hidden ? '' : slot.textContent + ' ') + e.message;
        slot.hidden = false;
        const holder = slot.closest('.criterion');
        if (holder) holder.classList.add('invalid');
        first = first || holder || slot;
      } else {
        general.push((field ? field + ': ' : '') + e.message);
      }
    }
    if (!data.errors || general.length) {
      const box = scope.querySelector('.form-error');
      const msg = data.message || ('The request failed (' + res.status + ').');
      if (box) {
        box.textContent = general.length ? msg + ' — ' + general.join('; ') : msg;
        box.hidden = false;
        first = first || box;
      }
    }
    return first;
  }

  function formBody(form) {
    let action = form.dataset.action;
    const body = {};
    for (const el of form.elements) {
      if (!el.name || el.name === '_csrf' || el.disabled || el.type === 'file') continue;
      if (el.dataset.pathOnly) {
        action = action.replace('{' + el.name + '}', encodeURIComponent(el.value));
        continue;
      }
      let v = el.value;
      if (v === '' && !el.dataset.keepEmpty) continue;
      switch (el.dataset.type) {
        case 'int': v = parseInt(v, 10); break;
        case 'number': v = Number(v); break;
        case 'bool': v = v === 'true'; break;
        case 'list': v = v.split(',').map((s) => s.trim()).filter(Boolean); break;
        default: break;
      }
      body[el.name] = v;
    }
    return { action, body };
  }

  async function submitApiForm(form) {
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    const { action, body } = formBody(form);
    const method = form.dataset.method || 'POST';
    const hasBody = method !== 'DELETE' && Object.keys(body).length > 0;
    const buttons = form.querySelectorAll('button');
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const res = await api(method, action, hasBody ? body : undefined);
      clearErrors(form);
      if (res.ok) {
        const to = form.dataset.redirect;
        if (to) location.assign(to.replace('{id}', res.data && res.data.id));
        else location.reload();
      } else {
        showErrors(form, res);
      }
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  // Uploads the chosen file as the request body (the import API streams it to disk).
  function submitUpload(form) {
    const input = form.querySelector('input[type=file]');
    const bar = form.querySelector('.upload-progress');
    const report = form.querySelector('.upload-report');
    clearErrors(form);
    report.textContent = '';
    if (!input.files.length) {
      showErrors(form, { status: 400, data: { message: 'Choose a file first.' } });
      return;
    }
    const xhr = new XMLHttpRequest();
    xhr.open('POST', form.dataset.action);
    xhr.setRequestHeader('X-CSRF-Token', csrf());
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    bar.hidden = false;
    bar.value = 0;
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
    xhr.onload = () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch (_) { data = null; }
      if (xhr.status === 401) return sessionExpired();
      if (xhr.status >= 200 && xhr.status < 300 && data) {
        report.textContent = 'Imported ' + data.imported + ' task(s) from ' + data.records +
          ' record(s); ' + data.duplicates + ' already present.';
        report.classList.add('ok');
        setTimeout(() => location.reload(), 1200);
      } else {
        const errors = ((data && data.errors) || []).map((e) =>
          (e.line ? 'line ' + e.line + ': ' : (e.record ? 'record ' + e.record + ': ' : '')) + e.message);
        showErrors(form, { status: xhr.status, data: { message: (data && data.message) || 'Upload failed.' } });
        const list = document.createElement('ul');
        errors.slice(0, 50).forEach((t) => { const li = document.createElement('li'); li.textContent = t; list.appendChild(li); });
        report.appendChild(list);
      }
    };
    xhr.onerror = () => showErrors(form, { status: 0, data: { message: 'The upload was interrupted.' } });
    xhr.send(input.files[0]);
  }

  document.addEventListener('submit', (e) => {
    const form = e.target;
    if (form.classList.contains('api-form')) {
      e.preventDefault();
      submitApiForm(form);
    } else if (form.classList.contains('upload-form')) {
      e.preventDefault();
      submitUpload(form);
    }
  });

  // Navigates by a POST with the page's CSRF token (what takes a lease is never a GET).
  function postTo(url) {
    const f = document.createElement('form');
    f.method = 'post';
    f.action = url;
    const c = document.createElement('input');
    c.type = 'hidden';
    c.name = '_csrf';
    c.value = csrf();
    f.appendChild(c);
    document.body.appendChild(f);
    f.submit();
  }

  window.Assay = { api, csrf, sessionExpired, showErrors, clearErrors, postTo };
})();
