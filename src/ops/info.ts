/**
 * What `info` reports about an image, keyed like `qemu-img info
 * --output=json`, and its human-readable form.
 *
 * @module
 */

import type { EncryptInfo } from "../crypto/encrypt_info.ts";
import {
  LISTED_ID_BYTES,
  LISTED_NAME_BYTES,
  listedName,
  padName,
} from "../qcow2/names.ts";
import { hex } from "../errors.ts";
import { formatSize } from "./format_size.ts";
import { checkKnownFeatures, type Qcow2Header } from "../qcow2/header.ts";
import {
  AUTOCLEAR,
  COMPATIBLE,
  CRYPT_METHOD,
  type FeatureBit,
  INCOMPATIBLE,
} from "../qcow2/layout.ts";
import type { QcowHeader } from "../qcow/header.ts";
import type { Snapshot } from "../qcow2/snapshots.ts";
import type { Bitmap } from "../qcow2/bitmaps.ts";

/**
 * The `format-specific.data` object of `qemu-img info` for qcow2.
 *
 * @example What `qemu-img info` says of an image with a raw data file
 * ```ts
 * import { imageInfo, readHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/ext_raw.qcow2", import.meta.url));
 * const data = imageInfo(await readHeader(bytes), "ext_raw.qcow2")["format-specific"]?.data;
 * assertEquals(data, {
 *   compat: "1.1",
 *   "compression-type": "zlib",
 *   "lazy-refcounts": false,
 *   "refcount-bits": 16,
 *   "data-file": "ext_raw.data",
 *   "data-file-raw": true,
 *   corrupt: false,
 *   "extended-l2": false,
 * });
 * ```
 */
export interface Qcow2SpecificInfo {
  /** `"0.10"` for version 2, `"1.1"` for version 3. */
  compat: "0.10" | "1.1";
  /** `"zlib"` or `"zstd"`. */
  "compression-type": string;
  /** Compatible bit 0 (version 3 only). */
  "lazy-refcounts"?: boolean;
  /** The persistent dirty bitmaps (version 3 only, when there are any). */
  bitmaps?: BitmapInfo[];
  /** Refcount width in bits. */
  "refcount-bits": number;
  /** The encryption, for an encrypted image (no password needed). */
  encrypt?: EncryptInfo;
  /** Incompatible bit 1 (version 3 only). */
  corrupt?: boolean;
  /** Incompatible bit 4 (version 3 only). */
  "extended-l2"?: boolean;
  /** The external data file name, when there is one. */
  "data-file"?: string;
  /** Autoclear bit 1, when there is an external data file. */
  "data-file-raw"?: boolean;
}

/**
 * One persistent dirty bitmap as `qemu-img info --output=json` lists it in
 * `format-specific.data.bitmaps` (QEMU's `Qcow2BitmapInfo`).
 *
 * @example The bitmaps of an image
 * ```ts
 * import { bytesSource, imageInfo, parseHeader, readBitmaps } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/bitmaps/bitmaps.qcow2", import.meta.url));
 * const header = parseHeader(bytes);
 * const bitmaps = await readBitmaps(bytesSource(bytes), header);
 * const info = imageInfo(header, "bitmaps.qcow2", { bitmaps });
 * assertEquals(info["format-specific"]?.data.bitmaps?.[0], { flags: ["in-use", "auto"], name: "b0", granularity: 16384 });
 * ```
 */
export interface BitmapInfo {
  /** `"in-use"` (its data is stale) and `"auto"` (QEMU keeps it up to date), as set. */
  flags: ("in-use" | "auto")[];
  /** The bitmap's name. */
  name: string;
  /** Guest bytes per bit. */
  granularity: number;
}

