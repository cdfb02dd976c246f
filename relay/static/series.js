// One line of a chart: x ascending (a round or an epoch), one y per x (null: a gap).

export class Series {
  xs = [];
  ys = [];
  low = Infinity; // the smallest and largest finite y seen (for the chart's axis)
  high = -Infinity;

  /** Set y at x; returns "append" (a new last x), "same" (no change) or "rewrite". */
  set(x, y) {
    if (y !== null) {
      this.low = Math.min(this.low, y);
      this.high = Math.max(this.high, y);
    }
    const last = this.xs.length - 1;
    if (last < 0 || x > this.xs[last]) {
      this.xs.push(x);
      this.ys.push(y);
      return "append";
    }
    const at = this.xs.findLastIndex((value) => value <= x);
    if (this.xs[at] === x) {
      if (this.ys[at] === y) return "same"; // round_end repeating round_metrics
      this.ys[at] = y;
    } else {
      this.xs.splice(at + 1, 0, x);
      this.ys.splice(at + 1, 0, y);
    }
    return "rewrite";
  }

  get length() {
    return this.xs.length;
  }

  get lastX() {
    return this.xs[this.xs.length - 1];
  }
}
