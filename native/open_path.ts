/**
 * Opening a file by path, natively: `Deno.open` with synchronous reads in
 * Deno, `node:fs/promises` in Node and Bun. The default way `openImage`
 * (main entry) opens images, backing files and data files by path.
 *
 * @module
 */

import { type FileHandleLike, fileHandleSource } from "../src/io/source.ts";
import type { OpenedFile } from "../src/open.ts";
import { openDenoFile } from "./deno_file.ts";
import { importNode } from "./node_builtin.ts";

/**
 * Opens a file by path for positional reads: in Deno with `Deno.open` and
 * synchronous reads (the fastest Deno has), elsewhere with
 * `node:fs/promises` (Node and Bun); an `http://` or `https://` URL with
 * {@linkcode httpSource} (Deno needs `--allow-net=HOST`). It is the default
 * way `openImage` opens an image given by path, and the backing and data
 * files it names (a remote image's names resolve against its URL).
 *
 * @param path The file's path.
 * @returns The open file, as a source that can be closed.
 *
 * @example Confining backing files to one directory
 * ```ts ignore
 * import { openImage, openPath } from "jsr:@qcow2/qcow2";
 *
 * const image = await openImage("vm/disk.qcow2", {
 *   openFile: (path, request) => {
 *     if (!path.startsWith("vm/")) throw new Error(`${request.kind} outside vm/`);
 *     return openPath(path);
 *   },
 * });
 * ```
 *
 * @example Following a backing chain one layer down, and no further
 * ```ts
 * import { type OpenFile, openImage, openPath, Qcow2Error } from "@qcow2/qcow2";
 * import { assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
 *
 * const path = new URL("../tests/fixtures/layouts/chain_top.qcow2", import.meta.url).pathname;
 * const file = await openPath(path);
 * assertEquals(file.size, 524288);
 * file.close?.();
 * const openFile: OpenFile = (name, request) =>
 *   request.from === path ? openPath(name) : Promise.reject(new Error("refused"));
 * const error = await assertRejects(() => openImage(path, { openFile }), Qcow2Error);
 * assertEquals(error.code, "BACKING_FILE");
 * assertStringIncludes(error.message, "chain_base.qcow2"); // named by chain_mid.qcow2
 * ```
 */
export async function openPath(path: string): Promise<OpenedFile> {
  if (/^https?:\/\//i.test(path)) {
    // Loaded only for a URL: a local file needs none of it.
    const { httpSource } = await import("../src/io/http.ts");
    return await httpSource(path);
  }
  if (typeof Deno !== "undefined" && typeof Deno.open === "function") {
    return await openDenoFile(path);
  }
  const { open } = await importNode<{
    open(path: string, flags: string): Promise<NodeHandle>;
  }>("fs/promises");
  const handle = await open(path, "r");
  try {
    const stats = await handle.stat();
    if (stats.isFIFO() || stats.isSocket() || stats.isCharacterDevice()) {
      // Its size reads 0: it would read as an empty disk.
      throw Object.assign(
        new Error(
          `Cannot read '${path}': it is a pipe, a socket or a character device: an image is read at any offset; give a file or a block device`,
        ),
        { path },
      );
    }
    return {
      // (A block device's size, which stat says is 0, found by reading.)
      ...(await fileHandleSource(handle)),
      // A failed close of a file only read loses nothing.
      close: () => void handle.close().catch(() => {}),
    };
  } catch (e) {
    await handle.close();
    throw e;
  }
}

/** A Node `FileHandle`: its reads, `close`, and what its `stat` tells. */
interface NodeHandle extends FileHandleLike {
  close(): Promise<void>;
  stat(): Promise<{
    size: number | bigint;
    isFIFO(): boolean;
    isSocket(): boolean;
    isCharacterDevice(): boolean;
  }>;
}
