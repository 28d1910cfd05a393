/**
 * A portable decoder for raw deflate data (RFC 1951), used to read
 * compressed clusters where no native zlib is available.
 *
 * @module
 */

import { Qcow2Error } from "../errors.ts";

/** Bits looked up at once in a Huffman fast table. */
const FAST_BITS = 10;
const FAST_SIZE = 1 << FAST_BITS;
const FAST_MASK = FAST_SIZE - 1;
/** The longest code a deflate Huffman code may have. */
const MAX_BITS = 15;

/** Base lengths and extra bits of length symbols 257..285. */
const LENGTH_BASE = new Uint16Array(29);
const LENGTH_EXTRA = new Uint8Array(29);
/** Base distances and extra bits of distance symbols 0..29. */
const DIST_BASE = new Uint16Array(30);
const DIST_EXTRA = new Uint8Array(30);
{
  // RFC 1951 section 3.2.5: the extra bits grow by one every four length
  // (two distance) symbols, and each base follows the previous range.
  for (let i = 0, base = 3; i < 29; i++) {
    LENGTH_EXTRA[i] = i < 8 || i === 28 ? 0 : (i - 4) >> 2;
    LENGTH_BASE[i] = i === 28 ? 258 : base;
    base += 1 << LENGTH_EXTRA[i];
  }
  for (let i = 0, base = 1; i < 30; i++) {
    DIST_EXTRA[i] = i < 4 ? 0 : (i - 2) >> 1;
    DIST_BASE[i] = base;
    base += 1 << DIST_EXTRA[i];
  }
}
/** The order in which code length code lengths are stored. */
// deno-fmt-ignore
const CLEN_ORDER = new Uint8Array([
  16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
]);

/**
 * One canonical Huffman code. `fast` maps the next `FAST_BITS` input bits
 * (least significant bit first) to `symbol << 4 | codeLength`, or to 0 when
 * the code is longer than `FAST_BITS` (or the bits are no code at all); then
 * `count` and `symbol` decode it the slow, canonical way.
 */
interface Huffman {
  /** Number of codes of each length 0..15. */
  count: Uint16Array;
  /** Symbols ordered by code length, then by value. */
  symbol: Uint16Array;
  /** Fast lookup table, see above. */
  fast: Int32Array;
}

function newHuffman(symbols: number): Huffman {
  return {
    count: new Uint16Array(MAX_BITS + 1),
    symbol: new Uint16Array(symbols),
    fast: new Int32Array(FAST_SIZE),
  };
}

/** Scratch offsets for `buildHuffman`. */
const offsets = new Uint16Array(MAX_BITS + 2);

/**
 * Fills `h` from the code lengths `lengths[start .. start + n)`. Returns a
 * negative number if the code is over-subscribed, 0 if it is complete, and
 * a positive number if it is incomplete (the caller decides if that is
 * allowed). The tables are only usable when the result is not negative.
 */
function buildHuffman(
  h: Huffman,
  lengths: Uint8Array,
  start: number,
  n: number,
): number {
  const count = h.count;
  count.fill(0);
  for (let i = 0; i < n; i++) count[lengths[start + i]]++;
  let left = 1;
  for (let len = 1; len <= MAX_BITS; len++) {
    left = (left << 1) - count[len];
    if (left < 0) return left;
  }
  offsets[1] = 0;
  for (let len = 1; len < MAX_BITS; len++) {
    offsets[len + 1] = offsets[len] + count[len];
  }
  const symbol = h.symbol;
  for (let i = 0; i < n; i++) {
    const len = lengths[start + i];
    if (len !== 0) symbol[offsets[len]++] = i;
  }
  // Canonical codes are assigned in `symbol` order; deflate sends them most
  // significant bit first, so the table is indexed by the reversed code.
  const fast = h.fast;
  fast.fill(0);
  let code = 0;
  let index = 0;
  for (let len = 1; len <= FAST_BITS; len++) {
    for (let k = count[len]; k > 0; k--) {
      let reversed = 0;
      for (let b = 0; b < len; b++) {
        reversed |= ((code >> b) & 1) << (len - 1 - b);
      }
      const entry = (symbol[index] << 4) | len;
      for (let j = reversed; j < FAST_SIZE; j += 1 << len) fast[j] = entry;
      code++;
      index++;
    }
    code <<= 1;
  }
  return left;
}

/**
 * Decodes a code longer than `FAST_BITS` (or an invalid one) from the low
 * bits of `bitbuf` the canonical way. Returns `symbol << 4 | length`, or -1
 * if the bits are no code.
 */
