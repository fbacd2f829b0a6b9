// A hand-written SVG line chart (no browser, no dependency): stacked panels sharing the time axis,
// one per quantity (throughput, latency percentiles, RSS...), each with its own y scale and legend.

export interface Series {
  name: string
  /** [x, y] points; x in seconds. */
  points: ReadonlyArray<readonly [number, number]>
}

export interface Panel {
  title: string
  unit: string
  series: Series[]
}

export interface Chart {
  title: string
  subtitle?: string
  panels: Panel[]
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b']
const WIDTH = 800
const PANEL_H = 170
const LEFT = 70
const RIGHT = 20
const TOP = 50
const GAP = 40

export function escapeXml (s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;')
}

/** A round number ≥ max for the axis top, and a tick step. */
function niceScale (max: number): { top: number, step: number } {
  if (!(max > 0) || !Number.isFinite(max)) return { top: 1, step: 0.25 }
  const mag = 10 ** Math.floor(Math.log10(max))
  for (const m of [1, 2, 2.5, 5, 10]) {
    const top = m * mag
    if (top >= max) return { top, step: top / 4 }
  }
  return { top: 10 * mag, step: 2.5 * mag }
}

const fmt = (v: number): string => {
  if (v === 0) return '0'
  if (Math.abs(v) >= 1e6) return `${Number((v / 1e6).toFixed(2))}M`
  if (Math.abs(v) >= 1e4) return `${Number((v / 1e3).toFixed(1))}k`
  return String(Number(v.toPrecision(3)))
}

export function renderSvg (chart: Chart): string {
  const height = TOP + chart.panels.length * (PANEL_H + GAP) + 10
  const plotW = WIDTH - LEFT - RIGHT
  let xMax = 1
  for (const p of chart.panels) for (const s of p.series) for (const [x] of s.points) if (Number.isFinite(x)) xMax = Math.max(xMax, x)
  const xs = niceScale(xMax)
  const out: string[] = []
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="sans-serif" font-size="11">`)
  out.push(`<rect x="0" y="0" width="${WIDTH}" height="${height}" fill="#ffffff"/>`)
  out.push(`<text x="${LEFT}" y="20" font-size="15" font-weight="bold">${escapeXml(chart.title)}</text>`)
  if (chart.subtitle !== undefined) out.push(`<text x="${LEFT}" y="37" fill="#555555">${escapeXml(chart.subtitle)}</text>`)
  chart.panels.forEach((panel, pi) => {
    const y0 = TOP + pi * (PANEL_H + GAP) + 15
    let yMax = 0
    for (const s of panel.series) for (const [, y] of s.points) if (Number.isFinite(y)) yMax = Math.max(yMax, y)
    const ys = niceScale(yMax)
    const px = (x: number): number => LEFT + (x / xs.top) * plotW
    const py = (y: number): number => y0 + PANEL_H - (y / ys.top) * PANEL_H
    out.push('<g>')
    out.push(`<text x="${LEFT}" y="${y0 - 5}" font-weight="bold">${escapeXml(panel.title)} (${escapeXml(panel.unit)})</text>`)
    for (let v = 0; v <= ys.top + ys.step / 2; v += ys.step) {
      const y = py(v).toFixed(1)
      out.push(`<line x1="${LEFT}" y1="${y}" x2="${WIDTH - RIGHT}" y2="${y}" stroke="#e5e5e5"/>`)
      out.push(`<text x="${LEFT - 5}" y="${y}" text-anchor="end" dominant-baseline="middle" fill="#555555">${escapeXml(fmt(v))}</text>`)
    }
    for (let v = 0; v <= xs.top + xs.step / 2; v += xs.step) {
      const x = px(v).toFixed(1)
      out.push(`<line x1="${x}" y1="${y0}" x2="${x}" y2="${y0 + PANEL_H}" stroke="#f0f0f0"/>`)
      out.push(`<text x="${x}" y="${y0 + PANEL_H + 13}" text-anchor="middle" fill="#555555">${escapeXml(fmt(v))} s</text>`)
    }
    out.push(`<rect x="${LEFT}" y="${y0}" width="${plotW}" height="${PANEL_H}" fill="none" stroke="#999999"/>`)
    panel.series.forEach((s, si) => {
      const color = COLORS[si % COLORS.length]!
      const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)).map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`)
      if (pts.length > 0) out.push(`<polyline fill="none" stroke="${color}" stroke-width="1.5" points="${pts.join(' ')}"/>`)
      const lx = WIDTH - RIGHT - 150
      const ly = y0 + 12 + si * 14
      out.push(`<line x1="${lx}" y1="${ly}" x2="${lx + 18}" y2="${ly}" stroke="${color}" stroke-width="2"/>`)
      out.push(`<text x="${lx + 23}" y="${ly}" dominant-baseline="middle">${escapeXml(s.name)}</text>`)
    })
    out.push('</g>')
  })
  out.push('</svg>')
  return `${out.join('\n')}\n`
}
