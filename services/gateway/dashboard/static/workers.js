"use strict";
// Keeps the workers table current: the page is fetched again every few seconds and its rows
// replace these, so heartbeats age, stale workers grey out and expired ones drop off.
(() => {
  const REFRESH_MS = 2000;
  const rows = () => document.querySelector("table.workers tbody");
  if (!rows()) return;
  async function refresh() {
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (response.ok && !response.redirected) {
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.querySelector("table.workers tbody");
        if (fresh) rows().replaceWith(fresh);
      }
    } finally {
      setTimeout(() => { refresh(); }, REFRESH_MS);
    }
  }
  setTimeout(refresh, REFRESH_MS);
})();
