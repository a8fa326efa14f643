// The campaign API over fetch: the annotator's token on every call, errors as exceptions
// that say whether to retry (Offline: no answer) or not (ApiError: the server refused).

const BUSY_TRIES = 4;

export class ApiError extends Error {
  constructor(status, detail, retryAfterS = null) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
    this.retryAfterS = retryAfterS;
  }

  /** Worth trying again later (server trouble, not a refusal of the request itself). */
  get transient() {
    return this.status >= 500 || this.status === 408 || this.status === 429;
  }
}

export class Offline extends Error {}

export class Api {
  /** onConnection(true | false) is called after every answer or failure to reach the server. */
  constructor(token, onConnection = () => {}) {
    this.token = token;
    this.onConnection = onConnection;
  }

  /** One call; path relative to the page ("api/lease"). Returns the parsed JSON, or the
   * Response itself with {raw: true}. */
  async request(method, path, options = {}) {
    for (let tries = 1; ; tries += 1) {
      try {
        return await this.once(method, path, options);
      } catch (error) {
        // over the server's rate: wait as it says, a few times, before giving up
        if (!(error instanceof ApiError && error.status === 429) || tries >= BUSY_TRIES)
          throw error;
        await new Promise((done) => setTimeout(done, 1000 * Math.min(error.retryAfterS ?? 1, 30)));
      }
    }
  }

  async once(method, path, { json, raw = false } = {}) {
    const headers = { Authorization: `Bearer ${this.token}` };
    if (json !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: json === undefined ? undefined : JSON.stringify(json),
      });
    } catch (error) {
      this.onConnection(false);
      throw new Offline(`no answer from the server (${error.message})`);
    }
    this.onConnection(true);
    if (!response.ok) throw await apiError(response);
    return raw ? response : response.json();
  }

  get(path, options) {
    return this.request("GET", path, options);
  }

  post(path, json = {}) {
    return this.request("POST", path, { json });
  }
}

async function apiError(response) {
  let detail = response.statusText;
  try {
    detail = (await response.json()).detail ?? detail;
  } catch {
    // not JSON: keep the status text
  }
  const retryAfter = Number(response.headers.get("Retry-After"));
  return new ApiError(
    response.status,
    String(detail),
    Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : null,
  );
}

/** A random id for a submission (retries send the same one). */
export function newClientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
