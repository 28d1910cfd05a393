// @ts-check
/**
 * The qcow2 viewer page: reads the picked file (or an image URL, with HTTP
 * Range requests) with the browser bundle of web.ts (`qcow2.js`, built by
 * `deno task web:build`), shows its header, features and snapshots, draws
 * its allocation map, and saves it as a raw image or as a compressed qcow2
 * image built in the page: streamed to a file the user picks where the
 * browser can (the File System Access API), else built in memory.
 */

// @ts-types="./bundle.ts"
import {
  blobSource,
  convert,
  convertToQcow2,
  formatSize,
  httpSource,
  imageInfo,
  memoryTarget,
  openImage,
  probeFormat,
  Qcow2Error,
  qcowInfo,
  readHeader,
  readQcowHeader,
  readSnapshots,
} from "./qcow2.js";

/** @typedef {import("../web.ts").ByteSource} ByteSource */
/** @typedef {import("../web.ts").DiskImage} DiskImage */
/** @typedef {import("../web.ts").ExtentKind} ExtentKind */
/** @typedef {import("../web.ts").ImageInfo} ImageInfo */
/** @typedef {import("../web.ts").Snapshot} Snapshot */

/**
 * Largest raw image built in memory (as a Blob) for a download, where the
 * browser cannot stream to a file (no File System Access API).
 */
const MAX_DOWNLOAD = 1024 ** 3;
/** Most cells the allocation map draws; larger disks get larger cells. */
const MAX_CELLS = 256 * 256;
/** Extent kinds, most allocated first: a cell shows the first it holds. */
const KINDS =
  /** @type {const} */ (["data", "compressed", "zero", "unallocated"]);
/** @type {Record<ExtentKind, string>} */
const COLORS = {
  data: "#1f6feb",
  compressed: "#8250df",
  zero: "#9a9a9a",
  unallocated: "#ffffff",
};

/**
 * The element with `id`, checked to be a `type`.
 * @template {HTMLElement} T
 * @param {string} id
 * @param {{ new (): T }} type
 * @returns {T}
 */
function $(id, type) {
  const element = document.getElementById(id);
  if (!(element instanceof type)) throw new Error(`#${id} is missing`);
  return element;
}

const imageInput = $("image", HTMLInputElement);
const extraInput = $("extra", HTMLInputElement);
const status = $("status", HTMLElement);
const details = $("details", HTMLElement);
const headerList = $("header", HTMLElement);
const featureList = $("features", HTMLElement);
const snapshotRows = $("snapshots", HTMLTableElement).tBodies[0];
const mapNote = $("map-note", HTMLElement);
const canvas = $("map", HTMLCanvasElement);
const legend = $("legend", HTMLElement);
const downloadButton = $("download", HTMLButtonElement);
const qcow2Button = $("save-qcow2", HTMLButtonElement);
const urlForm = $("url-form", HTMLFormElement);
const urlInput = $("url", HTMLInputElement);
const urlButton = $("open-url", HTMLButtonElement);
const layerNote = $("layer-note", HTMLElement);
const cellInfo = $("cell-info", HTMLElement);
const progress = $("progress", HTMLProgressElement);
const downloadNote = $("download-note", HTMLElement);

/** Bumped on every pick, so that work for an older pick stops. */
let generation = 0;
/** @type {{ image: DiskImage, base: string, close?: () => void } | undefined} */
let current;
/**
 * The map as drawn: bytes per cell, columns, pixels per cell, and each
 * cell's rank (index into KINDS from the end).
 * @type {{ cellBytes: number, columns: number, pixels: number, rank: Uint8Array, size: number } | undefined}
 */
let drawn;

/**
 * An image to show: a picked file, or a URL.
 * @typedef {{ name: string, size: number, source: ByteSource, options: import("../web.ts").OpenOptions, close(): void }} Input
 */

/**
 * @param {string} text
 * @param {"loading" | "done" | "error"} state
 */
function setStatus(text, state) {
  status.textContent = text;
  status.className = state;
  document.body.dataset.state = state;
}

/** @param {unknown} e */
function describeError(e) {
  if (e instanceof Qcow2Error) return `${e.message} (${e.code})`;
  return e instanceof Error ? e.message : String(e);
}

