//! The soak chart: stacked panels of lines over time, written as SVG by hand.

use std::fmt::Write as _;

/// One line of a panel.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub dashed: bool,
    /// (seconds, value); a value that is not finite leaves a gap.
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title, the unit of its y axis and its lines.
pub struct Panel {
    pub title: String,
    pub unit: String,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
/// Room for the title; each line under it adds [`LINE`].
const HEADER: f64 = 52.0;
const LINE: f64 = 20.0;
/// Height of a panel's plot area.
const PLOT: f64 = 190.0;
/// Room above a plot (its title, then its legend) and below it (the time labels).
const ABOVE: f64 = 50.0;
const BELOW: f64 = 40.0;

/// A step of 1, 2 or 5 times a power of ten giving about `n` intervals up to `max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick label without needless decimals.
fn label(v: f64, step: f64) -> String {
    if step >= 1.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        let decimals = (-step.log10().floor()) as usize;
        format!("{v:.decimals$}")
    }
}

/// The whole chart: a title, lines under it (settings, results) and the panels stacked,
/// sharing a time axis from 0 to `x_max` seconds.
pub fn render(title: &str, subtitle: &[String], x_max: f64, panels: &[Panel]) -> String {
    let x_max = if x_max > 0.0 { x_max } else { 1.0 };
    let block = ABOVE + PLOT + BELOW;
    let header = HEADER + LINE * subtitle.len() as f64;
    let height = header + block * panels.len() as f64 + 10.0;
    let plot_w = WIDTH - LEFT - RIGHT;
    let x_of = |x: f64| LEFT + x / x_max * plot_w;
    let x_step = nice_step(x_max, 12.0).max(1.0);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(
        s,
        r##"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="30" font-size="20" font-weight="bold" fill="#111">{}</text>"##,
        escape(title)
    );
    for (i, line) in subtitle.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{:.1}" font-size="13" fill="#444">{}</text>"##,
            HEADER + LINE * i as f64,
            escape(line)
        );
    }

    for (k, panel) in panels.iter().enumerate() {
        let top = header + block * k as f64 + ABOVE;
        let bottom = top + PLOT;
        let y_max_data = panel
            .series
            .iter()
            .flat_map(|se| se.points.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max);
        let y_step = nice_step(
            if y_max_data > 0.0 {
                y_max_data * 1.08
            } else {
                1.0
            },
            5.0,
        );
        let y_max = ((y_max_data * 1.08 / y_step).ceil() * y_step).max(y_step);
        let y_of = |y: f64| bottom - y.clamp(0.0, y_max) / y_max * PLOT;

        // Title and legend.
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{:.1}" font-size="15" font-weight="bold" fill="#111">{} ({})</text>"##,
            top - 28.0,
            escape(&panel.title),
            escape(&panel.unit)
        );
        let mut lx = LEFT;
        for se in &panel.series {
            let dash = if se.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2.5"{dash}/>"#,
                top - 12.0,
                lx + 22.0,
                top - 12.0,
                se.color
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="12" fill="#222">{}</text>"##,
                lx + 27.0,
                top - 8.0,
                escape(&se.name)
            );
            lx += 40.0 + 6.6 * se.name.chars().count() as f64;
        }

        // Frame, grid and y labels.
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{top:.1}" width="{plot_w:.1}" height="{PLOT}" fill="#fafafa" stroke="#999"/>"##
        );
        let mut y = 0.0;
        let mut guard = 0;
        while y <= y_max * 1.0001 && guard < 50 {
            let py = y_of(y);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e0e0e0"/>"##,
                LEFT + plot_w
            );
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#333" text-anchor="end">{}</text>"##,
                LEFT - 6.0,
                py + 4.0,
                label(y, y_step)
            );
            y += y_step;
            guard += 1;
        }
        // Time grid and labels.
        let mut x = 0.0;
        let mut guard = 0;
        while x <= x_max * 1.0001 && guard < 200 {
            let px = x_of(x);
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" y1="{top:.1}" x2="{px:.1}" y2="{bottom:.1}" stroke="#eeeeee"/>"##
            );
            let _ = writeln!(
                s,
                r##"<text x="{px:.1}" y="{:.1}" font-size="11" fill="#333" text-anchor="middle">{}</text>"##,
                bottom + 15.0,
                label(x, x_step)
            );
            x += x_step;
            guard += 1;
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#555" text-anchor="end">seconds since the clients started sending</text>"##,
            LEFT + plot_w,
            bottom + 30.0
        );

        // The lines.
        for se in &panel.series {
            let mut d = String::new();
            let mut pen_down = false;
            for &(x, y) in &se.points {
                if !y.is_finite() || !x.is_finite() {
                    pen_down = false;
                    continue;
                }
                let cmd = if pen_down { 'L' } else { 'M' };
                let _ = write!(d, "{cmd}{:.1},{:.1} ", x_of(x.clamp(0.0, x_max)), y_of(y));
                pen_down = true;
            }
            if d.is_empty() {
                continue;
            }
            let dash = if se.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<path d="{}" fill="none" stroke="{}" stroke-width="1.8" stroke-linejoin="round"{dash}/>"#,
                d.trim_end(),
                se.color
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_nice() {
        assert_eq!(nice_step(60.0, 12.0), 5.0);
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert!((nice_step(0.9, 5.0) - 0.2).abs() < 1e-12);
    }
}
