/**
 * The host files of an opened chain and what their file system tells
 * (holes, allocated size; native/holes.ts), for the commands that report
 * block status as qemu-img does (`map`, `measure`, `compare`).
 *
 * @module
 */

import type { ByteSource, HostAllocation } from "../mod.ts";
import { type HostFile, hostFile } from "../native/holes.ts";

/** The files of a chain by path, and their allocation, found on demand. */
export class HostFiles {
  #paths = new WeakMap<ByteSource, string>();
  #hosts = new WeakMap<ByteSource, HostFile>();
  #open: HostFile[] = [];

  /** Records that `file` was opened from `path`. */
  add(file: ByteSource, path: string): void {
    this.#paths.set(file, path);
  }

  /** What the file system tells about `file`, if it was recorded. */
  allocation = (file: ByteSource): HostAllocation | undefined => {
    let host = this.#hosts.get(file);
    const path = this.#paths.get(file);
    // A remote file's allocation is unknown, as in QEMU's curl driver.
    if (!host && path !== undefined && !/^https?:\/\//i.test(path)) {
      host = hostFile(path);
      this.#open.push(host);
      this.#hosts.set(file, host);
    }
    return host;
  };

  /** Releases the file descriptors opened to find holes. */
  close(): void {
    for (const host of this.#open.splice(0)) host.close();
  }
}
