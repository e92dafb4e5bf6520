#!/usr/bin/env python3
"""Writes fuzz/seeds/exchange/*: whole sessions (initialize, notifications/initialized, a call
on the other worker, DELETE, a call after it) on the local store and both etcd policies, and
sessions on etcd that then fails every call (on the session, on a forged ID, a DELETE),
encoded as `arbitrary` 1.x decodes the target's input `(u8, Vec<Exchange>)`. Seeds only: the
fuzzer mutates from them; if the input's fields change, rerun this after changing it.

    python3 fuzz/seeds/make_exchange_seeds.py
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "exchange")


def variant(k, count):
    """The u32 (little endian) that `arbitrary` decodes as variant k of count."""
    v = ((2 * k + 1) << 32) // (2 * count)
    assert (v * count) >> 32 == k
    return list(v.to_bytes(4, "little"))


class Input:
    def __init__(self, config):
        self.front = [config]
        self.back = []  # string lengths, in the order they are read (from the end of the data)

    def exchange(self, worker=0, method=0, minted=None, forged=False, identity=None, body=0,
                 status=0, answer=0, advance_ms=0, etcd_fails=0):
        f = self.front
        f.append(1)  # another element
        f.append(worker)
        f.append(method)  # POST GET DELETE OPTIONS
        if forged:
            f += variant(2, 4) + [7, 0, 0, 0] + [0x5A] * 16  # Session::Forged(slot, secret)
        elif minted is None:
            f += variant(0, 4)  # Session::None
        else:
            f += variant(1, 4) + [minted]  # Session::Minted
        f.append(0)  # version: None
        if identity is None:
            f.append(0)
        else:
            f.append(1)
            self.back.append(len(identity))
            f += list(identity.encode())
        f += variant(body, 4)  # Initialize Initialized Request Raw
        f.append(255)  # chunk
        f += variant(status, 4)  # Ok Accepted NotFound Other
        f.append(0)  # upstream_id: None
        f.append(0)  # sse
        f += variant(answer, 3)  # Result Error Raw
        f += list(advance_ms.to_bytes(2, "little"))
        for _ in range(etcd_fails):  # EtcdReply::Failed(14)
            f += [1] + variant(1, 4) + list((14).to_bytes(4, "little"))
        f.append(0)  # no more etcd replies listed (a Vec reads a "more" byte first): the fake answers
        return self

    def bytes(self):
        data = self.front + [0] + list(reversed(self.back))
        assert not self.back or len(data) <= 256, "string lengths take one byte below 256 bytes"
        return bytes(data)


def session(config, identity=None):
    return (
        Input(config)
        .exchange(identity=identity)
        .exchange(minted=0, identity=identity, body=1, status=1)
        .exchange(worker=1, minted=0, identity=identity, body=2, advance_ms=1200)
        .exchange(method=2, minted=0, identity=identity, body=2)
        .exchange(minted=0, identity=identity, body=2, advance_ms=1200)
    )


def unreachable(config, identity=None):
    """A session opened, then etcd fails every call: on a forged ID, on the session, and (when
    short enough for the identity's length byte) on a DELETE."""
    seed = (
        Input(config)
        .exchange(identity=identity)
        .exchange(minted=0, identity=identity, body=1, status=1)
        .exchange(forged=True, identity=identity, body=2, etcd_fails=4)
        .exchange(minted=0, identity=identity, body=2, advance_ms=1200, etcd_fails=4)
    )
    if identity is None:
        seed.exchange(method=2, minted=0, body=2, etcd_fails=4)
    return seed


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {
        "local_session": session(0),
        "etcd_reject_session": session(4),
        "etcd_local_session": session(5, identity="u"),
        "etcd_reject_unreachable": unreachable(4),
        "etcd_local_unreachable": unreachable(5, identity="u"),
    }
    for name, seed in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(seed.bytes())


if __name__ == "__main__":
    main()
