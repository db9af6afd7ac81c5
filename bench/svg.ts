/**
 * The chart of BENCHMARKS.md, as a self-contained SVG (no library, no fonts to load): for one
 * size, every system's longest echo wait per 100 ms and its echoes per 100 ms, around the switch.
 */
import type { TimelineBucket } from '../tools/echo-load.js';

export interface Series {
  name: string;
  color: string;
  /** t in ms from the switch. */
  timeline: TimelineBucket[];
}

export interface ChartOptions {
  title: string;
  series: Series[];
  /** Echoes per 100 ms bucket when every connection answers on time: the 100% line. */
  expectedPerBucket: number;
  fromMs: number;
  toMs: number;
}

const WIDTH = 900;
const LEFT = 70;
const RIGHT = 20;
const PANEL_HEIGHT = 200;
const TOP = 60;
const GAP = 70;
const WAIT_MIN_MS = 0.1;
const WAIT_MAX_MS = 10_000;
const SHARE_MAX = 1.5;

const esc = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

interface Panel {
  top: number;
  y: (value: number) => number;
  ticks: { value: number; label: string }[];
  label: string;
}

export function pauseChart(options: ChartOptions): string {
  const plotWidth = WIDTH - LEFT - RIGHT;
  const x = (t: number): number => LEFT + ((t - options.fromMs) / (options.toMs - options.fromMs)) * plotWidth;
  const logSpan = Math.log10(WAIT_MAX_MS) - Math.log10(WAIT_MIN_MS);
  const waitPanel: Panel = {
    top: TOP,
    y: (ms) =>
      TOP +
      PANEL_HEIGHT -
      ((Math.log10(Math.min(WAIT_MAX_MS, Math.max(WAIT_MIN_MS, ms))) - Math.log10(WAIT_MIN_MS)) / logSpan) * PANEL_HEIGHT,
    ticks: [0.1, 1, 10, 50, 100, 1000, 10_000].map((v) => ({ value: v, label: v >= 1000 ? `${v / 1000} s` : `${v} ms` })),
    label: 'longest echo wait in each 100 ms',
  };
  const shareTop = TOP + PANEL_HEIGHT + GAP;
  const sharePanel: Panel = {
    top: shareTop,
    y: (share) => shareTop + PANEL_HEIGHT - (Math.min(SHARE_MAX, share) / SHARE_MAX) * PANEL_HEIGHT,
    ticks: [0, 0.5, 1, 1.5].map((v) => ({ value: v, label: `${v * 100}%` })),
    label: 'echoes in each 100 ms, of the steady rate',
  };
  const height = shareTop + PANEL_HEIGHT + 60;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="sans-serif" font-size="12">`,
    `<title>${esc(options.title)}</title>`,
    `<rect width="${WIDTH}" height="${height}" fill="white"/>`,
    `<text x="${LEFT}" y="24" font-size="15" font-weight="bold">${esc(options.title)}</text>`,
  ];

  for (const panel of [waitPanel, sharePanel]) {
    out.push(`<text x="${LEFT}" y="${panel.top - 8}" fill="#333">${esc(panel.label)}</text>`);
    for (const tick of panel.ticks) {
      const y = panel.y(tick.value).toFixed(1);
      const strong = tick.value === 50 || tick.value === 1;
      out.push(`<line x1="${LEFT}" x2="${WIDTH - RIGHT}" y1="${y}" y2="${y}" stroke="${strong ? '#bbb' : '#eee'}"/>`);
      out.push(`<text x="${LEFT - 6}" y="${y}" dy="4" text-anchor="end" fill="#555">${tick.label}</text>`);
    }
    out.push(`<rect x="${LEFT}" y="${panel.top}" width="${plotWidth}" height="${PANEL_HEIGHT}" fill="none" stroke="#999"/>`);
    for (let s = Math.ceil(options.fromMs / 1000); s <= options.toMs / 1000; s++) {
      const px = x(s * 1000).toFixed(1);
      out.push(`<text x="${px}" y="${panel.top + PANEL_HEIGHT + 16}" text-anchor="middle" fill="#555">${s} s</text>`);
    }
    const zero = x(0).toFixed(1);
    out.push(`<line x1="${zero}" x2="${zero}" y1="${panel.top}" y2="${panel.top + PANEL_HEIGHT}" stroke="#444" stroke-dasharray="4 3"/>`);
  }
  out.push(`<text x="${x(0) + 4}" y="${TOP + 12}" fill="#444">switch</text>`);

  for (const series of options.series) {
    const buckets = series.timeline.filter((b) => b.t >= options.fromMs && b.t < options.toMs);
    // A bucket without echoes has no wait to show: the line breaks there instead of dropping to 0.
    const waits: string[] = [];
    let open = false;
    for (const b of buckets) {
      if (b.echoes === 0) {
        open = false;
        continue;
      }
      const y = waitPanel.y(b.maxRttMs).toFixed(1);
      waits.push(`${open ? 'L' : 'M'}${x(b.t).toFixed(1)},${y} L${x(b.t + 100).toFixed(1)},${y}`);
      open = true;
    }
    out.push(`<path d="${waits.join(' ')}" fill="none" stroke="${series.color}" stroke-width="1.6" stroke-opacity="0.85"/>`);
    const shares = buckets.map((b, i) => {
      const y = sharePanel.y(b.echoes / options.expectedPerBucket).toFixed(1);
      return `${i === 0 ? 'M' : 'L'}${x(b.t).toFixed(1)},${y} L${x(b.t + 100).toFixed(1)},${y}`;
    });
    out.push(`<path d="${shares.join(' ')}" fill="none" stroke="${series.color}" stroke-width="1.6" stroke-opacity="0.85"/>`);
  }

  const legendY = height - 22;
  options.series.forEach((series, i) => {
    const lx = LEFT + i * 200;
    out.push(`<line x1="${lx}" x2="${lx + 24}" y1="${legendY}" y2="${legendY}" stroke="${series.color}" stroke-width="3"/>`);
    out.push(`<text x="${lx + 30}" y="${legendY}" dy="4">${esc(series.name)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
