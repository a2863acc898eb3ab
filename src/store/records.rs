//! The records the API keeps beside the loans: parties and their tokens, idempotency
//! answers, webhook subscriptions and deliveries, PSBTs by kind. Each is a plain value
//! under a key; only parties and tokens are written together.

use std::convert::Infallible;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{check_id, encode};
use super::{db_err, Durability, Store, StoreError};

impl Store {
    pub fn put_party<T: Serialize>(
        &self,
        id: &str,
        party: &T,
        d: Durability,
    ) -> Result<(), StoreError> {
        check_id(id)?;
        self.put(&self.parties, id, party, d)
    }

    pub fn party<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>, StoreError> {
        self.get(&self.parties, "party", id)
    }

    /// A party and its token (by the token's hash), in one transaction: a party is
    /// never stored without the token that was handed out for it.
    pub fn put_party_with_token<P: Serialize, T: Serialize>(
        &self,
        id: &str,
        party: &P,
        token_hash: &str,
        token: &T,
        d: Durability,
    ) -> Result<(), StoreError> {
        use sled::Transactional;
        check_id(id)?;
        let party = encode(party);
        let token = encode(token);
        self.begin();
        (&self.parties, &self.tokens)
            .transaction(|(parties, tokens)| {
                parties.insert(id.as_bytes(), party.as_slice())?;
                tokens.insert(token_hash.as_bytes(), token.as_slice())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<Infallible>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => db_err(e),
                sled::transaction::TransactionError::Abort(never) => match never {},
            })?;
        self.finish(d)
    }

    /// Every party record.
    pub fn parties<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        self.all(&self.parties, "party", "")
    }

    /// API tokens, keyed by their hash (never the token itself).
    pub fn put_token<T: Serialize>(
        &self,
        token_hash: &str,
        record: &T,
        d: Durability,
    ) -> Result<(), StoreError> {
        self.put(&self.tokens, token_hash, record, d)
    }

    pub fn token<T: DeserializeOwned>(&self, token_hash: &str) -> Result<Option<T>, StoreError> {
        self.get(&self.tokens, "token", token_hash)
    }

    /// The stored answer to an API request under an idempotency key.
    pub fn put_idempotent<T: Serialize>(
        &self,
        key: &str,
        record: &T,
        d: Durability,
    ) -> Result<(), StoreError> {
        self.put(&self.idempotency, key, record, d)
    }

    pub fn idempotent<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        self.get(&self.idempotency, "idempotency record", key)
    }

    pub fn remove_idempotent(&self, key: &str) -> Result<(), StoreError> {
        self.begin();
        self.idempotency.remove(key.as_bytes()).map_err(db_err)?;
        Ok(())
    }

    /// A webhook subscription.
    pub fn put_webhook<T: Serialize>(&self, id: &str, record: &T) -> Result<(), StoreError> {
        check_id(id)?;
        self.put(&self.webhooks, id, record, Durability::Durable)
    }

    pub fn webhook<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>, StoreError> {
        self.get(&self.webhooks, "webhook", id)
    }

    pub fn webhooks<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        self.all(&self.webhooks, "webhook", "")
    }

    /// A webhook delivery's record, under `webhook_id/zero-padded event sequence`.
    pub fn put_delivery<T: Serialize>(
        &self,
        webhook_id: &str,
        event_seq: u64,
        record: &T,
    ) -> Result<(), StoreError> {
        check_id(webhook_id)?;
        let key = format!("{webhook_id}/{event_seq:020}");
        self.put(&self.deliveries, &key, record, Durability::Durable)
    }

    /// A webhook's deliveries, oldest event first.
    pub fn deliveries<T: DeserializeOwned>(&self, webhook_id: &str) -> Result<Vec<T>, StoreError> {
        self.all(&self.deliveries, "delivery", &format!("{webhook_id}/"))
    }

    /// A loan's PSBT of one kind (e.g. "liquidation"), as base64 text.
    pub fn put_psbt(
        &self,
        loan_id: &str,
        kind: &str,
        psbt_base64: &str,
        d: Durability,
    ) -> Result<(), StoreError> {
        check_id(loan_id)?;
        self.put(&self.psbts, &format!("{loan_id}/{kind}"), &psbt_base64, d)
    }

    pub fn psbt(&self, loan_id: &str, kind: &str) -> Result<Option<String>, StoreError> {
        self.get(&self.psbts, "psbt", &format!("{loan_id}/{kind}"))
    }
}
