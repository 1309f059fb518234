//! The HTML report: a timeline of the attack.
//!
//! One self-contained page (inline style and script, nothing fetched, fine opened from a
//! file), in the manner of Porcupine's visualiser: the verdict per property with its
//! violations, then one lane per client process with each operation a bar from invocation to
//! completion, coloured by how it ended, and the nemesis's faults as vertical marks across
//! every lane. Hovering an operation lights up every operation of its key (and tenant) on
//! all lanes and shows its details; a violation lights up the operations it names.
//!
//! The SVG is written here rather than drawn by the script, so the page still shows the
//! timeline with scripts off and the tests can read it; the script only adds the
//! highlighting and the details panel, from the operations embedded as JSON.

use std::collections::{BTreeMap, BTreeSet};

use oncely_core::check::{Fault, FaultKind, Operation, Outcome, Property, Verdict};
use sha2::{Digest as _, Sha256};

/// The width of the lane labels, kept out of the scrolling plot so they stay in view.
const LABEL_W: f64 = 96.0;
/// Room on either side of the plot, so that a bar or a fault label at either end of the
/// attack is not clipped.
const PAD: f64 = 14.0;
/// One row of bars in a lane.
const ROW_H: f64 = 18.0;
/// A bar's height, less than a row so that neighbouring rows stay apart.
const BAR_H: f64 = 12.0;
/// Above and below the rows of a lane.
const LANE_PAD: f64 = 3.0;
/// A process that overlaps itself gets extra rows, up to this many; beyond, bars overlap
/// rather than let one lane grow without bound.
const MAX_ROWS: usize = 6;
/// A row of fault labels.
const FAULT_ROW_H: f64 = 13.0;
/// Fault labels are staggered over this many rows before one is left to its tooltip.
const FAULT_ROWS: usize = 3;
/// The tick labels of the time axis.
const AXIS_H: f64 = 18.0;
/// An operation that completed within the millisecond it was sent must still be seen and
/// hovered.
const MIN_BAR: f64 = 3.0;
/// The plot's width stays between these: narrow attacks fill the page, long ones scroll
/// rather than squeeze thousands of operations into a few pixels each.
const MIN_W: f64 = 900.0;
const MAX_W: f64 = 3_000.0;
/// Pixels per operation of the busiest lane, and per median duration, that the width aims
/// at.
const PX_PER_OP: f64 = 8.0;
const PX_PER_MEDIAN: f64 = 2.0;
/// Tick labels at least this far apart.
const TICK_PX: f64 = 90.0;
/// Operation ids listed in one violation's row; the row still lights up all of them.
const SHOWN_IDS: usize = 40;

/// The page for one attack: `title` (the target, say), the `operations` of its history, the
/// `faults` the nemesis caused, the `verdict` on them, and the `effects` counted per
/// reference (a reference not listed took none).
///
/// Everything taken from the history is escaped: it is what the system under test (or
/// whoever wrote the history file) chose to put there.
pub fn html(
    title: &str,
    operations: &[Operation],
    faults: &[Fault],
    verdict: &Verdict,
    effects: &BTreeMap<String, u64>,
) -> String {
    let layout = Layout::new(operations, faults);
    let mut out = String::with_capacity(24 * 1024 + operations.len() * 420);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    // Defence in depth behind the escaping: nothing is fetched, and only the script below
    // (by its hash) runs, so an injected handler would not.
    out.push_str(&format!(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; script-src '{}'\">\n",
        script_hash()
    ));
    out.push_str(&format!(
        "<title>{} \u{2014} oncely check</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(title)
    ));
    // The hatching lives outside the plot so that the legend has it even when there is no
    // plot; a zero-sized SVG rather than a hidden one, since patterns in an undisplayed SVG
    // do not paint.
    out.push_str(
        "<svg width=\"0\" height=\"0\" style=\"position:absolute\" aria-hidden=\"true\">\
         <defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" \
         patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#e4e6e9\"/>\
         <line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#9aa0a6\" stroke-width=\"2.2\"/>\
         </pattern></defs></svg>\n",
    );
    header(&mut out, title, operations, faults, verdict, &layout);
    properties(&mut out, verdict);
    legend(&mut out);
    out.push_str("<section class=\"main\">\n<div class=\"timeline\">\n");
    if layout.span.is_none() {
        out.push_str(
            "<p class=\"empty\">The history is empty: no operations and no faults to draw.</p>\n",
        );
    } else {
        timeline(&mut out, operations, faults, verdict, &layout);
    }
    out.push_str("</div>\n<aside class=\"panel\" id=\"details\" aria-live=\"polite\">\n");
    out.push_str(
        "<h2>Details</h2>\n<p class=\"hint\">Hover over an operation to see it and every \
         operation of its key; click to pin it (Esc or a click on the background lets go). \
         Click a violation to light up its operations.</p>\n</aside>\n</section>\n",
    );
    out.push_str("<script type=\"application/json\" id=\"oncely-ops\">");
    out.push_str(&data(operations, verdict, effects, &layout));
    out.push_str("</script>\n<script>");
    out.push_str(SCRIPT);
    out.push_str("</script>\n</body>\n</html>\n");
    out
}

/// Where everything goes: the time scale and each operation's lane and row.
struct Layout {
    /// The first instant drawn and how many milliseconds the plot covers (at least 1, so
    /// an instantaneous history still has a scale); `None` for an empty history.
    span: Option<(i64, f64)>,
    /// The plot's width in pixels, without the padding.
    width: f64,
    /// One per process, in process order.
    lanes: Vec<Lane>,
    /// Per operation (by index): its lane and its row in that lane.
    place: Vec<(usize, usize)>,
    /// The y of the first lane's top: the fault labels and the axis are above it.
    top: f64,
    /// The whole plot's height.
    height: f64,
}

struct Lane {
    process: u32,
    y: f64,
    rows: usize,
    ops: usize,
}

