/**
 * The internal snapshot table of a qcow2 image.
 *
 * @module
 */

import {
  SNAPSHOT,
  SNAPSHOT_ALIGNMENT,
  SNAPSHOT_EXTRA as EXTRA,
  SNAPSHOT_HEADER_SIZE,
} from "./layout.ts";

/** Bytes of extra data whose fields this library knows (up to icount). */
const KNOWN_EXTRA = EXTRA.icount.offset + EXTRA.icount.size;
/** The icount of a snapshot taken without record/replay: all ones. */
const NO_ICOUNT = 0xffffffffffffffffn;
import { imageName } from "./names.ts";
import { hex, Qcow2Error } from "../errors.ts";
import type { Qcow2Header } from "./header.ts";
import { type ByteSource, readExact } from "../io/source.ts";

/**
 * One internal snapshot.
 *
 * @example The snapshots of an open image
 * ```ts
 * import { openImage, type Qcow2Image, type Snapshot } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/snap.qcow2", import.meta.url));
 * const image = await openImage(bytes) as Qcow2Image;
 * const [first, second]: readonly Snapshot[] = image.snapshots;
 * assertEquals([first.id, first.name], ["1", "first"]);
 * assertEquals(second.dateSec - first.dateSec, 3600); // taken an hour apart
 * assertEquals(first.diskSize, image.size);
 * assertEquals(first.vmStateSize, 0); // disk-only: no saved VM state
 * ```
 */
export interface Snapshot {
  /** The snapshot's unique ID string (QEMU numbers them "1", "2", ...). */
  id: string;
  /** The snapshot's name (tag). */
  name: string;
  /** File offset of the snapshot's L1 table. */
  l1TableOffset: number;
  /** Entries in the snapshot's L1 table. */
  l1Size: number;
  /** Size of the saved VM state in bytes (0 for a disk-only snapshot). */
  vmStateSize: number;
  /** Wall-clock time the snapshot was taken: seconds since the epoch. */
  dateSec: number;
  /** Nanoseconds part of the wall-clock time. */
  dateNsec: number;
  /** Guest clock at the snapshot, in nanoseconds. */
  vmClockNsec: number;
  /** Virtual disk size at the snapshot. */
  diskSize: number;
  /** Instruction count at the snapshot, when recorded (record/replay). */
  icount?: number;
  /** Extra data past the fields this library knows, kept raw. */
  unknownExtraData: Uint8Array;
}

/** Most extra data QEMU accepts per entry. */
const MAX_EXTRA = 1024;
/** Largest snapshot table QEMU reads (64 MiB). */
const MAX_TABLE_BYTES = 64 * 1024 * 1024;
/** Largest snapshot L1 table (32 MiB), as for the active one. */
const MAX_L1_BYTES = 32 * 1024 * 1024;

/**
 * Reads and validates the snapshot table named by the header.
 *
 * @param source The image file.
 * @param header Its parsed header.
 * @returns The snapshots in table order.
 * @throws {Qcow2Error} `BAD_HEADER` for a table that is too large or runs past
 * the end of the file, `BAD_TABLE_ENTRY` for an invalid entry. A snapshot's
 * L1 table is not checked here: see {@linkcode checkSnapshotL1}.
 *
 * @example Listing the snapshots of an image
 * ```ts
 * import { bytesSource, readHeader, readSnapshots } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/snap.qcow2", import.meta.url));
 * const source = bytesSource(bytes);
 * const snapshots = await readSnapshots(source, await readHeader(source));
 * assertEquals(snapshots.map((s) => `${s.id} ${s.name}`), ["1 first", "2 second"]);
 * ```
 */
