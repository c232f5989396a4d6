-- A job's totals live on its row, so status, listing, queue position and the end rule read them
-- in O(1) instead of counting every file of the job at each event and each request.
-- pending = total_files - downloading - completed - failed - cancelled.

ALTER TABLE jobs
    ADD COLUMN files_downloading    integer NOT NULL DEFAULT 0,
    ADD COLUMN files_completed      integer NOT NULL DEFAULT 0,
    ADD COLUMN files_failed         integer NOT NULL DEFAULT 0,
    ADD COLUMN files_cancelled      integer NOT NULL DEFAULT 0,
    ADD COLUMN bytes_downloaded     bigint NOT NULL DEFAULT 0,
    ADD COLUMN processing_total     integer NOT NULL DEFAULT 0,  -- files with a processing_status
    ADD COLUMN processing_completed integer NOT NULL DEFAULT 0,
    ADD COLUMN processing_failed    integer NOT NULL DEFAULT 0;

UPDATE jobs j SET
    files_downloading = c.downloading,
    files_completed = c.completed,
    files_failed = c.failed,
    files_cancelled = c.cancelled,
    bytes_downloaded = c.bytes,
    processing_total = c.processing_total,
    processing_completed = c.processing_completed,
    processing_failed = c.processing_failed
  FROM (SELECT job_id,
               count(*) FILTER (WHERE status = 'downloading') AS downloading,
               count(*) FILTER (WHERE status = 'completed') AS completed,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
               coalesce(sum(bytes_downloaded), 0) AS bytes,
               count(*) FILTER (WHERE processing_status IS NOT NULL) AS processing_total,
               count(*) FILTER (WHERE processing_status = 'completed') AS processing_completed,
               count(*) FILTER (WHERE processing_status = 'failed') AS processing_failed
          FROM files GROUP BY job_id) c
 WHERE j.id = c.job_id;

-- Every change of a file's state moves its job's counters in the same statement, whichever
-- code path made it (an event, a cancel, a timeout, a re-drive, processing): a file counts
-- once per state it is in, and a no-op UPDATE (a replayed or late event) moves nothing.
-- Statement-level, so cancelling 10,000 files updates the job row once, not 10,000 times.
-- Every writer locks the job row before its files, so taking it here keeps the lock order.
CREATE FUNCTION count_file_moves() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE jobs j SET
        files_downloading = j.files_downloading + d.downloading,
        files_completed = j.files_completed + d.completed,
        files_failed = j.files_failed + d.failed,
        files_cancelled = j.files_cancelled + d.cancelled,
        bytes_downloaded = j.bytes_downloaded + d.bytes,
        processing_total = j.processing_total + d.processing_total,
        processing_completed = j.processing_completed + d.processing_completed,
        processing_failed = j.processing_failed + d.processing_failed
      FROM (SELECT n.job_id,
                   sum((n.status = 'downloading')::int - (o.status = 'downloading')::int)
                       AS downloading,
                   sum((n.status = 'completed')::int - (o.status = 'completed')::int) AS completed,
                   sum((n.status = 'failed')::int - (o.status = 'failed')::int) AS failed,
                   sum((n.status = 'cancelled')::int - (o.status = 'cancelled')::int) AS cancelled,
                   sum(n.bytes_downloaded - o.bytes_downloaded) AS bytes,
                   sum((n.processing_status IS NOT NULL)::int
                       - (o.processing_status IS NOT NULL)::int) AS processing_total,
                   sum(coalesce((n.processing_status = 'completed')::int, 0)
                       - coalesce((o.processing_status = 'completed')::int, 0))
                       AS processing_completed,
                   sum(coalesce((n.processing_status = 'failed')::int, 0)
                       - coalesce((o.processing_status = 'failed')::int, 0)) AS processing_failed
              FROM new_rows n JOIN old_rows o ON o.id = n.id
             WHERE n.status IS DISTINCT FROM o.status
                OR n.bytes_downloaded IS DISTINCT FROM o.bytes_downloaded
                OR n.processing_status IS DISTINCT FROM o.processing_status
             GROUP BY n.job_id) d
     WHERE j.id = d.job_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER files_count_moves AFTER UPDATE ON files
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_file_moves();

-- A job's current file: the first one downloading, found without reading the others.
CREATE INDEX files_downloading ON files (job_id, position) WHERE status = 'downloading';