impl Layout {
    fn new(operations: &[Operation], faults: &[Fault]) -> Layout {
        let top = FAULT_ROW_H * FAULT_ROWS as f64 + AXIS_H + 4.0;
        let instants = || {
            operations
                .iter()
                .flat_map(|o| [o.invoked_at, end_of(o)])
                .chain(faults.iter().map(|f| f.at))
        };
        let span = match (instants().min(), instants().max()) {
            (Some(lo), Some(hi)) => Some((lo, between(lo, hi).max(1.0))),
            _ => None,
        };

        let mut by_process: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, o) in operations.iter().enumerate() {
            by_process.entry(o.process).or_default().push(i);
        }
        let busiest = by_process.values().map(Vec::len).max().unwrap_or(0);
        let mut durations: Vec<f64> = operations
            .iter()
            .map(|o| between(o.invoked_at, end_of(o)))
            .collect();
        durations.sort_by(f64::total_cmp);
        let median = durations
            .get(durations.len() / 2)
            .copied()
            .unwrap_or(1.0)
            .max(1.0);
        let total = span.map_or(1.0, |(_, s)| s);
        let width = (busiest as f64 * PX_PER_OP)
            .max(total / median * PX_PER_MEDIAN)
            .clamp(MIN_W, MAX_W);

        let mut place = vec![(0, 0); operations.len()];
        let mut lanes = Vec::with_capacity(by_process.len());
        let mut y = top;
        for (lane, (process, mut members)) in by_process.into_iter().enumerate() {
            members.sort_by_key(|&i| (operations[i].invoked_at, operations[i].id));
            // Greedy interval partitioning by time: a client that waits for each answer
            // (the usual case) keeps one row, even where its bars touch.
            let mut ends: Vec<i64> = Vec::new();
            for &i in &members {
                let o = &operations[i];
                let row = match ends.iter().position(|&e| e <= o.invoked_at) {
                    Some(r) => r,
                    None if ends.len() < MAX_ROWS => {
                        ends.push(i64::MIN);
                        ends.len() - 1
                    }
                    None => ends
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, e)| **e)
                        .map_or(0, |(r, _)| r),
                };
                ends[row] = ends[row].max(end_of(o));
                place[i] = (lane, row);
            }
            let rows = ends.len().max(1);
            lanes.push(Lane {
                process,
                y,
                rows,
                ops: members.len(),
            });
            y += rows as f64 * ROW_H + 2.0 * LANE_PAD;
        }
        // A history of faults alone still gets a band to draw them across.
        let drawn = if lanes.is_empty() { y + ROW_H * 2.0 } else { y };
        let height = drawn + 6.0;
        Layout {
            span,
            width,
            lanes,
            place,
            top,
            height,
        }
    }

    fn x(&self, t: i64) -> f64 {
        match self.span {
            Some((t0, s)) => PAD + between(t0, t) / s * self.width,
            None => PAD,
        }
    }
}

/// When an operation is drawn to end: a completion stamped before its invocation (a clock
/// stepped back) is drawn as an instant instead of a bar running backwards.
fn end_of(o: &Operation) -> i64 {
    o.completed_at.max(o.invoked_at)
}

/// Milliseconds from `a` to `b`, without overflow whatever the history says.
fn between(a: i64, b: i64) -> f64 {
    (i128::from(b) - i128::from(a)) as f64
}

/// A bar's left and right x, at least MIN_BAR apart. A pixel is taken off the right so
/// that back-to-back operations of one client read as separate bars.
fn bar_x(o: &Operation, span: Option<(i64, f64)>, width: f64) -> (f64, f64) {
    let Some((t0, s)) = span else {
        return (PAD, PAD + MIN_BAR);
    };
    let x0 = PAD + between(t0, o.invoked_at) / s * width;
    let x1 = PAD + between(t0, end_of(o)) / s * width - 1.0;
    (x0, x1.max(x0 + MIN_BAR))
}

fn header(
    out: &mut String,
    title: &str,
    operations: &[Operation],
    faults: &[Fault],
    verdict: &Verdict,
    layout: &Layout,
) {
    out.push_str(&format!(
        "<header>\n<h1>{}</h1>\n<p class=\"sub\">oncely check</p>\n",
        esc(title)
    ));
    if verdict.passed() {
        out.push_str("<p class=\"verdict pass\">Verdict: every property held</p>\n");
    } else {
        out.push_str(&format!(
            "<p class=\"verdict fail\">Verdict: FAILED \u{2014} {} violation{}</p>\n",
            verdict.violations.len(),
            plural(verdict.violations.len())
        ));
    }
    let mut facts = vec![
        format!("{} operation{}", operations.len(), plural(operations.len())),
        format!(
            "{} client process{}",
            layout.lanes.len(),
            if layout.lanes.len() == 1 { "" } else { "es" }
        ),
        format!("{} nemesis fault{}", faults.len(), plural(faults.len())),
    ];
    if let Some((t0, s)) = layout.span {
        facts.push(format!(
            "started {}",
            oncely_core::conditional::format_rfc3339(oncely_core::Timestamp(t0))
        ));
        facts.push(format!("lasted {}", duration(s)));
    }
    out.push_str(&format!(
        "<p class=\"facts\">{}</p>\n</header>\n",
        facts.join(" \u{b7} ")
    ));
}

