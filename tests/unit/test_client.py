"""The client's delivery rules on in-memory connections to small fake sites: checks before
queueing, reconnect and resend with the same id, deadlines naming unknown ids, back-pressure,
fallbacks that never take a write another site may hold, retry codes, the causal token."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from multiactive.client import Client, _plainly_valid, check_draft
from multiactive.errors import BatchRejected, ConnectionLost, OutcomeUnknown, RejectedError
from multiactive.model.topology import Address
from multiactive.wire.base import Connection
from multiactive.wire.frames import FrameType
from multiactive.wire.memory import MemoryConnection, memory_pair
from multiactive.wire.protocol import (
    RESULT_OK,
    RESULT_REFUSED,
    RESULT_UNKNOWN,
    Hello,
    decode_publish,
    encode_hello,
    encode_published,
)

TIMEOUT_S = 5.0


def run(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(main, TIMEOUT_S * 4))


class FakeSite:
    """A site's publisher side in miniature: an id index (a repeated id answers with its first
    position), a clock, `up` (down refuses connections), `silent` (reads and never answers),
    `refuse` (codes to answer with, one per PUBLISH, before answering normally)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True
        self.silent = False
        self.refuse: list[str] = []
        self.index: dict[str, int] = {}
        self.sent_ids: list[str] = []  # every draft id received, repeats included
        self.floors: list[int] = []
        self.clock = 1000
        self.conns: list[MemoryConnection] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def dial(self, address: Address, timeout_s: float) -> Connection:
        if not self.up:
            raise ConnectionLost(f"cannot connect to {address}: refused")
        client_end, site_end = memory_pair("client", self.name)
        self.conns.append(site_end)
        task = asyncio.create_task(self._serve(site_end))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return client_end

    async def _serve(self, conn: MemoryConnection) -> None:
        try:
            await conn.recv()
            conn.send(encode_hello(Hello(self.name, "reply", "test")))
            while True:
                frame = await conn.recv()
                assert frame.type == FrameType.PUBLISH
                number, drafts, floor = decode_publish(frame)
                self.floors.append(floor)
                self.sent_ids += [d[0] for d in drafts]
                if self.silent:
                    continue
                conn.send(encode_published(number, self._results(drafts, floor), self.clock))
        except ConnectionLost:
            return

    def _results(self, drafts: list[Any], floor: int) -> list[list[Any]]:
        if self.refuse:
            code = self.refuse.pop(0)
            if code == "unknown":  # journaled, but the answer says the outcome is unknown
                for d in drafts:
                    self.index.setdefault(d[0], len(self.index) + 1)
                return [[RESULT_UNKNOWN, "store_unknown", "answer lost"] for _ in drafts]
            return [[RESULT_REFUSED, code, f"{code} for a while"] for _ in drafts]
        self.clock = max(self.clock, floor)
        results: list[list[Any]] = []
        for d in drafts:
            if d[0] in self.index:
                results.append([RESULT_OK, 0, self.index[d[0]], True, None])
                continue
            self.clock += 1
            self.index[d[0]] = len(self.index) + 1
            results.append([RESULT_OK, 0, self.index[d[0]], False, self.clock])
        return results

    async def kill(self) -> None:
        """Every connection drops; the site refuses new ones until `up` again."""
        self.up = False
        for conn in self.conns:
            await conn.close()
        self.conns.clear()


class Sites:
    """Fake sites by port: 1 is the client's own, 2 its fallback."""

    def __init__(self, *names: str) -> None:
        self.by_port = {port: FakeSite(name) for port, name in enumerate(names, start=1)}

    async def dial(self, address: Address, timeout_s: float) -> Connection:
        return await self.by_port[address.port].dial(address, timeout_s)

    def client(self, fallback: bool = False, **options: Any) -> Client:
        options.setdefault("reconnect_min_s", 0.01)
        options.setdefault("reconnect_max_s", 0.05)
        more = ["127.0.0.1:2"] if fallback else []
        return Client("127.0.0.1:1", fallback=more, dial=self.dial, **options)


