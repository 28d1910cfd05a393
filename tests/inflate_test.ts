import { assert, assertEquals, assertThrows } from "@std/assert";
import zlib from "node:zlib";
import { Qcow2Error } from "../mod.ts";
import { inflateRaw } from "../src/codecs/inflate.ts";

const test = Deno.test;

// ---------------------------------------------------------------------------
// Helpers

/** A small seeded PRNG (mulberry32), so every run sees the same data. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBytes(n: number, rnd: () => number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = rnd() * 256;
  return out;
}

const WORDS = ("the of and to in is it that for on with as was by qcow2 " +
  "cluster image disk sector table header offset refcount snapshot " +
  "compressed data block backing file l1 l2 entry").split(" ");

function text(n: number, rnd: () => number): Uint8Array {
  const parts: string[] = [];
  let size = 0;
  while (size < n) {
    const w = WORDS[Math.floor(rnd() ** 2 * WORDS.length)];
    const sep = rnd() < 0.1 ? ".\n" : " ";
    parts.push(w, sep);
    size += w.length + sep.length;
  }
  return new TextEncoder().encode(parts.join("")).subarray(0, n);
}

/** Runs of random bytes, text, zeros and a short repeating pattern. */
function mixed(n: number, rnd: () => number): Uint8Array {
  const out = new Uint8Array(n);
  for (let p = 0; p < n;) {
    const k = Math.min(n - p, 1 + Math.floor(rnd() * 4096));
    const kind = Math.floor(rnd() * 4);
    if (kind === 0) out.set(randomBytes(k, rnd), p);
    else if (kind === 1) out.set(text(k, rnd), p);
    else if (kind === 3) {
      for (let i = 0; i < k; i++) out[p + i] = i * 7 & 31;
    }
    p += k;
  }
  return out;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function deflate(data: Uint8Array, options: zlib.ZlibOptions = {}): Uint8Array {
  return new Uint8Array(zlib.deflateRawSync(data, options));
}

/** Asserts that inflating `input` fails with BAD_COMPRESSED_DATA. */
function assertBad(
  input: Uint8Array,
  includes = "",
  maxOutput = 1 << 16,
): Qcow2Error {
  const e = assertThrows(() => inflateRaw(input, maxOutput), Qcow2Error);
  assertEquals(e.code, "BAD_COMPRESSED_DATA");
  assert(
    /^Cannot inflate deflate data: .+ at input byte \d+$/.test(e.message),
    e.message,
  );
  assert(e.message.includes(includes), `${e.message} lacks "${includes}"`);
  return e;
}

/** Asserts that `e` is a Qcow2Error with code BAD_COMPRESSED_DATA. */
function assertBadError(e: unknown, context: string): void {
  assert(e instanceof Qcow2Error, context);
  assertEquals((e as Qcow2Error).code, "BAD_COMPRESSED_DATA", context);
}

const TRUNCATED = "input ends before the final block ends";

/** Writes a deflate bit stream, least significant bit first. */
class BitWriter {
  bytes: number[] = [];
  #cur = 0;
  #n = 0;

  /** Writes the `n` low bits of `value`, least significant first. */
  bits(value: number, n: number): this {
    for (let i = 0; i < n; i++) {
      this.#cur |= ((value >>> i) & 1) << this.#n;
      if (++this.#n === 8) this.#flush();
    }
    return this;
  }

  /** Writes a Huffman code of `len` bits, most significant bit first. */
  code(code: number, len: number): this {
    for (let i = len - 1; i >= 0; i--) this.bits((code >>> i) & 1, 1);
    return this;
  }

  /** Pads to a byte boundary with zero bits. */
  align(): this {
    if (this.#n > 0) this.#flush();
    return this;
  }

  raw(bytes: ArrayLike<number>): this {
    this.align();
    this.bytes.push(...Array.from(bytes));
    return this;
  }

  done(): Uint8Array {
    this.align();
    return new Uint8Array(this.bytes);
  }

  #flush() {
    this.bytes.push(this.#cur);
    this.#cur = 0;
    this.#n = 0;
  }
}

/** Canonical Huffman codes for code lengths (RFC 1951 section 3.2.2). */
function canonical(lengths: number[]): number[] {
  const count = new Array(16).fill(0);
  for (const l of lengths) if (l) count[l]++;
  const next = new Array(16).fill(0);
  for (let len = 2; len < 16; len++) {
    next[len] = (next[len - 1] + count[len - 1]) << 1;
  }
  return lengths.map((l) => (l ? next[l]++ : -1));
}

/** A Huffman code by its lengths, to write symbols with. */
class Code {
  codes: number[];
  constructor(readonly lengths: number[]) {
    this.codes = canonical(lengths);
  }
  write(w: BitWriter, sym: number): void {
    assert(this.lengths[sym] > 0, `symbol ${sym} has no code`);
    w.code(this.codes[sym], this.lengths[sym]);
  }
}

// deno-fmt-ignore
const CLEN_ORDER = [
  16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/** Code length code where 0..15 have 4-bit codes and 16..18 none. */
const CLEN_LITERAL = [...new Array(16).fill(4), 0, 0, 0];
/** Code length code for all 19 symbols: 0..12 of 4 bits, 13..18 of 5. */
const CLEN_ALL = [...new Array(13).fill(4), ...new Array(6).fill(5)];

/**
 * Writes a dynamic block header. `sequence` is the code length code
 * symbols (with extra bits) that define the lengths; by default each
 * length is written as it is.
 */
function dynamicHeader(
  w: BitWriter,
  last: boolean,
  nlen: number,
  ndist: number,
  lengths: number[],
  clen = CLEN_LITERAL,
  sequence?: [number, number, number][],
): void {
  w.bits(last ? 1 : 0, 1).bits(2, 2);
  w.bits(nlen - 257, 5).bits(ndist - 1, 5).bits(19 - 4, 4);
  for (const sym of CLEN_ORDER) w.bits(clen[sym], 3);
  const code = new Code(clen);
  for (const [sym, extra, n] of sequence ?? lengths.map((l) => [l, 0, 0])) {
    code.write(w, sym);
    w.bits(extra, n);
  }
}

/** Lengths for a complete literal/length code: all 286 symbols. */
function fullLitLengths(): number[] {
  // 2 * 128 + 30 * ... : 226 codes of 8 bits and 60 of 9 bits = 1.
  const l = new Array(286).fill(8);
  for (let i = 226; i < 286; i++) l[i] = 9;
  return l;
}

/** Lengths for a complete distance code of 30 symbols. */
function fullDistLengths(): number[] {
  // 2 of 4 bits, 28 of 5 bits: 2/16 + 28/32 = 1.
  return [4, 4, ...new Array(28).fill(5)];
}

function fixedLit(): Code {
  const l = new Array(288).fill(8);
  for (let i = 144; i < 256; i++) l[i] = 9;
  for (let i = 256; i < 280; i++) l[i] = 7;
  return new Code(l);
}
const FIXED_LIT = fixedLit();
const FIXED_DIST = new Code(new Array(32).fill(5));

// ---------------------------------------------------------------------------
// Agreement with zlib

const SIZES = [0, 1, 512, 65536, 2 << 20];
const C = zlib.constants;
const SETTINGS: [string, zlib.ZlibOptions][] = [
  ["level 0", { level: 0 }],
  ["level 1", { level: 1 }],
  ["level 6", { level: 6 }],
  ["level 9", { level: 9 }],
  ["Z_HUFFMAN_ONLY", { strategy: C.Z_HUFFMAN_ONLY }],
  ["Z_RLE", { strategy: C.Z_RLE }],
  ["Z_FIXED", { strategy: C.Z_FIXED }],
];
const KINDS: [string, (n: number, rnd: () => number) => Uint8Array][] = [
  ["random bytes", randomBytes],
  ["text", text],
  ["zeros", (n) => new Uint8Array(n)],
  ["mixed data", mixed],
];

for (const [kind, make] of KINDS) {
  test(`inflateRaw matches node:zlib on ${kind}`, () => {
    const rnd = prng(kind.length);
    for (const size of SIZES) {
      const data = make(size, rnd);
      for (const windowBits of [12, 15]) {
        for (const [name, options] of SETTINGS) {
          const packed = deflate(data, { ...options, windowBits });
          const out = inflateRaw(packed, size);
          assert(
            sameBytes(out, data),
            `${kind}, ${size} bytes, windowBits ${windowBits}, ${name}`,
          );
        }
      }
    }
  });
}

test("inflateRaw decodes codes longer than the fast table", () => {
  // Skewed data makes zlib use 11..15-bit codes for rare symbols.
  const rnd = prng(7);
  const data = new Uint8Array(1 << 18);
  for (let i = 0; i < data.length; i++) {
    data[i] = Math.floor(-Math.log2(rnd() + 1e-12) * 12) & 0xff;
  }
  for (const strategy of [C.Z_HUFFMAN_ONLY, C.Z_DEFAULT_STRATEGY]) {
    assert(
      sameBytes(inflateRaw(deflate(data, { strategy }), data.length), data),
    );
  }
  // And a hand-made code with one code of every length 1..15.
  const lit = new Array(257).fill(0);
  const symbols = [65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79];
  symbols.forEach((s, i) => lit[s] = i + 1);
  lit[256] = 15;
  const w = new BitWriter();
  dynamicHeader(w, true, 257, 1, [...lit, 0]);
  const code = new Code(lit);
  for (const s of [...symbols, ...symbols.reverse()]) code.write(w, s);
  code.write(w, 256);
  assertEquals(
    new TextDecoder().decode(inflateRaw(w.done(), 100)),
    "ABCDEFGHIJKLMNOONMLKJIHGFEDCBA",
  );
});

test("inflateRaw decodes hand-made edge cases", () => {
  // An empty fixed block.
  assertEquals(inflateRaw(new Uint8Array([0x03, 0x00]), 0).length, 0);
  // An empty stored block that is not the last, then a stored "abc".
  // deno-fmt-ignore
  const stored = new Uint8Array([
    0x00, 0x00, 0x00, 0xff, 0xff,
    0x01, 0x03, 0x00, 0xfc, 0xff, 0x61, 0x62, 0x63,
  ]);
  assertEquals(new TextDecoder().decode(inflateRaw(stored, 3)), "abc");
  // Only an end-of-block code, as a single 1-bit code, and no distances.
  {
    const lit = new Array(257).fill(0);
    lit[256] = 1;
    const w = new BitWriter();
    dynamicHeader(w, true, 257, 1, [...lit, 0]);
    new Code(lit).write(w, 256);
    assertEquals(inflateRaw(w.done(), 10).length, 0);
  }
  // A single 1-bit distance code (distance 1), used.
  {
    const lit = new Array(258).fill(0);
    lit[97] = lit[256] = 2;
    lit[257] = 1;
    const sequence: [number, number, number][] = [
      [18, 97 - 11, 7], // 0..96: zero
      [2, 0, 0], // 97
      [18, 138 - 11, 7], // 98..235: zero
      [18, 20 - 11, 7], // 236..255: zero
      [2, 0, 0], // 256
      [1, 0, 0], // 257
      [1, 0, 0], // distance 0
    ];
    const w = new BitWriter();
    dynamicHeader(w, true, 258, 1, [], CLEN_ALL, sequence);
    const code = new Code(lit);
    code.write(w, 97);
    code.write(w, 257); // length 3
    new Code([1]).write(w, 0); // distance 1
    code.write(w, 256);
    assertEquals(new TextDecoder().decode(inflateRaw(w.done(), 4)), "aaaa");
  }
  // A 16-repeat that runs from the literal/length code into the distances.
  {
    const sequence: [number, number, number][] = [
      [18, 127, 7], // 0..137: zero
      [18, 107, 7], // 138..255: zero
      [1, 0, 0], // 256
      [16, 0, 2], // 257, and distances 0 and 1
    ];
    const w = new BitWriter();
    dynamicHeader(w, true, 258, 2, [], CLEN_ALL, sequence);
    const lit = new Array(258).fill(0);
    lit[256] = lit[257] = 1;
    new Code(lit).write(w, 256);
    assertEquals(inflateRaw(w.done(), 0).length, 0);
  }
  // The farthest distance, 32768, right after a 32768-byte stored block.
  {
    const data = randomBytes(32768, prng(3));
    const w = new BitWriter().bits(0, 1).bits(0, 2).align();
    w.raw([0x00, 0x80, 0xff, 0x7f]).raw(data);
    w.bits(1, 1).bits(1, 2);
    FIXED_LIT.write(w, 285); // length 258
    FIXED_DIST.write(w, 29);
    w.bits(8191, 13); // distance 24577 + 8191 = 32768
    FIXED_LIT.write(w, 256);
    const out = inflateRaw(w.done(), 32768 + 258);
    assertEquals(out.length, 32768 + 258);
    assert(sameBytes(out.subarray(32768), data.subarray(0, 258)));
  }
});

// ---------------------------------------------------------------------------
// Trailing bytes and the output limit

test("inflateRaw ignores bytes after the final block", () => {
  const rnd = prng(11);
  const data = text(65536, rnd);
  const other = deflate(randomBytes(1000, rnd));
  const trailers = [
    randomBytes(1, rnd),
    randomBytes(4096, rnd),
    new Uint8Array(512),
    new Uint8Array(512).fill(0xff),
    new Uint8Array([0x07, 0x07, 0x07]), // would be block type 3
    other,
  ];
  const streams = [
    deflate(data, { level: 6 }),
    deflate(data, { level: 0 }),
    deflate(data, { strategy: C.Z_FIXED }),
    deflate(data, { strategy: C.Z_HUFFMAN_ONLY }),
    deflate(data.subarray(0, 10)),
  ];
  for (const s of streams) {
    const expected = inflateRaw(s, 65536);
    assert(sameBytes(expected, data.subarray(0, expected.length)));
    for (const t of trailers) {
      assert(sameBytes(inflateRaw(concat(s, t), 65536), expected));
      // Also as a view into the middle of a larger buffer.
      const big = concat(randomBytes(5, rnd), s, t);
      const view = big.subarray(5);
      assert(sameBytes(inflateRaw(view, 65536), expected));
    }
  }
  // An empty stream followed by another stream.
  const empty = deflate(new Uint8Array(0));
  assertEquals(inflateRaw(concat(empty, other), 0).length, 0);
});

test("inflateRaw stops at maxOutput + 1 bytes", () => {
  const rnd = prng(5);
  const data = mixed(65536, rnd);
  for (const [name, options] of SETTINGS) {
    const packed = deflate(data, options);
    for (const max of [0, 1, 2, 100, 4095, 32768, 65534, 65535]) {
      const out = inflateRaw(packed, max);
      assertEquals(out.length, max + 1, `${name}, maxOutput ${max}`);
      assert(sameBytes(out, data.subarray(0, max + 1)), `${name}, ${max}`);
      // The buffer is allocated once, at maxOutput + 1 bytes.
      assertEquals(out.buffer.byteLength, max + 1);
    }
    for (const max of [65536, 65537, 1 << 20]) {
      assert(sameBytes(inflateRaw(packed, max), data), `${name}, ${max}`);
    }
  }
  // It stops before reading the rest: the cut-off tail is never noticed.
  const packed = deflate(data, { level: 0 });
  assertEquals(inflateRaw(packed.subarray(0, 1000), 100).length, 101);
  // A long match is cut at the limit too.
  const zeros = deflate(new Uint8Array(100000));
  assertEquals(inflateRaw(zeros, 1000), new Uint8Array(1001));
});

test("inflateRaw rejects a bad maxOutput", () => {
  for (const max of [-1, 0.5, NaN, Infinity]) {
    const e = assertThrows(
      () => inflateRaw(new Uint8Array([3, 0]), max),
      Qcow2Error,
    );
    assertEquals(e.code, "BAD_ARGUMENT");
  }
});

// ---------------------------------------------------------------------------
// Malformed input

test("inflateRaw rejects block type 3", () => {
  assertBad(new Uint8Array([0x07, 0, 0, 0]), "invalid block type 3");
  assertBad(new Uint8Array([0x06, 0, 0, 0]), "invalid block type 3");
  // After a good block.
  const good = deflate(new Uint8Array(10), { level: 0 });
  good[0] &= ~1; // not the last block any more
  assertBad(concat(good, new Uint8Array([0x07, 0])), "invalid block type 3");
});

test("inflateRaw rejects a stored block with a bad length check", () => {
  const e = assertBad(
    new Uint8Array([0x01, 0x05, 0x00, 0xfa, 0xfe, 1, 2, 3, 4, 5]),
    "stored block length does not match its complement",
  );
  assert(e.message.endsWith("at input byte 1"), e.message);
  const packed = deflate(new Uint8Array(100), { level: 0 });
  packed[3] ^= 1;
  assertBad(packed, "stored block length");
});

test("inflateRaw rejects too many length or distance codes", () => {
  const pad = new Array(64).fill(0);
  for (const [nlen, ndist] of [[287, 1], [288, 30], [286, 31], [257, 32]]) {
    const w = new BitWriter().bits(1, 1).bits(2, 2);
    w.bits(nlen - 257, 5).bits(ndist - 1, 5).bits(15, 4).raw(pad);
    assertBad(w.done(), "too many length or distance codes");
  }
});

test("inflateRaw rejects a bad code lengths code", () => {
  const bad = (clen: number[]) => {
    const w = new BitWriter().bits(1, 1).bits(2, 2);
    w.bits(0, 5).bits(0, 5).bits(15, 4);
    for (const sym of CLEN_ORDER) w.bits(clen[sym], 3);
    w.raw(new Array(300).fill(0));
    assertBad(w.done(), "invalid code lengths code");
  };
  bad(new Array(19).fill(1)); // over-subscribed
  bad(new Array(19).fill(7)); // incomplete
  bad(new Array(19).fill(0)); // empty
  bad([1, ...new Array(18).fill(0)]); // a single 1-bit code
  bad([1, 2, 3, 3, 3, ...new Array(14).fill(0)]); // over-subscribed
});

test("inflateRaw rejects bad code length repeats", () => {
  const header = (sequence: [number, number, number][]) => {
    const w = new BitWriter();
    dynamicHeader(w, true, 257, 1, [], CLEN_ALL, sequence);
    return w.raw(new Array(64).fill(0)).done();
  };
  assertBad(
    header([[16, 0, 2]]),
    "code length repeat with no first length",
  );
  assertBad(
    header([[8, 0, 0], [18, 127, 7], [18, 127, 7], [16, 0, 2]]),
    "code length repeat past the last length",
  );
  assertBad(
    header([[18, 127, 7], [17, 7, 3], [18, 127, 7]]),
    "code length repeat past the last length",
  );
});

test("inflateRaw rejects bad literal/length and distance codes", () => {
  const block = (lit: number[], dist: number[]) => {
    const w = new BitWriter();
    dynamicHeader(w, true, lit.length, dist.length, [...lit, ...dist]);
    return w.raw(new Array(64).fill(0)).done();
  };
  const full = fullLitLengths();
  const dist = fullDistLengths();
  // Sanity: the complete codes are accepted (the data is then zeros,
  // decoding as literals until the input runs out).
  assertBad(block(full, dist), TRUNCATED);
  // Over-subscribed literal/length code.
  assertBad(block(full.map((l) => l === 9 ? 8 : l), dist), "literal/length");
  // Incomplete literal/length codes.
  assertBad(block(full.map((l, i) => i === 0 ? 9 : l), dist), "literal/length");
  {
    const lit = new Array(257).fill(0);
    lit[97] = lit[256] = 2;
    assertBad(block(lit, [1]), "invalid literal/length code lengths");
    lit[97] = 0;
    lit[256] = 2; // a single code, but of 2 bits
    assertBad(block(lit, [1]), "invalid literal/length code lengths");
  }
  // No end-of-block code.
  {
    const lit = new Array(257).fill(8);
    lit[256] = 0;
    assertBad(block(lit, [1]), "missing end-of-block code");
  }
  // Over-subscribed and incomplete distance codes.
  assertBad(block(full, [1, 1, 1]), "invalid distance code lengths");
  assertBad(block(full, [2]), "invalid distance code lengths");
  assertBad(block(full, [2, 2, 2]), "invalid distance code lengths");
  assertBad(block(full, [...dist.slice(0, 29), 0]), "distance code lengths");
});

test("inflateRaw rejects invalid codes in the data", () => {
  const fixed = (write: (w: BitWriter) => void) => {
    const w = new BitWriter().bits(1, 1).bits(1, 2);
    write(w);
    FIXED_LIT.write(w, 256);
    return w.raw(new Array(8).fill(0)).done();
  };
  // Fixed literal/length symbols 286 and 287 do not exist.
  for (const sym of [286, 287]) {
    assertBad(
      fixed((w) => FIXED_LIT.write(w, sym)),
      "invalid literal/length code",
    );
  }
  // Nor do fixed distance symbols 30 and 31.
  for (const sym of [30, 31]) {
    assertBad(
      fixed((w) => {
        FIXED_LIT.write(w, 97);
        FIXED_LIT.write(w, 257);
        FIXED_DIST.write(w, sym);
      }),
      "invalid distance code",
    );
  }
  // A bit pattern outside an incomplete (single 1-bit) code.
  {
    const lit = new Array(257).fill(0);
    lit[256] = 1;
    const w = new BitWriter();
    dynamicHeader(w, true, 257, 1, [...lit, 0]);
    w.bits(1, 1); // the code is 0
    assertBad(w.raw([0, 0, 0, 0]).done(), "invalid literal/length code");
  }
  // A length when there are no distance codes.
  {
    const lit = new Array(258).fill(0);
    lit[97] = 1;
    lit[256] = lit[257] = 2;
    const w = new BitWriter();
    dynamicHeader(w, true, 258, 1, [...lit, 0]);
    const code = new Code(lit);
    code.write(w, 97);
    code.write(w, 257);
    assertBad(w.raw([0, 0, 0, 0]).done(), "invalid distance code");
  }
});

test("inflateRaw rejects distances before the output start", () => {
  const fixed = (write: (w: BitWriter) => void) => {
    const w = new BitWriter().bits(1, 1).bits(1, 2);
    write(w);
    FIXED_LIT.write(w, 256);
    return w.raw(new Array(8).fill(0)).done();
  };
  const match = (w: BitWriter, distSym: number, extra = 0, n = 0) => {
    FIXED_LIT.write(w, 257);
    FIXED_DIST.write(w, distSym);
    w.bits(extra, n);
  };
  assertBad(fixed((w) => match(w, 0)), "distance too far back");
  assertBad(
    fixed((w) => {
      FIXED_LIT.write(w, 97);
      match(w, 1);
    }),
    "distance too far back",
  );
  // Distance 2 after two literals is fine.
  assertEquals(
    new TextDecoder().decode(inflateRaw(
      fixed((w) => {
        FIXED_LIT.write(w, 97);
        FIXED_LIT.write(w, 98);
        match(w, 1);
      }),
      5,
    )),
    "ababa",
  );
  // Distance 32768 after 32767 bytes.
  {
    const w = new BitWriter().bits(0, 1).bits(0, 2);
    w.raw([0xff, 0x7f, 0x00, 0x80]).raw(new Uint8Array(32767));
    w.bits(1, 1).bits(1, 2);
    match(w, 29, 8191, 13);
    FIXED_LIT.write(w, 256);
    assertBad(w.done(), "distance too far back", 1 << 16);
  }
  // A distance into data that zlib produced under windowBits 15 is fine
  // even when a window of 12 would not reach: the output is all there.
  const data = randomBytes(20000, prng(9));
  const repeated = concat(data, data);
  assert(sameBytes(inflateRaw(deflate(repeated), 40000), repeated));
});

test("inflateRaw rejects truncated input", () => {
  assertBad(new Uint8Array(0), TRUNCATED);
  assertBad(new Uint8Array([0x01]), TRUNCATED); // stored, no length
  assertBad(new Uint8Array([0x01, 0x03, 0x00, 0xfc, 0xff, 0x61]), TRUNCATED);
  assertBad(new Uint8Array([0x4b, 0x04]), TRUNCATED); // fixed "a", no end
  // Not the last block, and nothing follows.
  assertBad(new Uint8Array([0x02, 0x00]), TRUNCATED);
  assertBad(new Uint8Array([0x00, 0x00, 0x00, 0xff, 0xff]), TRUNCATED);
});

test("inflateRaw rejects every prefix of a stream", () => {
  const rnd = prng(21);
  const data = mixed(3000, rnd);
  // A non-last stored block then a zlib stream: two blocks, byte aligned.
  const twoBlocks = concat(
    new Uint8Array([0x00, 0x03, 0x00, 0xfc, 0xff, 0x61, 0x62, 0x63]),
    deflate(data, { strategy: C.Z_FIXED }),
  );
  const streams: [Uint8Array, Uint8Array][] = [
    [deflate(data), data],
    [deflate(data, { level: 0 }), data],
    [deflate(data, { level: 1 }), data],
    [deflate(data, { strategy: C.Z_FIXED }), data],
    [deflate(data, { strategy: C.Z_HUFFMAN_ONLY }), data],
    [deflate(data, { strategy: C.Z_RLE }), data],
    [deflate(new Uint8Array(0)), new Uint8Array(0)],
    [deflate(new Uint8Array(0), { level: 0 }), new Uint8Array(0)],
    [twoBlocks, concat(new Uint8Array([0x61, 0x62, 0x63]), data)],
  ];
  for (const [packed, expected] of streams) {
    assert(sameBytes(inflateRaw(packed, expected.length), expected));
    for (let k = 0; k < packed.length; k++) {
      const prefix = packed.subarray(0, k);
      let out: Uint8Array;
      try {
        out = inflateRaw(prefix, expected.length);
      } catch (e) {
        assertBadError(e, String(e));
        continue;
      }
      // Only a prefix that holds the whole final block may succeed, and
      // zlib ends its streams in the final block's last byte.
      assert(
        false,
        `prefix ${k}/${packed.length} returned ${out.length} bytes`,
      );
    }
    // Also with the prefix at the start of a longer buffer of zeros: the
    // zeros are read as data then, so either error or any output is
    // possible, but never another exception type.
    for (let k = 0; k < packed.length; k++) {
      const buf = new Uint8Array(packed.length + 16);
      buf.set(packed.subarray(0, k));
      try {
        inflateRaw(buf, expected.length);
      } catch (e) {
        assertBadError(e, String(e));
      }
    }
  }
});

// ---------------------------------------------------------------------------
// Fuzzing

test("inflateRaw returns or throws Qcow2Error on mutated input", () => {
  const rnd = prng(1234);
  const data = mixed(4096, rnd);
  const bases = [
    deflate(data),
    deflate(data, { level: 0 }),
    deflate(data, { strategy: C.Z_FIXED }),
    deflate(data, { strategy: C.Z_HUFFMAN_ONLY }),
    deflate(text(4096, rnd), { level: 9, windowBits: 12 }),
  ];
  let returned = 0;
  let thrown = 0;
  for (let i = 0; i < 5000; i++) {
    const base = bases[i % bases.length];
    let input: Uint8Array = base.slice();
    const op = Math.floor(rnd() * 5);
    if (op === 0 || op === 1) {
      // Flip 1..4 bits, mostly near the start where the headers are.
      for (let n = 1 + Math.floor(rnd() * 4); n > 0; n--) {
        const at = Math.floor(rnd() ** 2 * input.length * 8);
        input[at >> 3] ^= 1 << (at & 7);
      }
    } else if (op === 2) {
      // Overwrite a few bytes.
      for (let n = 1 + Math.floor(rnd() * 4); n > 0; n--) {
        input[Math.floor(rnd() * input.length)] = rnd() * 256;
      }
    } else if (op === 3) {
      // Cut, maybe after a flip, maybe with junk after the cut.
      input[Math.floor(rnd() * input.length)] ^= 1 << Math.floor(rnd() * 8);
      input = input.slice(0, Math.floor(rnd() * input.length));
      if (rnd() < 0.5) input = concat(input, randomBytes(8, rnd));
    } else {
      // Random bytes.
      input = randomBytes(1 + Math.floor(rnd() * 300), rnd);
    }
    const max = rnd() < 0.8 ? 4096 : Math.floor(rnd() * 8192);
    try {
      const out = inflateRaw(input, max);
      assert(out.length <= max + 1);
      returned++;
    } catch (e) {
      assertBadError(e, `case ${i}: ${e}`);
      thrown++;
    }
  }
  // Both outcomes happen, so the fuzzing reaches past the headers.
  assert(returned > 100 && thrown > 100, `${returned} returned, ${thrown}`);
});
