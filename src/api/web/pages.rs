//! The pages, as maud templates: sign-in, a party's dashboard (a borrower's open offers
//! in plain words and loans; a lender's offer form, loans and pending co-signatures),
//! and the loan page (live part, escrow with its QR code, PSBT download and upload,
//! repayment, exit kit).

use std::collections::BTreeMap;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::svg;
use super::FormError;
use crate::api::auth::{Caller, Role};
use crate::api::view::LoanView;
use crate::loan::calc::{self, Accrual};
use crate::loan::{Bps, Currency, Fiat, Price};
use crate::store::StoredEvent;
use crate::util::grouped_minor as money;

fn layout(title: &str, caller: Option<&Caller>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · btc-escrow" }
                link rel="stylesheet" href="/assets/style.css";
            }
            body {
                header {
                    a.brand href="/" { "btc-escrow" }
                    @if let Some(c) = caller {
                        span.who { (c.role.as_str()) " " (c.party_id) }
                        form.inline method="post" action="/signout" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn sign_in(error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            p { "Paste the token your service gave you (a lender's or a borrower's)." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/signin" {
                label for="token" { "Token" }
                input #token name="token" type="password" autocomplete="off" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

fn state_name(loan: &LoanView) -> String {
    serde_json::to_value(loan.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

use crate::util::btc;

fn pct(bps: u32) -> String {
    crate::util::percent(u64::from(bps))
}

fn cur(minor: u64, loan: &LoanView) -> String {
    format!("{} {}", money(minor), loan.terms.currency)
}

/// An open offer in plain words, with the current price `price` (minor per BTC).
fn offer_words(loan: &LoanView, price: Option<u64>) -> Markup {
    let t = &loan.terms;
    let days = t.term_secs / 86_400;
    let at_maturity = Currency::new(&t.currency).ok().and_then(|c| {
        Accrual::new(Fiat::new(t.principal_minor, c), Bps(t.apr_bps), 0)
            .owed(t.term_secs)
            .ok()
    });
    html! {
        p { "You get " strong { (cur(t.principal_minor, loan)) } " for " (days) " days at "
            (pct(t.apr_bps)) " a year"
            @if let Some(o) = at_maturity { ": " (cur(o.minor, loan)) " to repay at maturity" } "." }
        // What the engine would compute at acceptance (the same functions): the
        // collateral required at this price, and the prices at which it breaches.
        @if let Some((p, lock, call, liq)) = price.and_then(|p| {
            let c = Currency::new(&t.currency).ok()?;
            let lock = calc::required_collateral(Fiat::new(t.principal_minor, c), Bps(t.initial_ltv_bps), Price::new(p, c)).ok()?;
            let at = |bps| calc::liquidation_price(t.principal_minor, lock, Bps(bps));
            Some((p, lock, at(t.margin_call_ltv_bps)?, at(t.liquidation_ltv_bps)?))
        }) {
            p { "At today's " (cur(p, loan)) " per BTC you lock " strong { (btc(lock.to_sat())) }
                " (" (pct(t.initial_ltv_bps)) " loan-to-value)." }
            p { "You are margin-called if BTC falls to "
                strong { (cur(call, loan)) }
                " and liquidated at "
                strong { (cur(liq, loan)) }
                " or below (" (t.confirm_ticks) " price readings in a row; interest raises both a little over time), paying the lender what is owed plus "
                (pct(t.liquidation_penalty_bps)) "; the rest comes back to you." }
        }
        p.muted { "If the service disappears: the lender can claim alone " (t.grace_blocks)
            " blocks after maturity; you can recover alone " (t.recovery_delay_blocks) " blocks after that." }
    }
}

fn field_error(error: Option<&FormError>, name: &str) -> Markup {
    html! {
        @if let Some(e) = error.filter(|e| e.field.as_deref() == Some(name)) {
            span.error role="alert" data-field=(name) { (e.detail) }
        }
    }
}

const OFFER_FIELDS: [(&str, &str, &str); 15] = [
    ("principal_minor", "Principal (cents)", "1000000"),
    ("currency", "Currency", "USD"),
    ("apr_bps", "APR (bps)", "1000"),
    ("term_secs", "Term (seconds)", "7776000"),
    ("initial_ltv_bps", "Initial LTV (bps)", "5000"),
    ("margin_call_ltv_bps", "Margin call LTV (bps)", "7000"),
    ("liquidation_ltv_bps", "Liquidation LTV (bps)", "8000"),
    ("liquidation_penalty_bps", "Penalty (bps)", "500"),
    ("hysteresis_bps", "Hysteresis (bps)", "200"),
    ("confirm_ticks", "Confirm ticks", "3"),
    ("grace_blocks", "Grace (blocks)", "144"),
    ("recovery_delay_blocks", "Recovery delay (blocks)", "1000"),
    ("funding_deadline", "Funding deadline (unix s)", ""),
    ("lender_payout_address", "Your payout address", ""),
    ("min_confirmations", "Confirmations", "1"),
];

fn loans_table(loans: &[LoanView]) -> Markup {
    html! {
        table {
            thead { tr { th { "Loan" } th { "State" } th { "Principal" } th { "Collateral" } th { "LTV" } } }
            tbody {
                @for l in loans {
                    tr {
                        td { a href={ "/loans/" (l.id) } { (l.id) } }
                        td.state { (state_name(l)) }
                        td { (cur(l.terms.principal_minor, l)) }
                        td { (btc(l.collateral_sat)) }
                        td { (l.ltv_bps.map_or("–".to_owned(), pct)) }
                    }
                }
            }
        }
    }
}

fn outputs(loan: &LoanView) -> Markup {
    html! {
        @if let Some(p) = &loan.pending_psbt {
            p { "A " strong { (p.kind) } " waits for a co-signature (attempt " (p.attempt) "), fee " (btc(p.fee_sat)) ":" }
            ul.outputs {
                @for o in &p.outputs {
                    li { (btc(o.amount_sat)) " to the " (o.role) " at " code { (o.address.clone().unwrap_or_default()) } }
                }
            }
        }
    }
}

pub fn dashboard(
    caller: &Caller,
    loans: &[LoanView],
    offers: &[LoanView],
    error: Option<&FormError>,
    form: Option<&BTreeMap<String, String>>,
    payout_hint: Option<String>,
    price: Option<u64>,
) -> Markup {
    layout(
        "Loans",
        Some(caller),
        html! {
            @match caller.role {
                Role::Borrower => {
                    h1 { "Open offers" }
                    @if offers.is_empty() { p.muted { "No open offer right now." } }
                    @for o in offers {
                        section.offer data-loan=(o.id) {
                            h2 { "Offer " (o.id) }
                            (offer_words(o, price))
                            form method="post" action={ "/loans/" (o.id) "/accept" } {
                                label { "Your return address (where your coins come back)"
                                    input name="borrower_return_address" required; }
                                button type="submit" { "Accept" }
                            }
                        }
                    }
                    h1 { "Your loans" }
                    (loans_table(loans))
                }
                Role::Lender => {
                    h1 { "Waiting for your co-signature" }
                    @let pending: Vec<&LoanView> = loans.iter().filter(|l| l.pending_psbt.is_some()).collect();
                    @if pending.is_empty() { p.muted { "Nothing." } }
                    @for l in pending {
                        section { h2 { a href={ "/loans/" (l.id) } { (l.id) } } (outputs(l)) }
                    }
                    h1 { "Your loans" }
                    (loans_table(loans))
                    h1 { "New offer" }
                    @if let Some(e) = error.filter(|e| e.field.is_none()) { p.error role="alert" { (e.detail) } }
                    form #offer method="post" action="/offers" {
                        @for (name, label, default) in OFFER_FIELDS {
                            @let value = form.and_then(|f| f.get(name).cloned()).unwrap_or_else(|| match name {
                                "funding_deadline" => (crate::util::unix_now() + 86_400).to_string(),
                                "lender_payout_address" => payout_hint.clone().unwrap_or_default(),
                                _ => default.to_owned(),
                            });
                            div.field {
                                label for=(name) { (label) }
                                input id=(name) name=(name) value=(value);
                                (field_error(error, name))
                            }
                        }
                        button type="submit" { "Offer" }
                    }
                }
                Role::Admin => {
                    h1 { "All loans" }
                    (loans_table(loans))
                }
            }
        },
    )
}

/// What the loan page shows.
pub struct LoanPage<'a> {
    pub caller: &'a Caller,
    pub loan: &'a LoanView,
    pub events: &'a [StoredEvent],
    pub history: &'a [(u64, u64)],
    pub tip: Option<u32>,
    pub error: Option<&'a FormError>,
}

/// The part that updates live (state, gauge, chart, numbers, pending PSBT, events).
pub fn loan_live(v: &LoanPage) -> Markup {
    let l = v.loan;
    let t = &l.terms;
    html! {
        p { "State: " strong.state data-state=(state_name(l)) { (state_name(l).replace('_', " ")) }
            @if l.breach_ticks > 0 { " · breach " (l.breach_ticks) "/" (t.confirm_ticks) } }
        (PreEscaped(svg::ltv_gauge(l.ltv_bps, t.margin_call_ltv_bps, t.liquidation_ltv_bps)))
        (PreEscaped(svg::price_chart(v.history, l.liquidation_price_minor)))
        dl {
            dt { "Owed now" } dd.owed { (cur(l.owed_minor, l)) }
            dt { "Repaid" } dd { (cur(l.repaid_minor, l)) }
            dt { "Collateral" } dd { (btc(l.collateral_sat)) " of " (btc(l.required_collateral_sat)) " required"
                " (counted at " (t.min_confirmations) " confirmation" @if t.min_confirmations != 1 { "s" } ")" }
            dt { "Margin call below" } dd { (l.margin_call_price_minor.map_or("–".to_owned(), |p| cur(p, l))) }
            dt { "Liquidation below" } dd { (l.liquidation_price_minor.map_or("–".to_owned(), |p| cur(p, l))) }
            @for txid in &l.txids { dt { "Transaction" } dd { code { (txid) } } }
        }
        @if l.adjustment.is_some() || !l.adjustments.is_empty() {
            h2 { "Partial liquidations and withdrawals" }
            table.adjustments {
                tr { th { "" } th { "Kind" } th { "Paid" } th { "Debt repaid" } th { "Back in escrow" } th { "LTV" } th { "Price" } }
                @for a in l.adjustment.iter().chain(l.adjustments.iter()) {
                    tr {
                        td { @if a.txid.is_some() { "settled" } @else { "pending" } }
                        td { (serde_json::to_value(a.kind).ok().and_then(|v| v.as_str().map(|s| s.replace('_', " "))).unwrap_or_default()) }
                        td { (btc(a.paid_sat)) }
                        td { (cur(a.repay_minor, l)) }
                        td { (btc(a.change_sat)) }
                        td { (pct(a.ltv_before_bps)) " → " (pct(a.ltv_after_bps)) }
                        td { (cur(a.price_minor, l)) }
                    }
                }
            }
        }
        (outputs(l))
        h2 { "Events" }
        ol.events {
            @for e in v.events.iter().rev() {
                @let ev = serde_json::to_value(&e.event).unwrap_or_default();
                li { span.seq { "#" (e.global_seq) } " " strong { (ev["event"].as_str().unwrap_or("")) } }
            }
        }
    }
}

pub fn loan(v: &LoanPage) -> Markup {
    let l = v.loan;
    let t = &l.terms;
    let state = state_name(l);
    let is_lender = v.caller.role == Role::Lender;
    layout(
        &format!("Loan {}", l.id),
        Some(v.caller),
        html! {
            h1 { "Loan " (l.id) }
            p { (cur(t.principal_minor, l)) " for " (t.term_secs / 86_400) " days at " (pct(t.apr_bps))
                " · margin call at " (pct(t.margin_call_ltv_bps)) " · liquidation at " (pct(t.liquidation_ltv_bps))
                " · penalty " (pct(t.liquidation_penalty_bps))
                @if t.margin_call_levels_bps.len() > 1 {
                    " · margin-call levels " (t.margin_call_levels_bps.iter().map(|b| pct(*b)).collect::<Vec<_>>().join(", "))
                }
                @if let (true, Some(target)) = (t.partial_liquidation, t.target_ltv_bps) {
                    " · a breach sells only what brings it back to " (pct(target))
                } }
            @if let Some(e) = v.error { p.error role="alert" data-field=(e.field.clone().unwrap_or_default()) { (e.detail) } }
            @if let Some(e) = &l.escrow {
                @if state == "awaiting_collateral" && !is_lender {
                    section.fund {
                        h2 { "Send the collateral" }
                        p { "Send " strong.amount { (btc(l.required_collateral_sat.saturating_sub(l.collateral_sat))) }
                            " to " code.address { (e.address) } }
                        div.qr { (PreEscaped(svg::qr(&e.address, l.required_collateral_sat.saturating_sub(l.collateral_sat)))) }
                        p.muted { "Check it first from your own key: " code { "btc-escrow verify-escrow --loan " (l.id) " --key YOUR.key --role borrower --terms OFFER.toml --electrum URL" } }
                    }
                }
            }
            div #live data-loan=(l.id) { (loan_live(v)) }
            @if l.pending_psbt.is_some() {
                section.psbt {
                    h2 { "Co-sign" }
                    p { a href={ "/loans/" (l.id) "/pending.psbt" } download { "Download the PSBT" }
                        ", sign it with your own wallet or " code { "btc-escrow psbt sign" } ", and upload it:" }
                    form method="post" action={ "/loans/" (l.id) "/psbt" } {
                        textarea name="psbt" rows="4" placeholder="signed PSBT, base64" required {}
                        button type="submit" { "Upload the signed PSBT" }
                    }
                }
            }
            @if is_lender && (state == "active" || state == "margin_call") {
                section {
                    h2 { "Record a repayment" }
                    form method="post" action={ "/loans/" (l.id) "/repay" } {
                        input type="hidden" name="key" value=(crate::init::random_hex(16));
                        label { "Amount received (cents)" input name="amount_minor" inputmode="numeric" required; }
                        button type="submit" { "Record" }
                    }
                }
            }
            @if !is_lender && state == "active" && l.pending_psbt.is_none() {
                section.withdraw {
                    h2 { "Withdraw collateral" }
                    p.muted { "Up to what keeps the loan at " (pct(t.initial_ltv_bps.saturating_sub(crate::engine::WITHDRAWAL_MARGIN.0))) " at the current price; you sign the transaction first, the service checks the limit again and signs last." }
                    form method="post" action={ "/loans/" (l.id) "/withdraw" } {
                        label { "Amount (sats)" input name="amount_sat" inputmode="numeric" required; }
                        button type="submit" { "Ask to withdraw" }
                    }
                }
            }
            @if let Some(e) = &l.escrow {
                section.exit {
                    h2 { "Exit kit: leaving without the service" }
                    @let when = |h: u32| match v.tip {
                        Some(tip) if h > tip => format!("height {h}, about {} days from now", (u64::from(h - tip) * 600) / 86_400),
                        Some(_) => format!("height {h}, reached"),
                        None => format!("height {h}"),
                    };
                    p { "The lender may claim alone from " (when(e.default_height)) "; the borrower may recover alone from " (when(e.recovery_height)) "." }
                    p { "Keep the loan's JSON and your key:" }
                    pre { "btc-escrow loan show " (l.id) " --json > loan.json\n"
                          "btc-escrow exit --loan-file loan.json --key YOUR.key --electrum tcp://YOUR-ELECTRUM:50001 \\\n    --to YOUR_ADDRESS --fee-rate 5 --write exit.hex" }
                    details {
                        summary { "Descriptor and BIP-388 wallet policy" }
                        p { "Descriptor (Bitcoin Core):" } pre.wrap { (e.multipath_descriptor) }
                        p { "Wallet policy (hardware wallets), receive index " (e.index) ":" } pre.wrap { (e.wallet_policy.template) }
                        ul { @for k in &e.wallet_policy.keys { li { code { (k) } } } }
                    }
                }
            }
            script src="/assets/live.js" {}
        },
    )
}

const PLANNER_FIELDS: [(&str, &str); 13] = [
    ("collateral_sat", "Collateral (sats)"),
    ("price_minor", "BTC price (cents)"),
    ("currency", "Currency"),
    ("ltv_bps", "LTV (bps)"),
    ("apr_bps", "APR (bps)"),
    ("term_secs", "Term (seconds)"),
    ("margin_call_ltv_bps", "Margin call LTV (bps)"),
    ("liquidation_ltv_bps", "Liquidation LTV (bps)"),
    ("liquidation_penalty_bps", "Penalty (bps)"),
    ("liquidation_fee_sat", "Liquidation fee (sats)"),
    ("asic_cost_minor", "Miner: ASIC cost (cents)"),
    ("mined_sat_per_day", "Miner: sats mined per day"),
    ("power_cost_minor_per_day", "Miner: power per day (cents)"),
];

/// The loan planner: the form, and the plan (or the field at fault).
pub fn planner(
    fields: &BTreeMap<String, String>,
    result: Result<&crate::loan::plan::Plan, &FormError>,
) -> Markup {
    let c = fields.get("currency").cloned().unwrap_or_default();
    let m = |minor: u64| format!("{} {c}", money(minor));
    layout(
        "Loan planner",
        None,
        html! {
            h1 { "Loan planner" }
            p.muted { "What a loan on your bitcoin would look like: the same arithmetic the service decides with." }
            form #offer method="get" action="/planner" {
                @for (name, label) in PLANNER_FIELDS {
                    div.field {
                        label for=(name) { (label) }
                        input id=(name) name=(name) value=(fields.get(name).cloned().unwrap_or_default());
                        (field_error(result.err(), name))
                    }
                }
                button type="submit" { "Plan" }
            }
            @match result {
                Err(e) => { @if e.field.is_none() { p.error role="alert" { (e.detail) } } }
                Ok(p) => {
                    section.plan {
                        h2 { "The loan" }
                        dl {
                            dt { "Principal" } dd #principal { (m(p.principal_minor)) }
                            dt { "Interest over the term" } dd #interest { (m(p.interest_minor)) }
                            dt { "Owed at the end" } dd { (m(p.owed_at_term_minor)) }
                            dt { "Margin call at or below" } dd #margin-call { (p.margin_call_price_minor.map_or("–".to_owned(), m)) }
                            dt { "Liquidation at or below" } dd #liquidation { (p.liquidation_price_minor.map_or("–".to_owned(), m)) }
                        }
                        h2 { "If the price falls" }
                        table #stress {
                            thead { tr { th { "Fall" } th { "Price" } th { "LTV" } th { "State" } th { "Liquidation pays lender / you" } } }
                            tbody {
                                @for r in &p.stress {
                                    tr data-fall=(r.fall_pct) {
                                        td { "−" (r.fall_pct) " %" }
                                        td { (m(r.price_minor)) }
                                        td.ltv { (pct(r.ltv_bps)) }
                                        td.state { (r.state.replace('_', " ")) }
                                        td { (btc(r.lender_sat)) " / " (btc(r.borrower_sat)) }
                                    }
                                }
                            }
                        }
                        @if let Some(mp) = &p.miner {
                            h2 { "Mining it back" }
                            p { "Net mining income " (m(mp.net_minor_per_day)) " a day: "
                                @match mp.days_to_repay {
                                    Some(d) => { strong #days-to-repay { (d) } " days repay the loan." }
                                    None => { "mining does not cover the power; it never repays the loan." }
                                }
                                @if !mp.principal_covers_asics { " The principal does not cover the ASICs." } }
                            table {
                                thead { tr { th { "Day" } th { "Owed" } th { "LTV at today's price" } } }
                                tbody { @for d in &mp.path { tr { td { (d.day) } td { (m(d.owed_minor)) } td { (pct(d.ltv_bps)) } } } }
                            }
                        }
                    }
                }
            }
        },
    )
}
