//! The engine thread's loop: messages taken in order, in batches, with one store
//! flush per batch for every command that asked to be answered only once durable
//! (group commit: a burst of co-signatures costs one fsync, not one each), then the
//! effects the store says are pending (escrows to watch, transactions to broadcast).

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use super::{ChainReport, ChainRequest, ChainState, Ctx, Msg};
use crate::oracle::OracleResult;
use crate::util::unix_now;

/// The most messages handled between two flushes (bounds a durable command's wait
/// behind a flood).
const BATCH: usize = 512;

pub(super) fn run(ctx: &mut Ctx, rx: &Receiver<Msg>, chain: &Sender<ChainRequest>, tick: Duration) {
    loop {
        let first = match rx.recv_timeout(tick) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut go_on = handle(ctx, first);
        let mut handled = 1;
        while go_on && handled < BATCH {
            match rx.try_recv() {
                Ok(m) => go_on = handle(ctx, Some(m)),
                Err(_) => break,
            }
            handled += 1;
        }
        commit(ctx);
        if !go_on {
            break;
        }
        effects(ctx, chain);
    }
    if let Err(e) = ctx.engine.store().flush() {
        tracing::error!(error = %e, "flushing the store at shutdown");
    }
}

/// One message (`None`: the clock). False when the loop must stop.
fn handle(ctx: &mut Ctx, msg: Option<Msg>) -> bool {
    let now = unix_now();
    match msg {
        Some(Msg::Shutdown) => return false,
        Some(Msg::Job(job)) => job(ctx),
        Some(Msg::ChainRestarted) => {
            // Registrations and unanswered broadcasts died with the thread: again.
            ctx.registered.clear();
            ctx.in_flight.clear();
        }
        Some(Msg::Chain(report)) => on_chain(ctx, report, now),
        Some(Msg::Price(result)) => on_price(ctx, result, now),
        None => on_clock(ctx, now),
    }
    true
}

/// Flush once for every command of the batch waiting on durability, then answer
/// them (with the error if the flush failed: nothing is acknowledged that a crash
/// could lose).
fn commit(ctx: &mut Ctx) {
    if ctx.after_flush.is_empty() {
        return;
    }
    let flushed = ctx.engine.store().flush().map_err(|e| {
        tracing::error!(error = %e, "flushing the store");
        e.to_string()
    });
    for answer in ctx.after_flush.drain(..) {
        answer(flushed.clone());
    }
}

fn on_chain(ctx: &mut Ctx, report: ChainReport, now: u64) {
    let was_connected = ctx.tip().is_some();
    on_chain_report(ctx, report, now);
    if ctx.tip().is_some() != was_connected {
        ctx.chain_since = now;
    }
}

fn on_chain_report(ctx: &mut Ctx, report: ChainReport, now: u64) {
    match report {
        ChainReport::Synced {
            tip,
            fee_sat_per_kvb,
            views,
        } => {
            ctx.chain = ChainState::Connected { tip };
            ctx.fee_sat_per_kvb = fee_sat_per_kvb;
            ctx.engine.set_tip(tip);
            ctx.synced_at = now;
            for (id, view) in views {
                if let Err(e) = ctx.engine.observe(&id, view, now) {
                    tracing::error!(loan = %id, error = %e, "applying the chain view");
                }
            }
        }
        ChainReport::Disconnected { reason } => {
            ctx.chain = ChainState::Disconnected { reason };
        }
        ChainReport::Broadcast {
            loan_id,
            txid,
            tip,
            result,
        } => {
            if ctx.in_flight.get(&loan_id) == Some(&txid) {
                ctx.in_flight.remove(&loan_id);
            }
            match result {
                Ok(()) => {
                    ctx.refused.remove(&loan_id);
                    if let Err(e) = ctx.engine.broadcasted(&loan_id, txid, tip) {
                        tracing::error!(loan = %loan_id, error = %e, "recording a broadcast");
                    }
                }
                Err(refusal) => refused(ctx, loan_id, txid, tip, refusal, now),
            }
        }
    }
}

/// The network refused a loan's transaction. The rule, by class: a lost connection
/// is tried again at the next pass (the chain thread reconnects); any other refusal
/// waits for the next block, the one thing that can change the answer (a timelock
/// reached, a conflicting spend confirmed or gone, the mempool's minimum fee fallen);
/// a fee too low is also bumped at once (a new attempt, signed by the arbiter, which
/// waits for its co-signature). A conflict whose escrow another transaction spent ends
/// when the chain view closes the loan. Every refusal shows in health until the loan
/// no longer waits or a broadcast is accepted.
fn refused(
    ctx: &mut Ctx,
    loan_id: String,
    txid: bitcoin::Txid,
    tip: u32,
    refusal: super::Refusal,
    now: u64,
) {
    tracing::warn!(loan = %loan_id, %txid, class = refusal.class, reason = %refusal.reason, "broadcast refused");
    let mut bumped = false;
    if refusal.class == "fee_too_low" {
        match ctx.engine.bump_refused(&loan_id, txid, ctx.fee_sat_per_kvb) {
            Ok(b) => {
                bumped = b;
                if b {
                    tracing::info!(loan = %loan_id, "fee bumped after a refusal");
                }
            }
            Err(e) => tracing::error!(loan = %loan_id, error = %e, "bumping a refused transaction"),
        }
    }
    // A bumped decision's next transaction is another one: sent once co-signed.
    let retry_at_height = if refusal.class == "connection" || bumped {
        tip
    } else {
        tip.saturating_add(1)
    };
    let entry = ctx
        .refused
        .entry(loan_id)
        .or_insert_with(|| super::RefusedBroadcast {
            txid,
            refusal: refusal.clone(),
            attempts: 0,
            since: now,
            retry_at_height,
        });
    if entry.txid != txid {
        entry.txid = txid;
        entry.attempts = 0;
        entry.since = now;
    }
    entry.attempts = entry.attempts.saturating_add(1);
    entry.refusal = refusal;
    entry.retry_at_height = retry_at_height;
}