async def until(condition: Any, what: str) -> None:
    """Poll a condition each few milliseconds until it holds; fail naming `what`."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


# -- checks before anything is queued -------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("counter.add", "k", 5), TypeError, "payload must be bytes, got int 5"),
        (("kv.set", "k", "text"), TypeError, "payload must be bytes, got str"),
        (("kv.set", "", b"v"), ValueError, "key must not be empty"),
        (("kv.set", 42, b"v"), TypeError, "key must be a str"),
        (("", "k", b"v"), ValueError, "type must be 1..128 characters"),
        (("counter.add", "k", b"five"), ValueError, "payload: counter.add payload must be"),
        (("zset.add", "k", b""), ValueError, "payload: zset.add payload is the member"),
    ],
)
def test_bad_drafts_raise_before_anything_is_queued(
    args: tuple[Any, ...], error: type[Exception], match: str
) -> None:
    """A bad argument raises TypeError/ValueError naming it, and nothing of it is ever sent
    (the next good publish travels alone)."""

    async def main() -> None:
        sites = Sites("a")
        async with sites.client() as client:
            with pytest.raises(error, match=match):
                await client.publish(*args)
            await client.publish("kv.set", "good", b"v", id="good-id")
        assert sites.by_port[1].sent_ids == ["good-id"]

    run(main())


def test_bad_ids_and_headers_are_refused_by_name() -> None:
    """The id format and the headers' types are checked on the client too."""

    async def main() -> None:
        sites = Sites("a")
        async with sites.client() as client:
            with pytest.raises(ValueError, match="id 'has space'"):
                await client.publish("kv.set", "k", b"v", id="has space")
            with pytest.raises(TypeError, match="headers must map str to str"):
                await client.publish("kv.set", "k", b"v", headers={"n": 1})  # type: ignore[dict-item]
            with pytest.raises(TypeError, match=r"drafts\[1\]: payload must be bytes"):
                await client.publish_batch(
                    [("", "kv.set", "k", {}, b"v"), ("", "kv.set", "k", {}, 5)]
                )  # type: ignore[list-item]
        assert sites.by_port[1].sent_ids == []

    run(main())


# -- reconnect and resend --------------------------------------------------------------------


def test_unanswered_writes_are_resent_with_their_ids_after_a_restart() -> None:
    """The site takes the writes, dies before answering, comes back: the client reconnects by
    itself, sends the same ids again, and each is acknowledged; the index holds each once."""

    async def main() -> None:
        sites = Sites("a")
        site = sites.by_port[1]
        async with sites.client() as client:
            site.silent = True
            pending = [
                asyncio.create_task(client.publish("kv.set", f"k{i}", b"v")) for i in range(5)
            ]
            await until(lambda: len(site.sent_ids) == 5, "the first sends")
            first_ids = list(site.sent_ids)
            await site.kill()
            await until(lambda: not client.connected, "the client to see the loss")
            site.silent, site.up = False, True
            acks = await asyncio.gather(*pending)
        assert [ack.id for ack in acks] == first_ids
        assert site.sent_ids == first_ids + first_ids
        assert len(site.index) == 5

    run(main())


def test_a_write_made_while_disconnected_is_sent_once_the_site_is_back() -> None:
    """Publishing while the site is down queues the write until the client reconnects."""

    async def main() -> None:
        sites = Sites("a")
        site = sites.by_port[1]
        async with sites.client() as client:
            await site.kill()
            await until(lambda: not client.connected, "the loss")
            task = asyncio.create_task(client.publish("kv.set", "k", b"v", id="later"))
            await asyncio.sleep(0.05)
            assert site.sent_ids == []
            site.up = True
            ack = await task
        assert ack.id == "later"
        assert not ack.duplicate

    run(main())


# -- deadlines -------------------------------------------------------------------------------


def test_past_the_deadline_the_error_names_unknown_and_unsent_ids() -> None:
    """A write sent and never answered is unknown; one never sent is not journaled; both are
    named by id once the deadline passes."""

    async def main() -> None:
        sites = Sites("a")
        site = sites.by_port[1]
        async with sites.client(deadline_s=0.3) as client:
            site.silent = True
            sent = asyncio.create_task(client.publish("kv.set", "k", b"v", id="sent-1"))
            await until(lambda: site.sent_ids == ["sent-1"], "the send")
            await site.kill()
            await until(lambda: not client.connected, "the loss")
            unsent = asyncio.create_task(client.publish("kv.set", "k", b"v", id="unsent-1"))
            with pytest.raises(OutcomeUnknown) as first:
                await sent
            with pytest.raises(OutcomeUnknown) as second:
                await unsent
        assert first.value.unknown == ["sent-1"]
        assert first.value.not_journaled == []
        assert second.value.unknown == []
        assert second.value.not_journaled == ["unsent-1"]
        assert "deadline_s=0.3" in str(first.value)
        assert "sent-1" in str(first.value)

    run(main())


