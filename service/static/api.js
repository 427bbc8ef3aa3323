// A thin client for the public /v1 API; nothing here knows about the page.
const params = new URLSearchParams(location.search);
export const API = (params.get("api") || "").replace(/\/$/, "");

export class ApiError extends Error {}

let inFlight = 0;
const listeners = new Set();
export function onBusyChange(fn) { listeners.add(fn); }
// listeners learn whether anything is in flight, and which call just started or ended
function setBusy(delta, call) { inFlight += delta; listeners.forEach((fn) => fn(inFlight > 0, call)); }

// JSON back, or with `accept` (an image type) the image as a data URL
export async function call(path, { json, form, accept } = {}) {
  const init = { method: json || form ? "POST" : "GET", headers: { Accept: accept || "application/json" } };
  if (json) { init.body = JSON.stringify(json); init.headers["Content-Type"] = "application/json"; }
  if (form) init.body = form;
  const started = { method: init.method, path };
  setBusy(+1, started);
  try {
    let response;
    try {
      response = await fetch(API + path, init);
    } catch {
      throw new ApiError(`Could not reach the API at ${API || location.origin}: the server is down, or this page's origin is not allowed (CORS).`);
    }
    if (accept && response.ok) return await dataUrl(await response.blob());
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
      throw new ApiError(`${response.status}: ${detail}`);
    }
    return body;
  } finally {
    started.ended = true;
    setBusy(-1, started);
  }
}

function dataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new ApiError("The server's image could not be read."));
    reader.readAsDataURL(blob);
  });
}
