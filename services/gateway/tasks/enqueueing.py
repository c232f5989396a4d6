"""Enqueueing tasks: the row and its outbox row in one transaction, one at a time or a batch in
bulk, answering with each task's place in its queue."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from services.gateway.outbox import add_many_to_outbox, add_to_outbox
from services.gateway.tasks.commands import TASKS
from services.gateway.tasks.records import OPEN_STATUSES, EnqueuedTask
from shared.events import ENCODER, RunTask
from shared.ids import TaskId, new_task_id
from shared.streams import Lane, lane_for, task_stream
from shared.task_types import TaskStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg

    from services.gateway.tasks.records import NewTask


async def enqueue(
    connection: asyncpg.Connection,
    new: NewTask,
    *,
    trace_id: str | None,
    trace_headers: dict[str, str],
) -> EnqueuedTask:
    """Write the task and, unless it is delayed, its command in the outbox (the caller's
    transaction). A repeated Idempotency-Key, or an open task of a `unique` type with the same
    arguments, returns the task written before and writes nothing."""
    existing = await _existing(connection, new)
    if existing is not None:
        return await _enqueued(connection, existing, existing=True)
    task_id = new.task_id or new_task_id()
    command = _command(task_id, new)
    # ON CONFLICT waits for a concurrent insert of the same key, so racing enqueues with one
    # key end up with one task.
    row = await connection.fetchrow(
        "INSERT INTO tasks (id, user_id, task, queue, args, priority, run_at, trace_id,"
        " idempotency_key, command, parent_id, workflow_id, step) VALUES ($1, $2, $3, $4, $5, $6,"
        " coalesce($7, now()), $8, $9, $10, $11, $12, $13)"
        " ON CONFLICT (user_id, idempotency_key) DO NOTHING"
        " RETURNING id, status, queue, priority, created_at, run_at, run_at > now() AS delayed",
        task_id,
        new.user_id,
        new.task,
        new.queue,
        new.args,
        new.priority,
        new.run_at,
        trace_id,
        new.idempotency_key,
        command,
        new.parent_id,
        new.workflow_id,
        new.step,
    )
    if row is None:
        raced = await _existing(connection, new)
        assert raced is not None  # the conflicting row committed before ON CONFLICT returned
        return await _enqueued(connection, raced, existing=True)
    if not row["delayed"]:
        # A delayed task gets its first publish from the reconciler once due.
        await add_to_outbox(
            connection,
            task_stream(new.queue, lane_for(new.priority)),
            command,
            headers=trace_headers,
            command_key=TASKS.key(task_id),
        )
    return await _enqueued(connection, row, existing=False)


def _command(task_id: TaskId, new: NewTask) -> bytes:
    """The RunTask of a new task, as the outbox and the task row keep it."""
    return ENCODER.encode(
        RunTask(
            task_id=task_id,
            user_id=new.user_id,
            task=new.task,
            args=new.args,
            queue=new.queue,
            priority=new.priority,
            workflow_id=new.workflow_id,
            step=new.step,
        )
    )


async def _existing(connection: asyncpg.Connection, new: NewTask) -> asyncpg.Record | None:
    if new.task_id is not None:
        # A follow-up's event replayed: its worker chose the id, so the row is there already.
        row = await connection.fetchrow(
            "SELECT id, status, queue, priority, created_at, run_at FROM tasks WHERE id = $1",
            new.task_id,
        )
        if row is not None:
            return row
    if new.idempotency_key is not None:
        row = await connection.fetchrow(
            "SELECT id, status, queue, priority, created_at, run_at FROM tasks"
            " WHERE user_id = $1 AND idempotency_key = $2",
            new.user_id,
            new.idempotency_key,
        )
        if row is not None:
            return row
    if not new.unique:
        return None
    return await connection.fetchrow(
        "SELECT id, status, queue, priority, created_at, run_at FROM tasks"
        " WHERE user_id = $1 AND task = $2 AND args = $3::jsonb"
        " AND status = ANY($4::text[]) ORDER BY created_at LIMIT 1",
        new.user_id,
        new.task,
        new.args,
        list(OPEN_STATUSES),
    )


async def _enqueued(
    connection: asyncpg.Connection, row: asyncpg.Record, *, existing: bool
) -> EnqueuedTask:
    """The task's place in its queue's lane: pending tasks due before it, plus one."""
    lane = lane_for(row["priority"])
    ahead = await connection.fetchval(
        "SELECT count(*) FROM tasks WHERE status = 'pending' AND queue = $1"
        " AND priority = ANY($2::smallint[]) AND run_at <= $5"
        " AND (created_at, id) < ($3, $4)",
        row["queue"],
        _priorities(lane),
        row["created_at"],
        row["id"],
        row["run_at"],
    )
    return EnqueuedTask(
        task_id=TaskId(str(row["id"])),
        status=TaskStatus(row["status"]),
        queue_position=ahead + 1,
        existing=existing,
    )


def _priorities(lane: Lane) -> list[int]:
    return [p for p in range(1, 11) if lane_for(p) is lane]


# --- batch enqueue ----------------------------------------------------------------------------

_RETURNED = "id, status, queue, priority, created_at, run_at"
# One row per new task, from arrays: one statement for the whole batch.
_INSERT_MANY = (
    "INSERT INTO tasks (id, user_id, task, queue, args, priority, run_at, trace_id,"
    " idempotency_key, command)"
    " SELECT u.id, $1, u.task, u.queue, u.args::jsonb, u.priority, coalesce(u.run_at, now()),"
    " $2, u.key, u.command"
    " FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::smallint[],"
    " $8::timestamptz[], $9::text[], $10::bytea[])"
    " AS u(id, task, queue, args, priority, run_at, key, command)"
    " ON CONFLICT (user_id, idempotency_key) DO NOTHING"
    f" RETURNING {_RETURNED}, run_at > now() AS delayed"
)


async def enqueue_batch(
    connection: asyncpg.Connection,
    news: Sequence[NewTask],
    *,
    trace_id: str | None,
    trace_headers: dict[str, str],
) -> list[EnqueuedTask]:
    """Write the tasks of one user and the commands of those due, a statement for each table
    (the caller's transaction); the answers are in the order given.

    Idempotency keys and `unique` types are honoured as `enqueue` honours them, between the
    items of the batch too: a repeat answers with the task of the first.
    """
    targets = _targets(news, *await _existing_many(connection, news))
    fresh = [i for i, target in enumerate(targets) if target == i]
    ids = {i: new_task_id() for i in fresh}
    commands = {i: _command(ids[i], news[i]) for i in fresh}
    rows = await connection.fetch(
        _INSERT_MANY,
        news[0].user_id if news else None,
        trace_id,
        [ids[i] for i in fresh],
        [news[i].task for i in fresh],
        [news[i].queue for i in fresh],
        [msgspec.json.encode(news[i].args).decode() for i in fresh],
        [news[i].priority for i in fresh],
        [news[i].run_at for i in fresh],
        [news[i].idempotency_key for i in fresh],
        [commands[i] for i in fresh],
    )
    inserted = {str(row["id"]): row for row in rows}
    new_rows: dict[int, asyncpg.Record] = {}
    for i in fresh:
        row = inserted.get(ids[i])
        if row is None:  # a concurrent request took the key first: its task is the answer
            raced = await _existing(connection, news[i])
            assert raced is not None  # the conflicting row committed before ON CONFLICT returned
            targets[i] = raced
        else:
            new_rows[i] = row
    for j, target in enumerate(targets):
        if isinstance(target, int) and target not in new_rows:
            targets[j] = targets[target]  # a repeat of an item that raced: the same answer
    due = [i for i, row in new_rows.items() if not row["delayed"]]
    await add_many_to_outbox(
        connection,
        [
            (task_stream(news[i].queue, lane_for(news[i].priority)), commands[i], TASKS.key(ids[i]))
            for i in due
        ],
        headers=trace_headers,
    )
    positions = await _due_positions(connection, news, due)
    return await _batch_answers(connection, targets, new_rows, positions)


async def _existing_many(
    connection: asyncpg.Connection, news: Sequence[NewTask]
) -> tuple[dict[str, asyncpg.Record], dict[int, asyncpg.Record]]:
    """The tasks written before: by Idempotency key, and the open one of each `unique` item."""
    user_id = news[0].user_id if news else None
    keys = [new.idempotency_key for new in news if new.idempotency_key is not None]
    by_key: dict[str, asyncpg.Record] = {}
    if keys:
        rows = await connection.fetch(
            f"SELECT {_RETURNED}, idempotency_key FROM tasks"
            " WHERE user_id = $1 AND idempotency_key = ANY($2::text[])",
            user_id,
            keys,
        )
        by_key = {row["idempotency_key"]: row for row in rows}
    unique = [i for i, new in enumerate(news) if new.unique]
    by_item: dict[int, asyncpg.Record] = {}
    if unique:
        rows = await connection.fetch(
            "SELECT DISTINCT ON (u.n) u.n, t.id, t.status, t.queue, t.priority, t.created_at,"
            " t.run_at"
            " FROM unnest($2::int[], $3::text[], $4::text[]) AS u(n, task, args)"
            " JOIN tasks t ON t.user_id = $1 AND t.task = u.task AND t.args = u.args::jsonb"
            " AND t.status = ANY($5::text[]) ORDER BY u.n, t.created_at",
            user_id,
            unique,
            [news[i].task for i in unique],
            [msgspec.json.encode(news[i].args).decode() for i in unique],
            list(OPEN_STATUSES),
        )
        by_item = {row["n"]: row for row in rows}
    return by_key, by_item


def _targets(
    news: Sequence[NewTask],
    by_key: dict[str, asyncpg.Record],
    by_item: dict[int, asyncpg.Record],
) -> list[asyncpg.Record | int]:
    """What each item stands for: its key's task, else its `unique` twin's, else itself."""
    keys: dict[str, asyncpg.Record | int] = dict(by_key)
    twins: dict[tuple[str, bytes], asyncpg.Record | int] = {}
    targets: list[asyncpg.Record | int] = []
    for i, new in enumerate(news):
        twin = (new.task, msgspec.json.encode(new.args, order="sorted")) if new.unique else None
        target: asyncpg.Record | int | None = None
        if new.idempotency_key is not None:
            target = keys.get(new.idempotency_key)
        if target is None and twin is not None:
            target = twins.get(twin, by_item.get(i))
        if target is None:
            target = i
        if new.idempotency_key is not None:
            keys.setdefault(new.idempotency_key, target)
        if twin is not None:
            twins.setdefault(twin, target)
        targets.append(target)
    return targets


async def _batch_answers(
    connection: asyncpg.Connection,
    targets: Sequence[asyncpg.Record | int],
    new_rows: dict[int, asyncpg.Record],
    positions: dict[int, int],
) -> list[EnqueuedTask]:
    """Each item's task and its place in its lane, in the order given."""
    answers: list[EnqueuedTask] = []
    for i, target in enumerate(targets):
        if not isinstance(target, int):
            answers.append(await _enqueued(connection, target, existing=True))
        elif target in positions:
            row = new_rows[target]
            answers.append(
                EnqueuedTask(
                    task_id=TaskId(str(row["id"])),
                    status=TaskStatus(row["status"]),
                    queue_position=positions[target],
                    existing=target != i,
                )
            )
        else:  # delayed: its place counts the tasks due before it
            answers.append(await _enqueued(connection, new_rows[target], existing=target != i))
    return answers


async def _due_positions(
    connection: asyncpg.Connection, news: Sequence[NewTask], due: Sequence[int]
) -> dict[int, int]:
    """The queue positions of the new tasks due now: the tasks due ahead in their lane (one
    count per lane), then the batch's own in the order given."""
    lanes = sorted({(news[i].queue, lane_for(news[i].priority)) for i in due})
    if not lanes:
        return {}
    counts = await connection.fetch(
        "SELECT l.n, (SELECT count(*) FROM tasks t WHERE t.status = 'pending'"
        "   AND t.queue = l.queue AND t.priority BETWEEN l.lowest AND l.highest"
        "   AND t.run_at <= now() AND t.created_at < now()) AS ahead"
        " FROM unnest($1::text[], $2::smallint[], $3::smallint[]) WITH ORDINALITY"
        "   AS l(queue, lowest, highest, n)",
        [queue for queue, _ in lanes],
        [min(_priorities(lane)) for _, lane in lanes],
        [max(_priorities(lane)) for _, lane in lanes],
    )
    ahead = {lanes[row["n"] - 1]: row["ahead"] for row in counts}
    positions: dict[int, int] = {}
    for i in due:
        lane = (news[i].queue, lane_for(news[i].priority))
        ahead[lane] += 1
        positions[i] = ahead[lane]
    return positions
