"""Conversations and their messages, including the deep merge of message metadata."""

from __future__ import annotations

from functools import partial
from typing import Any, cast
from uuid import UUID

from psycopg.types.json import Jsonb

from . import db, limits
from .actors import Actor
from .errors import NotFound
from .jobs import Placer, PlaceSetters, placed_read
from .queue_order import Place
from .rows import ConversationRow, ConversationWithMessages, MessageJson


async def create_conversation(conn: db.Db, *, actor: Actor, title: str = "") -> ConversationRow:
    row = await db.fetch_one(
        conn, "conversation_create", {"user_id": actor.user_id, "title": title}
    )
    assert row is not None
    return cast(ConversationRow, row)


async def list_conversations(
    conn: db.Db, *, actor: Actor, limit: int = 200, everyone: bool = True
) -> list[ConversationRow]:
    """Newest first. An admin sees everyone's unless `everyone` is False (then only its own)."""
    owner = actor.owner if everyone else actor.user_id
    rows = await db.fetch_all(conn, "conversation_list", {"owner": owner, "limit": limit})
    return cast("list[ConversationRow]", rows)


async def get_conversation(
    conn: db.Db, conversation_id: UUID | str, *, actor: Actor, placer: Placer | None = None
) -> ConversationWithMessages:
    """The conversation with its messages, queued jobs' positions overlaid live: from the
    placer's queue order when there is one (O(log n) a job), else counted in SQL."""
    row = await placed_read(
        conn,
        "conversation_get",
        {"conversation_id": conversation_id, "owner": actor.owner},
        placer,
        _queued_messages,
    )
    if row is None:
        raise NotFound(f"conversation {conversation_id} not found")
    del row["queued"], row["seq"]
    return cast(ConversationWithMessages, row)


def _queued_messages(row: db.Row) -> PlaceSetters:
    """Each queued job's message, which shows its position in its metadata."""
    messages = {m["id"]: m for m in cast("list[MessageJson]", row["messages"])}
    return {
        UUID(q["job_id"]): partial(_set_position, messages[q["message_id"]]) for q in row["queued"]
    }


def _set_position(message: MessageJson, place: Place) -> None:
    message["extra_metadata"]["queue_position"] = place.queue_position


async def rename_conversation(
    conn: db.Db, conversation_id: UUID | str, title: str, *, actor: Actor
) -> ConversationRow:
    row = await db.fetch_one(
        conn,
        "conversation_rename",
        {"conversation_id": conversation_id, "title": title, "owner": actor.owner},
    )
    if row is None:
        raise NotFound(f"conversation {conversation_id} not found")
    return cast(ConversationRow, row)


async def cancel_conversation_jobs(
    conn: db.Db, conversation_id: UUID | str, *, actor: Actor
) -> dict[UUID, int]:
    """A delete's first half: its active jobs end canceled, each with its event; returns each
    canceled job's event seq. The rows stay, so the fan-out can read the events before
    delete_conversation removes them."""
    rows = await db.fetch_all(
        conn, "conversation_cancel_jobs", {"conversation_id": conversation_id, "owner": actor.owner}
    )
    return {row["job_id"]: row["seq"] for row in rows}


async def delete_conversation(conn: db.Db, conversation_id: UUID | str, *, actor: Actor) -> None:
    """The conversation with its messages, jobs, events and images (a running job's worker is
    told to stop, and its own end of the job is fenced: the row is gone)."""
    deleted = await db.fetch_value(
        conn, "conversation_delete", {"conversation_id": conversation_id, "owner": actor.owner}
    )
    if not deleted:
        raise NotFound(f"conversation {conversation_id} not found")


async def conversation_visible(conn: db.Db, conversation_id: UUID | str, *, actor: Actor) -> bool:
    row = await db.fetch_one(
        conn, "conversation_owned", {"conversation_id": conversation_id, "owner": actor.owner}
    )
    return row is not None


async def merge_metadata(
    conn: db.Db, message_id: UUID | str, patch: dict[str, Any], *, actor: Actor
) -> MessageJson:
    """Deep-merge `patch` into the message's extra_metadata in one statement (R7); TooLarge,
    nothing written, when the merged object would be over limits.METADATA_BYTES (the row's
    CHECK, migration 004, leaves room above it, so the queue's own fields always fit)."""
    row = await db.fetch_one(
        conn,
        "message_merge_metadata",
        {
            "message_id": message_id,
            "patch": Jsonb(patch),
            "owner": actor.owner,
            "max_bytes": limits.METADATA_BYTES,
        },
    )
    assert row is not None  # gq_merge_metadata raises GQ404 (NotFound) for a message not seen
    message: MessageJson = row["message"]
    return message
