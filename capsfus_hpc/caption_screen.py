"""A compiled screen that clears most fused captions of every caption rule without Python.

`caption_rules.judge` stays the one definition of the rules. This screen only proves a caption
passes all of them, by a single scan of its bytes; a caption it cannot clear goes to `judge`,
which names the reason (or, rarely, clears it after all). So the screen must be sound (never
clear a caption `judge` would reject), and tests/test_caption_screen.py checks exactly that.

It screens captions of printable ASCII plus non-ASCII separators (dashes, curly quotes),
lower-case letters that NFKC and casefold leave alone (é, Cyrillic, CJK), and word characters
they fold into others (É -> é, ß -> ss, ² -> 2): 99.2% of the real ones. For them
`caption_words` is the runs of word characters, lower-cased or folded, which bytes can follow.
Words are compared by a 64-bit hash; a collision can only make two different words look equal,
which sends a caption to `judge`, never clears it. Why numba: the rules need per-word logic
(phrase loops, distinct-word counts) that a columnar engine does not express; Polars took 6.4 s
per million captions for part of it.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import literally, njit

from .atomic import atomic_write
from .caption_rules import _GARBAGE, LENGTH_FINISH, CaptionRules, _same_words, judge, normalized

CLEAR = 0
JUDGE = 1
CHECK_RAW = 2  # clear unless the fused caption copies a non-ASCII raw caption (checked in Python)
CHECK_SYNTHETIC = 4

# Byte classes for the caption scan: a word byte ([A-Za-z0-9_]) or a space. (Control characters
# are refused before the scan; non-ASCII bytes are told apart by _caption_chars.)
_WORD, _SPACE = 1, 2
_CLASS = np.array([(_WORD if chr(b).isascii() and (chr(b).isalnum() or b == 95) else 0) | (_SPACE if b == 32 else 0)
                   for b in range(256)], np.uint8)
_LOWER = np.array([b | 0x20 if b < 0x80 else b for b in range(256)], np.uint8)  # [A-Z_] -> [a-z\x7f]
_SEED = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xFF51AFD7ED558CCD)


def string_buffers(array: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets as int64, data bytes, valid mask) of a string array, without copying the bytes."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if pa.types.is_null(array.type):
        return np.zeros(len(array) + 1, np.int64), np.zeros(0, np.uint8), np.zeros(len(array), np.bool_)
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        raise TypeError(f"expected a string column, got {array.type}")
    _, offsets_buffer, data_buffer = array.buffers()
    width = np.int64 if pa.types.is_large_string(array.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, width)[array.offset: array.offset + len(array) + 1].astype(np.int64)
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    return offsets, data, valid


@njit(cache=True, nogil=True)
def _is_word(byte):
    return (48 <= byte <= 57) or (65 <= byte <= 90) or (97 <= byte <= 122) or byte == 95


@njit(cache=True, nogil=True)
def _lower(byte):
    return byte + 32 if 65 <= byte <= 90 else byte


@njit(cache=True, nogil=True)
def _mix(value):
    value *= _MIX  # odd, so both steps are one-to-one
    return value ^ (value >> np.uint64(32))


@njit(cache=True, nogil=True)
def _feed(value, chunk, shift, byte):
    """Add a word's next byte: bytes gather 8 to a chunk, and each full chunk is mixed in. One
    OR a byte keeps the dependency chain short; a multiply a byte made hashing half the scan."""
    chunk |= np.uint64(byte) << shift
    shift += np.uint64(8)
    if shift == np.uint64(64):
        return _mix(value ^ chunk), np.uint64(0), np.uint64(0)
    return value, chunk, shift


@njit(cache=True, nogil=True)
def _finish(value, chunk, shift):
    return _mix(value ^ chunk) if shift else value


@njit(cache=True, nogil=True)
def word_hash(data, start, stop):
    """The hash of the word data[start:stop] (ASCII bytes lower-cased by setting 0x20, which is
    one-to-one on word bytes, others as they are). A word of up to 8 bytes has a hash of its own."""
    value, chunk, shift = _SEED, np.uint64(0), np.uint64(0)
    for k in range(start, stop):
        value, chunk, shift = _feed(value, chunk, shift, _LOWER[data[k]])
    return _finish(value, chunk, shift)


@njit(cache=True, nogil=True)
def _same_ascii_words(c_dat, starts, lengths, count, s_dat, s_start, s_stop):
    """Whether the ASCII source's word runs equal the caption's, ignoring case."""
    word = 0
    k = s_start
    while k < s_stop:
        if not _is_word(s_dat[k]):
            k += 1
            continue
        run = k
        while k < s_stop and _is_word(s_dat[k]):
            k += 1
        if word >= count or k - run != lengths[word]:
            return False
        for m in range(k - run):
            if _lower(s_dat[run + m]) != _lower(c_dat[starts[word] + m]):
                return False
        word += 1
    return word == count


@njit(cache=True, nogil=True)
def _echo_at(hashes, w, count, echo_words, echo_starts):
    """Whether an echo phrase's words start at word w (1-based)."""
    for e in range(len(echo_starts) - 1):
        length = echo_starts[e + 1] - echo_starts[e]
        if w + length - 1 > count:
            continue
        same = True
        for m in range(length):
            if hashes[w + m] != echo_words[echo_starts[e] + m]:
                same = False
                break
        if same:
            return True
    return False


