/**
 * The face of `web.ts` over the native defaults (`node:zlib`, `node:crypto`,
 * paths), built once: `mod.ts` exports its functions, and the CLI imports
 * them from here so that a command loads only the modules it uses (not all
 * of `mod.ts`: start-up time, bench/README.md).
 *
 * @module
 */

import { type Face, makeFace } from "../src/face.ts";
import { nodeCodecs } from "./zlib.ts";
import { nodeCompressors } from "./compress.ts";
import { openPath } from "./open_path.ts";
import { openPathWritable } from "./writable_file.ts";
import { nodeCrypto } from "./crypto.ts";

/** `openImage`, `convert`, `convertToQcow2` and `readHeader` of `mod.ts`. */
export const nativeFace: Face = makeFace({
  codecs: nodeCodecs,
  compress: nodeCompressors,
  crypto: nodeCrypto,
  openPath,
  openPathWritable,
});
