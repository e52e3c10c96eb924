"""A msgspec JSON encoder for Dramatiq messages: byte-compatible with Dramatiq's JSON encoder
for ASCII payloads, several times faster."""

from __future__ import annotations

from typing import Any

import msgspec
from dramatiq.encoder import Encoder, MessageData
from dramatiq.errors import DecodeError


class MsgspecEncoder(Encoder):
    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoder: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, Any])

    def encode(self, data: MessageData) -> bytes:
        return self._encoder.encode(data)

    def decode(self, data: bytes) -> MessageData:
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise DecodeError(f"failed to decode message: {exc}", data, exc) from None