/**
 * A `dt`/`dd` pair; `dd` carries `data-field` for scripts and tests.
 * @param {HTMLElement} list
 * @param {string} field
 * @param {string} label
 * @param {string} value
 */
function addField(list, field, label, value) {
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  dd.dataset.field = field;
  dd.textContent = value;
  list.append(dt, dd);
}

/** @param {number} bytes */
function sizeText(bytes) {
  return `${formatSize(bytes)} (${bytes} bytes)`;
}

/**
 * Reads what the header says, without opening the backing chain.
 * @param {Input} input
 * @returns {Promise<{ info: ImageInfo, snapshots: Snapshot[] }>}
 */
async function readInfo(input) {
  const { source, name } = input;
  const start = new Uint8Array(Math.min(8, source.size));
  await source.readAt(0, start);
  const format = probeFormat(start);
  const extras = { actualSize: input.size };
  if (format === "qcow") {
    return {
      info: qcowInfo(await readQcowHeader(source), name, extras),
      snapshots: [],
    };
  }
  if (format !== "qcow2") {
    throw new Error(
      `${name} is not a qcow2 or qcow image (it does not start with 'QFI\\xfb'); a raw image needs no conversion`,
    );
  }
  const header = await readHeader(source);
  const snapshots = header.nbSnapshots > 0
    ? await readSnapshots(source, header)
    : [];
  return {
    info: imageInfo(header, name, { ...extras, snapshots }),
    snapshots,
  };
}

/** @param {ImageInfo} info */
function showHeader(info) {
  headerList.replaceChildren();
  const data = info["format-specific"]?.data;
  addField(headerList, "format", "Format", info.format);
  addField(
    headerList,
    "version",
    "Version",
    String(info["qcow2-header"]?.version ?? 1) +
      (data ? ` (compat ${data.compat})` : ""),
  );
  addField(
    headerList,
    "virtual-size",
    "Virtual size",
    sizeText(info["virtual-size"]),
  );
  addField(
    headerList,
    "cluster-size",
    "Cluster size",
    sizeText(info["cluster-size"] ?? 0),
  );
  addField(
    headerList,
    "compression-type",
    "Compression type",
    data?.["compression-type"] ?? "zlib",
  );
  if (data) {
    addField(
      headerList,
      "refcount-bits",
      "Refcount bits",
      String(data["refcount-bits"]),
    );
  }
  const backing = info["backing-filename"];
  if (backing !== undefined) {
    const format = info["backing-filename-format"];
    addField(
      headerList,
      "backing-file",
      "Backing file",
      backing + (format ? ` (${format})` : ""),
    );
  }
  if (data?.["data-file"] !== undefined) {
    addField(headerList, "data-file", "External data file", data["data-file"]);
  }
  if (info.encrypted) {
    addField(headerList, "encrypted", "Encrypted", "yes (not readable here)");
  }
  const flags = [info["dirty-flag"] && "dirty", data?.corrupt && "corrupt"]
    .filter(Boolean);
  addField(
    headerList,
    "state",
    "State",
    flags.length ? flags.join(", ") : "clean",
  );
  addField(
    headerList,
    "file-size",
    "File size",
    sizeText(info["actual-size"] ?? 0),
  );
}

/** @param {ImageInfo} info */
function showFeatures(info) {
  featureList.replaceChildren();
  const bits = info["qcow2-header"];
  /** @type {[string, string, string[] | undefined][]} */
  const rows = [
    ["incompatible-features", "Incompatible", bits?.["incompatible-features"]],
    ["compatible-features", "Compatible", bits?.["compatible-features"]],
    ["autoclear-features", "Autoclear", bits?.["autoclear-features"]],
  ];
  for (const [field, label, names] of rows) {
    addField(
      featureList,
      field,
      label,
      names?.length ? names.join(", ") : "none",
    );
  }
  if (bits?.["unknown-extensions"].length) {
    addField(
      featureList,
      "unknown-extensions",
      "Unknown extensions",
      bits["unknown-extensions"].join(", "),
    );
  }
}

