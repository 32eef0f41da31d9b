//! The page frame (navigation, inline style: nothing fetched by the browser) and number formats.

use maud::{DOCTYPE, Markup, PreEscaped, html};

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;color:#1d2733;background:#f6f7f9}
nav{background:#1d2733;padding:.6em 1.2em}nav a{color:#e8edf3;margin-right:1.4em;text-decoration:none}
nav a.here{font-weight:bold;border-bottom:2px solid #7fb7ff}main{padding:1em 1.6em;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}table{border-collapse:collapse;margin:.5em 0;background:#fff}
td,th{border:1px solid #d5dae1;padding:.25em .6em;text-align:left;font-size:.92em}th{background:#eef1f5}
td.n{text-align:right;font-variant-numeric:tabular-nums}.error{color:#b00020}.ok{color:#1b7f3b}.warn{color:#a15c00}
.charts{display:flex;flex-wrap:wrap;gap:1em}.charts figure{margin:0;background:#fff;border:1px solid #d5dae1}
figcaption{font-size:.85em;padding:.2em .6em;color:#4a5868}pre{background:#fff;border:1px solid #d5dae1;padding:.8em;overflow-x:auto}
form.inline{display:inline}button{margin-right:.5em}.muted{color:#6b7785}
";

const NAV: [(&str, &str); 5] = [
    ("overview", "/"),
    ("releases", "/releases"),
    ("users", "/users"),
    ("provenance", "/provenance"),
    ("reports", "/reports"),
];

/// A whole page: `here` names the navigation entry to mark.
pub fn frame(title: &str, here: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · lazyrec console" }
                // No favicon request (it would be a 404 in the browser's console).
                link rel="icon" href="data:,";
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav {
                    @for (name, href) in NAV {
                        a href=(href) class=[(name == here).then_some("here")] { (name) }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A chart (an SVG string from [`crate::charts`]) with its caption.
pub fn figure(id: &str, caption: &str, svg: &str) -> Markup {
    html! { figure id=(id) { (PreEscaped(svg)) figcaption { (caption) } } }
}

/// `0.1234` → `12.34 %` (`—` when undefined).
pub fn pct(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    format!("{:.2} %", 100.0 * x)
}

/// Milliseconds with one decimal (`—` when undefined).
pub fn ms(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    format!("{x:.1} ms")
}

/// A time as `2026-12-06 21:04:05`.
pub fn at(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}
