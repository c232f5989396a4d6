"use strict";
// Moves a job's page along as its events arrive (the session-signed twin of the API's SSE
// stream): each file's bar, bytes, rate and state, the job's counters, and the timeline.
(() => {
  const job = document.getElementById("job");
  if (!job || job.dataset.ended === "true") return;
  const jobId = job.dataset.jobId;
  const source = new EventSource(`/dashboard/jobs/${jobId}/events?after=${job.dataset.after}`);
  const timeline = document.getElementById("timeline");
  const counts = { stored: 0, failed: 0 };
  const total = Number(document.getElementById("job-progress").max);

  const units = ["B", "KB", "MB", "GB", "TB"];
  function human(bytes) {
    let size = bytes;
    for (const unit of units) {
      if (Math.abs(size) < 1000 || unit === "TB") return unit === "B" ? `${size} B` : `${size.toFixed(1)} ${unit}`;
      size /= 1000;
    }
    return `${bytes} B`;
  }
  function row(fileId) {
    return document.querySelector(`tr[data-file-id="${fileId}"]`);
  }
  function part(tr, role) {
    return tr ? tr.querySelector(`[data-role="${role}"]`) : null;
  }
  function setState(tr, state) {
    const badge = part(tr, "state");
    if (badge) { badge.textContent = state; badge.className = `badge ${state}`; }
  }
  function note(type, data) {
    const item = document.createElement("li");
    const when = document.createElement("time");
    when.textContent = new Date((data.at || Date.now() / 1000) * 1000).toISOString().slice(0, 19).replace("T", " ");
    const what = document.createElement("span");
    what.className = "event";
    what.textContent = type;
    item.append(when, " ", what);
    if (data.error) {
      const error = document.createElement("span");
      error.className = "error";
      error.textContent = ` ${data.error}`;
      item.append(error);
    }
    timeline.append(item);
  }
  function jobBytes() {
    // Every listed file's bytes: the job's total while its files fit on one page.
    const bars = [...document.querySelectorAll("tr[data-file-id] progress")];
    const sum = bars.reduce((total, bar) => total + Number(bar.value), 0);
    const shown = document.getElementById("job-bytes");
    if (bars.length === total) shown.textContent = human(sum);
  }
  function jobCounters() {
    const bar = document.getElementById("job-progress");
    const done = document.querySelectorAll('tr[data-file-id] .badge.completed').length;
    const failed = document.querySelectorAll('tr[data-file-id] .badge.failed').length;
    counts.stored = Math.max(counts.stored, done);
    counts.failed = Math.max(counts.failed, failed);
    bar.value = counts.stored + counts.failed;
    jobBytes();
    document.getElementById("job-counts").textContent =
      `${counts.stored} stored, ${counts.failed} failed of ${total}`;
  }

  const handlers = {
    "file.started": (d) => setState(row(d.file_id), "downloading"),
    "file.progress": (d) => {
      const tr = row(d.file_id);
      const bar = part(tr, "bar");
      if (!bar) return;
      if (d.total_bytes) bar.max = d.total_bytes;
      bar.value = d.bytes_downloaded;
      part(tr, "bytes").textContent = d.total_bytes
        ? `${human(d.bytes_downloaded)} / ${human(d.total_bytes)}` : human(d.bytes_downloaded);
      part(tr, "rate").textContent = d.rate_bps ? `${human(d.rate_bps)}/s` : "";
      setState(tr, "downloading");
      jobBytes();
    },
    "file.downloaded": (d) => {
      const tr = row(d.file_id);
      const bar = part(tr, "bar");
      if (bar) { bar.max = d.size || 1; bar.value = d.size || 1; }
      if (tr) { part(tr, "bytes").textContent = human(d.size); part(tr, "rate").textContent = ""; }
      setState(tr, "completed");
      jobCounters();
    },
    "file.failed": (d) => { setState(row(d.file_id), "failed"); jobCounters(); },
    "file.retrying": (d) => setState(row(d.file_id), "pending"),
    "job.finished": (d) => {
      source.close();
      const status = document.getElementById("job-status");
      status.textContent = d.status;
      status.className = `badge ${d.status}`;
      document.getElementById("cancel-form").hidden = true;
      // The final states of every file (cancelled ones too) come with a fresh page.
      setTimeout(() => window.location.reload(), 1000);
    },
  };
  const shown = new Set(["file.started", "file.downloaded", "file.failed", "file.retrying",
    "file.processed", "artifact.created", "composite.finished", "export.ready", "export.failed",
    "job.finished"]);
  for (const type of new Set([...Object.keys(handlers), ...shown])) {
    source.addEventListener(type, (message) => {
      const data = JSON.parse(message.data);
      if (handlers[type]) handlers[type](data);
      if (shown.has(type)) note(type, data);
    });
  }
})();
