/**
 * The qcow2 on-disk layout, named once: header fields (spec name, offset,
 * size), feature bits, header extension type ids, snapshot table entry
 * fields, and the masks and flags of L1 entries, L2 entries, compressed
 * cluster descriptors, extended L2 entries and refcount table entries.
 *
 * The header parser, `info`, the test synthesizer and the writer all read
 * this table; nothing else spells an offset or a mask.
 *
 * Source: QEMU `docs/interop/qcow2.txt` ("Header", "Header extensions",
 * "Cluster mapping", "Snapshots", "Host cluster management"), and the
 * `QCOW_OFLAG_*`, `L1E_*`, `L2E_*`, `REFT_*` macros of `block/qcow2.h`.
 *
 * @module
 */

/**
 * One fixed-size field of an on-disk structure.
 *
 * @example Reading a field by its layout entry
 * ```ts
 * import { HEADER } from "./layout.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/empty.qcow2", import.meta.url));
 * const { offset } = HEADER.clusterBits;
 * assertEquals(new DataView(bytes.buffer).getUint32(offset), 16);
 * ```
 */
export interface Field {
  /** The field's name in the specification (`docs/interop/qcow2.txt`). */
  readonly name: string;
  /** Byte offset from the start of the structure. */
  readonly offset: number;
  /** Size in bytes: 1, 2, 4 or 8; big-endian. */
  readonly size: 1 | 2 | 4 | 8;
}

/**
 * Every field of the qcow2 header, version 2 (the first 72 bytes) and
 * version 3 (up to 104 bytes, 112 with the compression type and padding).
 * Source: `docs/interop/qcow2.txt` "Header"; QEMU's `QCowHeader`.
 *
 * @example The offset of the virtual size
 * ```ts
 * import { HEADER } from "./layout.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(HEADER.size, { name: "size", offset: 24, size: 8 });
 * ```
 */
export const HEADER = {
  magic: { name: "magic", offset: 0, size: 4 },
  version: { name: "version", offset: 4, size: 4 },
  backingFileOffset: { name: "backing_file_offset", offset: 8, size: 8 },
  backingFileSize: { name: "backing_file_size", offset: 16, size: 4 },
  clusterBits: { name: "cluster_bits", offset: 20, size: 4 },
  size: { name: "size", offset: 24, size: 8 },
  cryptMethod: { name: "crypt_method", offset: 32, size: 4 },
  l1Size: { name: "l1_size", offset: 36, size: 4 },
  l1TableOffset: { name: "l1_table_offset", offset: 40, size: 8 },
  refcountTableOffset: { name: "refcount_table_offset", offset: 48, size: 8 },
  refcountTableClusters: {
    name: "refcount_table_clusters",
    offset: 56,
    size: 4,
  },
  nbSnapshots: { name: "nb_snapshots", offset: 60, size: 4 },
  snapshotsOffset: { name: "snapshots_offset", offset: 64, size: 8 },
  incompatibleFeatures: {
    name: "incompatible_features",
    offset: 72,
    size: 8,
  },
  compatibleFeatures: { name: "compatible_features", offset: 80, size: 8 },
  autoclearFeatures: { name: "autoclear_features", offset: 88, size: 8 },
  refcountOrder: { name: "refcount_order", offset: 96, size: 4 },
  headerLength: { name: "header_length", offset: 100, size: 4 },
  compressionType: { name: "compression_type", offset: 104, size: 1 },
} as const satisfies Record<string, Field>;

/** The four bytes every qcow2 image starts with: `QFI\xfb`, big-endian. */
export const MAGIC = 0x514649fb;
/** Length of a version 2 header (compat 0.10). */
export const V2_HEADER_LENGTH = 72;
/** Shortest version 3 header (up to `header_length`). */
export const V3_MIN_HEADER_LENGTH = 104;
/**
 * The version 3 header QEMU writes: up to `compression_type`, padded to a
 * multiple of 8 (`QCowHeader` in `block/qcow2.h`).
 */
export const V3_HEADER_LENGTH = 112;
/** Smallest `cluster_bits` (512-byte clusters). */
export const MIN_CLUSTER_BITS = 9;
/** Largest `cluster_bits` (2 MiB clusters). */
export const MAX_CLUSTER_BITS = 21;
/** Largest `refcount_order` (64-bit refcounts). */
export const MAX_REFCOUNT_ORDER = 6;

