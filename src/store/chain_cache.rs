//! The chain watcher's cache (`chain::ChainCache`): its changes appended one record
//! each under an increasing key, read back in order, and replaced by one record when
//! the watcher hands out the whole cache. It is only a cache: its writes are never
//! waited on (a change lost in a crash costs a fetch), and a record that cannot be
//! read is reported so the caller can start from nothing.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{decode, encode};
use super::{db_err, Store, StoreError};

impl Store {
    /// Append a change to the chain cache (buffered).
    pub fn append_chain_cache<T: Serialize>(&self, change: &T) -> Result<(), StoreError> {
        let key = self.db.generate_id().map_err(db_err)?;
        self.begin();
        self.chain_cache
            .insert(key.to_be_bytes(), encode(change))
            .map_err(db_err)?;
        Ok(())
    }

    /// Replace the whole chain cache with `cache`, atomically (buffered).
    pub fn replace_chain_cache<T: Serialize>(&self, cache: &T) -> Result<(), StoreError> {
        let key = self.db.generate_id().map_err(db_err)?;
        let mut batch = sled::Batch::default();
        for old in self.chain_cache.iter().keys() {
            batch.remove(old.map_err(db_err)?);
        }
        batch.insert(&key.to_be_bytes(), encode(cache));
        self.begin();
        self.chain_cache.apply_batch(batch).map_err(db_err)
    }

    /// Every stored change of the chain cache, oldest first.
    pub fn chain_cache<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        self.chain_cache
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(db_err)?;
                let key = <[u8; 8]>::try_from(k.as_ref()).map_or(0, u64::from_be_bytes);
                decode("chain_cache", &key.to_string(), &v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_come_back_in_order_and_a_replacement_replaces_them_all() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("store");
        assert!(store.chain_cache::<u32>().expect("reads").is_empty());
        for n in [3u32, 1, 2] {
            store.append_chain_cache(&n).expect("appends");
        }
        assert_eq!(store.chain_cache::<u32>().expect("reads"), [3, 1, 2]);
        store.replace_chain_cache(&7u32).expect("replaces");
        store.append_chain_cache(&8u32).expect("appends");
        store.flush().expect("flush");
        drop(store);
        let store = Store::open(dir.path()).expect("reopens");
        assert_eq!(store.chain_cache::<u32>().expect("reads"), [7, 8]);
    }
}
