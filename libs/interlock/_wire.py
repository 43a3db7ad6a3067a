"""Request parsing that names the field at fault.

Protobuf's parser rejects a string field holding invalid UTF-8 without saying which field;
Interlock's contract is INVALID_ARGUMENT naming the field. So services receive raw bytes,
parse them here, and on failure walk the wire format against the message descriptor to
find the first string field that is not UTF-8.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import message as pb_message
from google.protobuf.descriptor import FieldDescriptor

from interlock.errors import InvalidArgumentError

_LENGTH_DELIMITED = 2
M = TypeVar("M", bound=pb_message.Message)


def parse_request(message_cls: type[M], data: bytes) -> M:
    """Parse `data` as `message_cls`, or raise InvalidArgumentError naming the bad field."""
    try:
        return message_cls.FromString(data)
    except pb_message.DecodeError as exc:
        path = find_invalid_utf8(message_cls.DESCRIPTOR, data)
        if path is not None:
            raise InvalidArgumentError("must be valid UTF-8", field=path) from exc
        raise InvalidArgumentError("request is not a valid protobuf message", field="request") from exc


def find_invalid_utf8(descriptor: Any, data: bytes, prefix: str = "") -> str | None:
    """The path (e.g. `params.messages[1].content`) of the first non-UTF-8 string, if any."""
    seen: dict[int, int] = {}
    pos = 0
    try:
        while pos < len(data):
            tag, pos = _varint(data, pos)
            number, wire_type = tag >> 3, tag & 7
            if wire_type == 0:
                _, pos = _varint(data, pos)
                continue
            if wire_type == 1:
                pos += 8
                continue
            if wire_type == 5:
                pos += 4
                continue
            if wire_type != _LENGTH_DELIMITED:
                return None
            length, pos = _varint(data, pos)
            chunk, pos = data[pos : pos + length], pos + length
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            index = seen.get(number, 0)
            seen[number] = index + 1
            name = f"{prefix}{field.name}"
            if _is_repeated(field):
                name += f"[{index}]"
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError:
                    return name
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                found = find_invalid_utf8(field.message_type, chunk, name + ".")
                if found is not None:
                    return found
    except IndexError:
        return None
    return None


def _is_repeated(field: Any) -> bool:
    # protobuf 6+ has `is_repeated`; `label` is gone in 7.
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
