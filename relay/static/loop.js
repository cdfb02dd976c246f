// Drawing on animation frames, within a time budget per frame.
//
// The page's drawing is cut into units (one chart, the heatmap, the client table). Each frame
// runs units, the one waiting longest first, until the budget is spent (and always at least
// one), so no frame is long however much is pending, and a flood of updates to one part of
// the page starves no other. Units that began to wait within a frame of each other (one
// update) go in the painters' order: the charts of an update before its client view. A
// small budget lets the page take in messages between units, so a chart that a later
// message of the same update changes is drawn again soon. A painter may declare a lag it
// can afford (the client view: its heatmap and table are slower and less urgent than the
// metric charts): its units count as waiting since that much later, so the charts of the
// next messages go first, and it is never more than that lag behind.

/**
 * What a FrameLoop draws.
 * @typedef {object} Painter
 * @property {() => (number|undefined)} pending  since when (performance.now()) its oldest
 *   unit waits; undefined when it has none
 * @property {() => void} step  run that unit
 * @property {number} [lagMs]  how much later than the others its units may be drawn (0)
 */

// One animation frame (ms): units waiting within this of the oldest count as one update.
const FRAME_MS = 17;
// A burst of messages is drawn once: the messages of a round's end (round_metrics,
// client_metrics, round_end) come within milliseconds of each other, and drawing the first
// ones would hold up the rest (each costs every chart a Plotly redraw). Frames wait until no
// message has come for SETTLE_MS, but no more than MAX_SETTLE_MS after the burst's first
// message, so a steady stream (client progress) is still drawn several times a second.
const SETTLE_MS = 10;
const MAX_SETTLE_MS = 100;

export class FrameLoop {
  #painters;
  #budgetMs;
  #before;
  #whenDone;
  #frame = 0;
  #burstStart = null; // when the first message of the burst being waited out came
  #lastMessage = 0;

  /**
   * @param {Painter[]} painters
   * @param {object} hooks  before() runs at the start of each frame (cheap text updates);
   *   whenDone() runs after a frame that left no unit pending
   * @param {number} budgetMs  drawing time per frame
   */
  constructor(painters, { before, whenDone }, budgetMs = 12) {
    this.#painters = painters;
    this.#before = before;
    this.#whenDone = whenDone;
    this.#budgetMs = budgetMs;
  }

  /** Make sure a frame comes. */
  request() {
    if (!this.#frame) this.#frame = requestAnimationFrame(() => this.#run());
  }

  /** A message came: draw once the burst it belongs to is over (SETTLE_MS). */
  requestAfterBurst() {
    const now = performance.now();
    this.#lastMessage = now;
    this.#burstStart ??= now;
    this.request();
  }

  #run() {
    this.#frame = 0;
    const now = performance.now();
    if (this.#burstStart !== null) {
      const quiet = now - this.#lastMessage >= SETTLE_MS;
      if (!quiet && now - this.#burstStart < MAX_SETTLE_MS) {
        this.request(); // the burst goes on
        return;
      }
      this.#burstStart = null;
    }
    const deadline = now + this.#budgetMs;
    this.#before();
    let next = this.#oldest();
    while (next) {
      next.step();
      if (performance.now() >= deadline) break;
      next = this.#oldest();
    }
    if (this.#oldest()) this.request();
    else this.#whenDone();
  }

  #oldest() {
    const waiting = this.#painters.map((painter) => {
      const since = painter.pending();
      return since === undefined ? undefined : since + (painter.lagMs ?? 0);
    });
    const oldest = Math.min(...waiting.filter((since) => since !== undefined));
    return this.#painters.find((_, i) => waiting[i] !== undefined && waiting[i] < oldest + FRAME_MS);
  }
}