function slowDecode(bitbuf: number, h: Huffman): number {
  const count = h.count;
  let code = 0; // the bits read so far, first bit most significant
  let first = 0; // the first code of length `len`
  let index = 0; // where the codes of length `len` start in `symbol`
  for (let len = 1; len <= MAX_BITS; len++) {
    code |= (bitbuf >>> (len - 1)) & 1;
    const c = count[len];
    if (code - first < c) return (h.symbol[index + code - first] << 4) | len;
    index += c;
    first = (first + c) << 1;
    code <<= 1;
  }
  return -1;
}

/** The decoder state between blocks. */
interface State {
  input: Uint8Array;
  /** Input length. */
  len: number;
  /** Next input byte to load; may pass `len` (bytes past it load as 0). */
  pos: number;
  /** Loaded, not yet used bits, first bit least significant. */
  bitbuf: number;
  /** Number of bits in `bitbuf`. */
  bitcnt: number;
  out: Uint8Array;
  outPos: number;
  /** `out.length`: decoding stops when this many bytes are out. */
  limit: number;
}

function bad(what: string, byte: number): Qcow2Error {
  return new Qcow2Error(
    "BAD_COMPRESSED_DATA",
    `Cannot inflate deflate data: ${what} at input byte ${byte}`,
  );
}

/**
 * The error for a problem found with `pos` and `bitcnt` as given. If the
 * bits used so far run past the input, the real problem is truncation.
 */
function fail(s: State, what: string, pos: number, bitcnt: number): Qcow2Error {
  const used = pos * 8 - bitcnt;
  if (used > s.len * 8) return truncated(s);
  return bad(what, Math.floor(used / 8));
}

function truncated(s: State): Qcow2Error {
  return bad("input ends before the final block ends", s.len);
}

/**
 * Loads bytes until at least 23 bits are buffered (at most 30, so that the
 * bit buffer stays a small non-negative integer).
 */
function fill(s: State): void {
  const input = s.input;
  const len = s.len;
  let pos = s.pos;
  let bitbuf = s.bitbuf;
  let bitcnt = s.bitcnt;
  while (bitcnt < 23) {
    if (pos < len) bitbuf |= input[pos] << bitcnt;
    pos++;
    bitcnt += 8;
  }
  s.pos = pos;
  s.bitbuf = bitbuf;
  s.bitcnt = bitcnt;
}

/** Drops `n` bits, which must be buffered; throws if they were past the end. */
function drop(s: State, n: number): void {
  s.bitbuf >>>= n;
  s.bitcnt -= n;
  if (s.pos > s.len && s.pos * 8 - s.bitcnt > s.len * 8) throw truncated(s);
}

/** Reads `n` ≤ 23 bits. */
function bits(s: State, n: number): number {
  if (s.bitcnt < n) fill(s);
  const v = s.bitbuf & ((1 << n) - 1);
  drop(s, n);
  return v;
}

/** Decodes one symbol outside the hot loop. */
function decodeSymbol(s: State, h: Huffman, what: string): number {
  if (s.bitcnt < MAX_BITS) fill(s);
  let e = h.fast[s.bitbuf & FAST_MASK];
  if (e === 0) e = slowDecode(s.bitbuf, h);
  if (e < 0) throw fail(s, what, s.pos, s.bitcnt);
  drop(s, e & 15);
  return e >>> 4;
}

/** Copies a stored block. Returns true when the output is full. */
function stored(s: State): boolean {
  // Skip to a byte boundary, then give back the whole bytes still buffered.
  s.bitcnt -= s.bitcnt & 7;
  s.pos -= s.bitcnt >>> 3;
  s.bitbuf = 0;
  s.bitcnt = 0;
  const input = s.input;
  let pos = s.pos;
  if (pos + 4 > s.len) throw truncated(s);
  const length = input[pos] | (input[pos + 1] << 8);
  const check = input[pos + 2] | (input[pos + 3] << 8);
  if (check !== (length ^ 0xffff)) {
    throw bad("stored block length does not match its complement", pos);
  }
  pos += 4;
  const take = Math.min(length, s.limit - s.outPos, s.len - pos);
  s.out.set(input.subarray(pos, pos + take), s.outPos);
  s.outPos += take;
  s.pos = pos + take;
  if (s.outPos === s.limit) return true;
  if (take < length) throw truncated(s);
  return false;
}

/** The fixed Huffman codes of block type 1. */
const fixedLit = newHuffman(288);
const fixedDist = newHuffman(32);
{
  const lengths = new Uint8Array(288 + 32);
  lengths.fill(8, 0, 144);
  lengths.fill(9, 144, 256);
  lengths.fill(7, 256, 280);
  lengths.fill(8, 280, 288);
  lengths.fill(5, 288, 320);
  buildHuffman(fixedLit, lengths, 0, 288);
  buildHuffman(fixedDist, lengths, 288, 32);
}

