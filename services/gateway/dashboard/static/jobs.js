"use strict";
// Keeps the jobs list current: every few seconds the same page (filters and all) is fetched
// again and its rows replace these, so new jobs and moving counters show without a reload.
(() => {
  const REFRESH_MS = 1000;
  const rows = () => document.querySelector("table.jobs tbody");
  if (!rows()) return;
  async function refresh() {
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (response.ok && !response.redirected) {
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.querySelector("table.jobs tbody");
        if (fresh) rows().replaceWith(fresh);
      }
    } finally {
      setTimeout(() => { refresh(); }, REFRESH_MS);
    }
  }
  setTimeout(refresh, REFRESH_MS);
})();
