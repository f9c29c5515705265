"""Answers that outlive their connection (``STREAM_RESUMABLE=1``).

The model's answer is produced into a log, by a producer that no longer belongs to
the request: the response only reads the log, so a client that leaves stops reading,
not the model, and a client that comes back (``Last-Event-ID``) reads the log from
where it was. The log is the process's memory, or Redis Streams with ``REDIS_URL``
(shared by every worker and machine).

Each event of the log is a whole SSE frame as the route's encoder wrote it; a reader
puts ``id: ANSWER.N`` before it, so ids never need to be stored. Three background
tasks per process (threads, greenlets under gevent) do the bookkeeping: the keeper,
twice a second, tells Redis which answers this process produces (a heartbeat) and
reads, stops the ones asked to stop or left unread, and ends, as lost, a followed
answer whose producer stopped beating; the tail reads, with one blocking ``XREAD``,
every log that this process's readers follow from another process; the producers
themselves write with one ``XADD`` per batch of events. The Redis connections of a
worker are so bounded by its pool, not by its readers.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from shared.config import Settings
from shared.streaming import (
    SSE_HEADERS,
    Body,
    Error,
    SseEncoder,
    StreamError,
    client_has_left,
)
from shared.ui_message_stream import UI_MESSAGE_STREAM_HEADERS, UiMessageEncoder
from shared.validation import query_fields

log = logging.getLogger(__name__)

# 128 random bits, URL-safe: an answer's id is its only key.
_ID_BYTES = 16
EVENT_ID = re.compile(r"([A-Za-z0-9_-]{22,64})\.(0|[1-9][0-9]{0,8})")
_KEEPALIVE = b": keep-alive\n\n"
KEEPER_SECONDS = 0.5  # stop, abandon and loss are seen within this (and a read)
HEARTBEAT_MS = 3000  # a producer unseen this long is lost
_READ_WAIT_SECONDS = 0.5  # a reader looks at its client at least this often
_MIRROR_IDLE_SECONDS = 5.0  # a followed log nobody here reads is let go after this
_READ_MARK_MS = 3600 * 1000  # when another process last read an answer
_RUNNING_TTL_MS = 24 * 3600 * 1000  # a running answer's keys, should it never end
STOPPED = "stopped"
LOST = "stream_lost"
SERVER_FAILED = ("The server failed; the failure is logged.", "server_error")
# How each kind of answer is written: the SSE routes', and useChat's.
ENCODINGS: dict[str, Callable[[], Any]] = {"sse": SseEncoder, "ui": UiMessageEncoder}
HEADERS = {"sse": SSE_HEADERS, "ui": UI_MESSAGE_STREAM_HEADERS}


def new_answer_id() -> str:
    return secrets.token_urlsafe(_ID_BYTES)


def last_event_id(environ: Mapping[str, Any]) -> str | None:
    """The ``Last-Event-ID`` a request resumes from: its header (``EventSource``'s
    reconnect, a fetch reader's), or ``?lastEventId=`` on a GET."""
    header = environ.get("HTTP_LAST_EVENT_ID")
    if header:
        return str(header)
    for name, value in query_fields(environ.get("QUERY_STRING", "")):
        if name == "lastEventId" and value:
            return value
    return None


def _not_found(what: str) -> StreamError:
    return StreamError(
        404,
        f"There is no answer {what[:80]!r}, or it has expired: ask again.",
        "not_found",
    )


def _frames(chunk: bytes) -> list[bytes]:
    """The SSE events of what an encoder wrote (keep-alive comments are not events).

    An event ends with a blank line and holds none: the encoders write each line of
    a multi-line text as its own ``data:`` line.
    """
    return [
        frame + b"\n\n"
        for frame in chunk.split(b"\n\n")[:-1]
        if frame and not frame.startswith(b":")
    ]


# --- One answer, as this process knows it -------------------------------------------


class _Answer:
    """An answer's events: all of them in the process that produces it, else a
    mirror of its log that the tail keeps up to date."""

    def __init__(self, answer_id: str, encoding: str, chat_id: str | None) -> None:
        self.id = answer_id
        self.encoding = encoding
        self.chat_id = chat_id
        self.frames: list[bytes] = []
        self.ended = False
        self.ended_at: float | None = None
        self.readers = 0
        self.last_read = time.monotonic()
        self.last_read_wall = time.time()  # for other processes: theirs is not ours
        self._changed = threading.Condition()

    def add(self, frames: list[bytes], *, ended: bool = False) -> None:
        with self._changed:
            self.frames.extend(frames)
            if ended and not self.ended:
                self.ended, self.ended_at = True, time.monotonic()
            self._changed.notify_all()

    def after(self, index: int, wait: float) -> tuple[list[bytes], bool]:
        """Events from ``index`` on, waiting up to ``wait`` for one; and whether
        the answer has ended."""
        with self._changed:
            if index >= len(self.frames) and not self.ended:
                self._changed.wait(wait)
            return self.frames[index:], self.ended

    def enter(self) -> None:
        with self._changed:
            self.readers += 1

    def leave(self) -> None:
        with self._changed:
            self.readers -= 1
            self.last_read, self.last_read_wall = time.monotonic(), time.time()

    def reading(self) -> bool:
        return self.readers > 0


# --- Where logs live ----------------------------------------------------------------


class Store(Protocol):
    """The log of every answer: appended by producers, read by readers."""

    def begin(self, answer: _Answer) -> None: ...

    def append(self, answer: _Answer, frames: list[bytes], *, end: bool) -> bool:
        """Add events; ``False`` once the answer was ended by someone else."""
        ...

    def find(self, answer_id: str) -> _Answer | None: ...

    def active(self, chat_id: str) -> str | None: ...

    def ask_to_stop(self, answer_id: str) -> bool: ...

    def keep(self, producers: Mapping[str, _Producer]) -> None:
        """The keeper's round, given this process's running producers."""
        ...


class MemoryStore:
    """Logs in this process's memory: one process only (``flask run``,
    ``runserver``, a single gunicorn worker)."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self.answers: dict[str, _Answer] = {}
        self.chats: dict[str, str] = {}
        self.stops: set[str] = set()
        self._lock = threading.Lock()

    def begin(self, answer: _Answer) -> None:
        with self._lock:
            self.answers[answer.id] = answer
            if answer.chat_id:
                self.chats[answer.chat_id] = answer.id

    def append(self, answer: _Answer, frames: list[bytes], *, end: bool) -> bool:
        answer.add(frames, ended=end)
        if end and answer.chat_id:
            with self._lock:
                if self.chats.get(answer.chat_id) == answer.id:
                    del self.chats[answer.chat_id]
        return True

    def find(self, answer_id: str) -> _Answer | None:
        return self.answers.get(answer_id)

    def active(self, chat_id: str) -> str | None:
        return self.chats.get(chat_id)

    def ask_to_stop(self, answer_id: str) -> bool:
        answer = self.answers.get(answer_id)
        if answer is None:
            return False
        if not answer.ended:
            self.stops.add(answer_id)
        return True

    def keep(self, producers: Mapping[str, _Producer]) -> None:
        for answer_id in list(self.stops):
            self.stops.discard(answer_id)
            if producer := producers.get(answer_id):
                producer.stop(StreamError(409, "The answer was stopped.", STOPPED))
        now = time.monotonic()
        with self._lock:
            for answer_id, answer in list(self.answers.items()):
                if (
                    answer.ended_at is not None
                    and now - answer.ended_at > self.ttl_seconds
                ):
                    del self.answers[answer_id]


# Append a batch of events unless the log has ended; the first event's number, or -1.
# KEYS: log, count, ended; ARGV: frames, how many, "1" to end it, TTL in ms.
_APPEND = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local count = tonumber(ARGV[2])
local first = redis.call('INCRBY', KEYS[2], count) - count
redis.call('XADD', KEYS[1], '*', 'n', first, 'f', ARGV[1], 'e', ARGV[3])
if ARGV[3] == '1' then redis.call('SET', KEYS[3], '1') end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return first
"""


# When an answer was last read, by any process: the latest time wins.
# KEYS: the mark; ARGV: a Unix time, how long the mark lasts in ms.
_MARK_READ = """
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > last then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
"""


class RedisStore:
    """Logs in Redis Streams, shared by every worker and machine: a stream per
    answer (an entry per batch of events), and small keys beside it: its
    producer's heartbeat, a stop request, whether anyone reads it, and the chat's
    answer in progress."""

    def __init__(self, url: str, ttl_seconds: float, pool_size: int = 32) -> None:
        import redis

        self.ttl_ms = int(ttl_seconds * 1000)
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=10
        )
        # Any: redis-py types every command as possibly awaitable.
        self.redis: Any = redis.Redis(connection_pool=pool)
        self._append: Any = self.redis.register_script(_APPEND)
        self._mark_read: Any = self.redis.register_script(_MARK_READ)
        self.local: dict[str, _Answer] = {}  # produced here
        self.mirrors: dict[str, _Answer] = {}  # produced elsewhere, read here
        self._tail = _Tail(url, self)
        self._lock = threading.Lock()

    @staticmethod
    def key(answer_id: str, what: str) -> str:
        return f"answer:{answer_id}:{what}"

    def begin(self, answer: _Answer) -> None:
        self.local[answer.id] = answer
        pipe = self.redis.pipeline()
        meta = {"encoding": answer.encoding, "chat": answer.chat_id or ""}
        pipe.hset(self.key(answer.id, "meta"), mapping=meta)
        pipe.pexpire(self.key(answer.id, "meta"), _RUNNING_TTL_MS)
        pipe.set(self.key(answer.id, "alive"), "1", px=HEARTBEAT_MS)
        if answer.chat_id:
            pipe.set(f"chat:{answer.chat_id}:answer", answer.id, px=_RUNNING_TTL_MS)
        pipe.execute()

    def append(self, answer: _Answer, frames: list[bytes], *, end: bool) -> bool:
        first = self._log(answer.id, frames, end=end)
        if first < 0:
            return False
        answer.add(frames, ended=end)
        if end:
            self.local.pop(answer.id, None)
            self._ended(answer)
        return True

    def _log(self, answer_id: str, frames: list[bytes], *, end: bool) -> int:
        keys = [self.key(answer_id, what) for what in ("log", "count", "ended")]
        ttl = self.ttl_ms if end else _RUNNING_TTL_MS
        args = [b"".join(frames), len(frames), "1" if end else "0", ttl]
        return int(self._append(keys=keys, args=args))

    def _ended(self, answer: _Answer) -> None:
        pipe = self.redis.pipeline()
        pipe.pexpire(self.key(answer.id, "meta"), self.ttl_ms)
        pipe.delete(self.key(answer.id, "alive"))
        if answer.chat_id:
            chat_key = f"chat:{answer.chat_id}:answer"
            pipe.get(chat_key)
        results = pipe.execute()
        if answer.chat_id and results[-1] == answer.id.encode():
            self.redis.delete(f"chat:{answer.chat_id}:answer")

    def find(self, answer_id: str) -> _Answer | None:
        with self._lock:
            found = self.local.get(answer_id) or self.mirrors.get(answer_id)
            if found is not None and found.ended and not self._kept(answer_id):
                self.mirrors.pop(answer_id, None)
                return None  # expired in Redis: this copy is too
            if found is not None:
                return found
            meta = self.redis.hgetall(self.key(answer_id, "meta"))
            if not meta:
                return None
            chat = meta.get(b"chat", b"").decode() or None
            mirror = _Answer(answer_id, meta[b"encoding"].decode(), chat)
            last = "0-0"
            for entry_id, fields in self.redis.xrange(self.key(answer_id, "log")):
                last = entry_id.decode()
                mirror.add(_frames(fields[b"f"]), ended=fields[b"e"] == b"1")
            self.mirrors[answer_id] = mirror
        if not mirror.ended:
            self._tail.follow(self.key(answer_id, "log"), last, mirror)
        return mirror

    def _kept(self, answer_id: str) -> bool:
        return bool(self.redis.exists(self.key(answer_id, "log")))

    def active(self, chat_id: str) -> str | None:
        value = self.redis.get(f"chat:{chat_id}:answer")
        return value.decode() if value else None

    def ask_to_stop(self, answer_id: str) -> bool:
        if not self.redis.exists(self.key(answer_id, "meta")):
            return False
        self.redis.set(self.key(answer_id, "stop"), "1", px=self.ttl_ms)
        return True

    def keep(self, producers: Mapping[str, _Producer]) -> None:
        now, wall = time.monotonic(), time.time()
        mirrors = list(self.mirrors.values())
        pipe = self.redis.pipeline()
        for answer_id in producers:
            pipe.set(self.key(answer_id, "alive"), "1", px=HEARTBEAT_MS)
            pipe.get(self.key(answer_id, "stop"))
            pipe.get(self.key(answer_id, "read"))
        for mirror in mirrors:
            last_read = wall if mirror.reading() else mirror.last_read_wall
            self._mark_read(
                keys=[self.key(mirror.id, "read")],
                args=[last_read, _READ_MARK_MS],
                client=pipe,
            )
            pipe.exists(self.key(mirror.id, "alive"))
        results = iter(pipe.execute())
        for producer in producers.values():
            _, stop, read_elsewhere = next(results), next(results), next(results)
            if read_elsewhere:  # a Unix time: how long ago, in this process's clock
                elsewhere = now - (wall - float(read_elsewhere))
                producer.answer.last_read = max(producer.answer.last_read, elsewhere)
            if stop:
                producer.stop(StreamError(409, "The answer was stopped.", STOPPED))
        for mirror in mirrors:
            _, alive = next(results), next(results)
            if not alive and not mirror.ended:
                self._lose(mirror)
            if not mirror.reading() and now - mirror.last_read > _MIRROR_IDLE_SECONDS:
                self._forget(mirror)

    def _lose(self, mirror: _Answer) -> None:
        """End the log of an answer whose producer died: every reader, here or
        elsewhere, reads the loss from the log, under its own id."""
        error = Error("The server producing this answer stopped: ask again.", LOST)
        encoder = ENCODINGS[mirror.encoding]()
        frames = _frames(encoder.encode([error]))
        log.warning("Answer %s lost its producer.", mirror.id)
        self._log(mirror.id, frames, end=True)  # -1: it ended meanwhile, fine

    def _forget(self, mirror: _Answer) -> None:
        with self._lock:
            self.mirrors.pop(mirror.id, None)
        self._tail.unfollow(self.key(mirror.id, "log"))


