//! Scenario: the regtest stack is real. A BDK wallet is funded by mining, sends 1 BTC
//! to a fresh address, a block confirms it, and electrs shows the address history, the
//! confirmation height and the UTXO value. The block is then invalidated: the payment
//! is unconfirmed again (back in bitcoind's mempool); a fee bump double-spends it and
//! the original disappears from electrs' view while the replacement takes its place.

mod common;

use anyhow::ensure;
use bitcoin::{Amount, FeeRate};
use common::Regtest;
use electrum_client::ElectrumApi;
use serde_json::json;

#[test]
fn payment_is_seen_confirmed_then_reorged_and_double_spent() -> anyhow::Result<()> {
    let env = Regtest::start()?;
    let mut payer = common::wallet::TestWallet::new(&env)?;
    payer.fund(&env, 2)?;
    ensure!(
        payer.balance() >= Amount::from_int_btc(50),
        "the wallet should own a mature coinbase, has {}",
        payer.balance()
    );

    let mut payee = common::wallet::TestWallet::new(&env)?;
    let to = payee.address();
    let script = to.script_pubkey();
    let tx = payer.send(
        &to,
        Amount::ONE_BTC,
        FeeRate::from_sat_per_vb(2).expect("2 sat/vB"),
    )?;
    let txid = tx.compute_txid();
    env.wait_for_tx(&script, txid)?;

    let block = env.mine(1)?[0];
    let height = env.height()?;
    let electrum = env.electrum()?;
    let history = electrum.script_get_history(&script)?;
    ensure!(history.len() == 1, "one tx in the history, got {history:?}");
    ensure!(history[0].tx_hash == txid);
    ensure!(
        history[0].height == height as i32,
        "confirmed at {height}, electrs says {}",
        history[0].height
    );
    let utxos = electrum.script_list_unspent(&script)?;
    ensure!(utxos.len() == 1 && utxos[0].value == Amount::ONE_BTC.to_sat());
    ensure!(utxos[0].height == height as usize);

    // Invalidate the block: the payment goes back to the mempool, unconfirmed.
    env.rpc
        .call("invalidateblock", json!([block.to_string()]))?;
    env.wait_for_electrs_tip()?;
    ensure!(env.height()? == height - 1);
    ensure!(
        env.mempool_contains(txid)?,
        "the disconnected tx is back in the mempool"
    );
    let history = env.wait_for_history(&script, |h| h.len() == 1 && h[0].height <= 0)?;
    ensure!(
        history[0].tx_hash == txid,
        "still the same, now unconfirmed: {history:?}"
    );

    // Double-spend it with a fee bump: the original is gone, the replacement counts.
    payer.sync()?;
    let replacement = payer.bump_fee(txid, FeeRate::from_sat_per_vb(20).expect("20 sat/vB"))?;
    let rtxid = replacement.compute_txid();
    ensure!(rtxid != txid);
    ensure!(
        !env.mempool_contains(txid)?,
        "the original left the mempool"
    );
    let history = env.wait_for_history(&script, |h| h.iter().all(|e| e.tx_hash == rtxid))?;
    ensure!(
        history.len() == 1,
        "only the replacement remains: {history:?}"
    );
    env.mine(1)?;
    let utxos = env.electrum()?.script_list_unspent(&script)?;
    ensure!(utxos.len() == 1 && utxos[0].tx_hash == rtxid && utxos[0].height > 0);
    Ok(())
}

#[test]
fn missing_binaries_fail_with_the_setup_message() -> anyhow::Result<()> {
    let err = common::find_exe("BTC_ESCROW_TEST_NO_SUCH_EXE", "no-such-build", "bitcoind")
        .expect_err("a missing binary must be an error");
    let text = format!("{err:#}");
    ensure!(
        text.contains("regtest/setup"),
        "the error must say what to run: {text}"
    );
    Ok(())
}
