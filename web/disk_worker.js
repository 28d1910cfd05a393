// @ts-check
/**
 * The disk page's worker: keeps `disk.qcow2` in the origin private file
 * system, open read-write through a FileSystemSyncAccessHandle (only
 * workers get one), and answers the page's commands. Every change is
 * flushed before it is answered.
 */
import { createImage, memoryTarget, openImage, opfsStore } from "./qcow2.js";

const NAME = "disk.qcow2";
/** @type {Awaited<ReturnType<typeof openImage>> & { write: Function } | undefined} */
let image;
/** @type {any} */
let handle;

/** A sync access handle on the file (retried while a reloaded page's old worker lets go of it). */
async function syncHandle() {
  const root = await navigator.storage.getDirectory();
  const file =
    /** @type {any} */ (await root.getFileHandle(NAME, { create: true }));
  for (let tries = 0;; tries++) {
    try {
      return await file.createSyncAccessHandle();
    } catch (e) {
      if (tries > 50) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** Opens the image in storage, if there is one. */
async function open() {
  if (image) return;
  handle ??= await syncHandle();
  if (handle.getSize() === 0) return;
  image = /** @type {any} */ (await openImage(opfsStore(handle, false), {
    writable: true,
  }));
}

async function close() {
  await image?.close();
  image = undefined;
}

/** @param {any} m */
async function handleCommand(m) {
  switch (m.cmd) {
    case "open":
      await open();
      return {};
    case "info":
      return {
        info: image
          ? `${NAME}: ${image.size} bytes of guest disk, file ${handle.getSize()} bytes`
          : "nothing yet: import a qcow2 image",
      };
    case "create":
    case "import": {
      await close();
      handle ??= await syncHandle();
      let bytes;
      if (m.cmd === "create") {
        // As `qemu-img create -f qcow2 disk.qcow2 SIZE` makes it.
        const target = memoryTarget();
        await createImage(target, { size: m.size });
        bytes = target.bytes();
      } else bytes = new Uint8Array(m.bytes);
      handle.truncate(0);
      handle.write(bytes, { at: 0 });
      handle.flush();
      await open();
      return {};
    }
    case "write":
      await need().write(m.offset, new Uint8Array(m.length).fill(m.pattern));
      await need().flush();
      return {};
    case "zero":
      await need().writeZeroes(m.offset, m.length);
      await need().flush();
      return {};
    case "discard":
      await need().discard(m.offset, m.length);
      await need().flush();
      return {};
    case "read": {
      const bytes = new Uint8Array(m.length);
      await need().read(m.offset, bytes);
      const counts = new Map();
      for (const b of bytes) counts.set(b, (counts.get(b) ?? 0) + 1);
      const summary = [...counts].sort((a, b) => b[1] - a[1])
        .map(([b, n]) => `${n}×0x${b.toString(16).padStart(2, "0")}`).join(
          ", ",
        );
      return { summary };
    }
    case "export": {
      await need().flush();
      const bytes = new Uint8Array(handle.getSize());
      handle.read(bytes, { at: 0 });
      return { bytes: bytes.buffer, transfer: true };
    }
  }
  throw new Error(`unknown command ${m.cmd}`);
}

function need() {
  if (!image) throw new Error("no image in storage: import one first");
  return image;
}

let tail = Promise.resolve();
self.onmessage = (event) => {
  const m = event.data;
  tail = tail.then(async () => {
    try {
      const reply = await handleCommand(m);
      const transfer = reply.transfer ? [reply.bytes] : [];
      delete reply.transfer;
      self.postMessage({ id: m.id, ...reply }, { transfer });
    } catch (e) {
      self.postMessage({
        id: m.id,
        error: e instanceof Error ? e.message : String(e),
      });
    }
  });
};