@njit(cache=True, nogil=True)
def _has_loop(hashes, count, max_repeats, max_phrase_words):
    """A phrase of p <= max_phrase_words words followed by max_repeats copies of itself is a run
    of max_repeats * p positions j with word j equal to word j + p."""
    for p in range(1, max_phrase_words + 1):
        run = 0
        for j in range(count - p):
            if hashes[j] == hashes[j + p]:
                run += 1
                if run >= max_repeats * p:
                    return True
            else:
                run = 0
    return False


# What a source caption's non-ASCII character becomes in `normalized`, on its own: nothing but
# separators (U+2013 dash, NBSP), only non-ASCII letters (é, Cyrillic, CJK), or maybe ASCII
# letters (ﬁ, ß, fullwidth forms). In context, NFKC may also compose a combining mark with the
# letter before it; that always yields a non-ASCII letter, so the source then cannot equal an
# ASCII caption, and reading the mark as a separator errs only towards calling judge.
_SEPARATOR, _LASTING, _OTHER = 0, 1, 2


# The non-ASCII characters a fused caption may hold and still be screened: a separator (what
# `normalized` drops, not whitespace, not a combining mark, not garbage), a lower-case letter
# that NFKC and casefold leave alone, or a word character they fold into word characters only
# (one word: É -> é, ß -> ss; not ½ -> "1 2", and not ™, which is no word character). Folded or
# not, none of its characters may compose with a neighbour (Hangul jamo and a few marks do), so
# a caption's words are its characters' words, joined. Anything else sends the caption to judge.
_REFUSED, _SEPARATES, _LETTER, _FOLDS = 0, 1, 2, 3
_JAMO = ((0x1100, 0x11FF), (0xA960, 0xA97F), (0xD7B0, 0xD7FF))
_WORD_CHAR = re.compile(r"\w")