def test_a_batch_past_its_deadline_names_the_ids_it_generated() -> None:
    """publish_batch makes ids for drafts without one; past the deadline the error names them
    (the ones the site received) with the outcomes known so far."""

    async def main() -> None:
        sites = Sites("a")
        site = sites.by_port[1]
        async with sites.client(deadline_s=0.3) as client:
            site.silent = True
            with pytest.raises(OutcomeUnknown) as caught:
                await client.publish_batch([("", "kv.set", f"k{i}", {}, b"v") for i in range(3)])
        assert sorted(caught.value.unknown) == sorted(site.sent_ids)
        assert len(caught.value.unknown) == 3
        assert all(caught.value.unknown)
        assert caught.value.outcomes == [None, None, None]

    run(main())


def test_close_fails_what_is_unanswered_with_outcome_unknown() -> None:
    """Closing the client does not leave futures hanging: each unanswered write fails, named."""

    async def main() -> None:
        sites = Sites("a")
        site = sites.by_port[1]
        client = sites.client()
        await client.connect()
        site.silent = True
        task = asyncio.create_task(client.publish("kv.set", "k", b"v", id="open-1"))
        await until(lambda: site.sent_ids == ["open-1"], "the send")
        await client.close()
        with pytest.raises(OutcomeUnknown, match="closed") as caught:
            await task
        assert caught.value.unknown == ["open-1"]
        with pytest.raises(ConnectionLost, match="call connect"):
            await client.publish("kv.set", "k", b"v")

    run(main())


# -- back-pressure ---------------------------------------------------------------------------


def test_publishing_waits_while_max_in_flight_writes_are_unanswered() -> None:
    """With max_in_flight=3 and a site that does not answer, a fourth publish waits and is not
    sent; once the site answers, it goes."""

    async def main() -> None:
        sites = Sites("a")
        site = sites.by_port[1]
        async with sites.client(max_in_flight=3) as client:
            site.silent = True
            tasks = [asyncio.create_task(client.publish("kv.set", f"k{i}", b"v")) for i in range(5)]
            await until(lambda: len(site.sent_ids) == 3, "three sends")
            await asyncio.sleep(0.05)
            assert len(site.sent_ids) == 3
            assert client.outstanding == 3
            site.silent = False
            await site.kill()
            site.up = True
            acks = await asyncio.gather(*tasks)
        assert len({ack.id for ack in acks}) == 5

    run(main())


# -- fallback --------------------------------------------------------------------------------


def test_a_fallback_takes_new_writes_but_never_one_the_first_site_may_hold() -> None:
    """The own site dies holding an unanswered write: new writes go to the fallback; the held
    write waits for its own site and is acknowledged there when it returns."""

    async def main() -> None:
        sites = Sites("a", "b")
        a, b = sites.by_port[1], sites.by_port[2]
        async with sites.client(fallback=True) as client:
            a.silent = True
            held = asyncio.create_task(client.publish("kv.set", "k", b"v", id="held"))
            await until(lambda: a.sent_ids == ["held"], "the send to a")
            await a.kill()
            await until(lambda: client.site == "b", "the fallback")
            fresh = await client.publish("kv.set", "k", b"v", id="fresh")
            assert fresh.site == "b"
            assert b.sent_ids == ["fresh"]
            assert not held.done()
            a.silent, a.up = False, True
            for conn in b.conns:  # the fallback session ends: the client goes home first
                await conn.close()
            ack = await held
        assert ack.site == "a"
        assert "held" not in b.sent_ids

    run(main())


def test_without_a_fallback_the_client_only_dials_its_own_site() -> None:
    """Fallback addresses are used only when configured."""

    async def main() -> None:
        sites = Sites("a", "b")
        async with sites.client() as client:
            await sites.by_port[1].kill()
            await asyncio.sleep(0.1)
            assert not client.connected
            assert sites.by_port[2].conns == []

    run(main())


# -- retry codes -----------------------------------------------------------------------------


def test_unavailable_and_unknown_answers_are_retried_with_the_same_id() -> None:
    """`unavailable` (nothing journaled) and `unknown` (maybe journaled) are sent again with
    the same id until answered; an unknown one that was journaled comes back a duplicate."""

    async def main() -> None:
        sites = Sites("a")
        site = sites.by_port[1]
        async with sites.client() as client:
            site.refuse = ["unavailable"]
            first = await client.publish("kv.set", "k", b"v", id="u1")
            site.refuse = ["unknown"]
            second = await client.publish("kv.set", "k", b"v", id="u2")
        assert (first.id, first.duplicate) == ("u1", False)
        assert (second.id, second.duplicate) == ("u2", True)
        assert site.sent_ids == ["u1", "u1", "u2", "u2"]

    run(main())


