// The resume token and the topics' positions in `storage` (e.g. `sessionStorage`), so a reloaded
// page resumes its session: loaded once by the constructor, saved at most every 50 ms while
// messages flow and at once when a connection ends.
//
// `storageMethods` are methods of `GatewayClient` (client.js adds them to its prototype).

import { TOPIC_RE } from './protocol.js';

/** Loading and saving the resume state. */
export const storageMethods = {
  _load() {
    if (!this._storage) return;
    try {
      const raw = this._storage.getItem(this._storageKey);
      if (!raw) return;
      const v = JSON.parse(raw);
      if (typeof v.resume === 'string') this._resume = v.resume;
      for (const [topic, p] of Object.entries(v.positions || {})) {
        if (TOPIC_RE.test(topic) && Number.isFinite(p?.seq) && typeof p?.epoch === 'string') {
          const saved = { seq: p.seq, epoch: p.epoch };
          if (Number.isFinite(p.pseq) && typeof p.pepoch === 'string') {
            saved.pseq = p.pseq;
            saved.pepoch = p.pepoch;
          }
          this._saved.set(topic, saved);
        }
      }
    } catch {
      // A corrupt entry is ignored: the client starts a new session.
    }
  },

  _scheduleSave() {
    if (!this._storage || this._timers.save) return;
    this._timers.save = setTimeout(() => {
      this._timers.save = null;
      this._saveNow();
    }, 50);
  },

  _saveNow() {
    if (!this._storage) return;
    clearTimeout(this._timers.save);
    this._timers.save = null;
    const positions = Object.fromEntries(this._saved);
    Object.assign(positions, this.positions());
    try {
      this._storage.setItem(this._storageKey, JSON.stringify({ v: 1, resume: this._resume, positions }));
    } catch {
      // Storage full or refused: resume still works within this page's lifetime.
    }
  },
};