/** Codes of the current dynamic block; reused (decoding is synchronous). */
const dynLit = newHuffman(288);
const dynDist = newHuffman(32);
const dynClen = newHuffman(19);
const dynLengths = new Uint8Array(286 + 30);

/** Reads a dynamic block's code definitions into `dynLit` and `dynDist`. */
function dynamicCodes(s: State): void {
  const nlen = bits(s, 5) + 257;
  const ndist = bits(s, 5) + 1;
  const ncode = bits(s, 4) + 4;
  if (nlen > 286 || ndist > 30) {
    throw fail(s, "too many length or distance codes", s.pos, s.bitcnt);
  }
  const lengths = dynLengths;
  lengths.fill(0, 0, 19);
  for (let i = 0; i < ncode; i++) lengths[CLEN_ORDER[i]] = bits(s, 3);
  if (buildHuffman(dynClen, lengths, 0, 19) !== 0) {
    throw fail(s, "invalid code lengths code", s.pos, s.bitcnt);
  }
  const total = nlen + ndist;
  for (let i = 0; i < total;) {
    const sym = decodeSymbol(s, dynClen, "invalid code lengths code");
    if (sym < 16) {
      lengths[i++] = sym;
      continue;
    }
    let value = 0;
    let repeat: number;
    if (sym === 16) {
      if (i === 0) {
        throw fail(
          s,
          "code length repeat with no first length",
          s.pos,
          s.bitcnt,
        );
      }
      value = lengths[i - 1];
      repeat = 3 + bits(s, 2);
    } else if (sym === 17) {
      repeat = 3 + bits(s, 3);
    } else {
      repeat = 11 + bits(s, 7);
    }
    if (i + repeat > total) {
      throw fail(s, "code length repeat past the last length", s.pos, s.bitcnt);
    }
    lengths.fill(value, i, i + repeat);
    i += repeat;
  }
  if (lengths[256] === 0) {
    throw fail(s, "missing end-of-block code", s.pos, s.bitcnt);
  }
  // Incomplete codes are only allowed as a single one-bit code (or, for
  // distances, no code at all): RFC 1951 section 3.2.7.
  const litLeft = buildHuffman(dynLit, lengths, 0, nlen);
  const litCount = dynLit.count;
  if (litLeft < 0 || (litLeft > 0 && litCount[0] + litCount[1] !== nlen)) {
    throw fail(s, "invalid literal/length code lengths", s.pos, s.bitcnt);
  }
  const distLeft = buildHuffman(dynDist, lengths, nlen, ndist);
  const distCount = dynDist.count;
  if (
    distLeft < 0 || (distLeft > 0 && distCount[0] + distCount[1] !== ndist)
  ) {
    throw fail(s, "invalid distance code lengths", s.pos, s.bitcnt);
  }
}

/**
 * Decodes the symbols of one Huffman block. Returns true when the output is
 * full, false at the end of the block.
 */