/**
 * Header details that `qemu-img info` does not show; our own keys.
 *
 * @example Feature bits by name, and where the tables lie
 * ```ts
 * import { imageInfo, readHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/ext_raw.qcow2", import.meta.url));
 * const header = imageInfo(await readHeader(bytes), "ext_raw.qcow2")["qcow2-header"]!;
 * assertEquals(header["incompatible-features"], ["external data file"]);
 * assertEquals(header["autoclear-features"], ["raw external data"]);
 * assertEquals(header["compatible-features"], []);
 * assertEquals(header["l1-table-offset"], 0x30000);
 * assertEquals(header["refcount-table-offset"], 0x10000);
 * ```
 */
export interface Qcow2HeaderInfo {
  /** Header version, 2 or 3. */
  version: number;
  /** Header length in bytes. */
  "header-length": number;
  /** Entries in the active L1 table. */
  "l1-size": number;
  /** File offset of the active L1 table. */
  "l1-table-offset": number;
  /** File offset of the refcount table. */
  "refcount-table-offset": number;
  /** Clusters in the refcount table. */
  "refcount-table-clusters": number;
  /** Number of internal snapshots. */
  "snapshot-count": number;
  /** File offset of the snapshot table. */
  "snapshots-offset": number;
  /** Encryption method: 0 none, 1 AES, 2 LUKS. */
  "crypt-method": number;
  /** Names of the incompatible feature bits that are set. */
  "incompatible-features": string[];
  /** Names of the compatible feature bits that are set. */
  "compatible-features": string[];
  /** Names of the autoclear feature bits that are set. */
  "autoclear-features": string[];
  /** Type codes (hex) of header extensions this library does not know. */
  "unknown-extensions": string[];
}

/**
 * One snapshot as `qemu-img info --output=json` lists it.
 *
 * @example The snapshot list of an image
 * ```ts
 * import { bytesSource, imageInfo, readHeader, readSnapshots } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/snap.qcow2", import.meta.url));
 * const source = bytesSource(bytes);
 * const header = await readHeader(source);
 * const info = imageInfo(header, "snap.qcow2", { snapshots: await readSnapshots(source, header) });
 * assertEquals(info.snapshots?.[1], {
 *   id: "2",
 *   name: "second",
 *   "vm-state-size": 0,
 *   "date-sec": 1700003600,
 *   "date-nsec": 250000000,
 *   "vm-clock-sec": 0,
 *   "vm-clock-nsec": 0,
 *   icount: 0,
 * });
 * ```
 */
export interface SnapshotInfo {
  /** The snapshot's ID. */
  id: string;
  /** The snapshot's name. */
  name: string;
  /** Bytes of saved VM state. */
  "vm-state-size": number;
  /** Wall-clock seconds since the epoch. */
  "date-sec": number;
  /** Wall-clock nanoseconds. */
  "date-nsec": number;
  /** Guest clock, whole seconds. */
  "vm-clock-sec": number;
  /** Guest clock, nanoseconds part. */
  "vm-clock-nsec": number;
  /** Instruction count, when recorded. */
  icount?: number;
}

/**
 * The report of `info --json`: `qemu-img info` keys, plus `qcow2-header`.
 *
 * @example The same report as `qemu-img info --output=json`
 * ```ts
 * import { type ImageInfo, imageInfo, readHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const dir = new URL("../../tests/fixtures/layouts/", import.meta.url);
 * const header = await readHeader(await Deno.readFile(new URL("chain_top.qcow2", dir)));
 * const info: ImageInfo = imageInfo(header, "chain_top.qcow2", { fullBackingFilename: "chain_mid.qcow2" });
 * // What qemu-img printed for this image, less its file name and size on disk.
 * const expected = JSON.parse(await Deno.readTextFile(new URL("expected.json", dir)));
 * const { filename, "qcow2-header": ours, ...asQemu } = info;
 * assertEquals(asQemu, expected["chain_top.qcow2"].info);
 * assertEquals([filename, ours?.version], ["chain_top.qcow2", 3]);
 * ```
 */
