//! Escrow fixtures for regtest tests: three parties with real keys, an escrow
//! descriptor at heights relative to the chain, funding from the test wallet.

use anyhow::Context;
use bitcoin::bip32::Xpriv;
use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::{Address, Amount, FeeRate, Network, OutPoint, Transaction};
use btc_escrow::keys::{account_path, AccountKey, SigningKey};
use btc_escrow::policy::{EscrowDescriptor, EscrowHeights, EscrowKeys, PathName, PolicyTemplate};
use btc_escrow::tx::{self, EscrowInput, SpendRequest};

use super::wallet::TestWallet;
use super::Regtest;

pub struct Parties {
    pub borrower: SigningKey,
    pub lender: SigningKey,
    pub arbiter: SigningKey,
    pub secp: Secp256k1<All>,
}

pub fn random_key() -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    bitcoin::secp256k1::rand::RngCore::fill_bytes(
        &mut bitcoin::secp256k1::rand::thread_rng(),
        &mut seed,
    );
    let master = Xpriv::new_master(Network::Regtest, &seed)?;
    Ok(SigningKey::parse(&master.to_string(), Network::Regtest)?)
}

impl Parties {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            borrower: random_key()?,
            lender: random_key()?,
            arbiter: random_key()?,
            secp: Secp256k1::new(),
        })
    }

    pub fn account(&self, key: &SigningKey) -> anyhow::Result<AccountKey> {
        Ok(AccountKey::from_master(
            key.master(),
            &account_path(Network::Regtest, 0)?,
            &self.secp,
        )?)
    }

    pub fn keys(&self, index: u32) -> anyhow::Result<EscrowKeys> {
        Ok(EscrowKeys {
            borrower: self.account(&self.borrower)?,
            lender: self.account(&self.lender)?,
            arbiter: self.account(&self.arbiter)?,
            index,
        })
    }

    /// An escrow whose default height is `default_in` blocks above the tip and whose
    /// recovery height is `recovery_in` blocks above it.
    pub fn escrow(
        &self,
        env: &Regtest,
        index: u32,
        default_in: u32,
        recovery_in: u32,
    ) -> anyhow::Result<EscrowDescriptor> {
        self.escrow_at(env.height()?, index, default_in, recovery_in)
    }

    /// As [`Parties::escrow`] with the tip given (an RPC call to bitcoind 31 costs
    /// about 45 ms, which adds up in loops).
    pub fn escrow_at(
        &self,
        tip: u32,
        index: u32,
        default_in: u32,
        recovery_in: u32,
    ) -> anyhow::Result<EscrowDescriptor> {
        let heights = EscrowHeights::new(tip + default_in, tip + recovery_in, tip)?;
        Ok(PolicyTemplate::default().instantiate(&self.keys(index)?, heights, Network::Regtest)?)
    }

    /// Sign as the party holding `key`: the arbiter as the service does, through a
    /// decision (here, the PSBT's own transaction), the others directly.
    pub fn sign(
        &self,
        psbt: &mut bitcoin::Psbt,
        key: &SigningKey,
        escrow: &EscrowDescriptor,
    ) -> anyhow::Result<usize> {
        let cap = tx::FeeCap::default();
        if std::ptr::eq(key, &self.arbiter) {
            let decision = tx::SpendDecision {
                tx: psbt.unsigned_tx.clone(),
            };
            Ok(tx::sign_decision(
                psbt, key, escrow, &decision, &cap, &self.secp,
            )?)
        } else {
            Ok(tx::sign(psbt, key, escrow, &cap, &self.secp)?)
        }
    }

    /// The keys that sign each path.
    pub fn signers(&self, path: PathName) -> Vec<&SigningKey> {
        match path {
            PathName::Cooperative => vec![&self.borrower, &self.lender],
            PathName::ArbitratedRelease => vec![&self.borrower, &self.arbiter],
            PathName::Liquidation => vec![&self.lender, &self.arbiter],
            PathName::DefaultClaim => vec![&self.lender],
            PathName::Recovery => vec![&self.borrower],
            PathName::Other => vec![],
        }
    }
}

/// Pay `amount` to the escrow from the wallet; returns the escrow UTXO with its
/// previous transaction (unconfirmed: mine to confirm it).
pub fn fund(
    wallet: &mut TestWallet,
    env: &Regtest,
    escrow: &EscrowDescriptor,
    amount: Amount,
) -> anyhow::Result<EscrowInput> {
    let tx = wallet.send(
        &escrow.address(),
        amount,
        FeeRate::from_sat_per_vb(2).expect("2 sat/vB"),
    )?;
    env.wait_for_tx(&escrow.script_pubkey(), tx.compute_txid())?;
    let vout = tx
        .output
        .iter()
        .position(|o| o.script_pubkey == escrow.script_pubkey())
        .context("the funding tx pays the escrow")?;
    Ok(EscrowInput {
        outpoint: OutPoint::new(tx.compute_txid(), vout as u32),
        prev_tx: tx,
    })
}

/// Build the path's spend of `inputs` (everything to `to`), sign it with the path's
/// keys and finalize it.
pub fn spend(
    parties: &Parties,
    escrow: &EscrowDescriptor,
    path: PathName,
    inputs: Vec<EscrowInput>,
    to: &Address,
    tip: u32,
) -> anyhow::Result<Transaction> {
    let req = SpendRequest {
        path,
        inputs,
        payments: vec![],
        rest_to: to.script_pubkey(),
        fee_rate: FeeRate::from_sat_per_vb(3).expect("3 sat/vB"),
        tip,
    };
    let mut psbt = tx::build(escrow, &req)?.psbt;
    for key in parties.signers(path) {
        parties.sign(&mut psbt, key, escrow)?;
    }
    Ok(tx::finalize(&psbt, &parties.secp)?)
}

/// The loan the engine and service tests run: $10,000 for 90 days at 10 %, 50 %
/// initial LTV, margin call 70 %, liquidation 80 % over 3 ticks, 5 % penalty, funded
/// within a day.
pub fn loan_terms(
    lender_payout: &Address,
    borrower_return: &Address,
) -> btc_escrow::loan::TermsInput {
    use btc_escrow::loan::{Bps, Currency, Fiat};
    btc_escrow::loan::TermsInput {
        principal: Fiat::new(1_000_000, Currency::new("USD").expect("USD is a code")),
        apr: Bps(1_000),
        term_secs: 90 * 86_400,
        initial_ltv: Bps(5_000),
        margin_call_ltv: Bps(7_000),
        liquidation_ltv: Bps(8_000),
        hard_liquidation_ltv: None,
        liquidation_penalty: Bps(500),
        hysteresis: Bps(200),
        confirm_ticks: 3,
        grace_blocks: 144,
        recovery_delay_blocks: 1_000,
        funding_deadline: btc_escrow::util::unix_now() + 86_400,
        borrower_return_address: borrower_return.to_string(),
        lender_payout_address: lender_payout.to_string(),
        min_confirmations: 1,
        partial_liquidation: false,
        target_ltv: None,
        margin_call_levels: Vec::new(),
    }
}