fn properties(out: &mut String, verdict: &Verdict) {
    out.push_str(
        "<section class=\"properties\">\n<table>\n<thead><tr><th class=\"result\">result</th><th>property</th>\
         <th class=\"num\">checked</th><th class=\"num\">violated</th></tr></thead>\n<tbody>\n",
    );
    for p in Property::ALL {
        let checked = verdict.checked.get(&p).copied().unwrap_or(0);
        let broken: Vec<_> = verdict.of(p).collect();
        let (class, mark) = if broken.is_empty() {
            ("pass", "PASS")
        } else {
            ("fail", "FAIL")
        };
        out.push_str(&format!(
            "<tr class=\"prop {class}\" id=\"prop-{name}\"><td><span class=\"badge {class}\">{mark}</span></td>\
             <td><code>{name}</code></td><td class=\"num\">{checked}</td>\
             <td class=\"num\">{n}</td></tr>\n",
            name = p.as_str(),
            n = broken.len()
        ));
        for v in broken {
            let ids: Vec<String> = v.operations.iter().map(u64::to_string).collect();
            out.push_str(&format!(
                "<tr class=\"viol\" tabindex=\"0\" data-ops=\"{}\"><td colspan=\"4\">key <code>{}</code>",
                ids.join(" "),
                esc(&v.key)
            ));
            if !v.tenant.is_empty() {
                out.push_str(&format!(" \u{b7} tenant <code>{}</code>", esc(&v.tenant)));
            }
            out.push_str(" \u{b7} operations");
            for id in ids.iter().take(SHOWN_IDS) {
                out.push_str(&format!(" <a href=\"#op-{id}\" data-op=\"{id}\">{id}</a>"));
            }
            if ids.len() > SHOWN_IDS {
                out.push_str(&format!(" and {} more", ids.len() - SHOWN_IDS));
            }
            out.push_str(&format!(
                "<div class=\"detail\">{}</div></td></tr>\n",
                esc(&v.detail)
            ));
        }
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn legend(out: &mut String) {
    let swatch = |class: &str, label: &str| {
        format!(
            "<span class=\"item\"><svg width=\"26\" height=\"14\" aria-hidden=\"true\">\
             <rect class=\"op {class}\" x=\"2\" y=\"1\" width=\"22\" height=\"12\" rx=\"2\"/></svg>{label}</span>"
        )
    };
    let mark = |class: &str, label: &str| {
        format!(
            "<span class=\"item\"><svg width=\"14\" height=\"14\" aria-hidden=\"true\">\
             <g class=\"fault {class}\"><line x1=\"7\" y1=\"0\" x2=\"7\" y2=\"14\"/></g></svg>{label}</span>"
        )
    };
    out.push_str("<p class=\"legend\">");
    out.push_str(&swatch("ok", "success (2xx)"));
    out.push_str(&swatch("fail", "definite failure (4xx)"));
    out.push_str(&swatch("info", "indeterminate (5xx, timeout, reset)"));
    out.push_str(&swatch("ok v", "named by a violation"));
    out.push_str(&mark("crash", "kill, store-stop"));
    out.push_str(&mark("restart", "start, store-start"));
    out.push_str(&mark("proxy", "proxy fault"));
    out.push_str("</p>\n");
}

fn timeline(
    out: &mut String,
    operations: &[Operation],
    faults: &[Fault],
    verdict: &Verdict,
    layout: &Layout,
) {
    let h = layout.height;
    let full = layout.width + 2.0 * PAD;
    let bottom = h - 6.0;
    out.push_str("<div class=\"lanes\">\n");

    out.push_str(&format!(
        "<svg class=\"labels\" width=\"{LABEL_W}\" height=\"{h:.0}\" aria-hidden=\"true\">\n"
    ));
    out.push_str(&format!(
        "<text class=\"axis-name\" x=\"{:.1}\" y=\"{:.1}\">time</text>\n",
        LABEL_W - 8.0,
        layout.top - 8.0
    ));
    for lane in &layout.lanes {
        let mid = lane.y + LANE_PAD + lane.rows as f64 * ROW_H / 2.0;
        out.push_str(&format!(
            "<text class=\"lane\" x=\"{:.1}\" y=\"{mid:.1}\">process {}<title>process {}: {} operation{}</title></text>\n",
            LABEL_W - 8.0,
            lane.process,
            lane.process,
            lane.ops,
            plural(lane.ops)
        ));
    }
    out.push_str("</svg>\n<div class=\"scroll\">\n");

    out.push_str(&format!(
        "<svg id=\"plot\" width=\"{full:.0}\" height=\"{h:.0}\" role=\"img\" \
         aria-label=\"timeline of {} operations\">\n",
        operations.len()
    ));
    for (i, lane) in layout.lanes.iter().enumerate() {
        out.push_str(&format!(
            "<rect class=\"stripe{}\" x=\"0\" y=\"{:.1}\" width=\"{full:.0}\" height=\"{:.1}\"/>\n",
            if i % 2 == 1 { " odd" } else { "" },
            lane.y,
            lane.rows as f64 * ROW_H + 2.0 * LANE_PAD
        ));
    }

    // The axis: relative time from the first instant drawn.
    if let Some((_, s)) = layout.span {
        let step = tick_step(s, layout.width);
        let mut k = 0u64;
        loop {
            let t = k as f64 * step;
            if t > s + 1e-9 {
                break;
            }
            let x = PAD + t / s * layout.width;
            out.push_str(&format!(
                "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\"/>\
                 <text class=\"tick\" x=\"{x:.1}\" y=\"{:.1}\">{}</text>\n",
                layout.top - 4.0,
                layout.top - 8.0,
                tick_label(t, step, s)
            ));
            k += 1;
        }
    }

    let named: BTreeSet<u64> = verdict
        .violations
        .iter()
        .flat_map(|v| v.operations.iter().copied())
        .collect();
    for (i, o) in operations.iter().enumerate() {
        let (lane, row) = layout.place[i];
        let Some(l) = layout.lanes.get(lane) else {
            continue;
        };
        let (x0, x1) = bar_x(o, layout.span, layout.width);
        let y = l.y + LANE_PAD + row as f64 * ROW_H + (ROW_H - BAR_H) / 2.0;
        out.push_str(&format!(
            "<rect class=\"op {}{}\" id=\"op-{}\" data-i=\"{i}\" x=\"{x0:.1}\" y=\"{y:.1}\" \
             width=\"{:.1}\" height=\"{BAR_H}\" rx=\"2\"/>\n",
            outcome_class(&o.outcome),
            if named.contains(&o.id) { " v" } else { "" },
            o.id,
            x1 - x0
        ));
    }

    let mut sorted: Vec<&Fault> = faults.iter().collect();
    sorted.sort_by_key(|f| f.at);
    let mut row_ends = [f64::NEG_INFINITY; FAULT_ROWS];
    for f in sorted {
        let x = layout.x(f.at);
        let kind = f.kind.as_str();
        let at = layout.span.map_or(0.0, |(t0, _)| between(t0, f.at));
        out.push_str(&format!(
            "<g class=\"fault {}\"><title>{kind} at +{}{}{}</title>\
             <line x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{bottom:.1}\"/>\
             <line class=\"hit\" x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{:.1}\"/>",
            fault_class(f.kind),
            duration(at),
            if f.detail.is_empty() { "" } else { ": " },
            esc(&f.detail),
            layout.top
        ));
        // Labels are staggered over a few rows; one that fits in none is left to its
        // tooltip rather than drawn over another.
        let text_w = kind.len() as f64 * 6.4 + 8.0;
        let flip = x + text_w > full;
        let (from, to) = if flip {
            (x - text_w, x)
        } else {
            (x, x + text_w)
        };
        if let Some(r) = row_ends.iter().position(|&e| e <= from) {
            row_ends[r] = to;
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\"{}>{kind}</text>",
                if flip { x - 3.0 } else { x + 3.0 },
                FAULT_ROW_H * (r as f64 + 1.0) - 3.0,
                if flip { " text-anchor=\"end\"" } else { "" }
            ));
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n</div>\n</div>\n");
}

/// The operations for the script, one object each, in the order of the bars' `data-i`.
fn data(
    operations: &[Operation],
    verdict: &Verdict,
    effects: &BTreeMap<String, u64>,
    layout: &Layout,
) -> String {
    let mut groups: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut size: Vec<usize> = Vec::new();
    let mut group_of = Vec::with_capacity(operations.len());
    for o in operations {
        let next = groups.len();
        let g = *groups
            .entry((o.tenant.as_str(), o.key.as_str()))
            .or_insert(next);
        if g == size.len() {
            size.push(0);
        }
        size[g] += 1;
        group_of.push(g);
    }
    let mut named: BTreeMap<u64, BTreeSet<&'static str>> = BTreeMap::new();
    for v in &verdict.violations {
        for id in &v.operations {
            named.entry(*id).or_default().insert(v.property.as_str());
        }
    }
    let t0 = layout.span.map_or(0, |(t0, _)| t0);
    let items: Vec<serde_json::Value> = operations
        .iter()
        .zip(&group_of)
        .map(|(o, &g)| {
            let (outcome, status, reason, response) = match &o.outcome {
                Outcome::Success { status, response } => {
                    ("success", Some(*status), None, Some(response.as_str()))
                }
                Outcome::Failure { status } => ("failure", Some(*status), None, None),
                Outcome::Indeterminate { reason } => {
                    ("indeterminate", None, Some(reason.as_str()), None)
                }
            };
            serde_json::json!({
                "id": o.id,
                "process": o.process,
                "key": o.key,
                "tenant": o.tenant,
                "reference": o.reference,
                "request": o.request,
                "outcome": outcome,
                "status": status,
                "reason": reason,
                "response": response,
                "echoed": o.echoed,
                "at": between(t0, o.invoked_at),
                "took": between(o.invoked_at, o.completed_at),
                "effects": effects.get(&o.reference).copied().unwrap_or(0),
                "group": g,
                "same": size.get(g).copied().unwrap_or(1),
                "violations": named.get(&o.id).map(|s| s.iter().collect::<Vec<_>>()).unwrap_or_default(),
            })
        })
        .collect();
    json_for_script(&serde_json::Value::Array(items))
}

/// JSON safe inside a `<script>` element: `<` (and, for good measure, `>` and `&`) can
/// only occur inside JSON strings, where their `\u` escapes mean the same, so no key can
/// close the element or open a comment.
fn json_for_script(v: &serde_json::Value) -> String {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Text escaped for HTML and SVG, in content and in quoted attributes alike.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn outcome_class(o: &Outcome) -> &'static str {
    match o {
        Outcome::Success { .. } => "ok",
        Outcome::Failure { .. } => "fail",
        Outcome::Indeterminate { .. } => "info",
    }
}

fn fault_class(k: FaultKind) -> &'static str {
    if k.is_crash() {
        "crash"
    } else if matches!(k, FaultKind::Start | FaultKind::StoreStart) {
        "restart"
    } else {
        "proxy"
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The smallest step of 1, 2 or 5 times a power of ten (in ms) that keeps tick labels
/// TICK_PX apart on a plot `width` pixels wide covering `span` ms.
fn tick_step(span: f64, width: f64) -> f64 {
    let least = (span / width * TICK_PX).max(1.0);
    let mut power = 1.0;
    loop {
        for m in [1.0, 2.0, 5.0] {
            if m * power >= least {
                return m * power;
            }
        }
        power *= 10.0;
    }
}

/// A tick's label: milliseconds for a short attack, else seconds with as many decimals as
/// the step needs.
fn tick_label(t: f64, step: f64, span: f64) -> String {
    if span < 1000.0 {
        format!("{t:.0} ms")
    } else if step >= 1000.0 {
        format!("{:.0} s", t / 1000.0)
    } else {
        let decimals = if step >= 100.0 {
            1
        } else if step >= 10.0 {
            2
        } else {
            3
        };
        format!("{:.*} s", decimals, t / 1000.0)
    }
}

fn duration(ms: f64) -> String {
    if ms.abs() < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.3} s", ms / 1000.0)
    }
}

/// The Content-Security-Policy source that lets exactly SCRIPT run.
fn script_hash() -> String {
    format!("sha256-{}", base64(&Sha256::digest(SCRIPT.as_bytes())))
}

/// Standard base64 with padding: a dependency for one 32-byte hash is not worth it.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

const STYLE: &str = r#"
:root { color-scheme: light; --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #ffffff; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; padding: 20px 24px 40px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--bg); }
h1 { font-size: 20px; margin: 0; font-weight: 600; word-break: break-all; }
h2 { font-size: 14px; margin: 0 0 8px; font-weight: 600; }
code, .mono { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.sub { margin: 0 0 10px; color: var(--muted); font-size: 12px; }
.verdict { display: inline-block; margin: 0 0 6px; padding: 4px 10px; border-radius: 6px; font-weight: 600; }
.verdict.pass { background: #e6f4ea; color: #1e6b34; border: 1px solid #b7dfc2; }
.verdict.fail { background: #fdecea; color: #a4161a; border: 1px solid #f3b8b3; }
.facts { margin: 0 0 14px; color: var(--muted); }
.properties { max-height: 40vh; overflow: auto; border: 1px solid var(--line); border-radius: 6px; margin-bottom: 12px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--soft); font-weight: 600; position: sticky; top: 0; }
th.result { width: 72px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; width: 90px; }
.badge { display: inline-block; min-width: 42px; text-align: center; padding: 0 6px; border-radius: 4px; font-size: 12px; font-weight: 700; }
.badge.pass { background: #e6f4ea; color: #1e6b34; }
.badge.fail { background: #d93025; color: #fff; }
tr.viol td { padding-left: 92px; background: #fffafa; cursor: pointer; word-break: break-word; }
tr.viol:hover td, tr.viol.on td { background: #fdecea; }
tr.viol a { color: #a4161a; }
tr.viol .detail { color: var(--muted); }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 0 0 10px; color: var(--muted); font-size: 12.5px; }
.legend .op { cursor: default; }
.legend .item { display: inline-flex; align-items: center; gap: 5px; }
.main { display: grid; grid-template-columns: minmax(0, 1fr) 300px; gap: 16px; align-items: start; }
.timeline { border: 1px solid var(--line); border-radius: 6px; overflow: hidden; }
.lanes { display: flex; }
.labels { flex: none; background: var(--soft); border-right: 1px solid var(--line); }
.scroll { overflow-x: auto; flex: 1; }
.empty { margin: 0; padding: 24px; color: var(--muted); }
svg text { font: 11px system-ui, sans-serif; fill: var(--muted); }
text.lane { text-anchor: end; dominant-baseline: middle; fill: var(--ink); }
text.axis-name { text-anchor: end; font-style: italic; }
text.tick { text-anchor: middle; font-variant-numeric: tabular-nums; }
line.tick { stroke: #e3e7eb; stroke-width: 1; }
.stripe { fill: #ffffff; }
.stripe.odd { fill: #f7f9fb; }
.op { stroke-width: 1; cursor: pointer; }
.op.ok { fill: #58b368; stroke: #2f7d3f; }
.op.fail { fill: #f2b84b; stroke: #b7791f; }
.op.info { fill: url(#hatch); stroke: #80868b; stroke-dasharray: 3 2; }
.op.v { stroke: #d0021b; stroke-width: 2; stroke-dasharray: none; }
.focus .op { opacity: 0.16; }
.focus .op.hi { opacity: 1; }
.op.hi { stroke: #1f2328; stroke-width: 1.5; }
.op.hi.v { stroke: #d0021b; stroke-width: 2.5; }
.op.sel, .op.hi.sel, .op.hi.v.sel { stroke: #000000; stroke-width: 2.5; stroke-dasharray: none; }
.fault line { stroke-width: 1.5; }
.fault text { font-size: 11px; font-weight: 600; }
.fault.crash line { stroke: #c5221f; }
.fault.crash text { fill: #c5221f; }
.fault.restart line { stroke: #1a73e8; }
.fault.restart text { fill: #1a73e8; }
.fault.proxy line { stroke: #a58fd6; stroke-dasharray: 4 3; }
.fault.proxy text { fill: #8a73c2; font-weight: 500; }
.fault line.hit { stroke: transparent; stroke-width: 9; stroke-dasharray: none; }
.panel { position: sticky; top: 12px; border: 1px solid var(--line); border-radius: 6px; padding: 12px 14px; background: var(--soft); }
.panel .hint { color: var(--muted); margin: 0; }
.panel dl { display: grid; grid-template-columns: auto minmax(0, 1fr); gap: 3px 10px; margin: 0; }
.panel dt { color: var(--muted); }
.panel dd { margin: 0; word-break: break-all; }
.panel .warn { color: #a4161a; font-weight: 600; }
@media (max-width: 900px) { .main { grid-template-columns: minmax(0, 1fr); } .panel { position: static; } }
"#;

/// The only script of the page: highlighting and the details panel. It builds the panel
/// with `textContent`, never markup, since every value shown comes from the history.
const SCRIPT: &str = r#"
(function () {
  'use strict';
  var plot = document.getElementById('plot');
  var panel = document.getElementById('details');
  var hint = panel.innerHTML;
  var src = document.getElementById('oncely-ops');
  var ops = src ? JSON.parse(src.textContent) : [];
  var bars = [], groups = {}, byId = {};
  if (plot) {
    var rects = plot.querySelectorAll('rect.op');
    for (var j = 0; j < rects.length; j++) {
      var i = +rects[j].getAttribute('data-i');
      var o = ops[i];
      if (!o) continue;
      bars[i] = rects[j];
      (groups[o.group] = groups[o.group] || []).push(rects[j]);
      if (!(o.id in byId)) byId[o.id] = i;
    }
  }
  var lit = [], sel = null, row = null, pinned = false;

  function time(ms) {
    return Math.abs(ms) < 1000 ? ms + ' ms' : (ms / 1000).toFixed(3) + ' s';
  }
  function clear() {
    for (var k = 0; k < lit.length; k++) lit[k].classList.remove('hi');
    lit = [];
    if (sel) sel.classList.remove('sel');
    sel = null;
    if (row) row.classList.remove('on');
    row = null;
    if (plot) plot.classList.remove('focus');
  }
  function light(list) {
    clear();
    for (var k = 0; k < list.length; k++) list[k].classList.add('hi');
    lit = list.slice();
    if (plot) plot.classList.add('focus');
  }
  function blank() {
    panel.innerHTML = hint;
  }
  function show(i, note) {
    var o = ops[i];
    panel.textContent = '';
    var h = document.createElement('h2');
    h.textContent = 'Operation ' + o.id + (pinned ? ' (pinned)' : '');
    panel.appendChild(h);
    var dl = document.createElement('dl');
    function add(name, value, warn) {
      var dt = document.createElement('dt'), dd = document.createElement('dd');
      dt.textContent = name;
      dd.textContent = value;
      if (warn) dd.className = 'warn';
      dl.appendChild(dt);
      dl.appendChild(dd);
    }
    add('process', String(o.process));
    add('key', o.key);
    add('tenant', o.tenant === '' ? '(none)' : o.tenant);
    add('reference', o.reference);
    add('request', o.request);
    add('outcome', o.outcome + (o.status !== null ? ' ' + o.status : '') + (o.reason !== null ? ': ' + o.reason : ''));
    add('response', o.response === null ? '\u2014' : o.response);
    add('echoed', o.echoed === null ? '\u2014' : o.echoed + (o.echoed !== o.reference ? '  (not its reference)' : ''),
        o.echoed !== null && o.echoed !== o.reference);
    add('invoked', '+' + time(o.at));
    add('duration', time(o.took));
    add('effects', o.effects + ' (of reference ' + o.reference + ')', o.effects > 1);
    add('same key', o.same + ' operation' + (o.same === 1 ? '' : 's') + ' lit');
    if (o.violations.length) add('violates', o.violations.join(', '), true);
    if (note) add('violation', note, true);
    panel.appendChild(dl);
  }
  function focusOp(i) {
    var o = ops[i];
    light(groups[o.group] || []);
    sel = bars[i];
    if (sel) sel.classList.add('sel');
    show(i);
  }
  function hit(e) {
    var t = e.target;
    return t && t.closest ? t.closest('rect.op') : null;
  }
  function reveal(el) {
    if (el && el.scrollIntoView) el.scrollIntoView({ block: 'nearest', inline: 'center', behavior: 'smooth' });
  }
  if (plot) {
    plot.addEventListener('mouseover', function (e) {
      var t = hit(e);
      if (t && !pinned) focusOp(+t.getAttribute('data-i'));
    });
    plot.addEventListener('mouseleave', function () {
      if (!pinned) { clear(); blank(); }
    });
    plot.addEventListener('click', function (e) {
      var t = hit(e);
      if (t) { pinned = true; focusOp(+t.getAttribute('data-i')); }
      else { pinned = false; clear(); blank(); }
    });
  }
  document.addEventListener('keydown', function (e) {
    if (e.key === 'Escape') { pinned = false; clear(); blank(); }
  });
  var rows = document.querySelectorAll('tr.viol');
  for (var r = 0; r < rows.length; r++) {
    rows[r].addEventListener('keydown', function (e) {
      if (e.key === 'Enter') this.click();
    });
    rows[r].addEventListener('click', function (e) {
      var a = e.target.closest ? e.target.closest('a[data-op]') : null;
      e.preventDefault();
      if (a) {
        var only = byId[a.getAttribute('data-op')];
        if (only === undefined) return;
        pinned = true;
        focusOp(only);
        reveal(bars[only]);
        return;
      }
      var ids = (this.getAttribute('data-ops') || '').split(' '), list = [], first;
      for (var k = 0; k < ids.length; k++) {
        var n = byId[ids[k]];
        if (n === undefined) continue;
        if (first === undefined) first = n;
        list.push(bars[n]);
      }
      pinned = true;
      light(list);
      row = this;
      row.classList.add('on');
      if (first !== undefined) {
        show(first, list.length + ' operation' + (list.length === 1 ? '' : 's') + ' lit');
        reveal(bars[first]);
      }
    });
  }
  var m = /^#op-(\d+)$/.exec(location.hash);
  if (m && byId[m[1]] !== undefined) { pinned = true; focusOp(byId[m[1]]); reveal(bars[byId[m[1]]]); }
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_800_000_000_000;

    fn op(
        id: u64,
        process: u32,
        key: &str,
        reference: &str,
        from: i64,
        to: i64,
        outcome: Outcome,
    ) -> Operation {
        Operation {
            id,
            process,
            key: key.into(),
            tenant: "acme".into(),
            reference: reference.into(),
            request: format!("req-{reference}"),
            invoked_at: T + from,
            completed_at: T + to,
            outcome,
            echoed: Some(reference.into()),
        }
    }

    fn ok() -> Outcome {
        Outcome::Success {
            status: 201,
            response: "51ab".into(),
        }
    }

    /// Two processes, one key on both lanes: a success, a 409, an indeterminate, a second
    /// success; a kill and a start; the key's reference took effect twice.
    fn sample() -> (Vec<Operation>, Vec<Fault>, Verdict, BTreeMap<String, u64>) {
        let operations = vec![
            op(1, 1, "k-1", "r-1", 0, 30, ok()),
            op(2, 2, "k-1", "r-1", 5, 12, Outcome::Failure { status: 409 }),
            op(
                3,
                2,
                "k-2",
                "r-2",
                20,
                2020,
                Outcome::Indeterminate {
                    reason: "timeout".into(),
                },
            ),
            op(4, 1, "k-1", "r-1", 900, 900, ok()),
        ];
        let faults = vec![
            Fault {
                at: T + 400,
                kind: FaultKind::Kill,
                detail: "kill-cmd exited 0".into(),
            },
            Fault {
                at: T + 800,
                kind: FaultKind::Start,
                detail: "start-cmd exited 0".into(),
            },
        ];
        let mut verdict = Verdict::default();
        for p in Property::ALL {
            verdict.checked.insert(p, 2);
        }
        verdict.violations.push(oncely_core::check::Violation {
            property: Property::AtMostOneEffect,
            tenant: "acme".into(),
            key: "k-1".into(),
            operations: vec![1, 4],
            detail: "reference r-1 took effect 2 times".into(),
        });
        let effects = BTreeMap::from([("r-1".to_owned(), 2), ("r-2".to_owned(), 0)]);
        (operations, faults, verdict, effects)
    }

    fn render() -> String {
        let (o, f, v, e) = sample();
        html("http://127.0.0.1:8080/payments", &o, &f, &v, &e)
    }

    /// The element whose id is `id`, up to the end of its start tag.
    fn tag<'a>(doc: &'a str, id: &str) -> &'a str {
        let needle = format!("id=\"{id}\"");
        let at = doc
            .find(&needle)
            .unwrap_or_else(|| panic!("no element {id}"));
        let start = doc[..at].rfind('<').unwrap();
        let end = at + doc[at..].find('>').unwrap();
        &doc[start..=end]
    }

    fn embedded(doc: &str) -> serde_json::Value {
        let open = "<script type=\"application/json\" id=\"oncely-ops\">";
        let from = doc.find(open).expect("no data block") + open.len();
        let to = from + doc[from..].find("</script>").unwrap();
        serde_json::from_str(&doc[from..to]).expect("the data block is JSON")
    }

    #[test]
    fn shows_every_lane_operation_fault_and_property() {
        let doc = render();
        assert!(doc.starts_with("<!DOCTYPE html>"));
        assert!(doc.contains(">process 1<title>"), "lane 1");
        assert!(doc.contains(">process 2<title>"), "lane 2");
        assert!(!doc.contains(">process 3<"));
        for id in 1..=4 {
            let bar = tag(&doc, &format!("op-{id}"));
            assert!(bar.starts_with("<rect class=\"op "), "{bar}");
        }
        assert!(tag(&doc, "op-1").contains("class=\"op ok v\""));
        assert!(tag(&doc, "op-2").contains("class=\"op fail\""));
        assert!(tag(&doc, "op-3").contains("class=\"op info\""));
        assert!(doc.contains("<g class=\"fault crash\"><title>kill at +400 ms: kill-cmd exited 0"));
        assert!(doc.contains("<g class=\"fault restart\"><title>start at +800 ms"));
        assert!(doc.contains(">kill</text>") && doc.contains(">start</text>"));
        for p in Property::ALL {
            let row = tag(&doc, &format!("prop-{}", p.as_str()));
            let want = if p == Property::AtMostOneEffect {
                "fail"
            } else {
                "pass"
            };
            assert_eq!(
                row,
                format!("<tr class=\"prop {want}\" id=\"prop-{}\">", p.as_str())
            );
        }
        assert_eq!(doc.matches(">FAIL</span>").count(), 1);
        assert_eq!(doc.matches(">PASS</span>").count(), Property::ALL.len() - 1);
        assert!(doc.contains("Verdict: FAILED"));
        assert!(doc.contains("4 operations \u{b7} 2 client processes \u{b7} 2 nemesis faults"));
        assert!(doc.contains("started 2027-01-15T08:00:00.000Z"));
    }

    #[test]
    fn a_violation_outlines_and_links_its_operations() {
        let doc = render();
        assert!(doc.contains("<tr class=\"viol\" tabindex=\"0\" data-ops=\"1 4\">"));
        assert!(doc.contains(
            "<a href=\"#op-1\" data-op=\"1\">1</a> <a href=\"#op-4\" data-op=\"4\">4</a>"
        ));
        assert!(doc.contains("reference r-1 took effect 2 times"));
        assert!(tag(&doc, "op-4").contains(" v\""));
        assert!(!tag(&doc, "op-2").contains(" v\""));
        assert!(!tag(&doc, "op-3").contains(" v\""));
    }

    #[test]
    fn the_details_come_with_the_page() {
        let doc = render();
        let ops = embedded(&doc);
        let ops = ops.as_array().unwrap();
        assert_eq!(ops.len(), 4);
        assert_eq!(ops[0]["id"], 1);
        assert_eq!(ops[0]["effects"], 2);
        assert_eq!(
            ops[0]["violations"],
            serde_json::json!(["at_most_one_effect"])
        );
        assert_eq!(ops[0]["group"], ops[1]["group"], "one key, one group");
        assert_eq!(ops[0]["group"], ops[3]["group"]);
        assert_ne!(ops[0]["group"], ops[2]["group"]);
        assert_eq!(ops[0]["same"], 3);
        assert_eq!(ops[1]["status"], 409);
        assert_eq!(ops[1]["outcome"], "failure");
        assert_eq!(ops[2]["reason"], "timeout");
        assert_eq!(ops[2]["took"], 2000.0);
        assert_eq!(ops[2]["effects"], 0);
        assert_eq!(ops[3]["at"], 900.0);
        assert_eq!(ops[0]["response"], "51ab");
        assert_eq!(ops[0]["echoed"], "r-1");
        // Each bar's data-i points at its own operation.
        for (i, o) in ops.iter().enumerate() {
            assert!(tag(&doc, &format!("op-{}", o["id"])).contains(&format!("data-i=\"{i}\"")));
        }
    }

    #[test]
    fn untrusted_text_cannot_break_out() {
        let evil = "</script><img src=x onerror=alert(1)>";
        let (mut o, mut f, mut v, mut e) = sample();
        for x in &mut o {
            x.key = evil.into();
            x.tenant = format!("t{evil}");
            x.reference = format!("r{evil}");
            x.request = format!("q{evil}");
            x.echoed = Some(format!("e{evil}"));
        }
        o[2].outcome = Outcome::Indeterminate {
            reason: format!("why{evil}"),
        };
        o[0].outcome = Outcome::Success {
            status: 200,
            response: format!("h{evil}\"'&"),
        };
        f[0].detail = format!("d{evil}");
        v.violations[0].key = evil.into();
        v.violations[0].tenant = format!("vt{evil}");
        v.violations[0].detail = format!("vd{evil}");
        e.insert(format!("r{evil}"), 3);
        let doc = html(&format!("title{evil}"), &o, &f, &v, &e);
        assert!(!doc.contains(evil), "the raw string leaked");
        assert!(!doc.contains("<img"), "an element was injected");
        assert!(!doc.contains("onerror=alert(1)>"));
        assert_eq!(
            doc.matches("</script").count(),
            2,
            "only the page's own scripts close"
        );
        assert_eq!(doc.matches("<script").count(), 2);
        assert!(
            doc.contains("&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"),
            "shown, escaped"
        );
        assert!(doc.contains("<title>title&lt;/script&gt;"));
        assert!(
            doc.contains("\\u003c/script\\u003e\\u003cimg"),
            "escaped in the JSON"
        );
        let ops = embedded(&doc);
        assert_eq!(ops[0]["key"], evil, "and the JSON still means the key");
        assert_eq!(ops[0]["response"], format!("h{evil}\"'&"));
        assert_eq!(ops[0]["effects"], 3);
        assert_eq!(
            esc("<a href='x'>\"&"),
            "&lt;a href=&#39;x&#39;&gt;&quot;&amp;"
        );
    }

    #[test]
    fn only_the_page_script_may_run() {
        let doc = render();
        let open = "<script>";
        let from = doc.find(open).unwrap() + open.len();
        let to = from + doc[from..].find("</script>").unwrap();
        let digest = Sha256::digest(&doc.as_bytes()[from..to]);
        let policy = format!("script-src 'sha256-{}'", base64(&digest));
        assert!(doc.contains(&policy), "the policy names the script's hash");
        assert!(doc.contains("default-src 'none'"));
        assert!(!doc.contains("http-equiv=\"refresh\""));
        assert!(!doc.contains(" src=\""), "nothing is fetched");
    }

    #[test]
    fn base64_matches_the_standard_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn an_empty_history_is_a_page_too() {
        let doc = html("nothing", &[], &[], &Verdict::default(), &BTreeMap::new());
        assert!(doc.contains("Verdict: every property held"));
        assert!(doc.contains("The history is empty"));
        assert!(doc.contains("0 operations \u{b7} 0 client processes \u{b7} 0 nemesis faults"));
        assert_eq!(doc.matches(">PASS</span>").count(), Property::ALL.len());
        assert!(!doc.contains("NaN") && !doc.contains("inf\""));
        assert_eq!(embedded(&doc), serde_json::json!([]));

        // Faults alone, all at one instant: a scale of 1 ms, not a division by zero.
        let faults = [Fault {
            at: 5,
            kind: FaultKind::BlackHole,
            detail: String::new(),
        }];
        let doc = html(
            "faults",
            &[],
            &faults,
            &Verdict::default(),
            &BTreeMap::new(),
        );
        assert!(doc.contains("<g class=\"fault proxy\"><title>black-hole at +0 ms</title>"));
        assert!(!doc.contains("NaN") && !doc.contains("inf\""));

        // One instantaneous operation, with a clock that stepped back.
        let o = [op(9, 0, "k", "r", 10, 3, ok())];
        let doc = html("one", &o, &[], &Verdict::default(), &BTreeMap::new());
        assert!(tag(&doc, "op-9").contains(&format!("width=\"{MIN_BAR:.1}\"")));
        assert!(!doc.contains("NaN") && !doc.contains("inf\""));
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let mut o = vec![op(1, 0, "k", "r", 0, 1, ok())];
        o[0].invoked_at = i64::MIN;
        o[0].completed_at = i64::MAX;
        let f = [Fault {
            at: 0,
            kind: FaultKind::Reset,
            detail: "x".into(),
        }];
        let doc = html("far", &o, &f, &Verdict::default(), &BTreeMap::new());
        assert!(!doc.contains("NaN") && !doc.contains("inf\""));
    }

    #[test]
    fn a_process_that_overlaps_itself_gets_rows() {
        let o = vec![
            op(1, 3, "a", "ra", 0, 100, ok()),
            op(2, 3, "b", "rb", 10, 90, ok()),
            op(3, 3, "c", "rc", 200, 300, ok()),
        ];
        let layout = Layout::new(&o, &[]);
        assert_eq!(layout.lanes.len(), 1);
        assert_eq!(layout.lanes[0].rows, 2);
        assert_eq!(layout.place, vec![(0, 0), (0, 1), (0, 0)]);
        let doc = html("rows", &o, &[], &Verdict::default(), &BTreeMap::new());
        let y = |id: &str| {
            let t = tag(&doc, id);
            let at = t.find(" y=\"").unwrap() + 4;
            t[at..at + t[at..].find('"').unwrap()].to_owned()
        };
        assert_ne!(y("op-1"), y("op-2"));
        assert_eq!(y("op-1"), y("op-3"));
    }

    #[test]
    fn a_few_thousand_operations_stay_reasonable() {
        let o = synthetic(3000, 12);
        let doc = html("big", &o, &[], &Verdict::default(), &BTreeMap::new());
        assert_eq!(doc.matches("\" id=\"op-").count(), 3000);
        assert_eq!(doc.matches("<text class=\"lane\"").count(), 12);
        assert!(doc.len() < 2_500_000, "{} bytes", doc.len());
        let layout = Layout::new(&o, &[]);
        assert!(layout.width <= MAX_W && layout.width >= MIN_W);
        assert!(layout.lanes.iter().all(|l| l.rows <= MAX_ROWS));
    }

    #[test]
    fn ticks_are_round_and_labelled_in_the_unit_that_fits() {
        assert_eq!(tick_step(1000.0, 900.0), 100.0);
        assert_eq!(tick_step(60_000.0, 900.0), 10_000.0);
        assert_eq!(tick_step(1.0, 900.0), 1.0);
        assert_eq!(tick_step(7000.0, 900.0), 1000.0);
        assert_eq!(tick_label(200.0, 100.0, 900.0), "200 ms");
        assert_eq!(tick_label(20_000.0, 10_000.0, 60_000.0), "20 s");
        assert_eq!(tick_label(1500.0, 500.0, 4000.0), "1.5 s");
        assert_eq!(tick_label(1250.0, 50.0, 2000.0), "1.25 s");
    }

    /// A deterministic history: `n` operations over `processes` lanes, keys reused across
    /// lanes, every outcome.
    fn synthetic(n: u64, processes: u32) -> Vec<Operation> {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            seed >> 33
        };
        let mut clock = vec![0i64; processes as usize];
        (0..n)
            .map(|id| {
                let p = (next() % u64::from(processes)) as u32;
                let from = clock[p as usize] + (next() % 40) as i64;
                let took = 3 + (next() % 60) as i64 + if next() % 25 == 0 { 900 } else { 0 };
                clock[p as usize] = from + took;
                let k = next() % (n / 6).max(1);
                let outcome = match next() % 10 {
                    0 | 1 => Outcome::Failure { status: 409 },
                    2 => Outcome::Indeterminate {
                        reason: "timeout".into(),
                    },
                    _ => ok(),
                };
                op(
                    id,
                    p,
                    &format!("k-{k}"),
                    &format!("r-{k}"),
                    from,
                    from + took,
                    outcome,
                )
            })
            .collect()
    }

    /// Writes a sample page to $ONCELY_TIMELINE_SAMPLE, to look at in a browser.
    #[test]
    #[ignore]
    fn writes_a_sample() {
        let Ok(path) = std::env::var("ONCELY_TIMELINE_SAMPLE") else {
            return;
        };
        let (mut o, mut f, mut v, mut e) = sample();
        let mut more = synthetic(400, 6);
        for x in &mut more {
            x.id += 100;
            x.invoked_at += 2200;
            x.completed_at += 2200;
        }
        o.extend(more);
        // What a hostile key looks like once escaped.
        let mut hostile = op(
            999,
            4,
            "</script><img src=x onerror=alert(1)>",
            "r-<b>",
            1500,
            1530,
            Outcome::Indeterminate {
                reason: "no answer: \"reset\" <br>".into(),
            },
        );
        hostile.tenant = "<i>tenant</i>".into();
        o.push(hostile);
        for (at, kind, detail) in [
            (2600, FaultKind::Reset, "connection 12"),
            (2900, FaultKind::DropResponse, "connection 15"),
            (3400, FaultKind::StoreStop, "store-stop-cmd exited 0"),
            (4200, FaultKind::StoreStart, "store-start-cmd exited 0"),
            (4300, FaultKind::Delay, "connection 20, 300 ms"),
            (4310, FaultKind::BlackHole, "connection 21"),
        ] {
            f.push(Fault {
                at: T + at,
                kind,
                detail: detail.into(),
            });
        }
        v.violations.push(oncely_core::check::Violation {
            property: Property::IdenticalSuccesses,
            tenant: "acme".into(),
            key: "k-7".into(),
            operations: o
                .iter()
                .filter(|x| x.key == "k-7" && matches!(x.outcome, Outcome::Success { .. }))
                .map(|x| x.id)
                .collect(),
            detail: "2 different successes: 201 51ab / 201 9c3e".into(),
        });
        for x in &o {
            e.entry(x.reference.clone()).or_insert(1);
        }
        let doc = html("http://127.0.0.1:8080/payments", &o, &f, &v, &e);
        std::fs::write(&path, doc).unwrap();
    }
}