export async function readSnapshots(
  source: ByteSource,
  header: Qcow2Header,
): Promise<Snapshot[]> {
  const snapshots: Snapshot[] = [];
  let offset = header.snapshotsOffset;
  const fail = (
    code: "BAD_HEADER" | "BAD_TABLE_ENTRY",
    i: number,
    why: string,
  ) =>
    new Qcow2Error(
      code,
      `Cannot read qcow2 image: snapshot table entry ${i} at ${
        hex(offset)
      } ${why}`,
      { offset },
    );
  for (let i = 0; i < header.nbSnapshots; i++) {
    if (
      offset - header.snapshotsOffset + SNAPSHOT_HEADER_SIZE > MAX_TABLE_BYTES
    ) {
      throw fail(
        "BAD_HEADER",
        i,
        "lies beyond the 64 MiB a snapshot table may take",
      );
    }
    if (offset + SNAPSHOT_HEADER_SIZE > source.size) {
      throw fail(
        "BAD_HEADER",
        i,
        `runs past the end of the file (${source.size} bytes)`,
      );
    }
    const fixed = await readExact(
      source,
      offset,
      SNAPSHOT_HEADER_SIZE,
      "snapshot table entry",
    );
    const v = new DataView(fixed.buffer);
    const l1Offset = v.getBigUint64(SNAPSHOT.l1TableOffset.offset);
    const l1Size = v.getUint32(SNAPSHOT.l1Size.offset);
    const idSize = v.getUint16(SNAPSHOT.idStrSize.offset);
    const nameSize = v.getUint16(SNAPSHOT.nameSize.offset);
    const extraSize = v.getUint32(SNAPSHOT.extraDataSize.offset);
    if (extraSize > MAX_EXTRA) {
      throw fail(
        "BAD_TABLE_ENTRY",
        i,
        `has ${extraSize} bytes of extra data; at most ${MAX_EXTRA} are allowed`,
      );
    }
    const rest = extraSize + idSize + nameSize;
    const entryEnd = offset + SNAPSHOT_HEADER_SIZE + rest;
    if (entryEnd - header.snapshotsOffset > MAX_TABLE_BYTES) {
      throw fail(
        "BAD_HEADER",
        i,
        "makes the snapshot table larger than 64 MiB",
      );
    }
    if (entryEnd > source.size) {
      throw fail(
        "BAD_HEADER",
        i,
        `runs past the end of the file (${source.size} bytes)`,
      );
    }
    const tail = await readExact(
      source,
      offset + SNAPSHOT_HEADER_SIZE,
      rest,
      "snapshot table entry",
    );
    const extra = new DataView(tail.buffer, 0, extraSize);
    // The L1 table is checked only when the snapshot is used
    // (checkSnapshotL1), as QEMU checks it: a bad one does not stop reading
    // the active state.
    const u64 = (at: number, field: string) => {
      const value = extra.getBigUint64(at);
      if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw fail(
          "BAD_TABLE_ENTRY",
          i,
          `has ${field} ${hex(value)}, larger than 2^53 - 1`,
        );
      }
      return Number(value);
    };
    const vmClock = v.getBigUint64(SNAPSHOT.vmClockNsec.offset);
    const snapshot: Snapshot = {
      // C strings in QEMU (qcow2_do_read_snapshots): cut at NUL.
      id: imageName(tail.subarray(extraSize, extraSize + idSize)).text,
      name: imageName(
        tail.subarray(extraSize + idSize, extraSize + idSize + nameSize),
      ).text,
      // Past 2^53 the number is inexact, and checkSnapshotL1 refuses it.
      l1TableOffset: Number(l1Offset),
      l1Size,
      vmStateSize: extraSize >= EXTRA.diskSize.offset
        ? u64(EXTRA.vmStateSizeLarge.offset, "a VM state size")
        : v.getUint32(SNAPSHOT.vmStateSize.offset),
      dateSec: v.getUint32(SNAPSHOT.dateSec.offset),
      dateNsec: v.getUint32(SNAPSHOT.dateNsec.offset),
      vmClockNsec: vmClock > BigInt(Number.MAX_SAFE_INTEGER)
        ? Number.MAX_SAFE_INTEGER
        : Number(vmClock),
      diskSize: extraSize >= EXTRA.icount.offset
        ? u64(EXTRA.diskSize.offset, "a disk size")
        : header.size,
      unknownExtraData: tail.slice(Math.min(extraSize, KNOWN_EXTRA), extraSize),
    };
    if (
      extraSize >= KNOWN_EXTRA &&
      extra.getBigUint64(EXTRA.icount.offset) !== NO_ICOUNT
    ) {
      snapshot.icount = u64(EXTRA.icount.offset, "an icount");
    }
    snapshots.push(snapshot);
    offset = entryEnd +
      ((SNAPSHOT_ALIGNMENT - (entryEnd % SNAPSHOT_ALIGNMENT)) %
        SNAPSHOT_ALIGNMENT);
  }
  return snapshots;
}

