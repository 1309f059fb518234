//! Locks that outlive a panic.
//!
//! A `std::sync::Mutex` is poisoned when a holder panics, and every later `lock()` returns an
//! error. Where each holder leaves the data consistent before it can panic (a single insert,
//! a SQLite connection whose transaction rolled back on unwind), the data is still good and
//! refusing it would turn one panicked request into a dead process. Each use says why it is
//! safe where it locks.

use std::sync::{Mutex, MutexGuard};

/// Locking a [`Mutex`] without failing on poison, for data that every holder leaves
/// consistent (see the module docs).
pub trait LockIgnoringPoison<T: ?Sized> {
    /// The guard, whether or not an earlier holder panicked.
    fn lock_ignoring_poison(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockIgnoringPoison<T> for Mutex<T> {
    fn lock_ignoring_poison(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicked_holder_does_not_lock_the_data_away() {
        let m = Mutex::new(1);
        let _ = std::panic::catch_unwind(|| {
            let _g = m.lock().unwrap();
            panic!("holder panics");
        });
        assert!(m.is_poisoned());
        *m.lock_ignoring_poison() += 1;
        assert_eq!(*m.lock_ignoring_poison(), 2);
    }
}
