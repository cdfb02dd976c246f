import { viewerToken } from "./auth.js";

// One WebSocket link to the relay that keeps itself alive.
//
// A lost link is retried with exponential backoff (and at once when the browser comes back
// online). Browsers cannot send WebSocket pings, so the link sends an application-level
// `ping` every few seconds; a link that has heard nothing (no pong, no data) for too long is
// dead even if the socket looks open, and is replaced.

/**
 * The relay's WebSocket address, on the same host and port as the page. `?subscribe` asks
 * the relay to send nothing until the page says what it wants.
 */
export function relayUrl(location = window.location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/?subscribe`;
}

/** A control message in the wire format's envelope. */
export function control(type, data = {}) {
  return { type, timestamp: new Date().toISOString(), data };
}

export class RelayConnection {
  #socket = null;
  #attempt = 0;
  #retryTimer = null;
  #heartbeatTimer = null;
  #openTimer = null;
  #lastHeard = 0;

  /**
   * @param {string} url  ws:// address of the relay
   * @param {object} handlers  onOpen(), onMessage(message), onState(state, retryAt)
   *   where state is "connecting" | "open" | "reconnecting".
   * @param {object} options  pingEveryMs (5 s), deadAfterMs (silence that means a dead
   *   link, 2.5 pings), minDelayMs / maxDelayMs (reconnect backoff, 0.25 s doubling to 5 s).
   */
  constructor(url, { onOpen, onMessage, onState }, options = {}) {
    this.url = url;
    this.onOpen = onOpen;
    this.onMessage = onMessage;
    this.onState = onState;
    this.pingEveryMs = options.pingEveryMs ?? 5000;
    this.deadAfterMs = options.deadAfterMs ?? 2.5 * this.pingEveryMs;
    this.minDelayMs = options.minDelayMs ?? 250;
    this.maxDelayMs = options.maxDelayMs ?? 5000;
  }

  start() {
    window.addEventListener("online", () => this.#retryNow());
    this.#connect();
  }

  get isOpen() {
    return this.#socket?.readyState === WebSocket.OPEN;
  }

  /** Send a message now; returns false when the link is down (the caller resends on open). */
  send(message) {
    if (!this.isOpen) return false;
    this.#socket.send(JSON.stringify(message));
    return true;
  }

  /** Replace the link now (e.g. to authenticate again with a new token). */
  renew() {
    const socket = this.#socket;
    if (socket) this.#drop(socket);
    this.#retryNow();
  }

  #connect() {
    this.#retryTimer = null;
    this.onState("connecting");
    const socket = new WebSocket(this.url);
    this.#socket = socket;
    // A relay that accepts TCP but never answers the handshake would leave us hanging.
    this.#openTimer = setTimeout(() => this.#drop(socket), this.deadAfterMs);
    socket.onopen = () => {
      clearTimeout(this.#openTimer);
      this.#attempt = 0;
      this.#lastHeard = Date.now();
      this.#heartbeatTimer = setInterval(() => this.#heartbeat(), this.pingEveryMs);
      // A relay with a viewer token reads the token from the first frame (a browser cannot
      // set headers on a WebSocket); the relay handles frames in order, so subscriptions
      // sent after it are authenticated.
      const token = viewerToken();
      if (token) socket.send(JSON.stringify(control("auth", { token })));
      this.onState("open");
      this.onOpen();
    };
    socket.onmessage = (event) => {
      this.#lastHeard = Date.now();
      const message = parse(event.data);
      if (message && message.type !== "pong") this.onMessage(message);
    };
    // A failed or lost socket always ends with `close`, after `error` if there was one.
    socket.onclose = () => this.#lost(socket);
  }

  #heartbeat() {
    if (Date.now() - this.#lastHeard > this.deadAfterMs) this.#drop(this.#socket);
    else this.send(control("ping"));
  }

  /** Give up on a socket that looks alive but is not, and reconnect. */
  #drop(socket) {
    this.#lost(socket);
    socket.close(); // its close event is ignored: the socket is no longer ours
  }

  #lost(socket) {
    if (socket !== this.#socket) return;
    socket.onopen = socket.onmessage = socket.onclose = null;
    this.#socket = null;
    clearTimeout(this.#openTimer);
    clearInterval(this.#heartbeatTimer);
    const ceiling = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** this.#attempt);
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2; // jitter spreads reconnect storms
    this.#attempt += 1;
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
    this.onState("reconnecting", Date.now() + delay);
  }

  #retryNow() {
    if (this.#retryTimer === null) return; // connected or already connecting
    clearTimeout(this.#retryTimer);
    this.#connect();
  }
}

function parse(text) {
  try {
    const message = JSON.parse(text);
    return message && typeof message === "object" && typeof message.type === "string"
      ? message
      : null;
  } catch {
    console.warn("fl-stream: ignored a frame that is not JSON:", String(text).slice(0, 80));
    return null;
  }
}
