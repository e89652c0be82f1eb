//! Conflicts in the sqlite state store.

use super::*;

impl SqliteStore {
    /// SQLite has no notifications: workers find a resumable run when they
    /// next poll.
    pub(crate) async fn announce_if_decided(
        _: &mut sqlx::SqliteConnection,
        _: &ConflictRecord,
        _: Uuid,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}