/** @param {Snapshot[]} snapshots */
function showSnapshots(snapshots) {
  snapshotRows.replaceChildren();
  for (const s of snapshots) {
    const row = snapshotRows.insertRow();
    const date = new Date(s.dateSec * 1000).toISOString().slice(0, 19).replace(
      "T",
      " ",
    );
    for (
      const text of [
        s.id,
        s.name,
        formatSize(s.vmStateSize),
        `${date} UTC`,
        formatSize(s.diskSize),
      ]
    ) {
      row.insertCell().textContent = text;
    }
  }
  if (snapshots.length === 0) {
    const cell = snapshotRows.insertRow().insertCell();
    cell.colSpan = 5;
    cell.textContent = "none";
  }
}

/**
 * A picked file as an {@link Input}: backing and data files it names come
 * from the files picked beside it.
 * @param {File} file
 * @returns {Input}
 */
function fileInput(file) {
  const extras = [...(extraInput.files ?? [])];
  return {
    name: file.name,
    size: file.size,
    source: blobSource(file),
    options: {
      path: file.name,
      openFile: (_path, request) => {
        const name = request.name.split("/").pop();
        const picked = extras.find((f) => f.name === name);
        if (!picked) {
          return Promise.reject(
            new Error(`pick '${name}' under "Backing and data files"`),
          );
        }
        return Promise.resolve(blobSource(picked));
      },
    },
    close() {},
  };
}

/**
 * An image URL as an {@link Input}, read with Range requests; the files it
 * names resolve against its URL and are read the same way.
 * @param {string} url
 * @returns {Promise<Input>}
 */
async function urlInputOf(url) {
  const source = await httpSource(url);
  const name = decodeURIComponent(
    new URL(url).pathname.split("/").pop() || url,
  );
  return {
    name,
    size: source.size,
    source,
    options: { path: url, openFile: (path) => httpSource(path) },
    close: () => source.close(),
  };
}

/**
 * Opens the image with the files it names; without its backing file, its
 * top layer alone, and why.
 * @param {Input} input
 * @returns {Promise<{ image: DiskImage, note: string }>}
 */
async function open(input) {
  // An encrypted image asks for its password (again, after a wrong one).
  for (let options = input.options;;) {
    try {
      return await openLayers(input.source, options);
    } catch (e) {
      if (
        !(e instanceof Qcow2Error) ||
        (e.code !== "ENCRYPTED" && e.code !== "WRONG_PASSWORD")
      ) throw e;
      const password = globalThis.prompt?.(
        e.code === "ENCRYPTED"
          ? `${input.name} is encrypted. Its password:`
          : "No key slot opens with this password. Try again:",
      );
      if (password === null || password === undefined) throw e;
      options = { ...options, password };
    }
  }
}

/**
 * Opens the image with the files it names; without its backing file, its
 * top layer alone, and why.
 * @param {Input["source"]} source
 * @param {Input["options"]} inputOptions
 * @returns {Promise<{ image: DiskImage, note: string }>}
 */
async function openLayers(source, inputOptions) {
  const input = { source, options: inputOptions };
  try {
    return { image: await openImage(input.source, input.options), note: "" };
  } catch (e) {
    if (!(e instanceof Qcow2Error) || e.code !== "BACKING_FILE") throw e;
    const image = await openImage(input.source, {
      ...input.options,
      ignoreBackingFile: true,
    });
    return {
      image,
      note:
        `${e.message}. Shown and saved: this image's own layer alone (what it leaves unallocated reads as zeros).`,
    };
  }
}

/** @param {number} n */
function hex(n) {
  return "0x" + n.toString(16);
}

/**
 * Draws the allocation map: one cell per cluster (or per run of clusters,
 * for large disks: at most MAX_CELLS cells), colored by the kind of its
 * extents.
 * @param {DiskImage & { clusterSize?: number }} image
 * @param {() => boolean} stale
 */
