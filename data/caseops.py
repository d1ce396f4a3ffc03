"""CaseOps: a lossless case transform, so a tokenizer learns one piece per word, not one per casing.

    encoded = encode("iPhone OpenAI NASA")   # 'i\\ue003phone \\ue001open\\ue003a\\ue003i \\ue002nasa'
    assert decode(encoded) == "iPhone OpenAI NASA"

Only maximal runs of ASCII letters [A-Za-z] ("words") change; digits, punctuation and non-ASCII
characters end a word and pass through untouched. A lowercase word is unchanged; an uppercase
word of two or more letters becomes ALLCAPS + the word in lowercase; any other word with a
capital is lowercased with TITLE in front when its first letter is a capital and CAPNEXT before
every other capital. The operators are private-use code points (TITLE U+E001, ALLCAPS U+E002,
CAPNEXT U+E003, ESC U+E004); a literal U+E001..U+E004 in the input is written ESC + itself, so
decode(encode(t)) == t for every string t. These are the rules of the public CaseOps records
(`lossless_caps_caseops_v1`, PR #1729), so text encoded here fits their tokenizer.

Bits-per-byte must be scored on the ORIGINAL text, and a transformed token no longer spells its
own bytes, so validation shards get a sidecar: per token, the original UTF-8 bytes it stands for
(`encode_with_byte_counts`). Operators and ESC count 0, the character after ESC counts its own
bytes, and the counts of a document sum to exactly len(original.encode("utf-8")), even where
the tokenizer's normalisation (NFKC, whitespace folding) changes the text: bytes the token
stream no longer spells are counted on the token next to them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)
MAX_TOKEN_BYTES = 2**16 - 1  # sidecars store uint16 counts

# A word that holds a capital (the lookbehind anchors it at the word's start), or a literal operator.
_CASED_WORD_OR_OPERATOR = re.compile(r"(?<![A-Za-z])[a-z]*[A-Z][A-Za-z]*|[\ue001-\ue004]")
_CAPITAL = re.compile(r"[A-Z]")
# Escape + any character, ALLCAPS + the letters it covers, TITLE/CAPNEXT + the letter they raise;
# a lone ESC last, so a dangling one is dropped rather than left in the text.
_OPERATOR_SPAN = re.compile(r"\ue004(.)|\ue002([A-Za-z]*)|[\ue001\ue003]([a-z]?)|\ue004", re.S)


# ---- THE TRANSFORM ----

def _capnext(match: re.Match) -> str:
    return CAPNEXT + match.group().lower()


def _encode_span(match: re.Match) -> str:
    word = match.group()
    if word in OPERATORS:
        return ESC + word
    if len(word) > 1 and word.isupper():
        return ALLCAPS + word.lower()
    capital_first = word[0] <= "Z"  # an ASCII letter: capitals sort before lowercase
    head, rest = (TITLE + word[0].lower(), word[1:]) if capital_first else ("", word)
    if not rest or rest.islower():
        return head + rest
    return head + _CAPITAL.sub(_capnext, rest)


def encode(text: str) -> str:
    """The CaseOps form of `text`: lowercase words plus case operators, exactly invertible."""
    return _CASED_WORD_OR_OPERATOR.sub(_encode_span, text)


def _decode_span(match: re.Match) -> str:
    literal, caps, raised = match.groups()
    if literal is not None:
        return literal
    if caps is not None:
        return caps.upper()
    return (raised or "").upper()


def decode(text: str) -> str:
    """Original text of an encoded string.

    It never fails: text a model wrote may hold operators in odd places, and an operator with no
    letter to act on is simply dropped.
    """
    if not any(op in text for op in OPERATORS):
        return text
    return _OPERATOR_SPAN.sub(_decode_span, text)


# ---- ORIGINAL BYTES PER TOKEN ----

def original_byte_prefix(encoded: str) -> np.ndarray:
    """prefix[k] = original UTF-8 bytes in the first k bytes of `encoded` (length n_bytes + 1).

    Case changes keep every byte (ASCII letters are one byte either way), so an encoded byte
    counts 1 unless it belongs to an operator; the character after an ESC is literal and counts.
    """
    raw = np.frombuffer(encoded.encode("utf-8"), dtype=np.uint8)
    weight = np.ones(len(raw), dtype=np.int64)
    if len(raw) >= 3:
        # U+E001..U+E004 are EE 80 81..84 in UTF-8; UTF-8 never matches that mid-character.
        starts = np.flatnonzero((raw[:-2] == 0xEE) & (raw[1:-1] == 0x80)
                                & (raw[2:] >= 0x81) & (raw[2:] <= 0x84))
        operators = _unescaped(starts, raw) if (raw[starts + 2] == 0x84).any() else starts
        weight[(operators[:, None] + np.arange(3)).ravel()] = 0
    return np.concatenate([[0], np.cumsum(weight)])


def _unescaped(starts: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Operator-character positions that act as operators: an ESC makes the next character literal."""
    acting, escaped_at = [], -1
    for start in starts.tolist():
        if start == escaped_at:  # the character right after an acting ESC
            continue
        acting.append(start)
        if raw[start + 2] == 0x84:
            escaped_at = start + 3
    return np.array(acting, dtype=np.int64)