export interface ImageInfo {
  /** The image's file name, as given. */
  filename: string;
  /** The image format. */
  format: "qcow2" | "qcow" | "raw";
  /** Virtual disk size in bytes. */
  "virtual-size": number;
  /** Bytes the file occupies on disk, when known. */
  "actual-size"?: number;
  /** Cluster size in bytes (not for raw). */
  "cluster-size"?: number;
  /** Whether the image is encrypted (present only when it is). */
  encrypted?: boolean;
  /** The backing file name, as the image stores it. */
  "backing-filename"?: string;
  /** The backing file name resolved against the image's directory. */
  "full-backing-filename"?: string;
  /** The backing file's format, when the image names it. */
  "backing-filename-format"?: string;
  /** Internal snapshots (present when there are any). */
  snapshots?: SnapshotInfo[];
  /** qcow2-specific details. */
  "format-specific"?: { type: "qcow2"; data: Qcow2SpecificInfo };
  /** Incompatible bit 0: whether refcounts may be stale. */
  "dirty-flag": boolean;
  /** Header details beyond what `qemu-img info` prints (qcow2 only). */
  "qcow2-header"?: Qcow2HeaderInfo;
}

/**
 * Optional facts for {@linkcode imageInfo} that the header does not hold.
 *
 * @example The size on disk and the backing file's path
 * ```ts
 * import { imageInfo, type InfoExtras, readHeader } from "@qcow2/qcow2";
 * import { formatInfo } from "@qcow2/qcow2/info";
 * import { resolveName } from "../chain.ts";
 * import { assertStringIncludes } from "@std/assert";
 *
 * const url = new URL("../../tests/fixtures/layouts/over_raw.qcow2", import.meta.url);
 * const header = await readHeader(await Deno.readFile(url));
 * const extras: InfoExtras = {
 *   actualSize: 512 * 1024, // from the file system: (await Deno.stat(path)).blocks * 512
 *   fullBackingFilename: resolveName("images/over_raw.qcow2", header.backingFile!),
 * };
 * const text = formatInfo(imageInfo(header, "images/over_raw.qcow2", extras));
 * assertStringIncludes(text, "disk size: 512 KiB\n");
 * assertStringIncludes(text, "backing file: rawbase.raw (actual path: images/rawbase.raw)\n");
 * ```
 */
export interface InfoExtras {
  /** Bytes the file occupies on disk. */
  actualSize?: number;
  /** The snapshot table. */
  snapshots?: readonly Snapshot[];
  /** The backing file name resolved against the image's directory. */
  fullBackingFilename?: string;
  /** The persistent dirty bitmaps (from `readBitmaps`); listed for version 3. */
  bitmaps?: readonly Bitmap[];
  /** The encryption, from {@linkcode readEncryptInfo}. */
  encrypt?: EncryptInfo;
}

/**
 * Builds the `info` report of an image from its header. Refuses, as
 * `qemu-img info` does, an image with incompatible features it does not
 * know.
 *
 * @param header The parsed header.
 * @param filename The name to report.
 * @param extras What the header does not hold: the size on disk, the
 * snapshots, the resolved backing file name.
 * @returns The report.
 * @throws {Qcow2Error} `UNSUPPORTED_FEATURE` for unknown incompatible bits.
 *
 * @example The report of an image with snapshots
 * ```ts
 * import { bytesSource, imageInfo, readHeader, readSnapshots } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/snap.qcow2", import.meta.url));
 * const source = bytesSource(bytes);
 * const header = await readHeader(source);
 * const info = imageInfo(header, "snap.qcow2", {
 *   snapshots: await readSnapshots(source, header),
 * });
 * assertEquals(info["virtual-size"], 4 * 1024 * 1024);
 * assertEquals(info["cluster-size"], 65536);
 * assertEquals(info["format-specific"]?.data["compression-type"], "zlib");
 * assertEquals(info["qcow2-header"]?.["compatible-features"], []);
 * assertEquals(info.snapshots?.map((s) => s.name), ["first", "second"]);
 * ```
 */