function codes(s: State, lit: Huffman, dist: Huffman): boolean {
  const input = s.input;
  const len = s.len;
  const out = s.out;
  const limit = s.limit;
  const litFast = lit.fast;
  const distFast = dist.fast;
  let pos = s.pos;
  let bitbuf = s.bitbuf;
  let bitcnt = s.bitcnt;
  let outPos = s.outPos;
  let full = false;
  for (;;) {
    if (bitcnt < 23) {
      // Past the end, zeros load; the bits used are checked further on.
      if (pos >= len && pos * 8 - bitcnt > len * 8) throw truncated(s);
      do {
        if (pos < len) bitbuf |= input[pos] << bitcnt;
        pos++;
        bitcnt += 8;
      } while (bitcnt < 23);
    }
    let e = litFast[bitbuf & FAST_MASK];
    if (e === 0) {
      e = slowDecode(bitbuf, lit);
      if (e < 0) throw fail(s, "invalid literal/length code", pos, bitcnt);
    }
    let n = e & 15;
    bitbuf >>>= n;
    bitcnt -= n;
    let sym = e >>> 4;
    if (sym < 256) {
      out[outPos++] = sym;
      if (outPos === limit) {
        full = true;
        break;
      }
      continue;
    }
    if (sym === 256) break;
    sym -= 257;
    if (sym >= 29) throw fail(s, "invalid literal/length code", pos, bitcnt);
    let length = LENGTH_BASE[sym];
    n = LENGTH_EXTRA[sym];
    if (n !== 0) {
      length += bitbuf & ((1 << n) - 1);
      bitbuf >>>= n;
      bitcnt -= n;
    }
    if (bitcnt < 23) {
      if (pos >= len && pos * 8 - bitcnt > len * 8) throw truncated(s);
      do {
        if (pos < len) bitbuf |= input[pos] << bitcnt;
        pos++;
        bitcnt += 8;
      } while (bitcnt < 23);
    }
    e = distFast[bitbuf & FAST_MASK];
    if (e === 0) {
      e = slowDecode(bitbuf, dist);
      if (e < 0) throw fail(s, "invalid distance code", pos, bitcnt);
    }
    n = e & 15;
    bitbuf >>>= n;
    bitcnt -= n;
    sym = e >>> 4;
    if (sym >= 30) throw fail(s, "invalid distance code", pos, bitcnt);
    let distance = DIST_BASE[sym];
    n = DIST_EXTRA[sym];
    if (n !== 0) {
      if (bitcnt < n) {
        do {
          if (pos < len) bitbuf |= input[pos] << bitcnt;
          pos++;
          bitcnt += 8;
        } while (bitcnt < 23);
      }
      distance += bitbuf & ((1 << n) - 1);
      bitbuf >>>= n;
      bitcnt -= n;
    }
    if (distance > outPos) {
      throw fail(s, "distance too far back", pos, bitcnt);
    }
    let end = outPos + length;
    if (end >= limit) {
      end = limit;
      full = true;
    }
    for (let from = outPos - distance; outPos < end;) {
      out[outPos++] = out[from++];
    }
    if (full) break;
  }
  s.pos = pos;
  s.bitbuf = bitbuf;
  s.bitcnt = bitcnt;
  s.outPos = outPos;
  // Whatever ended the loop must not have used bits past the input.
  if (pos > len && pos * 8 - bitcnt > len * 8) throw truncated(s);
  return full;
}

/**
 * Decompresses raw deflate data (RFC 1951, no zlib or gzip header), such as
 * a qcow2 compressed cluster. Decoding stops at the end of the final block,
 * so bytes after it (padding, or the next cluster) are ignored; it also stops
 * as soon as `maxOutput + 1` bytes are out, so that a caller can tell "too
 * much output" apart without decoding the rest. Memory use is one output
 * buffer of `maxOutput + 1` bytes.
 *
 * @param input Deflate data, possibly followed by unrelated bytes.
 * @param maxOutput The most output expected (one cluster); a non-negative
 * integer.
 * @returns The decompressed bytes: all of them, or the first
 * `maxOutput + 1` if there are more.
 * @throws {Qcow2Error} `BAD_COMPRESSED_DATA` if the data is malformed or
 * ends before its final block does; `BAD_ARGUMENT` if `maxOutput` is not a
 * non-negative integer.
 *
 * @example Fixed-Huffman data followed by padding
 * ```ts
 * import { inflateRaw } from "./inflate.ts";
 * import { assertEquals } from "@std/assert";
 *
 * // "qcow2 qcow2 qcow2 " as written by zlib, then two bytes of padding.
 * const data = new Uint8Array([
 *   0x2b, 0x4c, 0xce, 0x2f, 0x37, 0x52, 0x28, 0x44, 0x22, 0x01, 0x00, 0x00,
 * ]);
 * const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
 * assertEquals(text(inflateRaw(data, 18)), "qcow2 qcow2 qcow2 ");
 * // With less room, it stops one byte past `maxOutput`.
 * assertEquals(text(inflateRaw(data, 4)), "qcow2");
 * ```
 */
export function inflateRaw(input: Uint8Array, maxOutput: number): Uint8Array {
  if (!Number.isSafeInteger(maxOutput) || maxOutput < 0) {
    throw new Qcow2Error(
      "BAD_ARGUMENT",
      `Cannot inflate deflate data: maxOutput must be a non-negative integer, not ${maxOutput}`,
    );
  }
  const out = new Uint8Array(maxOutput + 1);
  const s: State = {
    input,
    len: input.length,
    pos: 0,
    bitbuf: 0,
    bitcnt: 0,
    out,
    outPos: 0,
    limit: out.length,
  };
  for (;;) {
    const last = bits(s, 1);
    const type = bits(s, 2);
    let full: boolean;
    if (type === 0) {
      full = stored(s);
    } else if (type === 1) {
      full = codes(s, fixedLit, fixedDist);
    } else if (type === 2) {
      dynamicCodes(s);
      full = codes(s, dynLit, dynDist);
    } else {
      throw fail(s, "invalid block type 3", s.pos, s.bitcnt);
    }
    if (full || last) return out.subarray(0, s.outPos);
  }
}
