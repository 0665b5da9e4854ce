//! `creditgate replay`: a period of a ledger's recorded traffic decided again under a
//! candidate policy, on a scratch copy of the balances (`docs/policy-authors.md`, section
//! 4). The ledger is only read. Prints a summary; `--report` writes one self-contained
//! HTML file (inline SVG charts drawn by plotters, and the tables), `--json` the same
//! figures for tools.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use creditgate::meter::replay::{self, Figures, ReplayConfig, ReplayProgress, ReplayReport};
use creditgate::store::StoreLocation;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plotters::prelude::*;

use crate::limits::PolicyLimitArgs;

#[derive(Args)]
pub struct ReplayArgs {
    /// The candidate policy component (.wasm).
    #[arg(long)]
    candidate: PathBuf,
    /// The ledger: a SQLite file (opened read-only; a running sidecar may keep writing
    /// it) or a postgres:// URL (read in one read-only transaction; replicas may keep
    /// writing). Both keep a log of batches; a PostgreSQL ledger's begins when a
    /// meter of this build first migrated it.
    #[arg(long, env = "CREDITGATE_DB", default_value = crate::DEFAULT_DB)]
    db: StoreLocation,
    /// The period's start: RFC 3339 (2026-11-01T00:00:00Z), a UTC date (2026-11-01) or
    /// ms since the Unix epoch. Default: the log's first batch.
    #[arg(long, value_parser = replay::parse_time)]
    from: Option<u64>,
    /// The period's end (excluded), as --from. Default: the log's last batch.
    #[arg(long, value_parser = replay::parse_time)]
    to: Option<u64>,
    /// Replay only this tenant's traffic (repeat for several).
    #[arg(long = "tenant")]
    tenants: Vec<String>,
    /// Write an HTML report (charts and tables, one file) here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where precompiled policy components are cached (none: compile each time).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Threads deciding, each a share of the tenants on a scratch state of its own.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    #[command(flatten)]
    limits: PolicyLimitArgs,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let candidate = crate::read_policy(&args.candidate)?;
    if let (Some(from), Some(to)) = (args.from, args.to) {
        anyhow::ensure!(from < to, "--from must be before --to");
    }
    let config = ReplayConfig {
        store: args.db.clone(),
        from_ms: args.from,
        to_ms: args.to,
        tenants: args.tenants.iter().cloned().collect::<BTreeSet<_>>(),
        limits: args.limits.limits(),
        compile_cache_dir: args.cache_dir.clone(),
        threads: usize::from(args.threads),
    };
    let bar = progress_bar();
    let report = replay::replay(&config, &candidate, &mut |progress: ReplayProgress| {
        bar.set_length(progress.last_seq.max(1));
        bar.set_position(progress.seq);
        bar.set_message(if progress.in_period {
            format!("{} transactions replayed", progress.transactions)
        } else {
            "balances at the period's start".to_owned()
        });
    })?;
    bar.finish_and_clear();
    print!("{}", summary(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", path.display()))?;
        println!("figures: {}", path.display());
    }
    if let Some(path) = &args.report {
        std::fs::write(path, html(&report)?)
            .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", path.display()))?;
        println!("report: {}", path.display());
    }
    Ok(())
}

/// A bar on stderr for a person at a terminal; nothing otherwise.
fn progress_bar() -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(1), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} log record {pos}/{len} {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn signed(value: i64) -> String {
    if value > 0 {
        format!("+{value}")
    } else {
        value.to_string()
    }
}

fn percent(recorded: i64, candidate: i64) -> String {
    if recorded == 0 {
        return if candidate == 0 {
            "0%".into()
        } else {
            "new".into()
        };
    }
    format!(
        "{:+.1}%",
        (candidate - recorded) as f64 * 100.0 / recorded as f64
    )
}

fn period(report: &ReplayReport) -> String {
    let when = |at: Option<u64>| at.map_or_else(|| "-".to_owned(), replay::time_text);
    format!(
        "{} to {} (batches recorded {} to {})",
        report
            .from_ms
            .map_or_else(|| "the first batch".to_owned(), |at| when(Some(at))),
        report
            .to_ms
            .map_or_else(|| "the last batch".to_owned(), |at| when(Some(at))),
        when(report.first_at_ms),
        when(report.last_at_ms),
    )
}

/// What the command prints.
fn summary(report: &ReplayReport) -> String {
    let totals = &report.totals;
    let (recorded, candidate) = totals.charged();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "replay of {} under {} {} ({})",
        report.ledger, report.candidate.name, report.candidate.version, report.candidate.digest
    );
    let _ = writeln!(out, "period: {}", period(report));
    if !report.tenants_selected.is_empty() {
        let _ = writeln!(out, "tenants: {}", report.tenants_selected.join(", "));
    }
    let _ = writeln!(
        out,
        "transactions: {} authorizes, {} settles, {} tenants",
        report.transactions,
        report.settles,
        report.by_tenant.len()
    );
    let _ = writeln!(
        out,
        "credits charged: recorded {recorded}, candidate {candidate} ({}, {})",
        signed(candidate - recorded),
        percent(recorded, candidate)
    );
    let _ = writeln!(
        out,
        "admissions flipped: {} admitted -> refused, {} refused -> admitted; partial batches changed: {}; transactions charged differently: {}",
        totals.admitted_to_refused,
        totals.refused_to_admitted,
        totals.partial_changed,
        totals.charge_changed
    );
    let _ = writeln!(out, "by operation (recorded -> candidate credits):");
    for (operation, figures) in &report.by_operation {
        let (recorded, candidate) = figures.charged();
        let _ = writeln!(
            out,
            "  {operation:<24} {recorded:>10} -> {candidate:>10} ({}), flipped {}/{}, partial {}",
            signed(candidate - recorded),
            figures.admitted_to_refused,
            figures.refused_to_admitted,
            figures.partial_changed
        );
    }
    for line in notes(report) {
        let _ = writeln!(out, "note: {line}");
    }
    let _ = writeln!(
        out,
        "replayed {} transactions in {} ms: {:.0} transactions/s (balances at the start: {} log records in {} ms)",
        report.transactions,
        report.replay_ms,
        report.transactions_per_second,
        report.batches_before,
        report.prefix_ms
    );
    out
}

