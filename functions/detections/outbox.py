"""The outbox collection and its claims in MongoDB: plain code over pymongo collections.

    <collection>          the runner's documents, kept after they are written (history):
                          _id, event_id, bucket, prediction, status ("predictable" -> "ready"),
                          + ours: output_s3, ready_at (once ready); outbox_error, outbox_error_at
                          (a rejected document, still predictable); outbox_reopened_at
    <collection>_claims   one document per claim generation: _id "<doc key>#<gen>", doc, gen,
                          owner, claimed_at, expires_at; index (doc, gen desc)

Why claims live in their own collection: FerretDB's findAndModify and update read the document,
filter in Go and replace it by `_id` without checking the filter again, so a "status is still
predictable" update is no lock. An insert with a unique `_id` is atomic on FerretDB (SQL UNIQUE)
and on MongoDB alike: of the workers inserting generation g of a document's claim, exactly one
wins. An expired claim is taken over by inserting generation g+1, which again only one wins.

Why our writes cannot clobber the runner's: only the holder of the newest, unexpired claim
writes a document, and only with `$set`/`$unset` of our own fields (never a replace of a copy
read earlier). On MongoDB that update is atomic per document; on FerretDB it is a read-replace
inside one command, which would lose a concurrent write by someone else to another field, so the
contract (docs/detections.md) is the outbox hand-off: the runner does not modify a document
while it is `predictable`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bson import ObjectId, json_util
from bson.json_util import RELAXED_JSON_OPTIONS
from pymongo.errors import DuplicateKeyError

if TYPE_CHECKING:
    from pymongo.collection import Collection

PREDICTABLE = "predictable"
READY = "ready"
CLAIMS_SUFFIX = "_claims"
PREFIX = "detection/"
# One object-key segment: no slash, no leading dot, no "..".
EVENT_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

Document = dict[str, Any]


def document_key(document_id: Any) -> str:
    """A stable string for any `_id` (its relaxed extended JSON)."""
    return json_util.dumps(document_id, json_options=RELAXED_JSON_OPTIONS)


def reference(document_id: Any) -> Any:
    """`_id` as the JSON the event carries; `from_reference` reads it back."""
    return json.loads(document_key(document_id))


def from_reference(value: Any) -> Any:
    return json_util.loads(json.dumps(value), json_options=RELAXED_JSON_OPTIONS)


def age(document: Document, now: datetime) -> float | None:
    """Seconds since the document was written: its `created_at`, else its ObjectId's time."""
    created = document.get("created_at")
    if not isinstance(created, datetime):
        document_id = document.get("_id")
        created = document_id.generation_time if isinstance(document_id, ObjectId) else None
    if created is None:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return (now - created).total_seconds()


# --- validation: a document -> what to write, or why not --------------------------------------


