"use strict";
// Keeps a running workflow's page current: every second the page is fetched again and its
// steps (graph, table, artifacts, result) and status replace these, until the workflow ends.
(() => {
  const REFRESH_MS = 1000;
  const head = document.getElementById("workflow");
  if (!head || head.dataset.ended === "true") return;

  function adopt(page) {
    const fresh = page.getElementById("workflow-live");
    if (fresh) document.getElementById("workflow-live").replaceWith(fresh);
    const status = page.getElementById("workflow-status");
    if (status) document.getElementById("workflow-status").replaceWith(status);
    const ended = page.getElementById("workflow")?.dataset.ended === "true";
    if (ended) document.getElementById("cancel-form").hidden = true;
    return ended;
  }
  async function refresh() {
    let ended = false;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (response.ok && !response.redirected) {
        ended = adopt(new DOMParser().parseFromString(await response.text(), "text/html"));
      }
    } finally {
      if (!ended) setTimeout(() => { refresh(); }, REFRESH_MS);
    }
  }
  setTimeout(refresh, REFRESH_MS);
})();
