"""Measure what signing and verifying cost per envelope, beside encoding and decoding alone.

    python tests/bench/envelope_signing.py [--messages 20000]

A measurement, not a test: it prints per-message times and the ratio to the raw codec.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from services.common.authenticity import Authenticator
from shared.bus import Bus
from shared.protocol import CLEARING, Codec, Envelope, TransferRequested
from shared.signing import SigningKey, envelope_payload


def per_message(seconds: float, count: int) -> str:
    return f"{seconds / count * 1e6:7.1f} µs"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    count = parser.parse_args().messages
    codec, key, bus = Codec(), SigningKey.generate(), Bus()
    envelopes = [
        Envelope(
            source="gp",
            destination=CLEARING,
            seq=n + 1,
            message=TransferRequested(
                transfer_id=f"t{n}",
                payer_bank="gp",
                payer="maya",
                payee_bank="college",
                payee="bob",
                minutes=30,
                memo="Evening class",
                requested_at=datetime.now(UTC),
            ),
        )
        for n in range(count)
    ]
    started = time.perf_counter()
    encoded = [codec.encode(e) for e in envelopes]
    encode = time.perf_counter() - started

    started = time.perf_counter()
    signatures = [key.sign(envelope_payload(codec.encode(e))) for e in envelopes]
    encode_and_sign = time.perf_counter() - started

    started = time.perf_counter()
    for data in encoded:
        codec.decode(data)
    decode = time.perf_counter() - started

    check = Authenticator(bus, CLEARING, lambda source, seq: [key.public_key])
    subject = bus.to_clearing("gp")
    started = time.perf_counter()
    for data, signature in zip(encoded, signatures, strict=True):
        refusal = check.refusal(subject, codec.decode(data), data, signature)
        if refusal is not None:
            raise SystemExit(refusal)
    decode_and_verify = time.perf_counter() - started

    print(f"{count} envelopes (transfer.requested.v1, {len(encoded[0])} bytes each)")
    print(f"encode             {per_message(encode, count)}")
    print(f"encode + sign      {per_message(encode_and_sign, count)}  "
          f"({encode_and_sign / encode:.1f}x encode)")  # fmt: skip
    print(f"decode             {per_message(decode, count)}")
    print(f"decode + verify    {per_message(decode_and_verify, count)}  "
          f"({decode_and_verify / decode:.1f}x decode)")  # fmt: skip
    both = encode_and_sign - encode + decode_and_verify - decode
    print(f"sign + verify, per message: {per_message(both, count)}")


if __name__ == "__main__":
    main()
