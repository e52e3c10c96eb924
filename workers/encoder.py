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
            fields = self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise DecodeError(f"failed to decode message: {exc}", data, exc) from None
        # Dramatiq would make up an id for an envelope without one, a new one per delivery: the
        # message would run, and the delivery limit (counted per id) could never stop it.
        message_id = fields.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise DecodeError("envelope without a message_id string", data, ValueError("message_id"))
        return fields
