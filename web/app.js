// @ts-check
/**
 * The qcow2 viewer page: reads the picked file with the browser bundle of
 * web.ts (`qcow2.js`, built by `deno task web:build`), shows its header,
 * features and snapshots, draws its allocation map, and converts it to a raw
 * image for download.
 */

// @ts-types="../web.ts"
import {
  blobSource,
  convert,
  formatSize,
  imageInfo,
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
 * Largest virtual size offered for download: the raw image is assembled in
 * memory (as a Blob) before it is saved.
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
const progress = $("progress", HTMLProgressElement);
const downloadNote = $("download-note", HTMLElement);

/** Bumped on every pick, so that work for an older pick stops. */
let generation = 0;
/** @type {{ image: DiskImage, name: string } | undefined} */
let current;

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
 * @param {File} file
 * @param {ByteSource} source
 * @returns {Promise<{ info: ImageInfo, snapshots: Snapshot[] }>}
 */
async function readInfo(file, source) {
  const start = new Uint8Array(Math.min(8, source.size));
  await source.readAt(0, start);
  const format = probeFormat(start);
  const extras = { actualSize: file.size };
  if (format === "qcow") {
    return {
      info: qcowInfo(await readQcowHeader(source), file.name, extras),
      snapshots: [],
    };
  }
  if (format !== "qcow2") {
    throw new Error(
      `${file.name} is not a qcow2 or qcow image (it does not start with 'QFI\\xfb'); a raw image needs no conversion`,
    );
  }
  const header = await readHeader(source);
  const snapshots = header.nbSnapshots > 0
    ? await readSnapshots(source, header)
    : [];
  return {
    info: imageInfo(header, file.name, { ...extras, snapshots }),
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
 * Opens the image with the picked backing and data files; without a picked
 * backing file, its top layer alone.
 * @param {File} file
 * @param {ByteSource} source
 * @returns {Promise<{ image: DiskImage, note: string }>}
 */
async function open(file, source) {
  const extras = [...(extraInput.files ?? [])];
  /** @type {import("../web.ts").OpenOptions} */
  const options = {
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
  };
  try {
    return { image: await openImage(source, options), note: "" };
  } catch (e) {
    if (!(e instanceof Qcow2Error) || e.code !== "BACKING_FILE") throw e;
    const image = await openImage(source, {
      ...options,
      ignoreBackingFile: true,
    });
    return {
      image,
      note:
        `${e.message}. Shown and converted: this image's own layer alone (what it leaves unallocated reads as zeros).`,
    };
  }
}

/**
 * Draws the allocation map: one cell per cluster (or per run of clusters,
 * for large disks), colored by the kind of its extents.
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

async function show() {
  const gen = ++generation;
  const stale = () => gen !== generation;
  current?.image.close();
  current = undefined;
  downloadButton.disabled = true;
  downloadNote.textContent = "";
  const file = imageInput.files?.[0];
  if (!file) {
    details.hidden = true;
    setStatus("Pick an image.", "done");
    return;
  }
  setStatus(`Reading ${file.name}…`, "loading");
  try {
    const source = blobSource(file);
    const { info, snapshots } = await readInfo(file, source);
    if (stale()) return;
    showHeader(info);
    showFeatures(info);
    showSnapshots(snapshots);
    details.hidden = false;
    const { image, note } = await open(file, source);
    if (stale()) return image.close();
    current = {
      image,
      name: file.name.replace(/\.(qcow2?|img)$/i, "") + ".raw",
    };
    await drawMap(image, stale);
    if (stale()) return;
    if (image.size > MAX_DOWNLOAD) {
      downloadNote.textContent =
        `The raw image would take ${formatSize(image.size)}: ` +
        `this page builds it in memory, up to ${formatSize(MAX_DOWNLOAD)}. ` +
        "Use the command-line tool (convert) for larger images.";
    } else {
      downloadButton.disabled = false;
      downloadNote.textContent = `${current.name}: ${
        sizeText(image.size)
      }, built in memory when you click.`;
    }
    if (note) downloadNote.textContent += ` ${note}`;
    setStatus(
      `${file.name}: ${note ? "read (top layer only)" : "read"}.`,
      "done",
    );
  } catch (e) {
    if (!stale()) {
      setStatus(`Cannot read ${file.name}: ${describeError(e)}`, "error");
    }
  }
}

async function download() {
  if (!current) return;
  const { image, name } = current;
  const gen = generation;
  downloadButton.disabled = true;
  progress.hidden = false;
  setStatus(`Converting to ${name}…`, "loading");
  try {
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
    const summary = await convert(image, sink, {
      onProgress: ({ done, total }) => {
        progress.max = total;
        progress.value = done;
      },
    });
    parts.push(new Blob(pending));
    if (gen !== generation) return;
    const url = URL.createObjectURL(
      new Blob(parts, { type: "application/octet-stream" }),
    );
    const link = document.createElement("a");
    link.href = url;
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    setStatus(`Saved ${name} (${sizeText(summary.virtualSize)}).`, "done");
  } catch (e) {
    if (gen === generation) {
      setStatus(`Cannot convert: ${describeError(e)}`, "error");
    }
  } finally {
    progress.hidden = true;
    if (gen === generation) downloadButton.disabled = false;
  }
}

imageInput.addEventListener("change", () => void show());
extraInput.addEventListener("change", () => void show());
downloadButton.addEventListener("click", () => void download());
imageInput.disabled = false;
extraInput.disabled = false;
setStatus("Pick an image.", "done");