export function imageInfo(
  header: Qcow2Header,
  filename: string,
  extras: InfoExtras = {},
): ImageInfo {
  checkKnownFeatures(header);
  const v3 = header.version === 3;
  // Keys in the order qemu-img 7.2 prints them.
  const data = {
    compat: v3 ? "1.1" : "0.10",
    "compression-type": header.compressionType,
  } as Qcow2SpecificInfo;
  if (v3) {
    data["lazy-refcounts"] = header.features.lazyRefcounts;
    if (extras.bitmaps?.length) {
      data.bitmaps = extras.bitmaps.map((b) => ({
        flags: [
          ...(b.inUse ? ["in-use" as const] : []),
          ...(b.auto ? ["auto" as const] : []),
        ],
        name: b.name,
        granularity: b.granularity,
      }));
    }
  }
  data["refcount-bits"] = header.refcountBits;
  if (extras.encrypt) data.encrypt = extras.encrypt;
  if (v3) {
    if (header.extensions.externalDataFile !== undefined) {
      data["data-file"] = header.extensions.externalDataFile;
      data["data-file-raw"] = header.features.rawExternalData;
    }
    data.corrupt = header.features.corrupt;
    data["extended-l2"] = header.features.extendedL2;
  }
  // Keys in the order qemu-img prints them.
  const info: ImageInfo = {
    "virtual-size": Math.floor(header.size / 512) * 512,
    filename,
    "cluster-size": header.clusterSize,
    format: "qcow2",
    "actual-size": extras.actualSize,
    "backing-filename": header.backingFile,
    "full-backing-filename": header.backingFile !== undefined
      ? extras.fullBackingFilename
      : undefined,
    "backing-filename-format": header.backingFile !== undefined
      ? header.extensions.backingFormat
      : undefined,
    snapshots: extras.snapshots?.length
      ? extras.snapshots.map(snapshotInfo)
      : undefined,
    "format-specific": { type: "qcow2", data },
    encrypted: header.cryptMethod !== CRYPT_METHOD.none ? true : undefined,
    "dirty-flag": header.features.dirty,
    "qcow2-header": headerInfo(header),
  };
  return pruned(info);
}

/**
 * Builds the `info` report of a legacy qcow (version 1) image.
 *
 * @param header The parsed qcow header.
 * @param filename The name to report.
 * @param extras The size on disk and the resolved backing file name.
 * @returns The report.
 *
 * @example The report of a qcow image
 * ```ts
 * import { bytesSource, readQcowHeader } from "@qcow2/qcow2";
 * import { qcowInfo } from "@qcow2/qcow2/info";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/v1.qcow", import.meta.url));
 * const info = qcowInfo(await readQcowHeader(bytesSource(bytes)), "v1.qcow");
 * assertEquals(info.format, "qcow");
 * assertEquals(info["cluster-size"], 4096);
 * ```
 */
export function qcowInfo(
  header: QcowHeader,
  filename: string,
  extras: InfoExtras = {},
): ImageInfo {
  return pruned({
    "virtual-size": Math.floor(header.size / 512) * 512,
    filename,
    "cluster-size": header.clusterSize,
    format: "qcow",
    "actual-size": extras.actualSize,
    encrypted: header.cryptMethod !== CRYPT_METHOD.none ? true : undefined,
    "backing-filename": header.backingFile,
    "full-backing-filename": header.backingFile !== undefined
      ? extras.fullBackingFilename
      : undefined,
    "dirty-flag": false,
  });
}

/**
 * Builds the `info` report of a raw file (a backing file in a chain).
 *
 * @param size The file size.
 * @param filename The name to report.
 * @param extras The size on disk.
 * @returns The report.
 *
 * @example The report of a raw backing file
 * ```ts
 * import { rawInfo } from "./info.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(rawInfo(1048576, "base.raw"), {
 *   "virtual-size": 1048576,
 *   filename: "base.raw",
 *   format: "raw",
 *   "dirty-flag": false,
 * });
 * ```
 */