@functools.cache
def _composes() -> frozenset[str]:
    """Characters that canonical composition may join onto the character before them (Hangul
    jamo, composed by rule rather than by table, are told by _JAMO)."""
    seconds = set()
    for code in range(0x110000):
        parts = unicodedata.decomposition(chr(code)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            seconds.add(chr(int(parts[1], 16)))
    return frozenset(seconds)


def _is_jamo(char: str) -> bool:
    return any(a <= ord(char) <= b for a, b in _JAMO)


def _caption_char(code: int, words: str) -> int:
    char = chr(code)
    if char.isspace() or unicodedata.category(char)[0] in "MC" or _GARBAGE.search(char):
        return _REFUSED
    decomposed = unicodedata.normalize("NFKC", char)
    # Joins the character before it (ﾞ becomes a combining mark), or holds jamo (ㄱ folds to one).
    if unicodedata.combining(decomposed[0]) or decomposed[0] in _composes() or any(map(_is_jamo, decomposed)):
        return _REFUSED
    if not words:
        return _SEPARATES
    if any(unicodedata.combining(c) or c in _composes() for c in decomposed):
        return _REFUSED
    stable = decomposed == char == char.casefold() and words == char
    if stable and unicodedata.category(char) in ("Ll", "Lo"):
        return _LETTER
    # Only a word character may fold: judge's template-label pattern reads the raw text, where
    # "™sentence:" starts with a non-word character, while the folded words say "tmsentence".
    folded = decomposed.casefold()
    if _WORD_CHAR.match(char) and words == folded and all(
            _WORD_CHAR.match(c) and not unicodedata.combining(c) and c not in _composes() and not _is_jamo(c)
            for c in folded):
        return _FOLDS
    return _REFUSED


_TABLES = ("sources", "captions", "fold_starts", "fold_bytes", "fold_chars")


@functools.cache
def _char_tables() -> tuple[np.ndarray, ...]:
    """(source class, caption class, then what a folding character becomes: where its UTF-8
    bytes start in fold_bytes, the bytes, how many characters) of every BMP code point: seconds
    to compute, so kept beside numba's cache, per Unicode version (and version of these rules)."""
    cache = Path(__file__).parent / "__pycache__" / f"char_tables_v3_{unicodedata.unidata_version}.npz"
    try:
        with np.load(cache) as saved:
            return tuple(saved[name] for name in _TABLES)
    except (OSError, KeyError, ValueError):
        pass
    tables = _compute_char_tables()
    try:
        cache.parent.mkdir(exist_ok=True)
        atomic_write(cache, lambda tmp: np.savez(open(tmp, "wb"), **dict(zip(_TABLES, tables))))
    except OSError:
        pass  # a read-only install computes them each time
    return tables


def _compute_char_tables() -> tuple[np.ndarray, ...]:
    sources = np.full(0x10000, _OTHER, np.uint8)
    captions = np.full(0x10000, _REFUSED, np.uint8)
    fold_starts = np.zeros(0x10001, np.int32)
    fold_chars = np.zeros(0x10000, np.uint8)
    folds = bytearray()
    for code in range(0x10000):
        fold_starts[code] = len(folds)
        if code < 0x80 or 0xD800 <= code <= 0xDFFF:
            continue
        words = normalized(chr(code))
        sources[code] = _SEPARATOR if not words else _LASTING if not any(c.isascii() for c in words) else _OTHER
        captions[code] = _caption_char(code, words)
        if captions[code] == _FOLDS:
            folds += words.encode()
            fold_chars[code] = len(words)
    fold_starts[0x10000] = len(folds)
    return sources, captions, fold_starts, np.frombuffer(bytes(folds), np.uint8), fold_chars


@njit(cache=True, nogil=True)
def _code_at(data, k, stop):
    """The code point of the UTF-8 sequence led by data[k], or -1 if it is not a 2 or 3 byte one."""
    lead = data[k]
    if 0xC0 <= lead < 0xE0 and k + 1 < stop:
        return ((lead & 0x1F) << 6) | (data[k + 1] & 0x3F)
    if 0xE0 <= lead < 0xF0 and k + 2 < stop:
        return ((lead & 0x0F) << 12) | ((data[k + 1] & 0x3F) << 6) | (data[k + 2] & 0x3F)
    return -1


_HAS_LETTER, _HAS_FOLD = 1, 2


@njit(cache=True, nogil=True)
def _non_ascii_found(data, start, stop, caption_chars):
    """-1 if a non-ASCII character of the caption is refused, else _HAS_LETTER if one is a
    letter, plus _HAS_FOLD if one folds."""
    found = 0
    k = start
    while k < stop:
        if data[k] < 0x80:
            k += 1
            continue
        code = _code_at(data, k, stop)
        if code < 0:
            return -1
        kind = caption_chars[code]
        if kind == _REFUSED:
            return -1
        if kind == _LETTER:
            found |= _HAS_LETTER
        elif kind == _FOLDS:
            found |= _HAS_FOLD
        k += 2 if code < 0x800 else 3
    return found


@njit(cache=True, nogil=True)
def _non_ascii_kind(data, start, stop, classes):
    """_LASTING if the text holds a lasting letter, else _OTHER if it holds a character that may
    become ASCII letters, else _SEPARATOR."""
    kind = _SEPARATOR
    k = start
    while k < stop:
        lead = data[k]
        if lead < 0x80:
            k += 1
            continue
        if lead >= 0xE0 and k + 2 < stop and lead < 0xF0:
            code = ((lead & 0x0F) << 12) | ((data[k + 1] & 0x3F) << 6) | (data[k + 2] & 0x3F)
            k += 3
        elif lead >= 0xC0 and k + 1 < stop and lead < 0xE0:
            code = ((lead & 0x1F) << 6) | (data[k + 1] & 0x3F)
            k += 2
        else:
            k += 1
            kind = _OTHER
            continue
        cls = classes[code]
        if cls == _LASTING:
            return _LASTING
        kind = max(kind, cls)
    return kind


@njit(cache=True, nogil=True)
def _first_word_differs(c_dat, c_start, c_length, s_dat, start, stop):
    """Whether the source's first word is surely not the caption's: it is a run of ASCII word
    bytes with only ASCII before and after it (so NFKC cannot touch it) that differs. Most
    sources are settled here without reading past their first word."""
    k = start
    while k < stop and not _is_word(s_dat[k]):
        if s_dat[k] >= 128:
            return False
        k += 1
    run = k
    while k < stop and _is_word(s_dat[k]):
        k += 1
    if run == stop or (k < stop and s_dat[k] >= 128):
        return False
    if k - run != c_length:
        return True
    for m in range(c_length):
        if _lower(s_dat[run + m]) != _lower(c_dat[c_start + m]):
            return True
    return False


@njit(cache=True, nogil=True)
def _source_verdict(c_dat, starts, lengths, count, s_off, s_dat, s_valid, row, non_ascii_flag, classes, letters):
    if not s_valid[row]:
        return CLEAR
    start, stop = s_off[row], s_off[row + 1]
    if _first_word_differs(c_dat, starts[0], lengths[0], s_dat, start, stop):
        return CLEAR
    for k in range(start, stop):
        if s_dat[k] >= 128:
            if letters:  # both have non-ASCII letters: Python compares them
                return non_ascii_flag
            kind = _non_ascii_kind(s_dat, start, stop, classes)
            if kind == _LASTING:
                return CLEAR
            if kind == _OTHER:
                return non_ascii_flag
            break  # only separators: the bytes of its ASCII words are its words
    if letters:  # the caption's words hold a non-ASCII letter, an ASCII source's cannot
        return CLEAR
    return JUDGE if _same_ascii_words(c_dat, starts, lengths, count, s_dat, start, stop) else CLEAR


@njit(cache=True, nogil=True)
def _word_runs(c_dat, start, stop, wide, caption_chars, fold_starts, fold_bytes, fold_chars, starts, lengths, hashes):
    """(whitespace-separated words, word runs, word characters) of a caption; each run's start,
    byte length and hash go to index 1.. of the arrays. Unless `wide` (a constant, so each
    case compiles to its own loop) its non-ASCII characters are all separators; if it is, a
    letter's bytes are word bytes, and a folding character counts and hashes as what it becomes.
    A word is read in a loop of its own: one hard-to-predict branch a word, not two. Every byte
    hashed goes through _LOWER, as in word_hash, so equal words hash alike whatever their form."""
    literally(wide)
    reader_words, count, word_chars, prev_space = 0, 0, 0, 1
    k = start
    while k < stop:
        byte = c_dat[k]
        if wide and byte >= 0x80:  # a character's first byte: _non_ascii_found checked them all
            code = _code_at(c_dat, k, stop)
            if caption_chars[code] < _LETTER:
                reader_words += prev_space
                prev_space = 0
                k += 2 if code < 0x800 else 3
                continue
        elif not _CLASS[byte] & _WORD:
            is_space = (_CLASS[byte] >> 1) & 1
            reader_words += prev_space & (1 - is_space)
            prev_space = is_space
            k += 1
            continue
        reader_words += prev_space
        prev_space = 0
        count += 1
        starts[count] = k
        value, chunk, shift = _SEED, np.uint64(0), np.uint64(0)
        while True:
            if wide and byte >= 0x80:
                code = _code_at(c_dat, k, stop)
                size = 2 if code < 0x800 else 3
                if caption_chars[code] == _FOLDS:
                    for f in range(fold_starts[code], fold_starts[code + 1]):
                        value, chunk, shift = _feed(value, chunk, shift, _LOWER[fold_bytes[f]])
                    word_chars += fold_chars[code]
                else:
                    for f in range(k, k + size):
                        value, chunk, shift = _feed(value, chunk, shift, _LOWER[c_dat[f]])
                    word_chars += 1
                k += size
            else:
                value, chunk, shift = _feed(value, chunk, shift, _LOWER[byte])
                word_chars += 1
                k += 1
            if k >= stop:
                break
            byte = c_dat[k]
            if wide and byte >= 0x80:
                if caption_chars[_code_at(c_dat, k, stop)] < _LETTER:
                    break
            elif not _CLASS[byte] & _WORD:
                break
        hashes[count] = _finish(value, chunk, shift)
        lengths[count] = k - starts[count]
    return reader_words, count, word_chars


@njit(cache=True, nogil=True)
def _screen(c_off, c_dat, c_valid, length_finish, r_off, r_dat, r_valid, s_off, s_dat, s_valid,
            min_chars, min_words, max_chars, max_words, max_repeats, max_phrase_words, min_distinct_ratio,
            distinct_min_words, echo_words, echo_starts, classes, caption_chars, fold_starts, fold_bytes,
            fold_chars, out):
    words_max = max_chars // 2 + 2
    starts = np.zeros(words_max, np.int64)
    lengths = np.zeros(words_max, np.int64)
    hashes = np.zeros(words_max, np.uint64)
    size = 16
    while size < 2 * words_max:
        size *= 2
    slots = np.zeros(size, np.uint64)  # a per-row set of word hashes, told apart by stamp
    stamps = np.zeros(size, np.int64)
    tallies = np.zeros(size, np.int64)  # how often each word occurs
    sentence = word_hash(np.frombuffer(b"sentence", np.uint8), 0, 8)
    # Two 64-bit filters of the echo phrases' first words (by two fields of the hash), so that
    # nearly all other words are passed over fast, common short ones included.
    echo_low, echo_high = np.uint64(0), np.uint64(0)
    for e in range(len(echo_starts) - 1):
        echo_low |= np.uint64(1) << (echo_words[echo_starts[e]] & np.uint64(63))
        echo_high |= np.uint64(1) << ((echo_words[echo_starts[e]] >> np.uint64(58)) & np.uint64(63))
    for row in range(len(out)):
        out[row] = JUDGE
        start, stop = c_off[row], c_off[row + 1]
        if not c_valid[row] or length_finish[row] or stop == start or stop - start > max_chars:
            continue
        high, control = 0, False
        for k in range(start, stop):  # no table lookup here: this loop vectorises
            byte = c_dat[k]
            high |= byte
            control |= (byte < 32) | (byte == 127)
        if control:
            continue
        found = _non_ascii_found(c_dat, start, stop, caption_chars) if high & 0x80 else 0
        if found < 0:
            continue
        letters = found & _HAS_LETTER
        # Word runs (index 0 collects the bytes before the first word) and their hashes, in one
        # pass over the bytes; a caption of ASCII and separators takes the lean loop.
        if found:
            reader_words, count, word_chars = _word_runs(c_dat, start, stop, True, caption_chars, fold_starts,
                                                         fold_bytes, fold_chars, starts, lengths, hashes)
        else:
            reader_words, count, word_chars = _word_runs(c_dat, start, stop, False, caption_chars, fold_starts,
                                                         fold_bytes, fold_chars, starts, lengths, hashes)
        if reader_words < max(min_words, 1) or reader_words > max_words or count == 0:
            continue
        if word_chars + count - 1 < min_chars:
            continue
        if found & _HAS_FOLD:  # its words are not its bytes: Python compares it with the sources
            verdict = CHECK_RAW | CHECK_SYNTHETIC
        else:
            verdict = _source_verdict(c_dat, starts[1:], lengths[1:], count, r_off, r_dat, r_valid, row, CHECK_RAW,
                                      classes, letters)
            if verdict == JUDGE:
                continue
            synthetic = _source_verdict(c_dat, starts[1:], lengths[1:], count, s_off, s_dat, s_valid, row,
                                        CHECK_SYNTHETIC, classes, letters)
            if synthetic == JUDGE:
                continue
            verdict |= synthetic
        echo, distinct, most = False, 0, 1
        used = 16  # the set's slots this row: at most half full, and few enough to stay in L1 cache
        while used < 2 * count:
            used *= 2
        mask = np.uint64(used - 1)
        for w in range(1, count + 1):
            h = hashes[w]
            if h == sentence:  # "sentence" (or "ſentence") then ":" may be a template label
                m = starts[w] + lengths[w]
                while m < stop and c_dat[m] == 32:
                    m += 1
                echo |= m < stop and c_dat[m] == 58
            if (echo_low >> (h & np.uint64(63))) & (echo_high >> (h >> np.uint64(58))) & np.uint64(1):
                echo |= _echo_at(hashes, w, count, echo_words, echo_starts)
            slot = np.int64(h & mask)
            while stamps[slot] == row + 1 and slots[slot] != h:
                slot = np.int64((slot + 1) & mask)
            if stamps[slot] != row + 1:
                stamps[slot], slots[slot], tallies[slot] = row + 1, h, 1
                distinct += 1
            else:
                tallies[slot] += 1
                most = max(most, tallies[slot])
        if echo:
            continue
        # A phrase followed by max_repeats copies of itself has a word that occurs once more.
        if most > max_repeats and _has_loop(hashes[1:], count, max_repeats, max_phrase_words):
            continue
        if count >= distinct_min_words and distinct < min_distinct_ratio * count:
            continue
        out[row] = verdict


def _echo_phrases(rules: CaptionRules) -> tuple[np.ndarray, np.ndarray]:
    """The echo phrases as word hashes, flat, with each phrase's start (and a final end). Words
    are hashed as the UTF-8 of their normalised form, as the screen hashes a caption's letters
    and folded characters."""
    words, starts = [], [0]
    for phrase_words, _ in rules._echo:
        for word in phrase_words.split():
            data = np.frombuffer(word.encode(), np.uint8)
            words.append(word_hash(data, 0, len(data)))
        starts.append(len(words))
    return np.array(words, np.uint64), np.array(starts, np.int64)


def screen(fused: pa.Array, raw: pa.Array, synthetic: pa.Array, finish_reason: pa.Array,
           rules: CaptionRules) -> np.ndarray:
    """CLEAR, JUDGE or CHECK_* flags per row."""
    c_off, c_dat, c_valid = string_buffers(fused)
    length_finish = np.asarray(pc.equal(finish_reason, LENGTH_FINISH).fill_null(False)
                               .to_numpy(zero_copy_only=False), np.bool_)
    out = np.empty(len(c_valid), np.int8)
    _screen(c_off, c_dat, c_valid, length_finish, *string_buffers(raw), *string_buffers(synthetic),
            rules.min_chars, rules.min_words, rules.max_chars, rules.max_words, rules.max_repeats,
            rules.max_repeated_phrase_words, rules.min_distinct_ratio, rules.distinct_ratio_min_words,
            *_echo_phrases(rules), *_char_tables(), out)
    return out


def judge_column(fused: pa.Array, raw: pa.Array, synthetic: pa.Array, finish_reason: pa.Array,
                 rules: CaptionRules) -> list[tuple[int, str, str]]:
    """(row, reason, detail) of every caption `judge` rejects, in row order; the screen decides
    which rows `judge` needs to see."""
    return judge_screened(screen(fused, raw, synthetic, finish_reason, rules), fused, raw, synthetic,
                          finish_reason, rules)


def judge_screened(flags: np.ndarray, fused: pa.Array, raw: pa.Array, synthetic: pa.Array,
                   finish_reason: pa.Array, rules: CaptionRules) -> list[tuple[int, str, str]]:
    """judge_column's second half, given the screen's flags: Python sees only the flagged rows."""
    rows = np.flatnonzero(flags)
    picked = pa.array(rows, pa.int64())
    rejected = []
    for row, flag, caption, raw_caption, synthetic_caption, finish in zip(
            rows.tolist(), flags[rows].tolist(), *(column.take(picked).to_pylist()
                                                   for column in (fused, raw, synthetic, finish_reason))):
        if flag != JUDGE:
            folded = normalized(caption)
            if not ((flag & CHECK_RAW and _same_words(folded, raw_caption))
                    or (flag & CHECK_SYNTHETIC and _same_words(folded, synthetic_caption))):
                continue
        verdict = judge(caption, raw_caption, synthetic_caption, finish, rules)
        if verdict:
            rejected.append((row, *verdict))
    return rejected
