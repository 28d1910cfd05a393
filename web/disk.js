// @ts-check
/**
 * The disk page: forwards each button to the worker (disk_worker.js), which
 * owns the image in the origin private file system, and shows the answers.
 */

const worker = new Worker("disk_worker.js", { type: "module" });
/** @type {Map<number, (reply: any) => void>} */
const waiting = new Map();
let next = 0;
worker.onmessage = (event) => {
  const { id, ...reply } = event.data;
  waiting.get(id)?.(reply);
  waiting.delete(id);
};

/**
 * Sends a command to the worker and waits for its reply.
 * @param {Record<string, unknown>} message
 * @param {Transferable[]} [transfer]
 * @returns {Promise<any>}
 */
function ask(message, transfer = []) {
  const id = next++;
  return new Promise((resolve, reject) => {
    waiting.set(
      id,
      (reply) => reply.error ? reject(new Error(reply.error)) : resolve(reply),
    );
    worker.postMessage({ id, ...message }, transfer);
  });
}

/** @param {string} id */
const $ = (id) => /** @type {HTMLInputElement} */ (document.getElementById(id));
const status = $("status");

/**
 * Runs one action with the page marked busy, and shows its outcome.
 * @param {() => Promise<string>} action
 */
async function busy(action) {
  document.body.dataset.state = "loading";
  try {
    status.textContent = await action();
    document.body.dataset.state = "done";
  } catch (e) {
    status.textContent = `Error: ${e instanceof Error ? e.message : e}`;
    document.body.dataset.state = "error";
  }
  await refresh();
}

async function refresh() {
  const { info } = await ask({ cmd: "info" });
  $("info").textContent = info;
}

const range = () => ({
  offset: Number($("offset").value),
  length: Number($("length").value),
  pattern: Number($("pattern").value),
});

$("import").addEventListener("change", () =>
  busy(async () => {
    const file = $("import").files?.[0];
    if (!file) return "No file picked.";
    const bytes = await file.arrayBuffer();
    await ask({ cmd: "import", bytes }, [bytes]);
    return `${file.name}: imported.`;
  }));
$("create").addEventListener("click", () =>
  busy(async () => {
    const size = Number($("size").value) * 1024 * 1024;
    await ask({ cmd: "create", size });
    return `Created an empty image of ${size} bytes.`;
  }));
$("write").addEventListener("click", () =>
  busy(async () => {
    await ask({ cmd: "write", ...range() });
    return "Written and flushed.";
  }));
$("zero").addEventListener("click", () =>
  busy(async () => {
    await ask({ cmd: "zero", ...range() });
    return "Zeroed and flushed.";
  }));
$("discard").addEventListener("click", () =>
  busy(async () => {
    await ask({ cmd: "discard", ...range() });
    return "Discarded and flushed.";
  }));
$("read").addEventListener("click", () =>
  busy(async () => {
    const { summary } = await ask({ cmd: "read", ...range() });
    $("read-result").textContent = summary;
    return "Read.";
  }));
$("export").addEventListener("click", () =>
  busy(async () => {
    const { bytes } = await ask({ cmd: "export" });
    const link =
      /** @type {HTMLAnchorElement} */ (/** @type {unknown} */ ($("download")));
    link.href = URL.createObjectURL(
      new Blob([bytes], { type: "application/octet-stream" }),
    );
    link.click();
    return `Exported ${bytes.byteLength} bytes.`;
  }));

busy(async () => {
  await ask({ cmd: "open" });
  return "Ready.";
});