/// The notes worth a person's attention.
fn notes(report: &ReplayReport) -> Vec<String> {
    let notes = &report.notes;
    let mut lines = Vec::new();
    let counted = [
        (
            notes.refusals_without_request,
            "refusals recorded before record format 8 kept no request: not replayed (refused both times)",
        ),
        (
            notes.settles_without_outcome,
            "settles recorded before record format 8 kept only their status: the candidate saw no attributes or body",
        ),
        (
            notes.settles_of_refused,
            "recorded settles of transactions the candidate refused: nothing settled",
        ),
        (
            notes.settles_after_expiry,
            "recorded settles after the candidate's hold had lapsed",
        ),
        (
            notes.candidate_failures,
            "calls the candidate failed on (refused, failing closed)",
        ),
        (
            notes.operator_refused,
            "operator decisions the candidate's ledger refused",
        ),
        (
            notes.activations_ignored,
            "policy activations recorded in the period, ignored: the candidate stays active",
        ),
    ];
    for (count, what) in counted {
        if count > 0 {
            lines.push(format!("{count} {what}"));
        }
    }
    // A period (or a start) before the log's first batch: nothing was recorded then.
    let before_log = |at: Option<u64>| {
        at.zip(report.log_first_at_ms)
            .is_some_and(|(at, first)| at < first)
    };
    match report.log_first_at_ms {
        None => lines.push("the log holds no batch: nothing to replay".to_owned()),
        Some(first) if before_log(report.from_ms) || before_log(report.to_ms) => {
            lines.push(format!(
                "the log begins at {}: nothing was recorded before it",
                replay::time_text(first)
            ));
        }
        Some(_) => {}
    }
    for example in notes
        .candidate_failure_examples
        .iter()
        .chain(&notes.operator_refused_examples)
        .take(5)
    {
        lines.push(format!("  e.g. {example}"));
    }
    lines
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// Tenants shown in the chart and the table: the largest differences first.
const TENANT_ROWS_MAX: usize = 40;
const RECORDED_COLOR: RGBColor = RGBColor(0x4c, 0x78, 0xa8);
const CANDIDATE_COLOR: RGBColor = RGBColor(0xf5, 0x85, 0x18);
const UP_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const DOWN_COLOR: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);

fn tenants_by_delta(report: &ReplayReport) -> Vec<(&String, &Figures, i64)> {
    let mut tenants: Vec<(&String, &Figures, i64)> = report
        .by_tenant
        .iter()
        .map(|(tenant, figures)| {
            let (recorded, candidate) = figures.charged();
            (tenant, figures, candidate - recorded)
        })
        .collect();
    tenants.sort_by(|a, b| b.2.abs().cmp(&a.2.abs()).then_with(|| a.0.cmp(b.0)));
    tenants
}

