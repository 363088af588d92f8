//! Who is online: the registry of authenticated connections, by device.
//!
//! A send wakes its recipients' connections through the hub; each connection then reads its
//! own mailbox from the store, so delivery order is the mailbox order and a wake-up can never
//! lose a message (a missed wake-up only delays delivery until the next one or a reconnect).
//! This is the seam where cross-node delivery (PostgreSQL LISTEN/NOTIFY) will plug in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use medrelay_proto::ids::DeviceId;
use tokio::sync::Notify;

/// Why the server closes a connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The same device connected again; the newer connection wins.
    Replaced,
    /// The device was revoked.
    Revoked,
    /// The device's user was deactivated.
    Deactivated,
    /// The server is shutting down.
    Shutdown,
}

/// Signals from the rest of the server to one connection.
#[derive(Debug, Default)]
pub struct ConnectionSignals {
    /// New mail may be waiting in the mailbox.
    pub wake: Notify,
    /// The connection must close; the reason is in `close_reason`.
    pub close: Notify,
    /// The device's one-time prekeys ran low: tell it (set, then `wake`).
    pub prekeys_low: std::sync::atomic::AtomicBool,
    close_reason: Mutex<Option<CloseReason>>,
}

impl ConnectionSignals {
    /// Asks the connection to close for `reason`.
    pub fn close(&self, reason: CloseReason) {
        let mut slot = self.close_reason.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(reason);
        self.close.notify_one();
    }

    /// Why the connection was asked to close, if it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.close_reason.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection's registration in the hub.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Unique per connection, so a stale unregister cannot remove a newer connection.
    pub connection: u64,
    /// The connection's signals.
    pub signals: Arc<ConnectionSignals>,
}

/// The registry of online devices.
#[derive(Debug, Default)]
pub struct Hub {
    online: Mutex<HashMap<DeviceId, Registration>>,
    next_connection: AtomicU64,
}

impl Hub {
    /// Registers a freshly authenticated connection of `device`; an older connection of the
    /// same device is told to close.
    pub fn register(&self, device: DeviceId) -> Registration {
        let registration = Registration {
            connection: self.next_connection.fetch_add(1, Ordering::Relaxed),
            signals: Arc::new(ConnectionSignals::default()),
        };
        let previous = self
            .online
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(device, registration.clone());
        if let Some(previous) = previous {
            previous.signals.close(CloseReason::Replaced);
        }
        registration
    }

    /// Removes the registration if it is still the current one for `device`.
    pub fn unregister(&self, device: &DeviceId, connection: u64) {
        let mut online = self.online.lock().unwrap_or_else(|e| e.into_inner());
        if online.get(device).map(|r| r.connection) == Some(connection) {
            online.remove(device);
        }
    }

    /// Wakes the connections of these devices, if online.
    pub fn wake<'a>(&self, devices: impl IntoIterator<Item = &'a DeviceId>) {
        let online = self.online.lock().unwrap_or_else(|e| e.into_inner());
        for device in devices {
            if let Some(registration) = online.get(device) {
                registration.signals.wake.notify_one();
            }
        }
    }

    /// Tells the connection of `device`, if online, that its one-time prekeys run low.
    pub fn prekeys_low(&self, device: &DeviceId) {
        if let Some(registration) = self
            .online
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
        {
            registration
                .signals
                .prekeys_low
                .store(true, Ordering::Relaxed);
            registration.signals.wake.notify_one();
        }
    }

    /// Closes the connection of `device`, if online.
    pub fn close(&self, device: &DeviceId, reason: CloseReason) {
        if let Some(registration) = self
            .online
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
        {
            registration.signals.close(reason);
        }
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for registration in self
            .online
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            registration.signals.close(reason);
        }
    }

    /// How many devices are online.
    pub fn online_count(&self) -> usize {
        self.online.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_connection_replaces_the_first_and_stale_unregister_is_ignored() {
        let hub = Hub::default();
        let device = DeviceId::from([7u8; 16]);
        let first = hub.register(device);
        let second = hub.register(device);
        assert_eq!(first.signals.close_reason(), Some(CloseReason::Replaced));
        assert_eq!(second.signals.close_reason(), None);
        hub.unregister(&device, first.connection);
        assert_eq!(hub.online_count(), 1);
        hub.unregister(&device, second.connection);
        assert_eq!(hub.online_count(), 0);
    }
}