class _Tail:
    """One blocking ``XREAD`` for every log this process follows, on a connection of
    its own; a new log to follow wakes it through a stream of this process's."""

    def __init__(self, url: str, store: RedisStore) -> None:
        import redis

        self._redis: Any = redis.Redis.from_url(url)
        self._store = store
        self._wake_key = f"wake:{uuid.uuid4().hex}"
        self._followed: dict[
            str, tuple[str, _Answer]
        ] = {}  # log key: (last id, mirror)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def follow(self, log_key: str, last_id: str, mirror: _Answer) -> None:
        with self._lock:
            self._followed[log_key] = (last_id, mirror)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()
        pipe = self._store.redis.pipeline()
        pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1)
        pipe.expire(self._wake_key, 3600)  # a process that went away leaves nothing
        pipe.execute()

    def unfollow(self, log_key: str) -> None:
        with self._lock:
            self._followed.pop(log_key, None)

    def _run(self) -> None:
        wake_id = "$"
        while True:
            with self._lock:
                streams = {key: last for key, (last, _) in self._followed.items()}
            streams[self._wake_key] = wake_id
            try:
                answers = self._redis.xread(streams, block=1000)
            except Exception:
                log.exception("Reading the followed answers from Redis failed.")
                time.sleep(1.0)
                continue
            for key, entries in answers:
                key = key.decode()
                if key == self._wake_key:
                    wake_id = entries[-1][0].decode()
                    continue
                self._deliver(key, entries)

    def _deliver(self, key: str, entries: list[Any]) -> None:
        with self._lock:
            followed = self._followed.get(key)
            if followed is None:
                return
            mirror = followed[1]
            self._followed[key] = (entries[-1][0].decode(), mirror)
        for _, fields in entries:
            ended = fields[b"e"] == b"1"
            mirror.add(_frames(fields[b"f"]), ended=ended)
            if ended:
                self.unfollow(key)