/**
 * Values of the header's `crypt_method` field.
 * Source: `docs/interop/qcow2.txt` "crypt_method"; `QCOW_CRYPT_*`.
 *
 * @example Telling a LUKS image
 * ```ts
 * import { CRYPT_METHOD } from "./layout.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(CRYPT_METHOD.luks, 2);
 * ```
 */
export const CRYPT_METHOD = { none: 0, aes: 1, luks: 2 } as const;
/** One value of {@linkcode CRYPT_METHOD}. */
export type CryptMethod = typeof CRYPT_METHOD[keyof typeof CRYPT_METHOD];

/**
 * Values of the header's `compression_type` byte (version 3, offset 104).
 * Source: `docs/interop/qcow2.txt` "compression_type".
 */
export const COMPRESSION_TYPE = { zlib: 0, zstd: 1 } as const;

/** A feature bit: its number in its field and the name QEMU gives it. */
export interface FeatureBit {
  /** Bit number within the 64-bit feature field. */
  readonly bit: number;
  /** The name in QEMU's feature name table (`qcow2_feature_name_table`). */
  readonly name: string;
  /** How `info` lists it (the `*-features` lists of the qcow2 header). */
  readonly label: string;
}

/**
 * The incompatible feature bits (header offset 72).
 * Source: `docs/interop/qcow2.txt` "incompatible_features";
 * `QCOW2_INCOMPAT_*` in `block/qcow2.h`.
 *
 * @example The bit that says an image uses extended L2 entries
 * ```ts
 * import { INCOMPATIBLE } from "./layout.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(INCOMPATIBLE.extendedL2.bit, 4);
 * ```
 */
export const INCOMPATIBLE = {
  dirty: { bit: 0, name: "dirty bit", label: "dirty" },
  corrupt: { bit: 1, name: "corrupt bit", label: "corrupt" },
  externalDataFile: {
    bit: 2,
    name: "external data file",
    label: "external data file",
  },
  compressionType: {
    bit: 3,
    name: "compression type",
    label: "compression type",
  },
  extendedL2: {
    bit: 4,
    name: "extended L2 entries",
    label: "extended L2 entries",
  },
} as const satisfies Record<string, FeatureBit>;

/**
 * The compatible feature bits (header offset 80). Source:
 * `QCOW2_COMPAT_*`.
 */
export const COMPATIBLE = {
  lazyRefcounts: { bit: 0, name: "lazy refcounts", label: "lazy refcounts" },
} as const satisfies Record<string, FeatureBit>;

/**
 * The autoclear feature bits (header offset 88). Source:
 * `QCOW2_AUTOCLEAR_*`.
 */
export const AUTOCLEAR = {
  bitmaps: { bit: 0, name: "bitmaps", label: "bitmaps" },
  rawExternalData: {
    bit: 1,
    name: "raw external data",
    label: "raw external data",
  },
} as const satisfies Record<string, FeatureBit>;

/** Mask of every incompatible feature bit this library knows (0x1f). */
export const KNOWN_INCOMPATIBLE_MASK = 0x1fn;

/**
 * The three feature fields, in the order of the feature name table's `type`
 * byte (0 incompatible, 1 compatible, 2 autoclear).
 */
export const FEATURE_TYPES = [
  "incompatible",
  "compatible",
  "autoclear",
] as const;

/**
 * Type ids of the header extensions.
 * Source: `docs/interop/qcow2.txt` "Header extensions";
 * `QCOW2_EXT_MAGIC_*` in `block/qcow2.c`.
 */
export const EXTENSION_TYPES = {
  end: 0x00000000,
  backingFormat: 0xe2792aca,
  featureNameTable: 0x6803f857,
  bitmaps: 0x23852875,
  fullDiskEncryption: 0x0537be77,
  externalDataFile: 0x44415441,
} as const;

/** Size of an extension's own header: type (4 bytes) and length (4). */
export const EXTENSION_HEADER_SIZE = 8;
/** Extension data is padded to a multiple of this many bytes. */
export const EXTENSION_ALIGNMENT = 8;
/** Size of one feature name table entry: type, bit number, 46-byte name. */
export const FEATURE_NAME_ENTRY_SIZE = 48;
/** Longest feature name in a table entry, in bytes. */
export const FEATURE_NAME_SIZE = 46;
/** Longest backing format name QEMU accepts (the extension is < 16 bytes). */
export const MAX_BACKING_FORMAT_SIZE = 15;
/** Longest backing file name QEMU reads (`backing_file_size`). */
export const MAX_BACKING_FILE_SIZE = 1023;