class Rejected(Exception):
    """The document can never be written as it is; `reason` goes to its `outbox_error`."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = f"{field}: {reason}"


@dataclass(frozen=True)
class Prediction:
    event_id: str
    bucket: str
    body: bytes  # canonical JSON
    sha256: str

    @property
    def key(self) -> str:
        return f"{PREFIX}{self.event_id}.json"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8 (not \\u escapes), no NaN."""
    return json.dumps(
        value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


def prediction(document: Document, max_bytes: int) -> Prediction:
    """What `document` asks to write; raises Rejected naming the field."""
    event_id = document.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise Rejected("event_id", "missing or not a string")
    if not EVENT_ID.match(event_id) or ".." in event_id:
        raise Rejected(
            "event_id",
            f"{event_id[:80]!r} is not usable as a key segment ([A-Za-z0-9._-], no '..')",
        )
    bucket = document.get("bucket")
    if not isinstance(bucket, str) or not BUCKET.match(bucket):
        raise Rejected("bucket", f"{str(bucket)[:80]!r} is not a bucket name")
    value = document.get("prediction")
    if not isinstance(value, dict | list):
        raise Rejected("prediction", f"must be a JSON object or array, not {type(value).__name__}")
    try:
        body = canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise Rejected("prediction", f"not JSON-serialisable ({exc})") from None
    if len(body) > max_bytes:
        raise Rejected("prediction", f"{len(body)} bytes of JSON exceed the limit of {max_bytes}")
    return Prediction(event_id, bucket, body, hashlib.sha256(body).hexdigest())


# --- writes to the document (only under a claim) ------------------------------------------------
#
# By `_id` alone: FerretDB (1.24) pushes only an `_id` equality down to its SQL backend; any
# other filter, `{_id, status}` included, makes it decode every document of the collection in
# Go, which with the kept history cost seconds per update. The guard is the claim, checked just
# before: on FerretDB a status filter would be no guard anyway (its update is not atomic).


def mark_ready(collection: Collection[Document], document_id: Any, url: str, now: datetime) -> bool:
    """predictable -> ready with `output_s3` and `ready_at` (and an earlier rejection cleared)."""
    result = collection.update_one(
        {"_id": document_id},
        {
            "$set": {"status": READY, "output_s3": url, "ready_at": now},
            "$unset": {"outbox_error": "", "outbox_error_at": ""},
        },
    )
    return result.modified_count == 1


def record_error(
    collection: Collection[Document], document_id: Any, reason: str, now: datetime
) -> None:
    collection.update_one(
        {"_id": document_id}, {"$set": {"outbox_error": reason, "outbox_error_at": now}}
    )


def reopen(collection: Collection[Document], document_id: Any, now: datetime) -> bool:
    """ready -> predictable, so the source posts it again (its object went missing)."""
    result = collection.update_one(
        {"_id": document_id, "status": READY},
        {
            "$set": {"status": PREDICTABLE, "outbox_reopened_at": now},
            "$unset": {"output_s3": "", "ready_at": ""},
        },
    )
    return result.modified_count == 1


# --- claims -------------------------------------------------------------------------------------

# How far the clocks of the workers (and of the source's host) may disagree: NTP keeps a
# cluster's nodes within milliseconds; this leaves room for a stalled process too.
CLOCK_MARGIN = timedelta(seconds=2)


@dataclass(frozen=True)
class Claim:
    id: str
    doc: str
    gen: int
    owner: str
    expires_at: datetime


class Claims:
    """Claims on the documents of one collection (see the module docstring)."""

    def __init__(self, collection: Collection[Document]) -> None:
        self.collection = collection

    @classmethod
    def of(cls, outbox: Collection[Document]) -> Claims:
        return cls(outbox.database[f"{outbox.name}{CLAIMS_SUFFIX}"])

    def ensure_index(self) -> None:
        self.collection.create_index([("doc", 1), ("gen", -1)])

    def newest(self, doc: str) -> Document | None:
        return self.collection.find_one({"doc": doc}, sort=[("gen", -1)])

    def take(self, doc: str, owner: str, lease: float, now: datetime) -> Claim | None:
        """A claim on `doc`, or None while someone else holds an unexpired one.

        Generation 1 is inserted straight away: a document nobody claimed yet (the usual case)
        costs one insert. Only when it is there is the newest generation read. That is sound
        because generation 1 outlives every newer one: claims are deleted only all together
        (`clear`, generations up to the finisher's), and a claim given up is expired, not
        deleted (`release`)."""
        first = self._insert(doc, 1, owner, lease, now)
        if first is not None:
            return first
        newest = self.newest(doc)
        if newest is None:  # cleared meanwhile: start again at generation 1
            return self._insert(doc, 1, owner, lease, now)
        if newest["owner"] == owner:  # a retried insert that went through
            return _claim(newest)
        if _aware(newest["expires_at"]) > now:
            return None
        return self._insert(doc, newest["gen"] + 1, owner, lease, now)

    def _insert(self, doc: str, gen: int, owner: str, lease: float, now: datetime) -> Claim | None:
        claim = Claim(f"{doc}#{gen}", doc, gen, owner, now + timedelta(seconds=lease))
        try:
            self.collection.insert_one(
                {"_id": claim.id, "doc": doc, "gen": gen, "owner": owner, "claimed_at": now,
                 "expires_at": claim.expires_at}
            )  # fmt: skip
        except DuplicateKeyError:
            return None  # another worker inserted this generation first
        return claim

    def held(self, claim: Claim, now: datetime) -> bool:
        """Still the newest claim and unexpired: nobody took the document over.

        A takeover needs the claim expired on the taker's clock, so a claim with more than
        `CLOCK_MARGIN` left is ours without a read (one find less per document); only one
        close to its end is read back."""
        if claim.expires_at - now > CLOCK_MARGIN:
            return True
        newest = self.newest(claim.doc)
        return newest is not None and newest["_id"] == claim.id and claim.expires_at > now

    def release(self, claim: Claim, now: datetime) -> None:
        """Give the claim up unfinished: expired, so the next worker takes over at once (kept,
        so that generation 1 stays while any claim of the document exists; see `take`)."""
        self.collection.update_one(
            {"_id": claim.id, "owner": claim.owner}, {"$set": {"expires_at": now}}
        )

    def clear(self, claim: Claim) -> None:
        """After the document is done (or rejected): this claim and every older generation."""
        self.collection.delete_many({"doc": claim.doc, "gen": {"$lte": claim.gen}})


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _claim(found: Document) -> Claim:
    return Claim(
        found["_id"], found["doc"], found["gen"], found["owner"], _aware(found["expires_at"])
    )