def _varint(blob: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the protobuf varint at pos; one-byte values take the short path."""
    byte = blob[pos]
    if byte < 0x80:
        return byte, pos + 1
    value, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = blob[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + 1
        shift += 7


def piece_ids_and_ends(proto: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and the input byte offset where each token's span ends, from a SentencePieceText.

    The serialized proto is the one alignment interface every sentencepiece release offers
    (immutable_proto and offset_mapping each exist only in some), hence this small reader. It
    knows the message: 1 text, 2 pieces, 3 score (float); a piece is 1 piece, 2 id, 3 surface,
    4 begin, 5 end, string fields length-delimited and the rest varints. One-byte varints are
    read inline: nearly every value is one, and this loop runs once per validation token.
    """
    ids, ends = [], []
    pos, size = 0, len(proto)
    while pos < size:
        key = proto[pos]
        if key & 7 == 5:  # the float score
            pos += 5
            continue
        length = proto[pos + 1]
        pos += 2
        if length >= 0x80:
            length, pos = _varint(proto, pos - 1)
        if key != 0x12:  # the text itself
            pos += length
            continue
        piece_id = end = 0
        stop = pos + length
        while pos < stop:
            key = proto[pos]
            value = proto[pos + 1]
            pos += 2
            if value >= 0x80:
                value, pos = _varint(proto, pos - 1)
            if key & 7 == 2:
                pos += value
            elif key == 0x10:
                piece_id = value
            elif key == 0x28:
                end = value
        ids.append(piece_id)
        ends.append(end)
    return np.array(ids, dtype=np.int64), np.array(ends, dtype=np.int64)


def counts_from_ends(ends: np.ndarray, prefix: np.ndarray, is_byte: np.ndarray) -> np.ndarray:
    """Original bytes per token: each token takes the bytes between the previous token's end and its own.

    Telescoping makes the sum exactly prefix[-1]: bytes the normaliser dropped (leading or
    doubled whitespace) go to the next token, trailing ones to the last. A run of byte-fallback
    pieces that spans exactly its own length gets one byte per piece (SentencePiece reports the
    whole character on the run's last piece).
    """
    ends = np.maximum.accumulate(np.minimum(ends, len(prefix) - 1))
    ends[-1] = len(prefix) - 1
    starts = np.concatenate([[0], ends[:-1]])
    if is_byte.any():
        ends = _spread_byte_runs(starts, ends, is_byte)
        starts = np.concatenate([[0], ends[:-1]])
    return prefix[ends] - prefix[starts]


def _spread_byte_runs(starts: np.ndarray, ends: np.ndarray, is_byte: np.ndarray) -> np.ndarray:
    """Ends that give each byte piece of an unnormalised character one byte, as the bytes it decodes to."""
    ends = ends.copy()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], is_byte.astype(np.int8), [0]])))
    for first, stop in zip(edges[::2].tolist(), edges[1::2].tolist()):
        begin = int(starts[first])
        if ends[stop - 1] - begin == stop - first:
            ends[first:stop] = begin + np.arange(1, stop - first + 1)
    return ends


