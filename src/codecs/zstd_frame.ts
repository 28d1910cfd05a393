/**
 * Where a zstd frame ends, so that what follows it in a qcow2 image can be
 * cut before decoding.
 *
 * @module
 */

import { Qcow2Error } from "../errors.ts";

const ZSTD_MAGIC = 0xfd2fb528;

/**
 * The length of the first zstd frame in `input` (with any skippable frames
 * before it), so that what follows it (padding, or the next compressed
 * cluster, which QEMU packs right behind) can be cut before decoding.
 *
 * @param input Bytes that start with a zstd frame.
 * @returns The byte length up to the end of the first frame.
 * @throws {Qcow2Error} `BAD_COMPRESSED_DATA` if a frame is cut short or
 * malformed.
 *
 * @example A frame followed by padding
 * ```ts
 * import { zstdFrameLength } from "./zstd_frame.ts";
 * import { assertEquals } from "@std/assert";
 *
 * // Magic, descriptor (single segment, 1-byte size), size 3, one last raw block.
 * const frame = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 3, 0x19, 0, 0, 97, 98, 99];
 * assertEquals(zstdFrameLength(new Uint8Array([...frame, 0, 0, 0])), 12);
 * ```
 */
export function zstdFrameLength(input: Uint8Array): number {
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  const fail = (why: string) =>
    new Qcow2Error(
      "BAD_COMPRESSED_DATA",
      `Cannot decompress zstd cluster: ${why}`,
    );
  let pos = 0;
  while (pos + 4 <= input.length) {
    const magic = view.getUint32(pos, true);
    if ((magic & 0xfffffff0) === 0x184d2a50) {
      if (pos + 8 > input.length) throw fail("skippable frame cut short");
      pos += 8 + view.getUint32(pos + 4, true);
      if (pos > input.length) throw fail("skippable frame cut short");
      continue;
    }
    if (magic !== ZSTD_MAGIC) break;
    pos += 4;
    if (pos >= input.length) throw fail("frame header cut short");
    const fhd = input[pos++];
    const fcsFlag = fhd >> 6;
    const singleSegment = (fhd >> 5) & 1;
    const checksum = (fhd >> 2) & 1;
    const dictFlag = fhd & 3;
    if (fhd & 8) throw fail("reserved bit set in frame header");
    pos += singleSegment ? 0 : 1;
    pos += [0, 1, 2, 4][dictFlag];
    pos += [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag];
    for (;;) {
      if (pos + 3 > input.length) throw fail("block header cut short");
      const bh = input[pos] | (input[pos + 1] << 8) | (input[pos + 2] << 16);
      pos += 3;
      const last = bh & 1;
      const type = (bh >> 1) & 3;
      const size = bh >>> 3;
      if (type === 3) throw fail("reserved block type");
      pos += type === 1 ? 1 : size;
      if (pos > input.length) throw fail("block cut short");
      if (last) break;
    }
    pos += checksum ? 4 : 0;
    if (pos > input.length) throw fail("checksum cut short");
    // One frame holds one cluster; what follows may be the next cluster.
    return pos;
  }
  throw fail("no zstd frame found");
}