# --- Producing and reading ---------------------------------------------------------


class _Producer:
    """Relays one answer into its log, whoever reads it."""

    def __init__(self, answers: Answers, answer: _Answer, body: Body) -> None:
        self.answers = answers
        self.answer = answer
        self.body = body
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        store = self.answers.store
        try:
            for chunk in self.body:
                frames = _frames(chunk)
                if frames and not store.append(self.answer, frames, end=False):
                    return  # declared lost elsewhere: nobody reads on
            store.append(self.answer, [], end=True)
        except Exception:  # the log failed (Redis down, its pool exhausted)
            log.exception("Logging answer %s failed.", self.answer.id)
            self._fail()
        finally:
            self.body.close()
            self.answers.producers.pop(self.answer.id, None)

    def _fail(self) -> None:
        """End the answer with an error: in its log if it can still be written, else
        here, for this process's readers; elsewhere, its heartbeat stops."""
        error = Error(*SERVER_FAILED)
        frames = _frames(ENCODINGS[self.answer.encoding]().encode([error]))
        try:
            self.answers.store.append(self.answer, frames, end=True)
        except Exception:
            self.answer.add(frames, ended=True)

    def stop(self, error: StreamError) -> None:
        self.body.end(error)


# Every app's answers in this process: wait_for_answers() waits for their producers.
_all_answers: weakref.WeakSet[Answers] = weakref.WeakSet()