def encode_with_byte_counts(sp, texts: Sequence[str], num_threads: int = 1,
                            is_byte: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids, original UTF-8 bytes per token) of each ORIGINAL text, CaseOps-encoded then tokenized.

    No BOS is added; the caller prepends it with a count of 0. Raises ValueError when a count
    cannot be stored (a text with bytes but no token, or a token over 65,535 bytes).
    """
    is_byte = byte_piece_mask(sp) if is_byte is None else is_byte
    encoded = [encode(t) for t in texts]
    protos = sp.encode(encoded, out_type="serialized_proto", num_threads=num_threads)
    results = []
    for text, enc, proto in zip(texts, encoded, protos):
        ids, ends = piece_ids_and_ends(proto)
        prefix = original_byte_prefix(enc)
        if prefix[-1] != len(text.encode("utf-8")):  # cheap guard on encode() itself
            raise ValueError(f"CaseOps lost track of the bytes of {text[:40]!r}...; please report this document.")
        if not len(ids):
            if prefix[-1]:
                raise ValueError(f"a {prefix[-1]}-byte document has no tokens after normalisation "
                                 f"({text[:40]!r}...), so its bytes cannot be counted; drop it from the input.")
            results.append((ids, np.zeros(0, dtype=np.int64)))
            continue
        counts = counts_from_ends(ends, prefix, is_byte[ids])
        if counts.max() > MAX_TOKEN_BYTES:
            raise ValueError(f"a token stands for {counts.max()} bytes, more than a uint16 sidecar holds.")
        results.append((ids, counts))
    return results


# ---- TOKENIZER ----

USER_DEFINED = 4  # SentencePiece's ModelProto.SentencePiece.Type for user_defined_symbols


def byte_piece_mask(sp) -> np.ndarray:
    return np.array([sp.is_byte(i) for i in range(sp.vocab_size())], dtype=bool)


def _fields(blob: bytes):
    """(field number, value) of one protobuf message: ints for varints, bytes for everything else."""
    pos = 0
    while pos < len(blob):
        key, pos = _varint(blob, pos)
        kind = key & 7
        if kind == 0:
            value, pos = _varint(blob, pos)
        elif kind == 2:
            size, pos = _varint(blob, pos)
            value, pos = blob[pos:pos + size], pos + size
        elif kind in (1, 5):
            size = 8 if kind == 1 else 4
            value, pos = blob[pos:pos + size], pos + size
        else:
            raise ValueError(f"unexpected protobuf wire type {kind} in a SentencePiece model")
        yield key >> 3, value


def user_defined_pieces(model_proto: bytes) -> set[str]:
    """Pieces of type USER_DEFINED in a serialized ModelProto (field 1: piece 1, score 2, type 3)."""
    found = set()
    for number, value in _fields(model_proto):
        if number == 1:
            piece = dict(_fields(value))
            if piece.get(3) == USER_DEFINED:
                found.add(piece.get(1, b"").decode("utf-8", "replace"))
    return found


def operator_piece_problem(sp) -> str | None:
    """Why a tokenizer cannot carry CaseOps text, or None.

    Each operator must be a user-defined piece: those are cut out before any merge, so an
    operator is always one token of its own.
    """
    reserved = user_defined_pieces(sp.serialized_model_proto())
    for op in OPERATORS:
        if op not in reserved:
            return (f"the tokenizer has no user-defined piece for operator U+{ord(op):04X}; use one "
                    "trained with --caseops (the operators as user_defined_symbols).")
    return None


# ---- SIDECAR FILES ----

def read_shard(path) -> np.ndarray:
    """uint16 payload of a challenge shard, after checking header and exact size."""
    raw = Path(path).read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4") if len(raw) >= 1024 else np.zeros(3, dtype="<i4")
    if header[0] != 20240520 or header[1] != 1 or len(raw) != 1024 + 2 * int(header[2]):
        raise ValueError(f"{path} is not a complete challenge shard (bad header or size); rebuild or re-download it.")
    return np.frombuffer(raw[1024:], dtype="<u2")


def sidecar_problem(val_path, bytes_path, bos_id: int = 1) -> str | None:
    """Why a byte sidecar does not fit its validation shard, or None when it does.

    A sidecar must be a complete shard with one count per token of its val shard, and 0 on
    every BOS (a document boundary stands for no text).
    """
    try:
        tokens, counts = read_shard(val_path), read_shard(bytes_path)
    except (OSError, ValueError) as exc:
        return str(exc)
    if len(tokens) != len(counts):
        return (f"{bytes_path} holds {len(counts)} byte counts but {val_path} holds {len(tokens)} tokens; "
                "rebuild or re-download both.")
    if counts[tokens == bos_id].any():
        return f"{bytes_path} gives bytes to a BOS token; rebuild or re-download it."
    return None
