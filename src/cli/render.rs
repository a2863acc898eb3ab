//! What the parties' commands print: a readable summary of a loan, its pending PSBT and
//! its adjustments, or the JSON itself with `--json`.

use serde_json::Value;

pub(super) fn print(json_out: bool, value: &Value, human: impl FnOnce(&Value) -> String) {
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        println!("{}", human(value));
    }
}

pub(super) fn sats(v: &Value) -> String {
    v.as_u64().map_or("-".into(), btc_escrow::util::btc)
}

pub(super) fn minor(v: &Value, currency: &Value) -> String {
    v.as_u64().map_or("-".into(), |m| {
        format!(
            "{}.{:02} {}",
            m / 100,
            m % 100,
            currency.as_str().unwrap_or("")
        )
    })
}

pub(super) fn pct(v: &Value) -> String {
    v.as_u64().map_or("-".into(), btc_escrow::util::percent)
}

pub(super) fn loan_row(l: &Value) -> String {
    format!(
        "{:<14} {:<20} {:>18} {:>18} {:>9}",
        l["id"].as_str().unwrap_or(""),
        l["state"].as_str().unwrap_or(""),
        minor(&l["terms"]["principal_minor"], &l["terms"]["currency"]),
        sats(&l["collateral_sat"]),
        pct(&l["ltv_bps"]),
    )
}

pub(super) fn loan_text(l: &Value) -> String {
    let t = &l["terms"];
    let c = &t["currency"];
    let mut out = vec![
        format!("loan        {}", l["id"].as_str().unwrap_or("")),
        format!("state       {}", l["state"].as_str().unwrap_or("")),
        format!("principal   {}", minor(&t["principal_minor"], c)),
        format!("owed        {}", minor(&l["owed_minor"], c)),
        format!(
            "collateral  {} of {} required",
            sats(&l["collateral_sat"]),
            sats(&l["required_collateral_sat"])
        ),
        format!("ltv         {}", pct(&l["ltv_bps"])),
        format!(
            "margin call below {}, liquidation below {} per BTC",
            minor(&l["margin_call_price_minor"], c),
            minor(&l["liquidation_price_minor"], c)
        ),
    ];
    if let Some(e) = l["escrow"].as_object() {
        out.push(format!(
            "escrow      {} (index {}, default at {}, recovery at {})",
            e["address"].as_str().unwrap_or(""),
            e["index"],
            e["default_height"],
            e["recovery_height"]
        ));
    }
    if let Some(levels) = t["margin_call_levels_bps"]
        .as_array()
        .filter(|l| l.len() > 1)
    {
        out.push(format!(
            "margin-call levels {} ({} crossed)",
            levels.iter().map(pct).collect::<Vec<_>>().join(", "),
            l["margin_call_levels_crossed"]
        ));
    }
    if t["partial_liquidation"] == true {
        out.push(format!(
            "partial liquidation back to {}",
            pct(&t["target_ltv_bps"])
        ));
    }
    for a in l["adjustment"]
        .as_object()
        .map(|_| &l["adjustment"])
        .into_iter()
        .chain(l["adjustments"].as_array().into_iter().flatten())
    {
        out.push(format!(
            "{} {}: paid {}, repaid {}, {} back into the escrow, LTV {} -> {} at {} per BTC",
            if a["txid"].is_null() {
                "pending"
            } else {
                "settled"
            },
            a["kind"].as_str().unwrap_or(""),
            sats(&a["paid_sat"]),
            minor(&a["repay_minor"], c),
            sats(&a["change_sat"]),
            pct(&a["ltv_before_bps"]),
            pct(&a["ltv_after_bps"]),
            minor(&a["price_minor"], c),
        ));
    }
    if !l["pending_psbt"].is_null() {
        out.push(psbt_text(&l["pending_psbt"]));
    }
    out.join("\n")
}

pub(super) fn psbt_text(p: &Value) -> String {
    let mut out = vec![format!(
        "pending {} (decision {}, attempt {}), fee {}",
        p["kind"].as_str().unwrap_or(""),
        p["decision"],
        p["attempt"],
        sats(&p["fee_sat"])
    )];
    for o in p["outputs"].as_array().into_iter().flatten() {
        out.push(format!(
            "  pays {:>18} to {} ({})",
            sats(&o["amount_sat"]),
            o["address"].as_str().unwrap_or("?"),
            o["role"].as_str().unwrap_or("")
        ));
    }
    out.join("\n")
}