def wait_for_answers(timeout: float) -> int:
    """Wait up to ``timeout`` for the answers this process produces to end; how
    many were running.

    For a worker that stops (``gunicorn.conf.py``'s ``worker_exit``): a producer
    is no request, so nothing else waits for it, and a log that just stopped would
    leave its readers waiting for ``stream_lost``.
    """
    producers = [
        producer
        for answers in list(_all_answers)
        for producer in list(answers.producers.values())
    ]
    deadline = time.monotonic() + timeout
    for producer in producers:
        producer.thread.join(max(0.0, deadline - time.monotonic()))
    return len(producers)


@dataclass
class Streamed:
    """A view's answer: status, headers, body."""

    status: int
    headers: dict[str, str]
    body: Iterable[bytes]


class Answers:
    """The resumable answers of this process, for one app."""

    def __init__(
        self,
        store: Store,
        *,
        abandon_seconds: float,
        keepalive_seconds: float,
    ) -> None:
        self.store = store
        self.abandon_seconds = abandon_seconds
        self.keepalive_seconds = keepalive_seconds
        self.producers: dict[str, _Producer] = {}
        self._keeper: threading.Thread | None = None
        self._lock = threading.Lock()
        _all_answers.add(self)

    def start(
        self,
        body: Body,
        *,
        encoding: str,
        chat_id: str | None = None,
        client_socket: Any = None,
    ) -> Streamed:
        """Produce ``body`` (already waited on for its first output) into a new log,
        and answer with a reader of it."""
        answer = _Answer(new_answer_id(), encoding, chat_id)
        self.store.begin(answer)
        producer = _Producer(self, answer, body)
        self.producers[answer.id] = producer
        producer.thread.start()
        return self._reading(answer, 0, client_socket)

    def resume(
        self, event_id: str, encoding: str, client_socket: Any = None
    ) -> Streamed:
        """The events after ``ANSWER.N`` of a route that writes ``encoding``:
        ``204`` once there are none to come."""
        match = EVENT_ID.fullmatch(event_id)
        if match is None:
            raise _not_found(event_id)
        answer = self.store.find(match[1])
        if answer is None or answer.encoding != encoding:
            raise _not_found(match[1])
        after, count = int(match[2]), len(answer.frames)
        if answer.ended and after == count - 1:
            return _no_content()  # EventSource stops reconnecting on a 204
        if after >= count:
            raise _not_found(event_id)
        return self._reading(answer, after + 1, client_socket)

    def chat_stream(self, chat_id: str, client_socket: Any = None) -> Streamed:
        """The whole answer in progress for ``useChat``'s chat ``chat_id``, or 204."""
        answer_id = self.store.active(chat_id)
        answer = self.store.find(answer_id) if answer_id else None
        if answer is None or answer.ended:
            return _no_content()
        return self._reading(answer, 0, client_socket)

    def stop(self, answer_id: str) -> None:
        """Stop an answer, whichever process produces it (404 when unknown)."""
        if not self.store.ask_to_stop(answer_id):
            raise _not_found(answer_id)
        self._start_keeper()

    def _reading(self, answer: _Answer, index: int, client_socket: Any) -> Streamed:
        self._start_keeper()
        headers = {**HEADERS[answer.encoding], "X-Stream-Id": answer.id}
        return Streamed(200, headers, self._read(answer, index, client_socket))

    def _read(self, answer: _Answer, index: int, client_socket: Any) -> Iterator[bytes]:
        answer.enter()
        prefix = f"id: {answer.id}.".encode()
        quiet_since = time.monotonic()
        try:
            while True:
                wait = min(_READ_WAIT_SECONDS, self.keepalive_seconds)
                frames, ended = answer.after(index, wait)
                if frames:
                    yield b"".join(
                        prefix + str(index + n).encode() + b"\n" + frame
                        for n, frame in enumerate(frames)
                    )
                    index += len(frames)
                    quiet_since = time.monotonic()
                    continue
                if ended:
                    return
                if client_socket is not None and client_has_left(client_socket):
                    return
                if time.monotonic() - quiet_since >= self.keepalive_seconds:
                    yield _KEEPALIVE
                    quiet_since = time.monotonic()
        finally:
            answer.leave()

    def _start_keeper(self) -> None:
        with self._lock:
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keep, daemon=True)
                self._keeper.start()

    def _keep(self) -> None:
        while True:
            time.sleep(KEEPER_SECONDS)
            try:
                self._keep_once()
            except Exception:
                log.exception("Keeping the resumable answers failed.")

    def _keep_once(self) -> None:
        producers = dict(self.producers)
        self.store.keep(producers)
        now = time.monotonic()
        for producer in producers.values():
            answer = producer.answer
            if answer.reading():
                answer.last_read = now
            elif now - answer.last_read > self.abandon_seconds:
                producer.stop(
                    StreamError(
                        409,
                        f"Nobody read the answer for {self.abandon_seconds:g} s.",
                        STOPPED,
                    )
                )


def _no_content() -> Streamed:
    return Streamed(204, {}, [])


def answers_for(settings: Settings) -> Answers | None:
    """This process's resumable answers, when ``STREAM_RESUMABLE`` is on."""
    if not settings.resumable:
        return None
    store: Store
    if settings.redis_url:
        store = RedisStore(settings.redis_url, settings.resume_ttl_seconds)
    else:
        store = MemoryStore(settings.resume_ttl_seconds)
    return Answers(
        store,
        abandon_seconds=settings.resume_abandon_seconds,
        keepalive_seconds=settings.keepalive_seconds,
    )
