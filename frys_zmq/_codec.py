# TEMPORARY stand-in until the real codec lands (helper is writing it).
from typing import Any
import msgpack
from ._errors import DecodeError
from ._limits import DEFAULT_LIMITS, Limits
FLAG_COMPRESSED = 1
class PayloadCodec:
    def __init__(self, *, limits: Limits = DEFAULT_LIMITS, compression: bool = True, compression_threshold: int = 4096) -> None:
        self.limits = limits
    def encode(self, obj: object) -> tuple[bytes, int]:
        return msgpack.packb(obj, use_bin_type=True), 0
    def decode(self, data: bytes, flags: int) -> Any:
        try:
            return msgpack.unpackb(data, raw=False)
        except Exception as exc:
            raise DecodeError(str(exc)) from exc
