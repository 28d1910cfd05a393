/**
 * The guest view of a qcow2 image: its extents (what is data, zero, compressed
 * or unallocated) and reads of guest bytes at any offset.
 *
 * @module
 */

import { type Codecs, decompressCluster, webCodecs } from "./codecs.ts";
import { hex, Qcow2Error } from "./errors.ts";
import { type Qcow2Header, readHeader, unknownFeatureNames } from "./header.ts";
import { type ByteSource, readExact } from "./io.ts";
import { L2Cache } from "./l2_cache.ts";

/** What a run of guest bytes is backed by. */
export type ExtentKind = "data" | "zero" | "unallocated" | "compressed";

/**
 * A run of guest bytes that share one kind. `data` runs are contiguous in the
 * file too; each `compressed` run lies inside one cluster.
 */
export interface Extent {
  /** Guest offset of the first byte. */
  start: number;
  /** Length in bytes. */
  length: number;
  /** What backs these bytes: file data, zeros, compressed data, or nothing. */
  kind: ExtentKind;
  /** For `data`: the file offset of `start`. For `compressed`: the file offset of the compressed stream. */
  hostOffset?: number;
  /** For `compressed`: how many bytes of the file the compressed cluster may span. */
  compressedLength?: number;
}

/** Options for {@linkcode openQcow2}. */
export interface OpenOptions {
  /** Decompressors to use; defaults to the portable web-stream ones. */
  codecs?: Codecs;
  /** Bytes of L2 tables to keep cached (default 4 MiB; at least one table). */
  l2CacheBytes?: number;
  /**
   * Read an image that names a backing file as if it had none: regions the
   * image does not allocate read as zeros (its top layer alone).
   */
  ignoreBackingFile?: boolean;
}

/** Default bytes of L2 tables kept in memory. */
const DEFAULT_L2_CACHE_BYTES = 4 * 1024 * 1024;
const TWO_32 = 2 ** 32;

/**
 * An open qcow2 image: header, virtual size, extents and guest reads. Obtain
 * one with {@linkcode openQcow2}.
 */
export class Qcow2Image {
  /** The parsed header. */
  readonly header: Qcow2Header;
  /** The file the image is read from. */
  readonly source: ByteSource;
  /** Virtual disk size in bytes (the header's size, rounded down to 512). */
  readonly size: number;
  /** Cluster size in bytes. */
  readonly clusterSize: number;
  #l1: DataView;
  #l1Entries: number;
  #l2Bits: number;
  #cache: L2Cache;
  #codecs: Codecs;

  /** @internal Use {@linkcode openQcow2}. */
  constructor(
    header: Qcow2Header,
    source: ByteSource,
    l1: Uint8Array,
    options: OpenOptions,
  ) {
    this.header = header;
    this.source = source;
    this.size = Math.floor(header.size / 512) * 512;
    this.clusterSize = header.clusterSize;
    this.#l1 = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    this.#l1Entries = l1.length / 8;
    this.#l2Bits = header.clusterBits - 3;
    const tables = (options.l2CacheBytes ?? DEFAULT_L2_CACHE_BYTES) /
      header.clusterSize;
    this.#cache = new L2Cache(tables);
    this.#codecs = options.codecs ?? webCodecs;
  }

