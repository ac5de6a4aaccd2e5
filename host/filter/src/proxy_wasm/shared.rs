//! proxy-wasm shared data and queues, kept by the gateway per plugin (its
//! VM id): every VM of the plugin sees them, and they outlive a reload.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dashmap::DashMap;

/// Shared data and queues of one plugin, kept by the host: every VM of the
/// plugin sees them, and they outlive a reload.
#[derive(Default)]
pub struct SharedData {
    data: DashMap<String, (Bytes, u32)>,
    queues: Mutex<Queues>,
}

#[derive(Default)]
struct Queues {
    next: u32,
    by_name: HashMap<String, u32>,
    items: HashMap<u32, (u32, VecDeque<Bytes>)>,
    /// Queues with items whose owner was not yet told.
    ready: Vec<(u32, u32)>,
}

impl SharedData {
    pub(crate) fn get(&self, key: &str) -> Option<(Bytes, u32)> {
        self.data.get(key).map(|e| e.clone())
    }

    /// Set `key` if `cas` is 0 or its current version; false on a mismatch.
    pub(crate) fn set(&self, key: String, value: Bytes, cas: u32) -> bool {
        let mut entry = self.data.entry(key).or_insert((Bytes::new(), 0));
        if cas != 0 && cas != entry.1 {
            return false;
        }
        let version = entry.1.wrapping_add(1).max(1);
        *entry = (value, version);
        true
    }

    pub(crate) fn register(&self, name: &str, root: u32) -> u32 {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = queues.by_name.get(name) {
            let id = *id;
            queues.items.entry(id).or_default().0 = root;
            return id;
        }
        queues.next += 1;
        let id = queues.next;
        queues.by_name.insert(name.to_owned(), id);
        queues.items.insert(id, (root, Default::default()));
        id
    }

    pub(crate) fn resolve(&self, name: &str) -> Option<u32> {
        let queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues.by_name.get(name).copied()
    }

    pub(crate) fn dequeue(&self, id: u32) -> Option<Option<Bytes>> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues
            .items
            .get_mut(&id)
            .map(|(_, items)| items.pop_front())
    }

    pub(crate) fn enqueue(&self, id: u32, item: Bytes) -> bool {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let Some((root, items)) = queues.items.get_mut(&id) else {
            return false;
        };
        items.push_back(item);
        let owner = (*root, id);
        if !queues.ready.contains(&owner) {
            queues.ready.push(owner);
        }
        true
    }

    pub(crate) fn take_ready(&self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.queues.lock().unwrap_or_else(|e| e.into_inner()).ready)
    }
}

/// Each plugin's shared data, by plugin name (proxy-wasm's VM id).
#[derive(Default)]
pub struct ProxyData(DashMap<String, Arc<SharedData>>);

impl ProxyData {
    pub(crate) fn of(&self, plugin: &str) -> Arc<SharedData> {
        self.0.entry(plugin.to_owned()).or_default().clone()
    }
}
