/**
 * Reading what an extent points at in a file: data clusters and compressed
 * clusters, with the bounds checks both qcow formats need.
 *
 * @module
 */

import { type Codecs, decompressCluster } from "../codecs/codecs.ts";
import type { ImageEncryption } from "../crypto/encryption.ts";
import type { Extent } from "../disk.ts";
import { hex, Qcow2Error } from "../errors.ts";
import { withJobs } from "../jobs.ts";
import type { CompressionType } from "./header.ts";
import type { ByteSource } from "../io/source.ts";

/**
 * Reads data at file offset `host` into `into`. Bytes past the end of the
 * file read as zeros, as QEMU reads them; a run that starts past the end is
 * corruption, unless `pastEndIsZero` (an external data file may be short).
 */
export async function readData(
  file: ByteSource,
  host: number,
  into: Uint8Array,
  guest: number,
  format: string,
  pastEndIsZero = false,
): Promise<void> {
  if (host >= file.size && !pastEndIsZero) {
    throw new Qcow2Error(
      "OFFSET_PAST_END",
      `Cannot read ${format} image: the data of guest offset ${
        hex(guest)
      } lies at ${hex(host)}, past the end of the file (${file.size} bytes)`,
      { offset: host },
    );
  }
  const n = host >= file.size ? 0 : await file.readAt(host, into);
  into.fill(0, n);
}

/**
 * Reads encrypted data at file offset `host` into `into` and decrypts it.
 * Whole 512-byte sectors are read and decrypted (a run that starts or ends
 * inside one goes through a bounce buffer), numbered by host offset for
 * LUKS and by guest offset for legacy AES (QEMU's `crypt_physical_offset`).
 * `guest` and `host` lie at the same offset within a sector.
 */
export async function readEncrypted(
  file: ByteSource,
  encryption: ImageEncryption,
  host: number,
  into: Uint8Array,
  guest: number,
  format: string,
  pastEndIsZero = false,
): Promise<void> {
  const lead = guest % 512;
  const length = Math.ceil((lead + into.length) / 512) * 512;
  const buffer = lead === 0 && length === into.length
    ? into
    : new Uint8Array(length);
  await readData(
    file,
    host - lead,
    buffer,
    guest - lead,
    format,
    pastEndIsZero,
  );
  await encryption.decrypt(
    (encryption.physical ? host : guest) - lead,
    buffer,
  );
  if (buffer !== into) into.set(buffer.subarray(lead, lead + into.length));
}

/** Reads and decompresses the cluster a `compressed` extent lies in. */
export async function readCompressed(
  file: ByteSource,
  e: Extent,
  clusterSize: number,
  codecs: Codecs,
  type: CompressionType,
  format: string,
): Promise<Uint8Array> {
  const host = e.hostOffset!;
  const where = `the compressed cluster at guest offset ${
    hex(e.start - (e.start % clusterSize))
  } (file offset ${hex(host)})`;
  if (host >= file.size) {
    throw new Qcow2Error(
      "OFFSET_PAST_END",
      `Cannot read ${format} image: ${where} lies past the end of the file (${file.size} bytes)`,
      { offset: host },
    );
  }
  const input = new Uint8Array(Math.min(e.compressedLength!, file.size - host));
  await file.readAt(host, input);
  return decompressCluster(codecs, type, input, clusterSize, where);
}

/** A `compressed` extent and where its bytes go. */
export interface CompressedRead {
  /** The extent (part or all of one compressed cluster). */
  extent: Extent;
  /** Its guest bytes: `extent.length` long. */
  into: Uint8Array;
}

/** Largest span of the file one read covers for compressed clusters. */
const GROUP_SPAN = 4 * 1024 * 1024;
/** Largest gap between compressed clusters that one read spans over. */
const GROUP_GAP = 64 * 1024;

/**
 * Scratch buffers for compressed bytes, reused across reads so that
 * converting a compressed image does not allocate per cluster.
 */
const scratch: Uint8Array[] = [];

function takeScratch(length: number): Uint8Array {
  const i = scratch.findIndex((b) => b.length >= length);
  if (i >= 0) return scratch.splice(i, 1)[0].subarray(0, length);
  return new Uint8Array(Math.max(length, 1024 * 1024)).subarray(0, length);
}

function giveScratch(buffer: Uint8Array): void {
  if (scratch.length < 16) {
    scratch.push(new Uint8Array(buffer.buffer, 0, buffer.buffer.byteLength));
  }
}

/**
 * Fills the guest bytes of many `compressed` extents: clusters that lie
 * near each other in the file are read together, with one read, then each
 * is decompressed (a whole cluster straight into its place). Bounds are
 * checked per cluster, as {@linkcode readCompressed} checks them.
 */
export async function readCompressedRuns(
  file: ByteSource,
  reads: CompressedRead[],
  clusterSize: number,
  codecs: Codecs,
  type: CompressionType,
  format: string,
): Promise<void> {
  if (reads.length === 0) return;
  const within = reads.filter((r) => r.extent.hostOffset! < file.size);
  if (within.length < reads.length) {
    // The same error as a single read gives.
    const e = reads.find((r) => r.extent.hostOffset! >= file.size)!;
    await readCompressed(file, e.extent, clusterSize, codecs, type, format);
  }
  within.sort((a, b) => a.extent.hostOffset! - b.extent.hostOffset!);
  // Each group's decompressions run while the next group is read.
  await withJobs(async (start) => {
    let i = 0;
    while (i < within.length && !start()) {
      const from = within[i].extent.hostOffset!;
      let to = from;
      let j = i;
      for (; j < within.length; j++) {
        const e = within[j].extent;
        const end = Math.min(e.hostOffset! + e.compressedLength!, file.size);
        if (
          j > i &&
          (e.hostOffset! > to + GROUP_GAP ||
            Math.max(to, end) - from > GROUP_SPAN)
        ) break;
        to = Math.max(to, end);
      }
      const group = within.slice(i, j);
      i = j;
      const bytes = takeScratch(to - from);
      const got = await file.readAt(from, bytes);
      bytes.fill(0, got);
      // Every decompression settles before the scratch buffer is reused.
      start(
        withJobs((startOne) => {
          for (const { extent: e, into } of group) {
            startOne(decompressInto(
              bytes.subarray(
                e.hostOffset! - from,
                Math.min(e.hostOffset! + e.compressedLength!, file.size) -
                  from,
              ),
              e,
              into,
              clusterSize,
              codecs,
              type,
            ));
          }
        }).finally(() => giveScratch(bytes)),
      );
    }
  });
}

async function decompressInto(
  input: Uint8Array,
  e: Extent,
  into: Uint8Array,
  clusterSize: number,
  codecs: Codecs,
  type: CompressionType,
): Promise<void> {
  const where = () =>
    `the compressed cluster at guest offset ${
      hex(e.start - (e.start % clusterSize))
    } (file offset ${hex(e.hostOffset!)})`;
  const whole = e.length === clusterSize && e.start % clusterSize === 0;
  const cluster = await decompressCluster(
    codecs,
    type,
    input,
    clusterSize,
    where,
    whole ? into : undefined,
  );
  if (cluster === into) return;
  const at = e.start % clusterSize;
  into.set(cluster.subarray(at, at + e.length));
}
