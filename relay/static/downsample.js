// Fewer points for a long line, without losing what matters on a chart: every bucket of
// consecutive points keeps its lowest and its highest point (and a gap, if it has one), so a
// spike of a single round is still drawn, at its height. A chart asks again for the range it
// is zoomed to, so zooming in shows every point once few enough are in view.

/** Index of the first element of the ascending `xs` that is >= x, or > x when `after`. */
export function searchSorted(xs, x, after = false) {
  let low = 0;
  let high = xs.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (xs[mid] < x || (after && xs[mid] === x)) low = mid + 1;
    else high = mid;
  }
  return low;
}

/**
 * The points of a line (ascending `xs`, `ys` with null for gaps) to draw for the x range
 * [from, to] (null: all of it), with the point just outside each end so the line runs to the
 * chart's edge. With more than 2 × `buckets` points in range, they are cut into `buckets`
 * runs of consecutive points, each drawn as its minimum and maximum (in x order) and a gap
 * where it had one, and the first and the last point (the newest round) are always kept;
 * otherwise every point is kept.
 * @returns {{x: number[], y: (number|null)[]}}
 */
export function minMaxPoints(xs, ys, from, to, buckets) {
  const start = from === null ? 0 : Math.max(0, searchSorted(xs, from) - 1);
  const end = to === null ? xs.length : Math.min(xs.length, searchSorted(xs, to, true) + 1);
  const count = end - start;
  if (count <= 2 * buckets) return { x: xs.slice(start, end), y: ys.slice(start, end) };
  const x = [];
  const y = [];
  for (let bucket = 0; bucket < buckets; bucket += 1) {
    // Integer bounds (no float width), so the buckets cover [start, end) exactly.
    const first = start + Math.floor((bucket * count) / buckets);
    const last = start + Math.floor(((bucket + 1) * count) / buckets);
    let low = -1;
    let high = -1;
    let gap = -1;
    for (let i = first; i < last; i += 1) {
      const value = ys[i];
      if (value === null) {
        if (gap < 0) gap = i;
      } else {
        if (low < 0 || value < ys[low]) low = i;
        if (high < 0 || value > ys[high]) high = i;
      }
    }
    const ends = [bucket === 0 ? first : -1, bucket === buckets - 1 ? last - 1 : -1];
    const keep = [...new Set([low, high, gap, ...ends])].filter((i) => i >= 0).sort((a, b) => a - b);
    for (const i of keep) {
      x.push(xs[i]);
      y.push(ys[i]);
    }
  }
  return { x, y };
}