/// Per tenant, candidate minus recorded credits: one bar each, the largest first.
fn delta_chart(report: &ReplayReport) -> anyhow::Result<String> {
    let mut tenants = tenants_by_delta(report);
    tenants.truncate(TENANT_ROWS_MAX);
    tenants.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(b.0)));
    let mut svg = String::new();
    {
        let height = 140 + 18 * tenants.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let low = tenants.iter().map(|t| t.2).min().unwrap_or(0).min(0);
        let high = tenants.iter().map(|t| t.2).max().unwrap_or(0).max(0);
        let pad = ((high - low) / 10).max(1);
        let count = tenants.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Credits charged per tenant: candidate minus recorded",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(170)
            .build_cartesian_2d((low - pad)..(high + pad), (0..count).into_segmented())
            .map_err(chart_error)?;
        let labels: Vec<String> = tenants.iter().map(|t| t.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(count)
            .y_label_formatter(&|segment| match segment {
                SegmentValue::CenterOf(index) => labels.get(*index).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("credits")
            .draw()
            .map_err(chart_error)?;
        chart
            .draw_series(tenants.iter().enumerate().map(|(index, (_, _, delta))| {
                let color = if *delta >= 0 { UP_COLOR } else { DOWN_COLOR };
                let mut bar = Rectangle::new(
                    [
                        (0, SegmentValue::Exact(index)),
                        (*delta, SegmentValue::Exact(index + 1)),
                    ],
                    color.filled(),
                );
                bar.set_margin(3, 3, 0, 0);
                bar
            }))
            .map_err(chart_error)?;
        root.present().map_err(chart_error)?;
    }
    Ok(svg)
}

/// Credits charged per day under both policies, side by side.
fn daily_chart(report: &ReplayReport) -> anyhow::Result<String> {
    let days: Vec<(&String, i64, i64)> = report
        .daily
        .iter()
        .map(|(day, daily)| (day, daily.recorded_charged, daily.candidate_charged))
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let high = days.iter().map(|d| d.1.max(d.2)).max().unwrap_or(0).max(1);
        let count = days.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption("Credits charged per day (UTC)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d((0..count).into_segmented(), 0..(high + high / 10 + 1))
            .map_err(chart_error)?;
        let labels: Vec<String> = days.iter().map(|d| d.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(count.min(31))
            .x_label_formatter(&|segment| match segment {
                SegmentValue::CenterOf(index) => labels.get(*index).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_desc("credits")
            .draw()
            .map_err(chart_error)?;
        // Each day's segment holds two bars: recorded on the left, candidate on the right.
        for (series, color, label) in [
            (0, RECORDED_COLOR, "recorded policy"),
            (1, CANDIDATE_COLOR, "candidate"),
        ] {
            chart
                .draw_series(days.iter().enumerate().map(|(index, day)| {
                    let value = if series == 0 { day.1 } else { day.2 };
                    let mut bar = Rectangle::new(
                        [
                            (SegmentValue::Exact(index), 0),
                            (SegmentValue::Exact(index + 1), value),
                        ],
                        color.filled(),
                    );
                    let width = 800 / count as u32;
                    let half = width / 2;
                    if series == 0 {
                        bar.set_margin(0, 0, 4, half.saturating_sub(2));
                    } else {
                        bar.set_margin(0, 0, half.saturating_sub(2), 4);
                    }
                    bar
                }))
                .map_err(chart_error)?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(chart_error)?;
        root.present().map_err(chart_error)?;
    }
    Ok(svg)
}

fn chart_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot draw a chart: {error}")
}

fn figures_row(name: &str, figures: &Figures) -> String {
    let (recorded, candidate) = figures.charged();
    let ids = |ids: &[String]| escape(&ids.join(" "));
    format!(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td class=\"ids\">{}</td></tr>\n",
        escape(name),
        figures.transactions,
        recorded,
        candidate,
        if candidate > recorded {
            "up"
        } else if candidate < recorded {
            "down"
        } else {
            ""
        },
        signed(candidate - recorded),
        figures.admitted_to_refused,
        figures.refused_to_admitted,
        figures.partial_changed,
        figures.charge_changed,
        [
            ids(&figures.examples.admitted_to_refused),
            ids(&figures.examples.refused_to_admitted),
            ids(&figures.examples.partial_changed),
            ids(&figures.examples.charge_changed),
        ]
        .into_iter()
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join(" · ")
    )
}

const TABLE_HEAD: &str = "<tr><th></th><th>transactions</th><th>recorded credits</th>\
    <th>candidate credits</th><th>delta</th><th>admitted&rarr;refused</th>\
    <th>refused&rarr;admitted</th><th>partial changed</th><th>charged differently</th>\
    <th>examples (transaction ids)</th></tr>\n";

/// The whole report: one HTML file, charts inline.
fn html(report: &ReplayReport) -> anyhow::Result<String> {
    let totals = &report.totals;
    let (recorded, candidate) = totals.charged();
    let mut out = String::new();
    let title = format!(
        "Replay under {} {}",
        report.candidate.name, report.candidate.version
    );
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n\
         <style>body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0;font-size:14px}}td,th{{border:1px solid #ccc;\
         padding:3px 8px;text-align:right}}td:first-child,th:first-child,td.ids{{text-align:left}}\
         td.ids{{font-family:monospace;font-size:12px;color:#555}}.up{{color:#d62728}}\
         .down{{color:#2ca02c}}.big{{font-size:28px;font-weight:600}}.cards{{display:flex;gap:2em}}\
         .card{{border:1px solid #ddd;border-radius:6px;padding:0.8em 1.2em}}\
         code{{font-size:12px}}</style></head><body>\n",
        escape(&title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", escape(&title));
    let recorded_policies = report
        .recorded_policies
        .iter()
        .map(|policy| {
            format!(
                "{} {} <code>{}</code>",
                escape(&policy.name),
                escape(&policy.version),
                escape(&policy.digest)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "<p>Ledger <code>{}</code>, {}.<br>Recorded policy: {}.<br>Candidate: {} {} <code>{}</code>.{}</p>",
        escape(&report.ledger),
        escape(&period(report)),
        if recorded_policies.is_empty() {
            "-".to_owned()
        } else {
            recorded_policies
        },
        escape(&report.candidate.name),
        escape(&report.candidate.version),
        escape(&report.candidate.digest),
        if report.tenants_selected.is_empty() {
            String::new()
        } else {
            format!(
                "<br>Tenants: {}.",
                escape(&report.tenants_selected.join(", "))
            )
        }
    );
    let _ = writeln!(
        out,
        "<div class=\"cards\"><div class=\"card\">credits charged<div class=\"big\">{recorded} &rarr; {candidate}</div>\
         <span class=\"{}\">{} ({})</span></div>\
         <div class=\"card\">admissions flipped<div class=\"big\">{} / {}</div>admitted&rarr;refused / refused&rarr;admitted</div>\
         <div class=\"card\">partial batches changed<div class=\"big\">{}</div>of {} transactions</div></div>",
        if candidate > recorded { "up" } else { "down" },
        signed(candidate - recorded),
        percent(recorded, candidate),
        totals.admitted_to_refused,
        totals.refused_to_admitted,
        totals.partial_changed,
        report.transactions,
    );
    out.push_str(&delta_chart(report)?);
    out.push('\n');
    out.push_str(&daily_chart(report)?);
    out.push('\n');
    let _ = writeln!(out, "<h2>Per operation</h2><table>{TABLE_HEAD}");
    for (operation, figures) in &report.by_operation {
        out.push_str(&figures_row(operation, figures));
    }
    out.push_str(&figures_row("all", totals));
    out.push_str("</table>\n");
    let tenants = tenants_by_delta(report);
    let _ = writeln!(
        out,
        "<h2>Per tenant</h2><p>{} tenants{}; the largest differences first (every tenant is in the JSON figures).</p><table>{TABLE_HEAD}",
        tenants.len(),
        if tenants.len() > TENANT_ROWS_MAX {
            format!(", {TENANT_ROWS_MAX} shown")
        } else {
            String::new()
        }
    );
    for (tenant, figures, _) in tenants.iter().take(TENANT_ROWS_MAX) {
        out.push_str(&figures_row(tenant, figures));
    }
    out.push_str("</table>\n<h2>Per day (UTC)</h2><table><tr><th>day</th><th>recorded credits</th><th>candidate credits</th><th>delta</th></tr>\n");
    for (day, daily) in &report.daily {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(day),
            daily.recorded_charged,
            daily.candidate_charged,
            signed(daily.candidate_charged - daily.recorded_charged)
        );
    }
    out.push_str("</table>\n<h2>Examples</h2><table><tr><th>transaction</th><th>tenant</th><th>operation</th><th>difference</th><th>recorded</th><th>candidate</th></tr>\n");
    for example in &report.examples {
        let _ = writeln!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&example.transaction_id),
            escape(&example.tenant),
            escape(&example.operation),
            escape(&example.kind),
            escape(&example.recorded),
            escape(&example.candidate)
        );
    }
    out.push_str("</table>\n");
    let shadow = &report.shadow_view;
    let _ = writeln!(
        out,
        "<h2>As shadow mode counts</h2><p>Authorizes compared {}, settles compared {}; by kind: {}; \
         authorize delta (held + charged) {:?}; settle delta {:?}.</p>",
        shadow.authorizes_compared,
        shadow.settles_compared,
        escape(
            &shadow
                .by_kind
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        shadow.authorize_charge_delta,
        shadow.settle_charge_delta
    );
    let notes = notes(report);
    if !notes.is_empty() {
        out.push_str("<h2>Notes</h2><ul>\n");
        for note in notes {
            let _ = writeln!(out, "<li>{}</li>", escape(&note));
        }
        out.push_str("</ul>\n");
    }
    let _ = writeln!(
        out,
        "<p>Replayed {} transactions in {} ms ({:.0} transactions/s); the balances at the period's start from {} log records in {} ms. The ledger was only read.</p></body></html>",
        report.transactions,
        report.replay_ms,
        report.transactions_per_second,
        report.batches_before,
        report.prefix_ms
    );
    Ok(out)
}
