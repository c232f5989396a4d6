"""The `pollers` scenario: one large job while CLIENTS clients GET its status as fast as they can.

Per rep the same job runs twice, the order swapping every rep: `alone` (only the driver's own
status GET every POLL_S) and `polled` (hammer.py's clients as well, each on a keep-alive
connection). The methods:

- latency p50/p99 and requests/s: the clients' own clocks (send → body read), over the answers
  that arrived between the job id reaching them and the job being final;
- CPU per GET: (gateway CPU over the polled run - gateway CPU over the lone run) ÷ those GETs.
  Both runs do the same job, so the difference is what the polls cost; likewise PostgreSQL's;
- slowdown: polled seconds ÷ lone seconds - 1;
- lag: a thread counts the job's files in storage every SAMPLE_S (a file appears there, renamed
  into place, once it is complete). For each answer (the clients' and the driver's), lag = its
  arrival - the first sample whose stored count exceeded the answer's `completed`: how long the
  oldest stored file the answer did not count had been stored (0 when there was none). A lower
  bound by up to SAMPLE_S.

Clients polling flat out are a closed loop: their p50 is about CLIENTS ÷ the gateway's GETs/s, its
queue more than its work. `--poller-pause-ms` makes each wait that long after every answer.
"""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from downlink_runner import FINAL
from peer_runner import POLL_S
from processes import stop
from report import spread
from session import prepare

if TYPE_CHECKING:
    from session import Session

HERE = Path(__file__).resolve().parent
SAMPLE_S = 0.1
Sample = tuple[float, int]  # time.monotonic(), files (stored or reported)


class StoredCounter(threading.Thread):
    """Counts a job's stored files every SAMPLE_S until stopped."""

    def __init__(self, root: Path, job: str) -> None:
        super().__init__(name="stored-counter", daemon=True)
        self.root, self.job = root, job
        self.samples: list[Sample] = []
        self._halted = threading.Event()

    def run(self) -> None:
        folder, most = None, 0
        while not self._halted.is_set():
            if folder is None:  # `<user>/<job>/`, made with the job's first file
                folder = next(self.root.glob(f"*/{self.job}"), None)
            if folder is not None:
                most = max(most, sum(1 for _ in os.scandir(folder)))
            self.samples.append((time.monotonic(), most))  # stamped once the count is known
            self._halted.wait(SAMPLE_S)

    def halt(self) -> list[Sample]:
        self._halted.set()
        self.join()
        return self.samples


def lags(stored: list[Sample], answers: list[Sample]) -> list[float]:
    """Per answer (arrival, reported): seconds since the stored count first exceeded it."""
    times, counts = [t for t, _ in stored], [c for _, c in stored]
    out = []
    for arrived, reported in answers:
        first = bisect.bisect_right(counts, reported)
        out.append(max(0.0, arrived - times[first]) if first < len(counts) else 0.0)
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@dataclass
class Polled:
    """One run of the job: its clock, its meter, and every status answer seen."""

    seconds: float
    cpu_s: dict[str, float]
    driver: list[Sample]
    stored: list[Sample]
    clients: list[tuple[float, float, int]] = field(default_factory=list)
    clients_cpu_s: float = 0.0
    window: tuple[float, float] = (0.0, 0.0)  # from the submit's answer to the job's end
    submitted: float = 0.0  # when the submit was sent


def _watch(session: Session, job: str) -> list[Sample]:
    """The driver's own poll until the job is final; every answer's arrival and `completed`."""
    api, seen = session.api, []
    deadline = time.monotonic() + api.timeout_s
    while True:
        status = api.status(job)
        seen.append((time.monotonic(), int(status["progress"]["completed"])))
        if status["status"] in FINAL:
            if status["status"] != "completed":
                raise RuntimeError(f"job {job} ended {status['status']}: {status['progress']}")
            return seen
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job} not final after {api.timeout_s:.0f} s")
        time.sleep(POLL_S)


