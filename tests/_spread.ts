/**
 * Images made by qemu-img at test time (too large to commit, about 1 MiB of
 * incompressible bytes each) whose reads keep many requests in flight:
 *
 * - `spread-zlib.qcow2`, `spread-zstd.qcow2`: 64 KiB clusters; four
 *   compressed clusters far apart in the file (each half random, so it
 *   compresses to about half a cluster and the next one needs a new host
 *   cluster), with two incompressible clusters, stored plain, between them.
 *   A read of the whole disk reads them as four groups: each group is
 *   decompressed while the next is read.
 * - `tables.qcow2`: 512-byte clusters, 256 KiB of random data: eight L2
 *   tables, so one read of the whole disk starts data reads while it goes on
 *   loading the next table.
 *
 * The guest bytes are deterministic (a seeded xorshift generator), so the
 * images are the same on every run.
 */
import { run } from "./_reference.ts";

const CLUSTER = 65536;

/** `n` pseudo-random bytes from seed `seed` (xorshift32). */
export function noise(seed: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

/** The guest bytes of the spread images. */
export function spreadRaw(): Uint8Array {
  const periods = 4;
  const raw = new Uint8Array(periods * 3 * CLUSTER);
  for (let k = 0; k < periods; k++) {
    const at = k * 3 * CLUSTER;
    raw.set(noise(100 + k, CLUSTER / 2), at); // then half a cluster of zeros
    raw.set(noise(200 + k, 2 * CLUSTER), at + CLUSTER);
  }
  return raw;
}

/** Guest offsets of the spread images' compressed clusters. */
export const SPREAD_COMPRESSED = [0, 3, 6, 9].map((c) => c * CLUSTER);

/**
 * Makes `spread-TYPE.qcow2` in `dir` with `qemu-img convert -c` and returns
 * its path.
 */
export async function spreadImage(
  dir: string,
  type: "zlib" | "zstd",
): Promise<string> {
  const raw = `${dir}/spread.raw`;
  await Deno.writeFile(raw, spreadRaw());
  const out = `${dir}/spread-${type}.qcow2`;
  await run("qemu-img", [
    "convert",
    "-c",
    "-f",
    "raw",
    "-O",
    "qcow2",
    "-o",
    `compression_type=${type}`,
    raw,
    out,
  ]);
  await Deno.remove(raw);
  return out;
}

/** Makes `tables.qcow2` in `dir` (eight L2 tables) and returns its path. */
export async function tablesImage(dir: string): Promise<string> {
  const raw = `${dir}/tables.raw`;
  await Deno.writeFile(raw, noise(7, 256 * 1024));
  const out = `${dir}/tables.qcow2`;
  await run("qemu-img", [
    "convert",
    "-f",
    "raw",
    "-O",
    "qcow2",
    "-o",
    "cluster_size=512",
    raw,
    out,
  ]);
  await Deno.remove(raw);
  return out;
}
