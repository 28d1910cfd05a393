/**
 * The disk page (web/disk.html) in headless Chromium: an image made by
 * qemu-img is imported into the origin private file system, written
 * through the page's worker (`openImage(opfsStore(handle), { writable:
 * true })`), read back after a reload, and exported; `qemu-img check`
 * finds the export clean and `qemu-img compare` finds it identical to a
 * copy written by qemu-io.
 *
 * Needs Chromium at /usr/bin/chromium (or QCOW2_CHROMIUM), unless
 * QCOW2_SKIP_BROWSER=1 says to skip it.
 */
import { assert, assertEquals } from "@std/assert";
import type { Page } from "playwright-core";
import { serveWeb } from "../web/serve.ts";
import { run, tempDir } from "./_reference.ts";

const ROOT = new URL("../", import.meta.url);
const CHROMIUM = Deno.env.get("QCOW2_CHROMIUM") ?? "/usr/bin/chromium";
const SKIP = Deno.env.get("QCOW2_SKIP_BROWSER") === "1";

async function settled(page: Page): Promise<string> {
  await page.waitForFunction("document.body.dataset.state !== 'loading'");
  return await page.getAttribute("body", "data-state") ?? "";
}

async function act(
  page: Page,
  button: string,
  offset: number,
  length: number,
  pattern = 0,
) {
  await page.fill("#offset", String(offset));
  await page.fill("#length", String(length));
  await page.fill("#pattern", String(pattern));
  await page.click(button);
  assertEquals(
    await settled(page),
    "done",
    await page.textContent("#status") ?? "",
  );
}

Deno.test({
  name:
    "disk page in headless Chromium: write to an image in OPFS, reload, read back, export",
  ignore: SKIP,
  async fn() {
    Deno.env.set("__IS_WSL_TEST__", "1");
    const { chromium } = await import("playwright-core");
    const build = await new Deno.Command(Deno.execPath(), {
      args: ["task", "web:build"],
      cwd: ROOT.pathname,
      stdout: "null",
      stderr: "piped",
    }).output();
    assert(build.success, new TextDecoder().decode(build.stderr));
    const dir = await tempDir();
    const stop = new AbortController();
    const server = serveWeb(new URL("web/", ROOT), { signal: stop.signal });
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
    });
    try {
      await run("qemu-img", [
        "create",
        "-q",
        "-f",
        "qcow2",
        `${dir}/disk.qcow2`,
        "8M",
      ]);
      await run("cp", [`${dir}/disk.qcow2`, `${dir}/theirs.qcow2`]);
      const context = await browser.newContext({ acceptDownloads: true });
      const page = await context.newPage();
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(e.message));
      await page.goto(`http://127.0.0.1:${server.addr.port}/disk.html`);
      assertEquals(await settled(page), "done");
      await page.setInputFiles("#import", `${dir}/disk.qcow2`);
      assertEquals(
        await settled(page),
        "done",
        await page.textContent("#status") ?? "",
      );
      await act(page, "#write", 0, 4096, 0xa5);
      await act(page, "#write", 100000, 200000, 0x3c);
      await act(page, "#zero", 150000, 1000);
      await act(page, "#write", 7 * 1024 * 1024 + 5, 70000, 0x11);
      await act(page, "#discard", 196608, 65536);

      await page.reload();
      assertEquals(await settled(page), "done");
      await act(page, "#read", 0, 4096);
      assertEquals(await page.textContent("#read-result"), "4096×0xa5");
      await act(page, "#read", 100000, 1000);
      assertEquals(await page.textContent("#read-result"), "1000×0x3c");
      await act(page, "#read", 150000, 1000);
      assertEquals(await page.textContent("#read-result"), "1000×0x00");

      const download = page.waitForEvent("download");
      await page.click("#export");
      assertEquals(await settled(page), "done");
      await (await download).saveAs(`${dir}/exported.qcow2`);
      assertEquals(errors, []);

      await run("qemu-io", [
        "-c",
        "write -P 0xa5 0 4096",
        "-c",
        "write -P 0x3c 100000 200000",
        "-c",
        "write -z 150000 1000",
        "-c",
        `write -P 0x11 ${7 * 1024 * 1024 + 5} 70000`,
        "-c",
        "discard 196608 65536",
        `${dir}/theirs.qcow2`,
      ]);
      await run("qemu-img", ["check", `${dir}/exported.qcow2`]);
      await run("qemu-img", [
        "compare",
        `${dir}/exported.qcow2`,
        `${dir}/theirs.qcow2`,
      ]);

      // An image made in the page (createImage), written, exported.
      await page.fill("#size", "4");
      await page.click("#create");
      assertEquals(
        await settled(page),
        "done",
        await page.textContent("#status") ?? "",
      );
      await act(page, "#write", 65536 + 7, 5000, 0x77);
      const made = page.waitForEvent("download");
      await page.click("#export");
      assertEquals(await settled(page), "done");
      await (await made).saveAs(`${dir}/made.qcow2`);
      await run("qemu-img", ["check", `${dir}/made.qcow2`]);
      await run("qemu-img", [
        "create",
        "-q",
        "-f",
        "qcow2",
        `${dir}/made_ref.qcow2`,
        "4M",
      ]);
      await run("qemu-io", [
        "-c",
        `write -P 0x77 ${65536 + 7} 5000`,
        `${dir}/made_ref.qcow2`,
      ]);
      await run("qemu-img", [
        "compare",
        `${dir}/made.qcow2`,
        `${dir}/made_ref.qcow2`,
      ]);
      assertEquals(errors, []);
    } finally {
      await browser.close();
      stop.abort();
      await server.finished;
      await Deno.remove(dir, { recursive: true });
    }
  },
});