def _start_clients(session: Session, clients: int, pause_ms: int) -> subprocess.Popen[str]:
    argv = [session.stack.base_url, str(clients), str(pause_ms / 1e3)]
    hammer = subprocess.Popen(
        [sys.executable, str(HERE / "hammer.py"), *argv],
        env={**os.environ, "BENCH_TOKEN": session.token},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert hammer.stdout is not None
    if hammer.stdout.readline().strip() != "ready":
        stop(hammer)
        raise RuntimeError(f"the pollers did not start (exit {hammer.poll()})")
    return hammer


def _job(session: Session, clients: int, pause_ms: int) -> Polled:
    """One timed run of the job, with `clients` pollers (0: alone)."""
    hammer = _start_clients(session, clients, pause_ms) if clients else None
    prepare(session)
    session.meter.start()
    started, submitted = time.perf_counter(), time.monotonic()
    (job,) = session.api.submit(session.files)
    polled_from = time.monotonic()
    if hammer is not None:
        assert hammer.stdin is not None
        hammer.stdin.write(f"{job}\n")
        hammer.stdin.flush()
    counter = StoredCounter(session.run.out_dir, job)
    counter.start()
    try:
        driver = _watch(session, job)
    finally:
        stored = counter.halt()
    run = Polled(time.perf_counter() - started, session.meter.stop(), driver, stored)
    run.window, run.submitted = (polled_from, time.monotonic()), submitted
    if hammer is not None:
        out, _ = hammer.communicate("stop\n", timeout=120)
        result = json.loads(out.strip().splitlines()[-1])
        run.clients = [tuple(answer) for answer in result["answers"]]
        run.clients_cpu_s = result["cpu_s"]
    session.api.check([job], session.files)
    return run


def _all_stored_s(run: Polled) -> float:
    """When the last file was in storage, in seconds from the submit (as `seconds` are)."""
    most = run.stored[-1][1] if run.stored else 0
    return next((t for t, count in run.stored if count == most), run.submitted) - run.submitted


def _figures(alone: Polled, polled: Polled) -> dict[str, float]:
    """One rep's headline figures (ms, s, %, /s) from its two runs."""
    begin, end = polled.window
    answers = [a for a in polled.clients if begin <= a[1] <= end]
    ok = [a for a in answers if a[2] >= 0]
    latency_ms = [(arrived - sent) * 1e3 for sent, arrived, _ in ok]
    gets = max(1, len(answers))
    extra = {f: polled.cpu_s.get(f, 0.0) - alone.cpu_s.get(f, 0.0) for f in polled.cpu_s}
    polled_lag = lags(polled.stored, [(a, c) for _, a, c in ok] + polled.driver)
    alone_lag = lags(alone.stored, alone.driver)
    return {
        "get_p50_ms": _pct(latency_ms, 0.5),
        "get_p99_ms": _pct(latency_ms, 0.99),
        "gets_per_s": len(answers) / (end - begin),
        "gets": float(len(answers)),
        "failed_gets": float(len(answers) - len(ok)),
        "gateway_cpu_ms_per_get": extra.get("downlink.gateway", 0.0) / gets * 1e3,
        "postgres_cpu_ms_per_get": extra.get("postgres", 0.0) / gets * 1e3,
        "pollers_cpu_ms_per_get": polled.clients_cpu_s / gets * 1e3,
        "seconds_alone": alone.seconds,
        "seconds_polled": polled.seconds,
        "slowdown_pct": (polled.seconds / alone.seconds - 1) * 100,
        "lag_max_s_polled": max(polled_lag, default=0.0),
        "lag_p99_s_polled": _pct(polled_lag, 0.99),
        "lag_max_s_alone": max(alone_lag, default=0.0),
        "stored_all_s_alone": _all_stored_s(alone),
        "stored_all_s_polled": _all_stored_s(polled),
    }


def pollers(session: Session, params: dict[str, int]) -> dict[str, Any]:
    session.files = session.files[: params["files"]]
    reps: list[dict[str, float]] = []
    for rep in range(session.run.reps):
        runs: dict[int, Polled] = {}
        for clients in (0, params["pollers"]) if rep % 2 == 0 else (params["pollers"], 0):
            runs[clients] = _job(session, clients, params.get("pause_ms", 0))
        reps.append(_figures(runs[0], runs[params["pollers"]]))
    digits = {"gets": 0, "failed_gets": 0, "gets_per_s": 0}
    return {
        **{key: spread([r[key] for r in reps], digits.get(key, 3)) for key in reps[0]},
        "targets": {
            "get_p50_ms": 2.0,
            "gateway_cpu_ms_per_get": 1.0,
            "slowdown_pct": 10.0,
            "lag_max_s_polled": 2.0,
        },
        "method": (__doc__ or "").split("\n\n", 1)[1].strip(),
    }