async function drawMap(image, stale) {
  const clusterSize = image.clusterSize ?? 65536;
  const clusters = Math.ceil(image.size / clusterSize);
  const cellBytes = clusterSize * Math.max(1, Math.ceil(clusters / MAX_CELLS));
  const cells = Math.ceil(image.size / cellBytes);
  // 0 unallocated .. 3 data: the index in KINDS, reversed.
  const rank = new Uint8Array(cells);
  /** @type {Record<ExtentKind, number>} */
  const bytes = { data: 0, compressed: 0, zero: 0, unallocated: 0 };
  for await (const extent of image.extents()) {
    if (stale()) return;
    bytes[extent.kind] += extent.length;
    const r = KINDS.length - 1 - KINDS.indexOf(extent.kind);
    if (r === 0) continue;
    const last = Math.floor((extent.start + extent.length - 1) / cellBytes);
    for (let i = Math.floor(extent.start / cellBytes); i <= last; i++) {
      if (rank[i] < r) rank[i] = r;
    }
  }
  const columns = cells <= 64 ? Math.max(cells, 1) : cells <= 4096 ? 64 : 256;
  const rows = Math.ceil(cells / columns);
  const pixels = Math.max(2, Math.min(12, Math.floor(640 / columns)));
  const gap = pixels >= 6 ? 1 : 0;
  canvas.width = columns * pixels;
  canvas.height = rows * pixels;
  const context = canvas.getContext("2d");
  if (!context) throw new Error("This browser cannot draw on a canvas");
  context.fillStyle = "#d0d0d0";
  context.fillRect(0, 0, canvas.width, canvas.height);
  /** @type {Record<ExtentKind, number>} */
  const counts = { data: 0, compressed: 0, zero: 0, unallocated: 0 };
  for (let i = 0; i < cells; i++) {
    const kind = KINDS[KINDS.length - 1 - rank[i]];
    counts[kind]++;
    context.fillStyle = COLORS[kind];
    context.fillRect(
      (i % columns) * pixels,
      Math.floor(i / columns) * pixels,
      pixels - gap,
      pixels - gap,
    );
  }
  drawn = { cellBytes, columns, pixels, rank, size: image.size };
  Object.assign(canvas.dataset, {
    cells: String(cells),
    cellBytes: String(cellBytes),
    columns: String(columns),
    cellPixels: String(pixels),
  });
  canvas.setAttribute(
    "aria-label",
    `Allocation map: ${KINDS.map((k) => `${counts[k]} ${k}`).join(", ")} cells`,
  );
  mapNote.textContent =
    `Each cell is ${formatSize(cellBytes)} of the guest disk, ` +
    `${columns} cells a row, ${cells} in all; a cell holding several kinds ` +
    "shows the first of the legend's.";
  cellInfo.textContent =
    "Point at a cell (or click it) to see which guest offsets it covers.";
  delete cellInfo.dataset.cell;
  legend.replaceChildren(
    ...KINDS.map((kind) => {
      const item = document.createElement("li");
      item.dataset.kind = kind;
      item.dataset.color = COLORS[kind];
      item.dataset.cells = String(counts[kind]);
      item.dataset.bytes = String(bytes[kind]);
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = COLORS[kind];
      item.append(
        swatch,
        `${kind}: ${formatSize(bytes[kind])} of the disk, ${
          counts[kind]
        } cells`,
      );
      return item;
    }),
  );
}

/** Whether a click pinned the cell shown. */
let pinned = false;

/**
 * Says which guest offsets the cell under the pointer covers.
 * @param {MouseEvent} event
 * @param {boolean} pin Keep it (a click) until another click.
 */
function pointAt(event, pin) {
  if (!drawn || (pinned && !pin)) return;
  const { cellBytes, columns, pixels, rank, size } = drawn;
  const x = Math.floor(event.offsetX / pixels);
  const y = Math.floor(event.offsetY / pixels);
  const i = y * columns + x;
  if (x < 0 || x >= columns || y < 0 || i >= rank.length) return;
  if (pin) pinned = !pinned || cellInfo.dataset.cell !== String(i);
  const start = i * cellBytes;
  const end = Math.min(size, start + cellBytes);
  const kind = KINDS[KINDS.length - 1 - rank[i]];
  cellInfo.dataset.cell = String(i);
  cellInfo.dataset.start = String(start);
  cellInfo.dataset.end = String(end);
  cellInfo.textContent = `Cell ${i}: guest offsets ${hex(start)} to ${
    hex(end - 1)
  } (${formatSize(start)} to ${formatSize(end)}, ${formatSize(end - start)}): ${
    kind === "unallocated"
      ? "unallocated"
      : `holds ${kind}${rank[i] > 1 ? " (and maybe less allocated kinds)" : ""}`
  }${pinned ? " [pinned: click again to release]" : ""}`;
}