/**
 * Fields of the bitmaps extension's data (24 bytes).
 * Source: `docs/interop/qcow2.txt` "Bitmaps extension".
 */
export const BITMAPS_EXTENSION = {
  nbBitmaps: { name: "nb_bitmaps", offset: 0, size: 4 },
  reserved: { name: "reserved32", offset: 4, size: 4 },
  bitmapDirectorySize: { name: "bitmap_directory_size", offset: 8, size: 8 },
  bitmapDirectoryOffset: {
    name: "bitmap_directory_offset",
    offset: 16,
    size: 8,
  },
} as const satisfies Record<string, Field>;

/**
 * The fixed part of a bitmap directory entry (24 bytes), followed by extra
 * data and the name, the whole padded to 8 bytes.
 * Source: `docs/interop/qcow2.txt` "Bitmap directory"; `Qcow2BitmapDirEntry`.
 */
export const BITMAP_DIRECTORY_ENTRY = {
  bitmapTableOffset: { name: "bitmap_table_offset", offset: 0, size: 8 },
  bitmapTableSize: { name: "bitmap_table_size", offset: 8, size: 4 },
  flags: { name: "flags", offset: 12, size: 4 },
  type: { name: "type", offset: 16, size: 1 },
  granularityBits: { name: "granularity_bits", offset: 17, size: 1 },
  nameSize: { name: "name_size", offset: 18, size: 2 },
  extraDataSize: { name: "extra_data_size", offset: 20, size: 4 },
} as const satisfies Record<string, Field>;
/** Size of the fixed part of a bitmap directory entry. */
export const BITMAP_DIRECTORY_ENTRY_SIZE = 24;
/** Bitmap directory entry flags (bit 0 `in_use`, bit 1 `auto`); others are reserved. */
export const BITMAP_FLAGS = { inUse: 1, auto: 2 } as const;

/**
 * Fields of the full disk encryption extension's data (16 bytes).
 * Source: `docs/interop/qcow2.txt` "Full disk encryption header pointer".
 */
export const ENCRYPTION_EXTENSION = {
  offset: { name: "offset", offset: 0, size: 8 },
  length: { name: "length", offset: 8, size: 8 },
} as const satisfies Record<string, Field>;

/**
 * The fixed part of a snapshot table entry (40 bytes), followed by extra
 * data, the ID string and the name, the whole padded to 8 bytes.
 * Source: `docs/interop/qcow2.txt` "Snapshots"; `QCowSnapshotHeader`.
 */
export const SNAPSHOT = {
  l1TableOffset: { name: "l1_table_offset", offset: 0, size: 8 },
  l1Size: { name: "l1_size", offset: 8, size: 4 },
  idStrSize: { name: "id_str_size", offset: 12, size: 2 },
  nameSize: { name: "name_size", offset: 14, size: 2 },
  dateSec: { name: "date_sec", offset: 16, size: 4 },
  dateNsec: { name: "date_nsec", offset: 20, size: 4 },
  vmClockNsec: { name: "vm_clock_nsec", offset: 24, size: 8 },
  vmStateSize: { name: "vm_state_size", offset: 32, size: 4 },
  extraDataSize: { name: "extra_data_size", offset: 36, size: 4 },
} as const satisfies Record<string, Field>;
/** Size of the fixed part of a snapshot table entry. */
export const SNAPSHOT_HEADER_SIZE = 40;
/** Snapshot table entries are padded to a multiple of this many bytes. */
export const SNAPSHOT_ALIGNMENT = 8;

/**
 * Fields of a snapshot's extra data, each present when `extra_data_size`
 * covers it. Source: `QCowSnapshotExtraData`.
 */
export const SNAPSHOT_EXTRA = {
  vmStateSizeLarge: { name: "vm_state_size_large", offset: 0, size: 8 },
  diskSize: { name: "disk_size", offset: 8, size: 8 },
  icount: { name: "icount", offset: 16, size: 8 },
} as const satisfies Record<string, Field>;

