//! One-shot questions the parties' own tools ask their own Electrum server (the exit
//! kit, the co-signer): what an escrow script holds, and a broadcast. No watcher, no
//! state: connect, check the network, ask, return.

use bitcoin::{OutPoint, ScriptBuf, Transaction, Txid};
use electrum_client::ElectrumApi;

use super::{broadcast, BroadcastError, ChainError, Connector, TlsConfig};
use crate::tx::EscrowInput;

/// An output paying the script, with where it stands.
#[derive(Debug, Clone)]
pub struct ScriptOutput {
    pub input: EscrowInput,
    /// The confirming height (`None`: in the mempool).
    pub height: Option<u32>,
    /// The transaction spending it, if the server knows one, and whether it is
    /// confirmed.
    pub spent_by: Option<(Txid, bool)>,
}

/// What a script holds, as the server sees it at `tip`.
#[derive(Debug, Clone)]
pub struct ScriptView {
    pub tip: u32,
    pub outputs: Vec<ScriptOutput>,
}

impl ScriptView {
    /// Outputs not spent by anything (mempool spends count as spent).
    pub fn unspent(&self) -> Vec<EscrowInput> {
        self.outputs
            .iter()
            .filter(|o| o.spent_by.is_none())
            .map(|o| o.input.clone())
            .collect()
    }

    /// Outputs not spent by a confirmed transaction: what a replacement of a mempool
    /// spend may spend again.
    pub fn not_spent_on_chain(&self) -> Vec<EscrowInput> {
        self.outputs
            .iter()
            .filter(|o| !o.spent_by.is_some_and(|(_, confirmed)| confirmed))
            .map(|o| o.input.clone())
            .collect()
    }
}

impl ScriptView {
    /// [`ScriptView::not_spent_on_chain`] without the change of a mempool spend of
    /// the script (a partial liquidation or withdrawal paying back into it): what a
    /// fee bump of that spend spends is the outputs before it.
    pub fn before_pending_spends(&self) -> Vec<EscrowInput> {
        let pending_spends: Vec<Txid> = self
            .outputs
            .iter()
            .filter_map(|o| {
                o.spent_by
                    .filter(|(_, confirmed)| !confirmed)
                    .map(|(t, _)| t)
            })
            .collect();
        self.outputs
            .iter()
            .filter(|o| !o.spent_by.is_some_and(|(_, confirmed)| confirmed))
            .filter(|o| !(o.height.is_none() && pending_spends.contains(&o.input.outpoint.txid)))
            .map(|o| o.input.clone())
            .collect()
    }
}

fn connect(
    url: &str,
    tls: &TlsConfig,
    network: bitcoin::Network,
) -> Result<super::ElectrumClient, ChainError> {
    let connector = Connector::new(url, tls)?;
    let client = connector.connect(std::time::Duration::from_secs(10))?;
    super::check_network(&client, url, network)?;
    Ok(client)
}

/// Every output paying `script` in the server's history of it, each with its full
/// previous transaction (checked to hash to its txid) and whether it is spent.
pub fn script_view(
    url: &str,
    tls: &TlsConfig,
    network: bitcoin::Network,
    script: &ScriptBuf,
) -> Result<ScriptView, ChainError> {
    let client = connect(url, tls, network)?;
    let err = |source| ChainError::Electrum {
        url: url.to_owned(),
        source,
    };
    let tip = client.block_headers_subscribe().map_err(err)?.height;
    let history = client.script_get_history(script).map_err(err)?;
    let mut txs: Vec<(Transaction, Option<u32>)> = Vec::new();
    for h in &history {
        let tx = client.transaction_get(&h.tx_hash).map_err(err)?;
        if tx.compute_txid() != h.tx_hash {
            return Err(ChainError::Electrum {
                url: url.to_owned(),
                source: electrum_client::Error::Message(format!(
                    "the server sent another transaction for {}",
                    h.tx_hash
                )),
            });
        }
        let height = u32::try_from(h.height).ok().filter(|h| *h > 0);
        txs.push((tx, height));
    }
    let mut outputs = Vec::new();
    for (tx, height) in &txs {
        let txid = tx.compute_txid();
        for (vout, out) in tx.output.iter().enumerate() {
            if out.script_pubkey != *script {
                continue;
            }
            let outpoint = OutPoint::new(txid, vout as u32);
            let spent_by = txs.iter().find_map(|(s, h)| {
                s.input
                    .iter()
                    .any(|i| i.previous_output == outpoint)
                    .then(|| (s.compute_txid(), h.is_some()))
            });
            outputs.push(ScriptOutput {
                input: EscrowInput {
                    outpoint,
                    prev_tx: tx.clone(),
                },
                height: *height,
                spent_by,
            });
        }
    }
    Ok(ScriptView {
        tip: u32::try_from(tip).unwrap_or(u32::MAX),
        outputs,
    })
}

/// The tip height.
pub fn tip(url: &str, tls: &TlsConfig, network: bitcoin::Network) -> Result<u32, ChainError> {
    let client = connect(url, tls, network)?;
    let tip = client
        .block_headers_subscribe()
        .map_err(|source| ChainError::Electrum {
            url: url.to_owned(),
            source,
        })?;
    Ok(u32::try_from(tip.height).unwrap_or(u32::MAX))
}

/// Broadcast `tx`, the refusal classified (non-final, fee too low, conflict…).
pub fn send(
    url: &str,
    tls: &TlsConfig,
    network: bitcoin::Network,
    tx: &Transaction,
) -> Result<Txid, BroadcastError> {
    let txid = tx.compute_txid();
    let client = connect(url, tls, network).map_err(|e| BroadcastError::Connection {
        txid,
        message: e.to_string(),
    })?;
    broadcast::broadcast(&client, tx)
}
