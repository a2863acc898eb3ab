//! A BDK test wallet (single wpkh descriptor) synced through electrs: the bitcoind we
//! build has no wallet, so BDK is the wallet everywhere.

use anyhow::{anyhow, Context};
use bdk_electrum::BdkElectrumClient;
use bdk_wallet::miniscript::descriptor::KeyMapWrapper;
use bdk_wallet::{descriptor::IntoWalletDescriptor, KeychainKind, SignOptions, Wallet};
use bitcoin::bip32::Xpriv;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::{Address, Amount, FeeRate, Network, Transaction, Txid};

use super::Regtest;

pub struct TestWallet {
    pub wallet: Wallet,
    signer: KeyMapWrapper,
    client: BdkElectrumClient<electrum_client::Client>,
}

impl TestWallet {
    /// A new wallet with a random key, connected to `env`'s electrs.
    pub fn new(env: &Regtest) -> anyhow::Result<Self> {
        let mut seed = [0u8; 32];
        bitcoin::secp256k1::rand::RngCore::fill_bytes(
            &mut bitcoin::secp256k1::rand::thread_rng(),
            &mut seed,
        );
        let xprv = Xpriv::new_master(Network::Regtest, &seed)?;
        let descriptor = format!("wpkh({xprv}/84'/1'/0'/0/*)");
        let secp = Secp256k1::new();
        let (descriptor, keymap) = descriptor
            .as_str()
            .into_wallet_descriptor(&secp, Network::Regtest.into())
            .map_err(|e| anyhow!("test wallet descriptor: {e:?}"))?;
        let wallet = Wallet::create_single(descriptor)
            .network(Network::Regtest)
            .create_wallet_no_persist()
            .map_err(|e| anyhow!("creating the test wallet: {e:?}"))?;
        Ok(Self {
            wallet,
            signer: KeyMapWrapper::from(keymap),
            client: BdkElectrumClient::new(env.electrum()?),
        })
    }

    pub fn address(&mut self) -> Address {
        self.wallet
            .reveal_next_address(KeychainKind::External)
            .address
    }

    /// Mine `blocks` coinbases to this wallet, then 100 blocks so they mature, then sync.
    pub fn fund(&mut self, env: &Regtest, blocks: u32) -> anyhow::Result<()> {
        let address = self.address();
        env.mine_to(blocks, &address)?;
        env.mine(100)?;
        self.sync()
    }

    /// Sync every revealed script and the chain tip through electrs.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        let request = self.wallet.start_full_scan();
        let update = self
            .client
            .full_scan(request, 20, 10, false)
            .context("syncing the test wallet through electrs")?;
        self.wallet
            .apply_update(update)
            .map_err(|e| anyhow!("applying the wallet update: {e:?}"))?;
        Ok(())
    }

    pub fn balance(&self) -> Amount {
        self.wallet.balance().total()
    }

    /// Build, sign and broadcast (through electrs) a payment of `amount` to `to`.
    pub fn send(
        &mut self,
        to: &Address,
        amount: Amount,
        fee_rate: FeeRate,
    ) -> anyhow::Result<Transaction> {
        let mut builder = self.wallet.build_tx();
        builder.add_recipient(to.script_pubkey(), amount);
        builder.fee_rate(fee_rate);
        let psbt = builder
            .finish()
            .map_err(|e| anyhow!("building a payment: {e}"))?;
        let tx = self.sign_and_extract(psbt)?;
        self.broadcast(&tx)?;
        Ok(tx)
    }

    /// Replace the unconfirmed `txid` by a conflicting version paying a higher fee rate.
    pub fn bump_fee(&mut self, txid: Txid, fee_rate: FeeRate) -> anyhow::Result<Transaction> {
        let mut builder = self
            .wallet
            .build_fee_bump(txid)
            .map_err(|e| anyhow!("fee bump of {txid}: {e}"))?;
        builder.fee_rate(fee_rate);
        let psbt = builder
            .finish()
            .map_err(|e| anyhow!("building the replacement of {txid}: {e}"))?;
        let tx = self.sign_and_extract(psbt)?;
        self.broadcast(&tx)?;
        Ok(tx)
    }

    /// Sign, finalize and broadcast a PSBT built from `self.wallet`.
    pub fn sign_and_broadcast(&mut self, psbt: bitcoin::Psbt) -> anyhow::Result<Transaction> {
        let tx = self.sign_and_extract(psbt)?;
        self.broadcast(&tx)?;
        Ok(tx)
    }

    fn sign_and_extract(&mut self, mut psbt: bitcoin::Psbt) -> anyhow::Result<Transaction> {
        psbt.sign(&self.signer, self.wallet.secp_ctx())
            .map_err(|(_, e)| anyhow!("signing: {e:?}"))?;
        let finalized = self
            .wallet
            .finalize_psbt(&mut psbt, SignOptions::default())
            .map_err(|e| anyhow!("finalizing: {e}"))?;
        anyhow::ensure!(finalized, "the test wallet could not finalize its own PSBT");
        Ok(psbt.extract_tx()?)
    }

    fn broadcast(&mut self, tx: &Transaction) -> anyhow::Result<()> {
        self.client
            .transaction_broadcast(tx)
            .context("broadcasting through electrs")?;
        self.wallet.apply_unconfirmed_txs([(tx.clone(), now())]);
        Ok(())
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
