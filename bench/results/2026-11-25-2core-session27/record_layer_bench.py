"""What our TLS 1.3 record layer costs per 256 KiB, sealing and opening, beside AES-GCM itself.

    python bench/results/2026-11-25-2core-session27/record_layer_bench.py [ROUNDS]

Run from a checkout's root (its `sidecar` is imported). glibc's malloc is tuned as the sidecar
tunes it (`sidecar.malloc.tune`), so that a 256 KiB buffer comes from the heap, not from fresh
pages. Prints the best of three runs of ROUNDS (400) each, in µs per 256 KiB.
"""

from __future__ import annotations

import os
import sys
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sidecar import malloc
from sidecar.transport.tls_records import MAX_PLAINTEXT, RecordLayer

SUITE = "TLS_AES_128_GCM_SHA256"
SIZE = 256 * 1024


def best_of_three(rounds: int, work) -> float:  # noqa: ANN001 - a callable of one round
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds):
            work()
        times.append((time.perf_counter() - start) / rounds * 1e6)
    return min(times)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    malloc.tune()
    a, b = bytes(range(32)), bytes(range(32, 64))
    data = os.urandom(SIZE)
    sender = RecordLayer(SUITE, a, b, client=True)

    def seal() -> None:
        sender.seal(data, bytearray())

    print(f"seal {best_of_three(rounds, seal):.1f} us / 256 KiB")

    sender, receiver = RecordLayer(SUITE, a, b, client=True), RecordLayer(SUITE, b, a, client=False)
    wires = []
    for _ in range(3 * rounds):
        wire = bytearray()
        sender.seal(data, wire)
        wires.append(bytes(wire))
    spare = memoryview(bytearray(1 << 15))
    queue = iter(wires)

    def open_all() -> None:
        wire = memoryview(next(queue))
        start, end = 0, len(wire)
        while start < end:
            stop = RecordLayer.frame(wire, start, end)
            receiver.open(wire[start:stop], spare)
            start = stop

    print(f"open {best_of_three(rounds, open_all):.1f} us / 256 KiB")

    aead, nonce, header = AESGCM(bytes(16)), bytes(12), bytes(5)
    inner = data[: MAX_PLAINTEXT + 1]

    def aes_only() -> None:
        for _ in range(SIZE // MAX_PLAINTEXT):
            aead.encrypt(nonce, inner, header)

    print(f"AES-128-GCM alone {best_of_three(rounds, aes_only):.1f} us / 256 KiB")


if __name__ == "__main__":
    main()
