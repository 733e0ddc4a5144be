"""LogFollow completes a follow that dockerd ended early, handing out each message once,
whatever order the follow gave stdout and stderr in."""

from __future__ import annotations

import struct

from dockvisor.engines.streams import LogFollow


def frame(stream: int, stamp: str, text: str) -> bytes:
    payload = f"2026-11-30T08:00:{stamp}Z {text}".encode()
    return struct.pack(">BxxxL", stream, len(payload)) + payload


LOG = [  # as the log holds them, in stamp order
    frame(1, "00.000000001", "line 9\n"),
    frame(2, "00.000000002", "warn 9\n"),
    frame(1, "00.200000001", "line 10\n"),
    frame(2, "00.200000002", "warn 10\n"),
]


def texts(frames: list[tuple[str, bytes]]) -> list[tuple[str, str]]:
    return [(kind, data.decode()) for kind, data in frames]


def test_a_follow_that_gave_stderr_before_stdout_is_completed_without_repeats() -> None:
    follow = LogFollow(tty=False, timestamps=False, params={"follow": "1"})
    # The follow gave warn 10 before line 10 (two copiers), then stopped.
    given = [*follow.feed(LOG[0] + LOG[1] + LOG[3]), *follow.feed(LOG[2])]
    query = follow.catch_up_params()
    assert query is not None and "follow" not in query and query["timestamps"] == "1"
    rest = follow.catch_up(b"".join(LOG))  # since is inclusive: the read gives them all
    assert rest == []
    assert sorted(texts(given)) == sorted(texts([("stdout", b"line 9\n"),
        ("stderr", b"warn 9\n"), ("stdout", b"line 10\n"), ("stderr", b"warn 10\n")]))  # fmt: skip


def test_the_last_bytes_the_follow_missed_come_from_the_catch_up() -> None:
    follow = LogFollow(tty=False, timestamps=False, params={"follow": "1"})
    follow.feed(LOG[0] + LOG[1] + LOG[2])
    follow.catch_up_params()
    assert texts(follow.catch_up(b"".join(LOG))) == [("stderr", "warn 10\n")]


def test_the_same_line_twice_is_handed_out_twice() -> None:
    same = frame(1, "01.000000000", "again\n")
    follow = LogFollow(tty=False, timestamps=True, params={"follow": "1"})
    assert len(follow.feed(same)) == 1
    follow.catch_up_params()
    rest = follow.catch_up(same + same)  # written twice in the same nanosecond
    assert len(rest) == 1 and rest[0][1].endswith(b" again\n")
