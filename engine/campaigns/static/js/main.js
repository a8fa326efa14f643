// Start-up: load onnxruntime-web from the server's vendor folder, sign in with the
// annotator's token, start the app of the campaign's mode (annotate, audit or verify). Options in the page's URL: ?threads=N (decoder threads;
// default: all cores up to 4 where the page is cross-origin isolated, else 1),
// ?decoder=quant (the quantized decoder), ?work=N (long side of the interactive masks),
// ?warn_iou=X (warn before accepting a mask whose predicted IoU is below X; 0.3),
// ?warn_repeat=X (warn before accepting a mask whose IoU with another is X or more; 0.9).

import { Api, ApiError, Offline } from "./api.js";
import { App } from "./app.js";
import { AuditApp } from "./audit.js";
import { DUPLICATE_IOU, WARN_IOU } from "./checks.js";
import { names, useNames } from "./names.js";
import { VerifyApp } from "./verify.js";
import { showConnection } from "./status.js";

const TOKEN_KEY = "saengine.token";

function options() {
  const query = new URLSearchParams(location.search);
  const cores = navigator.hardwareConcurrency || 1;
  const threads = Number(query.get("threads")) || (crossOriginIsolated ? Math.min(4, cores) : 1);
  return {
    threads: crossOriginIsolated ? threads : 1,
    quantized: query.get("decoder") === "quant",
    workSide: Number(query.get("work")) || 1024,
    maxImageSide: Number(query.get("image")) || 2048,
    warnIou: query.has("warn_iou") ? Number(query.get("warn_iou")) : WARN_IOU,
    warnRepeat: query.has("warn_repeat") ? Number(query.get("warn_repeat")) : DUPLICATE_IOU,
  };
}

async function loadOrt(threads) {
  const response = await fetch("vendor/vendor.json", { cache: "no-cache" });
  if (!response.ok)
    throw new Error("onnxruntime-web is not installed on the server (run `make vendor` there)");
  const vendor = await response.json();
  const base = new URL(`vendor/${vendor.dir}/`, document.baseURI).href;
  const ort = await import(base + vendor.module);
  ort.env.wasm.wasmPaths = base;
  ort.env.wasm.numThreads = threads;
  return { ort, version: vendor.version };
}

async function signIn(token) {
  const connection = document.getElementById("connection");
  let online = true;
  const api = new Api(token, (ok) => {
    const outbox = window.saengine?.app?.outbox;
    showConnection(connection, ok, outbox?.size ?? 0);
    if (ok && !online) outbox?.flush();
    online = ok;
  });
  const annotator = await api.get("api/me");
  useNames(annotator.names);
  return { api, annotator };
}

function askForToken(problem = "") {
  const form = document.getElementById("sign-in");
  form.classList.remove("hidden");
  document.getElementById("sign-in-error").textContent = problem;
  return new Promise((resolve) => {
    form.onsubmit = (e) => {
      e.preventDefault();
      resolve(document.getElementById("token").value.trim());
    };
  });
}

async function signedIn() {
  let token = localStorage.getItem(TOKEN_KEY);
  let problem = "";
  for (;;) {
    token ||= await askForToken(problem);
    try {
      const session = await signIn(token);
      localStorage.setItem(TOKEN_KEY, token);
      document.getElementById("sign-in").classList.add("hidden");
      return session;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401)
        problem = "Unknown token: check it with the campaign's admin.";
      else if (error instanceof Offline) problem = "The server does not answer; try again.";
      else problem = error.message;
      localStorage.removeItem(TOKEN_KEY);
      token = null;
    }
  }
}

async function main() {
  const settings = options();
  const fatal = document.getElementById("message");
  let runtime;
  try {
    runtime = await loadOrt(settings.threads);
  } catch (error) {
    fatal.className = "message error";
    fatal.textContent = `The decoder cannot run in this page: ${error.message}`;
    fatal.dataset.topic = "page";
    return;
  }
  const { api, annotator } = await signedIn();
  document.getElementById("annotator").textContent = annotator.name;
  document.getElementById("sign-out").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  const modes = { [names.campaign_mode.AUDIT]: AuditApp, [names.campaign_mode.VERIFY]: VerifyApp };
  const Mode = modes[annotator.mode] ?? App; // the campaign's mode (annotate: App)
  const app = new Mode({ api, ort: runtime.ort, annotator, options: settings });
  window.saengine = {
    app,
    stats: () => ({
      ...app.stats,
      threads: settings.threads,
      quantized: settings.quantized,
      ort: runtime.version,
      isolated: crossOriginIsolated,
    }),
  };
  await app.start();
}

main();