/**
 * Shows an image.
 * @param {() => Promise<Input>} get
 * @param {string} label What is being read, for the status line.
 */
async function show(get, label) {
  const gen = ++generation;
  const stale = () => gen !== generation;
  if (current) {
    current.image.close();
    current.close?.();
  }
  current = undefined;
  drawn = undefined;
  pinned = false;
  downloadButton.disabled = true;
  qcow2Button.disabled = true;
  downloadNote.textContent = "";
  layerNote.hidden = true;
  layerNote.textContent = "";
  setStatus(`Reading ${label}…`, "loading");
  /** @type {Input | undefined} */
  let input;
  try {
    input = await get();
    if (stale()) return input.close();
    const { info, snapshots } = await readInfo(input);
    if (stale()) return input.close();
    showHeader(info);
    showFeatures(info);
    showSnapshots(snapshots);
    details.hidden = false;
    const { image, note } = await open(input);
    if (stale()) {
      image.close();
      return input.close();
    }
    current = {
      image,
      base: input.name.replace(/\.(qcow2?|img)$/i, ""),
      close: input.close,
    };
    if (note) {
      // Why a layer is missing stands at the top, by the status.
      layerNote.textContent = note;
      layerNote.hidden = false;
    }
    await drawMap(image, stale);
    if (stale()) return;
    if (canStream()) {
      downloadButton.disabled = false;
      downloadNote.textContent = `${current.base}.raw: ${
        sizeText(image.size)
      }, written straight to the file you pick (this browser can).`;
    } else if (image.size > MAX_DOWNLOAD) {
      downloadNote.textContent =
        `The raw image would take ${formatSize(image.size)}: ` +
        `this browser cannot write to a file as it goes, so the page builds ` +
        `the image in memory, up to ${formatSize(MAX_DOWNLOAD)}. ` +
        "Use Chromium, or the command-line tool (convert), for larger images.";
    } else {
      downloadButton.disabled = false;
      downloadNote.textContent =
        `${current.base}.raw: ${
          sizeText(image.size)
        }, built in memory when you click (this browser cannot write to a ` +
        `file as it goes; up to ${formatSize(MAX_DOWNLOAD)}).`;
    }
    qcow2Button.disabled = false;
    setStatus(
      `${input.name}: ${note ? "read (top layer only)" : "read"}.`,
      "done",
    );
  } catch (e) {
    input?.close();
    if (!stale()) {
      setStatus(`Cannot read ${label}: ${describeError(e)}`, "error");
    }
  }
}

/** Whether this browser can write a file the user picks as data comes. */
function canStream() {
  /** @type {any} */
  const g = globalThis;
  return typeof g.showSaveFilePicker === "function";
}

/**
 * Where a save goes: a file the user picks, written as the data comes
 * (File System Access API), or undefined where the browser has none.
 * @param {string} name
 * @returns {Promise<{ writeAt(position: number, bytes: Uint8Array): Promise<void>, finish(size: number): Promise<void>, abort(): Promise<void> } | undefined>}
 */
async function pickFile(name) {
  if (!canStream()) return undefined;
  /** @type {any} */
  const g = globalThis;
  const handle = await g.showSaveFilePicker({ suggestedName: name });
  const writable = await handle.createWritable();
  return {
    /** @param {number} position @param {Uint8Array} bytes */
    writeAt: (position, bytes) =>
      writable.write({ type: "write", position, data: bytes.slice() }),
    /** @param {number} size */
    finish: async (size) => {
      await writable.truncate(size);
      await writable.close();
    },
    abort: () => writable.abort(),
  };
}

/**
 * Hands `blob` to the browser as a download named `name`.
 * @param {Blob} blob
 * @param {string} name
 */