/**
 * Finds a snapshot as `qemu-img convert -l` does: a bare value matches an ID
 * first, then a name; `snapshot.id=ID` matches only an ID,
 * `snapshot.name=NAME` only a name, and `snapshot.id=ID,snapshot.name=NAME`
 * both at once. In those forms a comma inside a value is written `,,`
 * (QEMU's option syntax). Source: qemu-img.c `img_convert`,
 * `bdrv_snapshot_load_tmp` and `bdrv_snapshot_load_tmp_by_id_or_name`.
 *
 * @param snapshots The table.
 * @param wanted An ID or a name, or the `snapshot.id=`/`snapshot.name=` forms.
 * @returns The snapshot.
 * @throws {Qcow2Error} `NO_SUCH_SNAPSHOT` when none matches, or when
 * `wanted` names a parameter other than snapshot.id and snapshot.name.
 *
 * @example Finding a snapshot by ID or name
 * ```ts
 * import { findSnapshot, type Snapshot } from "@qcow2/qcow2";
 * import { assertEquals, assertThrows } from "@std/assert";
 *
 * const table = [{ id: "1", name: "2" }, { id: "2", name: "a,b" }] as Snapshot[];
 * assertEquals(findSnapshot(table, "2").name, "a,b"); // IDs first
 * assertEquals(findSnapshot(table, "snapshot.name=2").id, "1");
 * assertEquals(findSnapshot(table, "snapshot.id=2,snapshot.name=a,,b").id, "2");
 * assertThrows(() => findSnapshot(table, "snapshot.id=1,snapshot.name=a,,b"));
 * assertThrows(() => findSnapshot(table, "nope"));
 * ```
 */
export function findSnapshot(snapshots: Snapshot[], wanted: string): Snapshot {
  let byId: string | undefined;
  let byName: string | undefined;
  if (wanted.startsWith("snapshot.")) {
    for (const part of wanted.replaceAll(",,", "\0").split(",")) {
      const eq = part.indexOf("=");
      const key = eq < 0 ? part : part.slice(0, eq);
      const value = part.slice(eq + 1).replaceAll("\0", ",");
      if (key === "snapshot.id" && eq > 0) byId = value;
      else if (key === "snapshot.name" && eq > 0) byName = value;
      else {
        throw new Qcow2Error(
          "NO_SUCH_SNAPSHOT",
          `Cannot find snapshot '${wanted}': '${
            key.replaceAll("\0", ",")
          }' is not snapshot.id=ID or snapshot.name=NAME`,
        );
      }
    }
  }
  const found = byId !== undefined || byName !== undefined
    ? snapshots.find((s) =>
      (byId === undefined || s.id === byId) &&
      (byName === undefined || s.name === byName)
    )
    : snapshots.find((s) => s.id === wanted) ??
      snapshots.find((s) => s.name === wanted);
  if (!found) {
    const list = snapshots.map((s) => `${s.id} '${s.name}'`).join(", ") ||
      "none";
    throw new Qcow2Error(
      "NO_SUCH_SNAPSHOT",
      `Cannot find snapshot '${wanted}' in the image (it has: ${list})`,
    );
  }
  return found;
}

/**
 * Throws unless a snapshot's L1 table can be read: cluster-aligned, at an
 * exact offset, and at most 32 MiB, as QEMU checks it when a snapshot is
 * used (`qcow2_validate_table` in `qcow2_snapshot_load_tmp`: "Snapshot L1
 * table offset invalid", "Snapshot L1 table too large").
 *
 * @param snapshot The snapshot about to be read.
 * @param header The image's header.
 * @throws {Qcow2Error} `BAD_TABLE_ENTRY`.
 *
 * @example An unaligned L1 table offset
 * ```ts
 * import { checkSnapshotL1, readHeader, readSnapshots, bytesSource } from "@qcow2/qcow2";
 * import { assertThrows } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/damaged/snapshot_l1.qcow2", import.meta.url));
 * const source = bytesSource(bytes);
 * const header = await readHeader(source);
 * const [snapshot] = await readSnapshots(source, header);
 * assertThrows(() => checkSnapshotL1(snapshot, header));
 * ```
 */
export function checkSnapshotL1(snapshot: Snapshot, header: Qcow2Header): void {
  const offset = snapshot.l1TableOffset;
  const what = `Cannot read snapshot '${snapshot.name}' (ID ${snapshot.id})`;
  if (!Number.isSafeInteger(offset) || offset % header.clusterSize !== 0) {
    throw new Qcow2Error(
      "BAD_TABLE_ENTRY",
      `${what}: its L1 table offset ${
        hex(BigInt(offset))
      } is invalid (not aligned to a cluster)`,
      { offset: header.snapshotsOffset },
    );
  }
  if (snapshot.l1Size > MAX_L1_BYTES / 8) {
    throw new Qcow2Error(
      "BAD_TABLE_ENTRY",
      `${what}: its L1 table of ${snapshot.l1Size} entries is above the 32 MiB limit`,
      { offset: header.snapshotsOffset },
    );
  }
}