  /**
   * The extents covering guest bytes `[start, end)`, in order. Adjacent
   * clusters of one kind are merged (data only where the file offsets are
   * contiguous too).
   *
   * @param start First guest byte (default 0).
   * @param end Guest byte after the last (default the virtual size).
   * @returns The extents, clipped to the range.
   * @throws {Qcow2Error} `BAD_TABLE_ENTRY` for an invalid L1 or L2 entry,
   * `TRUNCATED` for an L2 table past the end of the file.
   */
  async *extents(start = 0, end: number = this.size): AsyncGenerator<Extent> {
    checkRange(start, end - start, this.size);
    if (start >= end) return;
    const bits = this.header.clusterBits;
    const cs = this.clusterSize;
    const l2Entries = 2 ** this.#l2Bits;
    const l1Span = cs * l2Entries;
    const v3 = this.header.version === 3;

    // The extent being grown, not yet emitted.
    let kind: ExtentKind | undefined;
    let runStart = 0;
    let runEnd = 0;
    let runHost = 0;
    const pending: Extent[] = [];
    const emit = () => {
      if (kind === undefined) return;
      const s = Math.max(runStart, start);
      const e = Math.min(runEnd, end);
      if (s < e) {
        const extent: Extent = { start: s, length: e - s, kind };
        if (kind === "data") extent.hostOffset = runHost + (s - runStart);
        pending.push(extent);
      }
      kind = undefined;
    };
    const add = (k: ExtentKind, from: number, to: number, host = 0) => {
      if (
        kind === k && runEnd === from &&
        (k !== "data" || runHost + (from - runStart) === host)
      ) {
        runEnd = to;
        return;
      }
      emit();
      kind = k;
      runStart = from;
      runEnd = to;
      runHost = host;
    };

    for (
      let l1Index = Math.floor(start / l1Span);
      l1Index * l1Span < end;
      l1Index++
    ) {
      const spanStart = l1Index * l1Span;
      const l2Offset = this.#l1Entry(l1Index);
      if (l2Offset === 0) {
        add("unallocated", spanStart, spanStart + l1Span);
      } else {
        const table = await this.#l2Table(l2Offset, l1Index);
        const view = new DataView(
          table.buffer,
          table.byteOffset,
          table.byteLength,
        );
        const first = spanStart < start
          ? Math.floor((start - spanStart) / cs)
          : 0;
        const last = Math.min(l2Entries, Math.ceil((end - spanStart) / cs));
        for (let i = first; i < last; i++) {
          const g = spanStart + i * cs;
          const hi = view.getUint32(i * 8);
          const lo = view.getUint32(i * 8 + 4);
          if (hi & 0x40000000) {
            // Compressed: x = 70 - cluster_bits bits of byte offset, then the
            // count of extra 512-byte sectors, up to bit 61.
            const shift = 38 - bits; // x - 32
            const host = (hi & ((1 << shift) - 1)) * TWO_32 + (lo >>> 0);
            const sectors = ((hi >>> shift) & ((1 << (bits - 8)) - 1)) + 1;
            emit();
            const s = Math.max(g, start);
            const e = Math.min(g + cs, end);
            pending.push({
              start: s,
              length: e - s,
              kind: "compressed",
              hostOffset: host,
              compressedLength: sectors * 512 - (host % 512),
            });
            continue;
          }
          const host = (hi & 0x00ffffff) * TWO_32 + ((lo & 0xfffffe00) >>> 0);
          if (host % cs !== 0) {
            throw new Qcow2Error(
              "BAD_TABLE_ENTRY",
              `Cannot read qcow2 image: cluster offset ${
                hex(host)
              } is not aligned to a cluster (L2 table at ${
                hex(l2Offset)
              }, index ${i}, guest offset ${hex(g)})`,
              { offset: l2Offset + i * 8 },
            );
          }
          if (lo & 1) {
            if (!v3) {
              throw new Qcow2Error(
                "BAD_TABLE_ENTRY",
                `Cannot read qcow2 image: zero cluster entry in a version 2 image (L2 table at ${
                  hex(l2Offset)
                }, index ${i})`,
                { offset: l2Offset + i * 8 },
              );
            }
            add("zero", g, g + cs);
          } else if (host === 0) {
            add("unallocated", g, g + cs);
          } else {
            add("data", g, g + cs, host);
          }
        }
      }
      if (pending.length > 0) {
        yield* pending;
        pending.length = 0;
      }
    }
    emit();
    yield* pending;
  }

  /**
   * Fills `buffer` with the guest bytes at `position`.
   *
   * @param position Guest offset of the first byte.
   * @param buffer Where the bytes go; its length is how many are read.
   * @throws {RangeError} If the range runs past the virtual size.
   * @throws {Qcow2Error} If the image is corrupt where the bytes lie.
   */
  async read(position: number, buffer: Uint8Array): Promise<void> {
    const end = position + buffer.length;
    const jobs: Promise<void>[] = [];
    for await (const e of this.extents(position, end)) {
      const into = buffer.subarray(
        e.start - position,
        e.start - position + e.length,
      );
      if (e.kind === "data") {
        jobs.push(this.#readHost(e.hostOffset!, into, e.start));
      } else if (e.kind === "compressed") {
        const within = e.start % this.clusterSize;
        jobs.push(
          this.#readCompressed(e).then((c) =>
            into.set(c.subarray(within, within + e.length))
          ),
        );
      } else {
        into.fill(0);
      }
    }
    await Promise.all(jobs);
  }

  /** The L2 table offset in L1 entry `index`, or 0 when unallocated. */
  #l1Entry(index: number): number {
    if (index >= this.#l1Entries) return 0;
    const hi = this.#l1.getUint32(index * 8);
    const lo = this.#l1.getUint32(index * 8 + 4);
    const offset = (hi & 0x00ffffff) * TWO_32 + ((lo & 0xfffffe00) >>> 0);
    if (offset % this.clusterSize !== 0) {
      throw new Qcow2Error(
        "BAD_TABLE_ENTRY",
        `Cannot read qcow2 image: L2 table offset ${
          hex(offset)
        } is not aligned to a cluster (L1 index ${index})`,
        { offset: this.header.l1TableOffset + index * 8 },
      );
    }
    return offset;
  }