function offer(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/**
 * Runs a save with the buttons off and the progress bar on.
 * @param {string} name
 * @param {(onProgress: (p: { done: number, total: number }) => void) => Promise<string>} run
 */
async function saving(name, run) {
  const gen = generation;
  downloadButton.disabled = true;
  qcow2Button.disabled = true;
  progress.hidden = false;
  setStatus(`Saving ${name}…`, "loading");
  try {
    const said = await run(({ done, total }) => {
      progress.max = total;
      progress.value = done;
    });
    if (gen === generation) setStatus(said, "done");
  } catch (e) {
    if (gen !== generation) return;
    if (e instanceof DOMException && e.name === "AbortError") {
      setStatus("Not saved.", "done");
    } else {
      setStatus(`Cannot save ${name}: ${describeError(e)}`, "error");
    }
  } finally {
    progress.hidden = true;
    if (gen === generation && current) {
      downloadButton.disabled = !canStream() &&
        current.image.size > MAX_DOWNLOAD;
      qcow2Button.disabled = false;
    }
  }
}

function saveRaw() {
  if (!current) return;
  const { image, base } = current;
  const name = `${base}.raw`;
  return saving(name, async (onProgress) => {
    const file = await pickFile(name);
    if (file) {
      try {
        const summary = await convert(image, file, { onProgress });
        return `Saved ${name} (${
          sizeText(summary.virtualSize)
        }), written to the file as it was converted.`;
      } catch (e) {
        await file.abort().catch(() => {});
        throw e;
      }
    }
    // Chunks are folded into Blobs as they come, so that the browser may
    // keep them out of the JavaScript heap.
    /** @type {Blob[]} */
    const parts = [];
    /** @type {Uint8Array<ArrayBuffer>[]} */
    let pending = [];
    let pendingBytes = 0;
    const sink = new WritableStream({
      /** @param {Uint8Array} chunk */
      write(chunk) {
        pending.push(chunk.slice());
        pendingBytes += chunk.length;
        if (pendingBytes >= 64 * 1024 * 1024) {
          parts.push(new Blob(pending));
          pending = [];
          pendingBytes = 0;
        }
      },
    });
    const summary = await convert(image, sink, { onProgress });
    parts.push(new Blob(pending));
    offer(new Blob(parts, { type: "application/octet-stream" }), name);
    return `Saved ${name} (${sizeText(summary.virtualSize)}).`;
  });
}

function saveQcow2() {
  if (!current) return;
  const { image, base } = current;
  const name = `${base}.compressed.qcow2`;
  return saving(name, async (onProgress) => {
    const file = await pickFile(name);
    const target = file ?? memoryTarget();
    try {
      const summary = await convertToQcow2(image, target, {
        compress: true,
        onProgress,
      });
      void summary;
    } catch (e) {
      await file?.abort().catch(() => {});
      throw e;
    }
    if (!file) {
      const bytes = /** @type {ReturnType<typeof memoryTarget>} */ (target)
        .bytes();
      offer(
        new Blob([/** @type {Uint8Array<ArrayBuffer>} */ (bytes)], {
          type: "application/octet-stream",
        }),
        name,
      );
      return `Saved ${name} (${sizeText(bytes.length)}, built in memory).`;
    }
    return `Saved ${name}, written to the file as it was built.`;
  });
}

imageInput.addEventListener("change", () => {
  const file = imageInput.files?.[0];
  if (!file) {
    details.hidden = true;
    setStatus("Pick an image.", "done");
    return;
  }
  urlInput.value = "";
  void show(() => Promise.resolve(fileInput(file)), file.name);
});
extraInput.addEventListener("change", () => {
  const file = imageInput.files?.[0];
  if (file) void show(() => Promise.resolve(fileInput(file)), file.name);
});
urlForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const url = urlInput.value.trim();
  if (!url) return;
  void show(() => urlInputOf(url), url);
});
canvas.addEventListener("mousemove", (e) => pointAt(e, false));
canvas.addEventListener("click", (e) => pointAt(e, true));
downloadButton.addEventListener("click", () => void saveRaw());
qcow2Button.addEventListener("click", () => void saveQcow2());
imageInput.disabled = false;
extraInput.disabled = false;
urlInput.disabled = false;
urlButton.disabled = false;
setStatus("Pick an image, or give its URL.", "done");