/** Size of an L1, standard L2 or refcount table entry, in bytes. */
export const ENTRY_SIZE = 8;
/** Size of an extended L2 entry: the standard entry and the bitmaps. */
export const EXTENDED_ENTRY_SIZE = 16;
/** Subclusters per cluster with extended L2 entries. */
export const SUBCLUSTERS_PER_CLUSTER = 32;
/** The unit of a compressed descriptor's sector count, in bytes. */
export const COMPRESSED_SECTOR_SIZE = 512;

/**
 * Bit 63 of L1 and standard L2 entries: the cluster's refcount is exactly
 * one (it may be written in place). `QCOW_OFLAG_COPIED`.
 */
export const COPIED = 1n << 63n;
/** Bit 62 of an L2 entry: the cluster is compressed. `QCOW_OFLAG_COMPRESSED`. */
export const COMPRESSED = 1n << 62n;
/**
 * Bit 0 of a standard L2 entry (version 3): the cluster reads as zeros.
 * `QCOW_OFLAG_ZERO`.
 */
export const ZERO_FLAG = 1n;
/** Bits 9-55 of an L1 entry: the L2 table offset. `L1E_OFFSET_MASK`. */
export const L1_OFFSET_MASK = 0x00fffffffffffe00n;
/** Bits of an L1 entry that must be zero. `L1E_RESERVED_MASK`. */
export const L1_RESERVED_MASK = 0x7f000000000001ffn;
/**
 * Bits 9-55 of a standard L2 entry: the host cluster offset.
 * `L2E_OFFSET_MASK`.
 */
export const L2_OFFSET_MASK = 0x00fffffffffffe00n;
/** Bits of a standard L2 entry that must be zero. `L2E_STD_RESERVED_MASK`. */
export const L2_STD_RESERVED_MASK = 0x3f000000000001fen;
/**
 * Bits 0-61 of a compressed cluster descriptor: host offset and sector
 * count. `L2E_COMPRESSED_OFFSET_SIZE_MASK`.
 */
export const COMPRESSED_DESCRIPTOR_MASK = 0x3fffffffffffffffn;
/** Bits 0-31 of an extended L2 entry's second half: allocated subclusters. */
export const SUBCLUSTER_ALLOC_MASK = 0xffffffffn;
/** Bits 32-63 of an extended L2 entry's second half: zero subclusters. */
export const SUBCLUSTER_ZERO_SHIFT = 32n;
/** Bits 9-63 of a refcount table entry: the refcount block offset. */
export const REFCOUNT_TABLE_OFFSET_MASK = 0xfffffffffffffe00n;
/** Bits 0-8 of a refcount table entry: reserved, zero. */
export const REFCOUNT_TABLE_RESERVED_MASK = 0x1ffn;
/**
 * Bits 9-55 of a bitmap table entry: the bitmap data cluster's offset.
 * `BME_TABLE_ENTRY_OFFSET_MASK`.
 */
export const BITMAP_TABLE_OFFSET_MASK = 0x00fffffffffffe00n;
/**
 * Bits 1-8 and 56-63 of a bitmap table entry: reserved, zero.
 * `BME_TABLE_ENTRY_RESERVED_MASK`.
 */
export const BITMAP_TABLE_RESERVED_MASK = 0xff000000000001fen;
/**
 * Bit 0 of a bitmap table entry without a cluster: its bits read as all
 * ones. `BME_TABLE_ENTRY_FLAG_ALL_ONES`.
 */
export const BITMAP_TABLE_ALL_ONES = 1n;

/**
 * Bit `x` where a compressed cluster descriptor's sector count begins:
 * `62 - (cluster_bits - 8)`. Bits 0 to x-1 hold the host offset, bits x to
 * 61 the number of additional 512-byte sectors.
 * Source: `docs/interop/qcow2.txt` "Compressed Clusters Descriptor".
 *
 * @param clusterBits The header's `cluster_bits`, 9 to 21.
 * @returns x, 49 to 61.
 *
 * @example 64 KiB clusters
 * ```ts
 * import { compressedOffsetBits } from "./layout.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(compressedOffsetBits(16), 54);
 * ```
 */
export function compressedOffsetBits(clusterBits: number): number {
  return 62 - (clusterBits - 8);
}

/** Largest offset an exact JavaScript number holds, as a bigint. */
export const MAX_SAFE_OFFSET = BigInt(Number.MAX_SAFE_INTEGER);
