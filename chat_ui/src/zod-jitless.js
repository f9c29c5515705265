// The AI SDK checks each streamed part with zod, whose fast path compiles code with
// `new Function`: the page's Content Security Policy forbids that (and Chromium logs
// an error for even trying). Imported first, before the SDK builds its schemas, so
// that zod takes its interpreted path from the start.
import { config } from "zod";

config({ jitless: true });
