/**
 * Wall-clock time in epoch seconds (a float, as Glance stores it), strictly
 * increasing within this process. Date.now() has millisecond resolution, so
 * two reads in the same millisecond would otherwise tie and LRU order between
 * them would fall back to insertion order.
 */
let last = 0;
export function nowSeconds(): number {
  const t = (performance.timeOrigin + performance.now()) / 1000;
  last = t > last ? t : last + 1e-6;
  return last;
}