def test_without_retry_unavailable_a_refusal_raises_at_once() -> None:
    """retry_unavailable=False: `unavailable` raises RejectedError with its code."""

    async def main() -> None:
        sites = Sites("a")
        site = sites.by_port[1]
        async with sites.client(retry_unavailable=False) as client:
            site.refuse = ["unavailable"]
            with pytest.raises(RejectedError) as refused:
                await client.publish("kv.set", "k", b"v", id="once")
        assert refused.value.code == "unavailable"
        assert site.sent_ids == ["once"]

    run(main())


def test_other_refusals_raise_and_a_batch_reports_each_outcome() -> None:
    """A refusal with any other code is final: RejectedError, or BatchRejected for a batch."""

    async def main() -> None:
        sites = Sites("a")
        site = sites.by_port[1]
        async with sites.client() as client:
            site.refuse = ["bad_payload"]
            with pytest.raises(RejectedError, match="bad_payload for a while") as refused:
                await client.publish("kv.set", "k", b"v")
            assert refused.value.code == "bad_payload"
            site.refuse = ["bad_payload"]
            with pytest.raises(BatchRejected) as caught:
                await client.publish_batch([("", "kv.set", "k", {}, b"v")])
        assert isinstance(caught.value.outcomes[0], RejectedError)

    run(main())


# -- causal token ----------------------------------------------------------------------------


def test_the_token_follows_the_highest_version_and_travels_as_the_floor() -> None:
    """The token is the highest version or site clock the client saw; a client that follows
    another's token sends it as the floor of its next PUBLISH."""

    async def main() -> None:
        sites = Sites("a", "b")
        a, b = sites.by_port[1], sites.by_port[2]
        a.clock = 5000
        async with sites.client() as first:
            ack = await first.publish("kv.set", "k", b"v")
        assert ack.version == 5001
        assert first.causal_token == 5001
        second = Client("127.0.0.1:2", dial=sites.dial, causal_token=first.causal_token)
        async with second:
            later = await second.publish("kv.set", "k", b"w")
        assert b.floors == [5001]
        assert later.version is not None
        assert later.version > ack.version

    run(main())


def test_the_bulk_fast_path_passes_only_what_the_full_check_passes() -> None:
    """`_plainly_valid` (the bulk path's quick test) never lets through a draft that
    `check_draft` refuses."""
    good = ("", "kv.set", "k", {}, b"v")
    bad = [
        ("", "kv.set", "", {}, b"v"),
        ("", "kv.set", "k", {}, "v"),
        ("", "counter.add", "k", {}, b"x"),
        ("", "", "k", {}, b"v"),
        ("", "kv.set", 5, {}, b"v"),
        ("has space", "kv.set", "k", {}, b"v"),
        ("", "kv.set", "k", {"n": 1}, b"v"),
    ]
    assert _plainly_valid(*good)
    for draft in bad:
        assert not _plainly_valid(*draft), draft
        with pytest.raises((TypeError, ValueError)):
            check_draft(draft[1], draft[2], draft[4], draft[3], draft[0])  # type: ignore[arg-type]


def test_a_write_that_may_be_journaled_is_never_reported_refused() -> None:
    """Unknown, then `unavailable` on the retry (with retry_unavailable=False): still sent
    again, and acknowledged as the duplicate it is; unknown, then another refusal: the error
    is OutcomeUnknown naming it, never RejectedError."""

    async def main() -> None:
        sites = Sites("a")
        site = sites.by_port[1]
        async with sites.client(retry_unavailable=False) as client:
            site.refuse = ["unknown", "unavailable"]
            ack = await client.publish("kv.set", "k", b"v", id="m1")
            site.refuse = ["unknown", "bad_payload"]
            with pytest.raises(OutcomeUnknown) as caught:
                await client.publish("kv.set", "k", b"v", id="m2")
        assert ack.duplicate
        assert site.sent_ids == ["m1", "m1", "m1", "m2", "m2"]
        assert caught.value.unknown == ["m2"]
        assert not isinstance(caught.value, RejectedError)

    run(main())