  #l2Table(offset: number, l1Index: number): Promise<Uint8Array> {
    return this.#cache.get(offset, () => {
      if (offset + this.clusterSize > this.source.size) {
        return Promise.reject(
          new Qcow2Error(
            "BAD_TABLE_ENTRY",
            `Cannot read qcow2 image: L2 table at ${
              hex(offset)
            } (L1 index ${l1Index}) lies past the end of the file (${this.source.size} bytes)`,
            { offset: this.header.l1TableOffset + l1Index * 8 },
          ),
        );
      }
      return readExact(this.source, offset, this.clusterSize, "L2 table");
    });
  }

  /** Reads data clusters; bytes past the end of the file read as zeros. */
  async #readHost(
    host: number,
    into: Uint8Array,
    guest: number,
  ): Promise<void> {
    if (host >= this.source.size) {
      throw new Qcow2Error(
        "BAD_TABLE_ENTRY",
        `Cannot read qcow2 image: the data of guest offset ${
          hex(guest)
        } lies at ${
          hex(host)
        }, past the end of the file (${this.source.size} bytes)`,
        { offset: host },
      );
    }
    const n = await this.source.readAt(host, into);
    if (n < into.length) into.fill(0, n);
  }

  async #readCompressed(e: Extent): Promise<Uint8Array> {
    const host = e.hostOffset!;
    const where = `the compressed cluster at guest offset ${
      hex(e.start - (e.start % this.clusterSize))
    } (file offset ${hex(host)})`;
    if (host >= this.source.size) {
      throw new Qcow2Error(
        "BAD_TABLE_ENTRY",
        `Cannot read qcow2 image: ${where} lies past the end of the file (${this.source.size} bytes)`,
        { offset: host },
      );
    }
    const input = new Uint8Array(
      Math.min(e.compressedLength!, this.source.size - host),
    );
    await this.source.readAt(host, input);
    return decompressCluster(
      this.#codecs,
      this.header.compressionType,
      input,
      this.clusterSize,
      where,
    );
  }
}

/**
 * Opens a qcow2 image for reading: parses its header, refuses what it cannot
 * read faithfully, and loads its L1 table.
 *
 * @param source The image file.
 * @param options Codecs, cache size, and how to treat a backing file.
 * @returns The open image.
 * @throws {Qcow2Error} For a malformed header, an unknown incompatible
 * feature, encryption, a backing file, an external data file or extended L2
 * entries (the last three are not supported yet).
 *
 * @example Opening an image held in memory
 * ```ts ignore
 * import { bytesSource, openImage } from "@qcow2/qcow2";
 *
 * const image = await openImage(bytesSource(await Deno.readFile("disk.qcow2")));
 * console.log(image.size);
 * ```
 */
export async function openQcow2(
  source: ByteSource,
  options: OpenOptions = {},
): Promise<Qcow2Image> {
  const header = await readHeader(source);
  checkSupported(header, options);
  const l2Entries = 2 ** (header.clusterBits - 3);
  const needed = Math.ceil(header.size / (header.clusterSize * l2Entries));
  const entries = Math.min(header.l1Size, needed);
  let l1: Uint8Array = new Uint8Array(0);
  if (entries > 0) {
    if (header.l1TableOffset + entries * 8 > source.size) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot read qcow2 image: the L1 table at ${
          hex(header.l1TableOffset)
        } (${entries} entries) runs past the end of the file (${source.size} bytes)`,
        { offset: header.l1TableOffset },
      );
    }
    l1 = await readExact(source, header.l1TableOffset, entries * 8, "L1 table");
  }
  return new Qcow2Image(header, source, l1, options);
}

/**
 * Throws if the image uses a feature this reader cannot honour.
 *
 * @param header A parsed header.
 * @param options The open options (a backing file may be ignored).
 */
export function checkSupported(
  header: Qcow2Header,
  options: OpenOptions = {},
): void {
  if (header.unknownIncompatibleFeatures !== 0n) {
    throw new Qcow2Error(
      "UNSUPPORTED_FEATURE",
      `Cannot read qcow2 image: it uses incompatible features this version does not know: ${
        unknownFeatureNames(header)
      } (mask ${hex(header.unknownIncompatibleFeatures)})`,
      { offset: 72 },
    );
  }
  if (header.cryptMethod !== 0) {
    throw new Qcow2Error(
      "ENCRYPTED",
      `Cannot read qcow2 image: it is encrypted (${
        header.cryptMethod === 1 ? "AES" : "LUKS"
      }), which is not supported; decrypt it with 'qemu-img convert' first`,
      { offset: 32 },
    );
  }
  if (header.features.externalDataFile) {
    throw new Qcow2Error(
      "EXTERNAL_DATA_FILE",
      `Cannot read qcow2 image: its data lives in an external data file${
        header.extensions.externalDataFile
          ? ` ('${header.extensions.externalDataFile}')`
          : ""
      }, which is not supported yet`,
    );
  }
  if (header.features.extendedL2) {
    throw new Qcow2Error(
      "EXTENDED_L2",
      "Cannot read qcow2 image: it uses extended L2 entries (subclusters), which are not supported yet",
    );
  }
  if (header.backingFile !== undefined && !options.ignoreBackingFile) {
    throw new Qcow2Error(
      "BACKING_FILE",
      `Cannot read qcow2 image: it has a backing file ('${header.backingFile}'), which is not followed yet; pass 'ignoreBackingFile' to read its top layer alone`,
    );
  }
}

function checkRange(position: number, length: number, size: number): void {
  if (
    !Number.isSafeInteger(position) || !Number.isSafeInteger(length) ||
    position < 0 || length < 0 || position + length > size
  ) {
    throw new RangeError(
      `Cannot read guest bytes ${position}..${
        position + length
      }: the virtual disk has ${size} bytes`,
    );
  }
}