export function rawInfo(
  size: number,
  filename: string,
  extras: InfoExtras = {},
): ImageInfo {
  return pruned({
    "virtual-size": size,
    filename,
    format: "raw",
    "actual-size": extras.actualSize,
    "dirty-flag": false,
  });
}

function pruned(info: ImageInfo): ImageInfo {
  for (const key of Object.keys(info) as (keyof ImageInfo)[]) {
    if (info[key] === undefined) delete info[key];
  }
  return info;
}

function snapshotInfo(s: Snapshot): SnapshotInfo {
  const out: SnapshotInfo = {
    // Cut as QEMU's listings cut them (the snapshot keeps its whole name).
    id: listedName(s.id, LISTED_ID_BYTES),
    name: listedName(s.name, LISTED_NAME_BYTES),
    "vm-state-size": s.vmStateSize,
    "date-sec": s.dateSec,
    "date-nsec": s.dateNsec,
    "vm-clock-sec": Math.floor(s.vmClockNsec / 1e9),
    "vm-clock-nsec": s.vmClockNsec % 1e9,
  };
  if (s.icount !== undefined) out.icount = s.icount;
  return out;
}

function headerInfo(header: Qcow2Header): Qcow2HeaderInfo {
  const names = (
    mask: bigint,
    known: Record<string, FeatureBit>,
    type: string,
  ) => {
    const out: string[] = [];
    for (let b = 0; b < 64; b++) {
      if ((mask & (1n << BigInt(b))) === 0n) continue;
      const name = Object.values(known).find(({ bit }) => bit === b)?.label ??
        header.extensions.featureNames.find((f) =>
          f.type === type && f.bit === b
        )
          ?.name ??
        `bit ${b}`;
      out.push(name);
    }
    return out;
  };
  return {
    version: header.version,
    "header-length": header.headerLength,
    "l1-size": header.l1Size,
    "l1-table-offset": header.l1TableOffset,
    "refcount-table-offset": header.refcountTableOffset,
    "refcount-table-clusters": header.refcountTableClusters,
    "snapshot-count": header.nbSnapshots,
    "snapshots-offset": header.snapshotsOffset,
    "crypt-method": header.cryptMethod,
    "incompatible-features": names(
      header.incompatibleFeatures,
      INCOMPATIBLE,
      "incompatible",
    ),
    "compatible-features": names(
      header.compatibleFeatures,
      COMPATIBLE,
      "compatible",
    ),
    "autoclear-features": names(
      header.autoclearFeatures,
      AUTOCLEAR,
      "autoclear",
    ),
    "unknown-extensions": header.extensions.unknown.map((e) => hex(e.type)),
  };
}

/**
 * The human-readable `info` text, laid out like `qemu-img info`.
 *
 * @param info A report from {@linkcode imageInfo}.
 * @returns Lines of text, ending with a newline.
 *
 * @example The text of `info` for an image
 * ```ts
 * import { bytesSource, imageInfo, readHeader } from "@qcow2/qcow2";
 * import { formatInfo } from "@qcow2/qcow2/info";
 * import { assertStringIncludes } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const text = formatInfo(imageInfo(await readHeader(bytesSource(bytes)), "v3_64k.qcow2"));
 * assertStringIncludes(text, "virtual size: 4 MiB (4194304 bytes)\n");
 * assertStringIncludes(text, "cluster_size: 65536\n");
 * ```
 */
