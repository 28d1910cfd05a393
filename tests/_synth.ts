/**
 * Builds small qcow2 images in memory for unit tests, with every header field
 * and table entry under the test's control. Refcounts are left empty: the
 * reader never needs them.
 */

export interface SynthHeader {
  version?: number;
  clusterBits?: number;
  size?: bigint;
  cryptMethod?: number;
  l1Size?: number;
  l1TableOffset?: bigint;
  refcountTableOffset?: bigint;
  refcountTableClusters?: number;
  nbSnapshots?: number;
  snapshotsOffset?: bigint;
  incompatible?: bigint;
  compatible?: bigint;
  autoclear?: bigint;
  refcountOrder?: number;
  headerLength?: number;
  compressionType?: number;
  backingFile?: string;
  backingFileOffset?: bigint;
  extensions?: { type: number; data: Uint8Array }[];
}

/** Writes a header (and its extensions and backing name) into `out`. */
export function writeHeader(out: Uint8Array, h: SynthHeader = {}): void {
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const version = h.version ?? 3;
  const headerLength = h.headerLength ?? (version === 2 ? 72 : 112);
  v.setUint32(0, 0x514649fb);
  v.setUint32(4, version);
  v.setUint32(20, h.clusterBits ?? 16);
  v.setBigUint64(24, h.size ?? 1n << 20n);
  v.setUint32(32, h.cryptMethod ?? 0);
  v.setUint32(36, h.l1Size ?? 1);
  v.setBigUint64(40, h.l1TableOffset ?? 0x30000n);
  v.setBigUint64(48, h.refcountTableOffset ?? 0x10000n);
  v.setUint32(56, h.refcountTableClusters ?? 1);
  v.setUint32(60, h.nbSnapshots ?? 0);
  v.setBigUint64(64, h.snapshotsOffset ?? 0n);
  if (version >= 3) {
    const compression = h.compressionType ?? 0;
    v.setBigUint64(72, (h.incompatible ?? 0n) | (compression ? 8n : 0n));
    v.setBigUint64(80, h.compatible ?? 0n);
    v.setBigUint64(88, h.autoclear ?? 0n);
    v.setUint32(96, h.refcountOrder ?? 4);
    v.setUint32(100, headerLength);
    if (headerLength > 104) out[104] = compression;
  }
  let p = headerLength;
  for (const e of h.extensions ?? []) {
    v.setUint32(p, e.type);
    v.setUint32(p + 4, e.data.length);
    out.set(e.data, p + 8);
    p += 8 + ((e.data.length + 7) & ~7);
  }
  p += 8; // end marker (zeros)
  if (h.backingFile !== undefined) {
    const name = new TextEncoder().encode(h.backingFile);
    const at = h.backingFileOffset ?? BigInt(p);
    v.setBigUint64(8, at);
    v.setUint32(16, name.length);
    out.set(name, Number(at));
  }
}

/** Bytes of one header extension payload from a string. */
export function text(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

export type SynthCluster =
  | { kind: "data"; bytes: Uint8Array }
  | { kind: "zero"; allocated?: boolean }
  | { kind: "compressed"; bytes: Uint8Array }
  | { kind: "raw"; entry: bigint; bitmap?: bigint };

/**
 * An image with 64 KiB-or-other clusters: header in cluster 0, refcount table
 * in 1, L1 in 2, one L2 table per L1 entry used, then data clusters, then
 * compressed data packed back to back.
 */
export function synthImage(
  header: SynthHeader,
  clusters: Map<number, SynthCluster>,
): Uint8Array {
  const bits = header.clusterBits ?? 16;
  const cs = 1 << bits;
  const extended = ((header.incompatible ?? 0n) & 16n) !== 0n;
  const entryBytes = extended ? 16 : 8;
  const l2Entries = cs / entryBytes;
  const size = header.size ?? 1n << 20n;
  const l1Size = header.l1Size ??
    Math.max(1, Math.ceil(Number(size) / (cs * l2Entries)));
  const l1Indexes = [
    ...new Set([...clusters.keys()].map((g) => Math.floor(g / l2Entries))),
  ].sort((a, b) => a - b);
  const l2Base = 3 * cs;
  const l2At = new Map(l1Indexes.map((i, n) => [i, l2Base + n * cs]));
  let next = l2Base + l1Indexes.length * cs;
  const entries = new Map<number, bigint>();
  const bitmaps = new Map<number, bigint>();
  const dataChunks: [number, Uint8Array][] = [];
  for (const [g, c] of clusters) {
    if (c.kind === "data") {
      entries.set(g, BigInt(next) | (1n << 63n));
      dataChunks.push([next, c.bytes]);
      next += cs;
    } else if (c.kind === "zero") {
      if (c.allocated) {
        entries.set(g, BigInt(next) | 1n);
        next += cs;
      } else entries.set(g, 1n);
    } else if (c.kind === "raw") {
      entries.set(g, c.entry);
      if (c.bitmap !== undefined) bitmaps.set(g, c.bitmap);
    }
  }
  // Compressed data packed after the data clusters.
  const x = BigInt(70 - bits);
  for (const [g, c] of clusters) {
    if (c.kind !== "compressed") continue;
    const sectors = BigInt(Math.ceil(((next % 512) + c.bytes.length) / 512));
    entries.set(g, (1n << 62n) | ((sectors - 1n) << x) | BigInt(next));
    dataChunks.push([next, c.bytes]);
    next += c.bytes.length;
  }
  const out = new Uint8Array(Math.ceil(next / 512) * 512);
  writeHeader(out, {
    ...header,
    l1Size,
    l1TableOffset: header.l1TableOffset ?? BigInt(2 * cs),
    refcountTableOffset: header.refcountTableOffset ?? BigInt(cs),
  });
  const v = new DataView(out.buffer);
  for (const [i, at] of l2At) {
    v.setBigUint64(2 * cs + i * 8, BigInt(at) | (1n << 63n));
  }
  for (const [g, e] of entries) {
    const l2 = l2At.get(Math.floor(g / l2Entries))!;
    v.setBigUint64(l2 + (g % l2Entries) * entryBytes, e);
    if (extended) {
      // Word 2: zero bits 32..63, allocation bits 0..31 (data: all allocated).
      const c = clusters.get(g)!;
      const bitmap = bitmaps.get(g) ??
        (c.kind === "data"
          ? 0xffffffffn
          : c.kind === "zero"
          ? 0xffffffffn << 32n
          : 0n);
      v.setBigUint64(l2 + (g % l2Entries) * entryBytes + 8, bitmap);
    }
  }
  for (const [at, bytes] of dataChunks) out.set(bytes, at);
  return out;
}

/** Deterministic pseudo-random bytes. */
export function prng(length: number, seed = 1): Uint8Array {
  const out = new Uint8Array(length);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = s & 0xff;
  }
  return out;
}
