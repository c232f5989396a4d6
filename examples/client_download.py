"""Download files, follow the job's progress, and save its files as a zip (docs/client.md).

export DOWNLINK_URL=http://127.0.0.1:8000 DOWNLINK_TOKEN=dl_...
python examples/client_download.py scenes.zip https://example.org/a.tif ...
"""

from __future__ import annotations

import sys

import downlink


def show(progress: downlink.JobProgress) -> None:
    print(f"{progress.done}/{progress.total} files, {progress.bytes_downloaded} bytes")


def main(archive: str, urls: list[str]) -> int:
    with downlink.SyncClient() as dl:  # DOWNLINK_URL and DOWNLINK_TOKEN
        job = dl.download(urls, priority=8, metadata={"campaign": "quickstart"})
        ended = job.wait(progress=show, timeout=600)
        for file in job.result().results:
            print(f"{file.status} {file.url} sha256={file.hash} {file.error or ''}".rstrip())
        if ended.status == "completed":
            print(f"saved {job.export('zip', archive)}")
        return 0 if ended.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