export function formatInfo(info: ImageInfo): string {
  const lines = [
    `image: ${info.filename}`,
    `file format: ${info.format}`,
    `virtual size: ${formatSize(info["virtual-size"])} (${
      info["virtual-size"]
    } bytes)`,
  ];
  // qemu-img's bdrv_image_info_dump: "unavailable" when the size is not
  // known (a remote file, say).
  lines.push(
    `disk size: ${
      info["actual-size"] !== undefined
        ? formatSize(info["actual-size"])
        : "unavailable"
    }`,
  );
  if (info.encrypted) lines.push("encrypted: yes");
  if (info["cluster-size"] !== undefined) {
    lines.push(`cluster_size: ${info["cluster-size"]}`);
  }
  const backing = info["backing-filename"];
  if (backing !== undefined) {
    const full = info["full-backing-filename"];
    lines.push(
      `backing file: ${backing}${
        full !== undefined && full !== backing ? ` (actual path: ${full})` : ""
      }`,
    );
  }
  if (info["backing-filename-format"] !== undefined) {
    lines.push(`backing file format: ${info["backing-filename-format"]}`);
  }
  if (info.snapshots?.length) {
    lines.push("Snapshot list:");
    lines.push(
      "ID".padEnd(10) + "TAG".padEnd(17) + "VM SIZE".padStart(8) +
        "DATE".padStart(20) + "VM CLOCK".padStart(13) + "ICOUNT".padStart(11),
    );
    for (const s of info.snapshots) lines.push(snapshotLine(s));
  }
  const d = info["format-specific"]?.data;
  if (d) {
    lines.push("Format specific information:");
    lines.push(`    compat: ${d.compat}`);
    lines.push(`    compression type: ${d["compression-type"]}`);
    if (d["lazy-refcounts"] !== undefined) {
      lines.push(`    lazy refcounts: ${d["lazy-refcounts"]}`);
    }
    if (d.bitmaps) {
      lines.push("    bitmaps:");
      d.bitmaps.forEach((b, i) => {
        lines.push(`        [${i}]:`, "            flags:");
        b.flags.forEach((f, j) => lines.push(`                [${j}]: ${f}`));
        lines.push(
          `            name: ${b.name}`,
          `            granularity: ${b.granularity}`,
        );
      });
    }
    lines.push(`    refcount bits: ${d["refcount-bits"]}`);
    if (d.encrypt) lines.push(...encryptLines(d.encrypt));
    if (d["data-file"] !== undefined) {
      lines.push(`    data file: ${d["data-file"]}`);
      lines.push(`    data file raw: ${d["data-file-raw"]}`);
    }
    if (d.corrupt !== undefined) lines.push(`    corrupt: ${d.corrupt}`);
    if (d["extended-l2"] !== undefined) {
      lines.push(`    extended l2: ${d["extended-l2"]}`);
    }
  }
  if (info["dirty-flag"]) lines.push("dirty flag: yes");
  return lines.join("\n") + "\n";
}

/**
 * The `encrypt:` lines of the text, as qemu-img prints a QDict: keys with
 * spaces for dashes, lists as `[i]:` items, 4 more spaces per level.
 */
function encryptLines(encrypt: EncryptInfo): string[] {
  const lines = ["    encrypt:"];
  const walk = (value: Record<string, unknown>, indent: string) => {
    for (const [key, v] of Object.entries(value)) {
      const name = key.replaceAll("-", " ");
      if (Array.isArray(v)) {
        lines.push(`${indent}${name}:`);
        v.forEach((item, i) => {
          lines.push(`${indent}    [${i}]:`);
          walk(item as Record<string, unknown>, indent + "        ");
        });
      } else lines.push(`${indent}${name}: ${v}`);
    }
  };
  walk(encrypt as unknown as Record<string, unknown>, "        ");
  return lines;
}

/** One row of the snapshot list, as QEMU lays it out (local time). */
function snapshotLine(s: SnapshotInfo): string {
  const d = new Date(s["date-sec"] * 1000);
  const two = (n: number) => String(n).padStart(2, "0");
  const date =
    `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ` +
    `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  const secs = s["vm-clock-sec"];
  const clock = `${two(Math.floor(secs / 3600))}:${
    two(Math.floor(secs / 60) % 60)
  }:${two(secs % 60)}.${
    String(Math.floor(s["vm-clock-nsec"] / 1e6)).padStart(3, "0")
  }`;
  return padName(s.id, 9) + " " + padName(s.name, 16) + " " +
    formatSize(s["vm-state-size"]).padStart(8) + date.padStart(20) +
    clock.padStart(13) +
    (s.icount !== undefined ? String(s.icount) : "").padStart(11);
}
