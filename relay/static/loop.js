// Drawing on animation frames, within a time budget per frame.
//
// The page's drawing is cut into units (one chart, the heatmap, the client table). Each frame
// runs units, the one waiting longest first, until the budget is spent (and always at least
// one), so no frame is long however much is pending, and a flood of updates to one part of
// the page starves no other. Units that began to wait within a frame of each other (one
// update) go in the painters' order: the charts of an update before its client view. A
// small budget lets the page take in messages between units, so a chart that a later
// message of the same update changes is drawn again soon.

/**
 * What a FrameLoop draws.
 * @typedef {object} Painter
 * @property {() => (number|undefined)} pending  since when (performance.now()) its oldest
 *   unit waits; undefined when it has none
 * @property {() => void} step  run that unit
 */

// One animation frame (ms): units waiting within this of the oldest count as one update.
const FRAME_MS = 17;

export class FrameLoop {
  #painters;
  #budgetMs;
  #before;
  #whenDone;
  #frame = 0;

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

  #run() {
    this.#frame = 0;
    const deadline = performance.now() + this.#budgetMs;
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
    const waiting = this.#painters.map((painter) => painter.pending());
    const oldest = Math.min(...waiting.filter((since) => since !== undefined));
    return this.#painters.find((_, i) => waiting[i] !== undefined && waiting[i] < oldest + FRAME_MS);
  }
}
