"use strict";
// Moves a task's page along as it runs (the session-signed twin of the API's SSE stream): the
// progress bar, the status, tries and worker; once it ends, a fresh page shows its result or
// its traceback and every try.
(() => {
  const task = document.getElementById("task");
  if (!task || task.dataset.ended === "true") return;
  const source = new EventSource(`/dashboard/tasks/${task.dataset.taskId}/events`);
  const bar = document.getElementById("task-progress");

  function show(id, text) {
    const element = document.getElementById(id);
    if (element) element.textContent = text;
  }
  source.addEventListener("task.progress", (message) => {
    const progress = JSON.parse(message.data);
    if (progress.total) bar.max = progress.total;
    bar.value = progress.done;
    const of = progress.total ? ` / ${progress.total}` : "";
    show("task-progress-text", `${progress.done}${of} ${progress.message || ""}`);
  });
  source.addEventListener("task.status", (message) => {
    const status = JSON.parse(message.data);
    const badge = document.getElementById("task-status");
    badge.textContent = status.status;
    badge.className = `badge ${status.status}`;
    show("task-attempts", String(status.attempts));
    if (status.worker) show("task-worker", status.worker);
  });
  source.addEventListener("task.finished", () => {
    source.close();
    document.getElementById("cancel-form").hidden = true;
    setTimeout(() => window.location.reload(), 300);
  });
})();
