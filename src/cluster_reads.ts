/**
 * Reading what an extent points at in a file: data clusters and compressed
 * clusters, with the bounds checks both qcow formats need.
 *
 * @module
 */

import { type Codecs, decompressCluster } from "./codecs.ts";
import type { Extent } from "./disk.ts";
import { hex, Qcow2Error } from "./errors.ts";
import type { CompressionType } from "./header.ts";
import type { ByteSource } from "./io.ts";

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

/**
 * Fills `into` (the bytes of `e`, a `compressed` extent) from its cluster.
 */
export async function readCompressedInto(
  file: ByteSource,
  e: Extent,
  into: Uint8Array,
  clusterSize: number,
  codecs: Codecs,
  type: CompressionType,
  format: string,
): Promise<void> {
  const cluster = await readCompressed(
    file,
    e,
    clusterSize,
    codecs,
    type,
    format,
  );
  const within = e.start % clusterSize;
  into.set(cluster.subarray(within, within + e.length));
}
