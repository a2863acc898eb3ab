//! Pictures the server draws: the LTV gauge against the margin-call and liquidation
//! lines, the BTC price history with the liquidation price across it, and the escrow
//! address as a QR code. SVG text, no script; every number placed is an integer.

/// A horizontal gauge of `ltv_bps` (0–100 %) with the two lines marked.
pub fn ltv_gauge(ltv_bps: Option<u32>, margin_call_bps: u32, liquidation_bps: u32) -> String {
    const W: u32 = 600;
    let x = |bps: u32| bps.min(10_000) * W / 10_000;
    let (fill, colour) = match ltv_bps {
        Some(l) if l >= liquidation_bps => (x(l), "#c0392b"),
        Some(l) if l >= margin_call_bps => (x(l), "#e67e22"),
        Some(l) => (x(l), "#27ae60"),
        None => (0, "#999"),
    };
    let label = ltv_bps.map_or("LTV: no fresh price".to_owned(), |l| {
        format!("LTV {}", crate::util::percent(u64::from(l)))
    });
    format!(
        r##"<svg class="gauge" viewBox="0 0 {W} 56" role="img" aria-label="{label}" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="8" width="{W}" height="22" rx="4" fill="#eee"/>
<rect x="0" y="8" width="{fill}" height="22" rx="4" fill="{colour}"/>
<line x1="{mc}" y1="2" x2="{mc}" y2="36" stroke="#e67e22" stroke-width="3"/>
<line x1="{lq}" y1="2" x2="{lq}" y2="36" stroke="#c0392b" stroke-width="3"/>
<text x="4" y="52" font-size="13">{label}</text>
<text x="{mc_t}" y="52" font-size="12" fill="#e67e22">margin call {mcp} %</text>
<text x="{lq_t}" y="52" font-size="12" fill="#c0392b" text-anchor="end">liquidation {lqp} %</text>
</svg>"##,
        mc = x(margin_call_bps),
        lq = x(liquidation_bps),
        mc_t = x(margin_call_bps).saturating_sub(150),
        lq_t = W,
        mcp = margin_call_bps / 100,
        lqp = liquidation_bps / 100,
    )
}

/// The price history (`(unix secs, minor units)`, oldest first) as a line, with the
/// liquidation price as a dashed line across it.
pub fn price_chart(history: &[(u64, u64)], liquidation_minor: Option<u64>) -> String {
    const W: u64 = 600;
    const H: u64 = 160;
    if history.is_empty() {
        return r#"<p class="muted">No price yet.</p>"#.to_owned();
    }
    let mut lo = history.iter().map(|p| p.1).min().unwrap_or(0);
    let mut hi = history.iter().map(|p| p.1).max().unwrap_or(1);
    if let Some(l) = liquidation_minor {
        lo = lo.min(l);
        hi = hi.max(l);
    }
    // Ten per cent of room above and below.
    let pad = ((hi - lo) / 10).max(hi / 100).max(1);
    let (lo, hi) = (lo.saturating_sub(pad), hi + pad);
    let y = |p: u64| H - (p.saturating_sub(lo)) * H / (hi - lo).max(1);
    let n = history.len() as u64;
    let x = |i: u64| if n <= 1 { W } else { i * W / (n - 1) };
    let points: Vec<String> = history
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("{},{}", x(i as u64), y(*p)))
        .collect();
    let last = history.last().map_or(0, |p| p.1);
    let liq = liquidation_minor.map_or(String::new(), |l| {
        format!(
            r##"<line x1="0" y1="{v}" x2="{W}" y2="{v}" stroke="#c0392b" stroke-dasharray="6 4"/><text x="4" y="{t}" font-size="12" fill="#c0392b">liquidation {p}</text>"##,
            v = y(l),
            t = y(l).saturating_sub(4).max(12),
            p = crate::util::grouped_minor(l)
        )
    });
    format!(
        r##"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="BTC price, last {last_t}" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="{W}" height="{H}" fill="#fafafa"/>
<polyline fill="none" stroke="#2c3e50" stroke-width="2" points="{pts}"/>
{liq}
<text x="{W}" y="14" font-size="12" text-anchor="end">{last_t}</text>
</svg>"##,
        pts = points.join(" "),
        last_t = crate::util::grouped_minor(last),
    )
}

/// The BIP-21 URI of `address` for `sats`, as a QR code (SVG).
pub fn qr(address: &str, sats: u64) -> String {
    let uri = format!(
        "bitcoin:{}?amount={}.{:08}",
        address.to_uppercase(),
        sats / 100_000_000,
        sats % 100_000_000
    );
    match qrcode::QrCode::new(uri.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color>()
            .min_dimensions(200, 200)
            .build(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauge_marks_its_lines_and_colours_the_band() {
        let g = ltv_gauge(Some(7_140), 7_000, 8_000);
        assert!(g.contains("LTV 71.40 %") && g.contains("#e67e22"));
        assert!(g.contains(r#"x1="420""#) && g.contains(r#"x1="480""#));
        assert!(ltv_gauge(None, 7_000, 8_000).contains("no fresh price"));
    }

    #[test]
    fn the_chart_spans_the_prices_and_the_liquidation_line() {
        let c = price_chart(
            &[(1, 10_000_000), (2, 7_000_000), (3, 6_200_000)],
            Some(6_250_000),
        );
        assert!(c.contains("polyline") && c.contains("liquidation 62,500.00"));
        assert!(c.contains("62,000.00"));
        assert_eq!(crate::util::grouped_minor(123_456_789), "1,234,567.89");
    }

    #[test]
    fn the_qr_code_is_an_svg() {
        let q = qr("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", 20_000_000);
        assert!(q.starts_with("<?xml") || q.contains("<svg"));
    }
}