fn on_price(ctx: &mut Ctx, result: OracleResult, now: u64) {
    ctx.ticks_seen += 1;
    ctx.last_oracle = Some(result.clone());
    match result.map(|p| (p.at, p.evidence())) {
        Ok((at, Ok(evidence))) => {
            if ctx.price_history.len() >= super::PRICE_HISTORY {
                ctx.price_history.pop_front();
            }
            ctx.price_history
                .push_back((at, evidence.price.minor_per_btc));
            ctx.price = Some((at, evidence.clone()));
            ctx.no_price = None;
            ctx.breaches_held = false;
            let Some(tip) = ctx.tip() else {
                tracing::warn!("price tick not applied: no connected chain view");
                return;
            };
            match ctx
                .engine
                .price_tick(evidence, now, tip, ctx.fee_sat_per_kvb)
            {
                Ok(outcome) if !outcome.waiting_for_chain.is_empty() => {
                    tracing::warn!(loans = ?outcome.waiting_for_chain, "breach waits for the chain")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "applying a price tick"),
            }
        }
        Ok((_, Err(e))) => hold_breaches(ctx, format!("the aggregate's currency: {e}"), now),
        Err(no) => {
            ctx.price = None;
            hold_breaches(ctx, no.reason, now);
        }
    }
}

/// No confirmed aggregate: say why in health, and hold every breach being confirmed
/// (its count starts over; see `Input::PriceUnavailable`). Once per outage: the held
/// loans have no breach counted until a price comes back.
fn hold_breaches(ctx: &mut Ctx, reason: String, now: u64) {
    if !ctx.breaches_held {
        match ctx.engine.price_unavailable(&reason, now) {
            Ok(held) => {
                ctx.breaches_held = true;
                for loan in held {
                    tracing::warn!(loan = %loan.id, %reason, "breach held: no price");
                }
            }
            Err(e) => tracing::error!(error = %e, "holding the breaches"),
        }
    }
    ctx.no_price = Some(reason);
}

fn on_clock(ctx: &mut Ctx, now: u64) {
    let Some(tip) = ctx.tip() else { return };
    let price = ctx.fresh_price(now).cloned();
    if let Err(e) = ctx
        .engine
        .clock(now, tip, ctx.fee_sat_per_kvb, price.as_ref())
    {
        tracing::error!(error = %e, "running the clock");
    }
}

/// Carry out what the store says is pending: watch new escrows, broadcast finalized
/// transactions (each once at a time; a refused one is tried again later).
fn effects(ctx: &mut Ctx, chain: &Sender<ChainRequest>) {
    // Escrows are only ever added: compare counts before walking them all.
    if ctx.registered.len() < ctx.engine.escrows().len() {
        for (id, escrow) in ctx.engine.escrows() {
            if !ctx.registered.contains(id) {
                ctx.registered.insert(id.clone());
                let _ = chain.send(ChainRequest::Register(id.clone(), Box::new(escrow.clone())));
            }
        }
    }
    let in_flight = &ctx.in_flight;
    let refused = &ctx.refused;
    let height = ctx.tip().unwrap_or(0);
    let held = |id: &str| {
        in_flight.contains_key(id) || refused.get(id).is_some_and(|r| height < r.retry_at_height)
    };
    match ctx.engine.to_broadcast_except(held) {
        Ok(pending) => {
            for (id, tx) in pending {
                ctx.in_flight.insert(id.clone(), tx.compute_txid());
                let _ = chain.send(ChainRequest::Broadcast(id, tx));
            }
        }
        Err(e) => tracing::error!(error = %e, "listing transactions to broadcast"),
    }
    // Once per new tip: bump what has waited too long, send the rest again.
    let Some(tip) = ctx.tip() else { return };
    if ctx.followed_at == Some(tip) {
        return;
    }
    ctx.followed_at = Some(tip);
    let engine = &ctx.engine;
    ctx.refused
        .retain(|id, _| engine.waits_for_its_transaction(id));
    if let Err(e) = ctx
        .engine
        .bump_stale(tip, ctx.rebroadcast_after_blocks, ctx.fee_sat_per_kvb)
    {
        tracing::error!(error = %e, "bumping stale transactions");
    }
    match ctx.engine.to_rebroadcast() {
        Ok(pending) => {
            for (id, tx) in pending {
                let held = ctx
                    .refused
                    .get(&id)
                    .is_some_and(|r| tip < r.retry_at_height);
                if !ctx.in_flight.contains_key(&id) && !held {
                    ctx.in_flight.insert(id.clone(), tx.compute_txid());
                    let _ = chain.send(ChainRequest::Broadcast(id, tx));
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "listing transactions to send again"),
    }
}
